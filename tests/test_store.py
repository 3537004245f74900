"""The logits store: round trips, lazy per-part reading, atomic writes, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdlens import CheckpointWriter, InputError, StoreError, open_store, write_logits
from kdlens.store.format import METADATA_KEY, arrow_schema

REPO = Path(__file__).resolve().parents[1]


def _grid(tmp_path: Path, k: int = 5, n: int = 50) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    truth = {}
    for run in ("bs16-seed0", "bs64-seed0"):
        for ep in (1, 2, 4):
            with CheckpointWriter(
                tmp_path / run / f"ep{ep:03d}.parquet",
                run=run,
                checkpoint=f"ep{ep:03d}",
                num_classes=k,
                epoch=ep,
                step=ep * 10,
                batch_size=int(run[2:4]),
                class_names=[f"c{i}" for i in range(k)],
                config={"seed": 0},
            ) as w:
                for split, n_split in (("train", n), ("test", n // 2)):
                    z = rng.normal(size=(n_split, k)).astype(np.float32)
                    y = rng.integers(0, k, n_split)
                    ids = np.arange(n_split) + (1000 if split == "test" else 0)
                    w.write(z, split=split, labels=y, example_ids=ids)
                    truth[(run, f"ep{ep:03d}", split)] = (z, y, ids)
    return tmp_path, truth


def test_round_trip_every_part(tmp_path: Path) -> None:
    root, truth = _grid(tmp_path)
    store = open_store(root)
    assert store.num_classes == 5
    assert store.class_names == [f"c{i}" for i in range(5)]
    assert len(store.keys()) == 6 and len(store.parts) == 12
    assert store.keys()[0] == ("bs16-seed0", "ep001")
    for (run, ck, split), (z, y, ids) in truth.items():
        b = store.load(run, ck, split)
        np.testing.assert_array_equal(b.logits, z)
        np.testing.assert_array_equal(b.labels, y)
        np.testing.assert_array_equal(b.example_ids, ids)
    table = store.checkpoints()
    assert set(table["epoch"].to_list()) == {1, 2, 4}
    assert set(table["batch_size"].to_list()) == {16, 64}


def test_glob_and_single_file_sources(tmp_path: Path) -> None:
    root, _ = _grid(tmp_path)
    assert len(open_store(str(root / "bs16-seed0" / "*.parquet")).keys()) == 3
    assert len(open_store(root / "bs64-seed0" / "ep002.parquet").keys()) == 1


def test_batches_are_bounded_and_cover_the_part(tmp_path: Path) -> None:
    z = np.random.default_rng(1).normal(size=(1000, 7)).astype(np.float32)
    write_logits(tmp_path / "a.parquet", z, split="train", run="r", checkpoint="c")
    store = open_store(tmp_path)
    sizes = [len(b) for b in store.iter_batches("r", "c", "train", batch_rows=128)]
    assert max(sizes) <= 128 and sum(sizes) == 1000
    got = np.concatenate([b.logits for b in store.iter_batches("r", "c", "train", batch_rows=128)])
    np.testing.assert_array_equal(got, z)


def test_reading_one_checkpoint_never_touches_another(tmp_path: Path, monkeypatch) -> None:
    root, _ = _grid(tmp_path)
    store = open_store(root)
    opened: list[str] = []
    real = pq.ParquetFile

    def spy(path, *a, **kw):
        opened.append(str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(pq, "ParquetFile", spy)
    store.load("bs64-seed0", "ep002", "train")
    assert opened and all(p.endswith("bs64-seed0/ep002.parquet") for p in opened)


def test_unlabeled_rows_read_as_minus_one(tmp_path: Path) -> None:
    write_logits(tmp_path / "u.parquet", np.zeros((4, 3)), split="train", run="r", checkpoint="c")
    assert open_store(tmp_path).load("r", "c", "train").labels.tolist() == [-1] * 4


def test_torch_tensors_are_accepted(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    z = torch.randn(6, 4)
    write_logits(
        tmp_path / "t.parquet",
        z,
        split="test",
        run="r",
        checkpoint="c",
        labels=torch.tensor([0, 1, 2, 3, 0, 1]),
    )
    np.testing.assert_allclose(open_store(tmp_path).load("r", "c", "test").logits, z.numpy())


def test_mixed_row_groups_from_other_tools_are_split(tmp_path: Path) -> None:
    # One row group holding two checkpoints, as a foreign writer might produce.
    k = 3
    rows = 8
    z = np.arange(rows * k, dtype=np.float32).reshape(rows, k)
    table = pa.Table.from_pydict(
        {
            "run": ["r"] * rows,
            "checkpoint": ["a"] * 4 + ["b"] * 4,
            "epoch": pa.array([1] * 4 + [2] * 4, pa.int32()),
            "step": pa.nulls(rows, pa.int64()),
            "batch_size": pa.nulls(rows, pa.int32()),
            "split": ["test"] * rows,
            "example_id": pa.array(list(range(4)) * 2, pa.int64()),
            "label": pa.array([0, 1, 2, 0] * 2, pa.int32()),
            "logits": pa.FixedSizeListArray.from_arrays(pa.array(z.ravel()), k),
        },
        schema=arrow_schema(k),
    )
    pq.write_table(table, tmp_path / "mixed.parquet")
    store = open_store(tmp_path)
    assert sorted(store.keys()) == [("r", "a"), ("r", "b")]
    np.testing.assert_array_equal(store.load("r", "b", "test").logits, z[4:])
    assert {p.epoch for p in store.parts} == {1, 2}


def test_writer_is_atomic_on_error(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    with pytest.raises(RuntimeError):
        with CheckpointWriter(path, run="r", checkpoint="c", num_classes=3) as w:
            w.write(np.zeros((2, 3)), split="test")
            raise RuntimeError("crash mid-dump")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_existing_output_unless_overwrite(tmp_path: Path) -> None:
    path = write_logits(
        tmp_path / "x.parquet", np.zeros((2, 3)), split="t", run="r", checkpoint="c"
    )
    with pytest.raises(InputError, match="already exists"):
        write_logits(path, np.zeros((2, 3)), split="t", run="r", checkpoint="c")
    write_logits(path, np.ones((2, 3)), split="t", run="r", checkpoint="c", overwrite=True)
    assert open_store(path).load("r", "c", "t").logits.sum() == 6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": [0, 5]}, r"labels must lie in \[0, 3\), found 5"),
        ({"labels": [0]}, "labels has 1 rows but logits has 2"),
        ({"example_ids": [1, 2, 3]}, "example_ids has 3 rows"),
        ({"class_names": ["a", "b"]}, "class_names has 2 names but num_classes is 3"),
    ],
)
def test_writer_rejects_bad_arrays(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        write_logits(
            tmp_path / "x.parquet", np.zeros((2, 3)), split="t", run="r", checkpoint="c", **kwargs
        )
    assert not (tmp_path / "x.parquet").exists()


def test_not_parquet_and_truncated_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_text("hello")
    with pytest.raises(StoreError, match=r"bad.parquet: not a readable Parquet file"):
        open_store(bad)
    good = write_logits(
        tmp_path / "g.parquet", np.zeros((5, 3)), split="t", run="r", checkpoint="c"
    )
    data = good.read_bytes()
    trunc = tmp_path / "trunc.parquet"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="trunc.parquet: not a readable Parquet file"):
        open_store(trunc)


def test_missing_column_and_wrong_dtype(tmp_path: Path) -> None:
    pq.write_table(pa.table({"run": ["r"], "checkpoint": ["c"]}), tmp_path / "m.parquet")
    with pytest.raises(StoreError, match="m.parquet: missing column 'split'$"):
        open_store(tmp_path / "m.parquet")
    # Found under a directory: the error says every .parquet there is read as logits.
    with pytest.raises(StoreError, match="missing column 'split'; every .parquet file under"):
        open_store(tmp_path)
    from kdlens.store.validate import validate

    assert "; every .parquet file under" in validate(tmp_path).unreadable[0]
    t = pa.table(
        {
            "run": ["r"],
            "checkpoint": ["c"],
            "split": ["t"],
            "example_id": pa.array([0], pa.int64()),
            "label": pa.array([0], pa.int32()),
            "logits": pa.array([[1.0, 2.0]], pa.list_(pa.float64())),
        }
    )
    pq.write_table(t, tmp_path / "d.parquet")
    with pytest.raises(StoreError, match="column 'logits' must be fixed_size_list<float32>"):
        open_store(tmp_path / "d.parquet")


def test_k_differing_between_files(tmp_path: Path) -> None:
    write_logits(tmp_path / "a.parquet", np.zeros((2, 3)), split="t", run="r", checkpoint="a")
    write_logits(tmp_path / "b.parquet", np.zeros((2, 4)), split="t", run="r", checkpoint="b")
    with pytest.raises(StoreError, match="disagree on the number of classes"):
        open_store(tmp_path)


def test_empty_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="holds no .parquet files"):
        open_store(tmp_path)
    with CheckpointWriter(tmp_path / "e.parquet", run="r", checkpoint="c", num_classes=3):
        pass
    with pytest.raises(StoreError, match="holds no rows"):
        open_store(tmp_path)


def test_example_store_matches_documented_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    store = open_store(REPO / "data_schema" / "example")
    doc = json.loads((REPO / "data_schema" / "arrow_schema.json").read_text())
    actual = arrow_schema(store.num_classes)
    assert [f["name"] for f in doc["fields"]] == actual.names
    for f, a in zip(doc["fields"], actual, strict=True):
        assert f["type"] == str(a.type).replace(f"[{store.num_classes}]", "[K]")
        assert f["nullable"] == a.nullable
    meta_schema = json.loads((REPO / "data_schema" / "metadata.schema.json").read_text())
    for path in store.files:
        assert pq.ParquetFile(path).schema_arrow.remove_metadata() == actual.remove_metadata()
        meta = json.loads(pq.ParquetFile(path).schema_arrow.metadata[METADATA_KEY])
        jsonschema.validate(meta, meta_schema)


def test_prefetch_yields_the_same_batches_and_stops_early(tmp_path: Path) -> None:
    z = np.random.default_rng(2).normal(size=(1000, 4)).astype(np.float32)
    write_logits(tmp_path / "p.parquet", z, split="train", run="r", checkpoint="c")
    store = open_store(tmp_path)
    plain = [b.logits for b in store.iter_batches("r", "c", "train", batch_rows=100)]
    fetched = [b.logits for b in store.prefetch_batches("r", "c", "train", batch_rows=100)]
    assert len(fetched) == len(plain) == 10
    for a, b in zip(plain, fetched, strict=True):
        np.testing.assert_array_equal(a, b)
    it = store.prefetch_batches("r", "c", "train", batch_rows=100)
    next(it)
    it.close()  # a consumer that stops early must not hang the reader thread


def test_prefetch_reraises_reader_errors(tmp_path: Path, monkeypatch) -> None:
    write_logits(tmp_path / "p.parquet", np.zeros((10, 3)), split="t", run="r", checkpoint="c")
    store = open_store(tmp_path)

    def broken(*args, **kwargs):
        yield from ()
        raise StoreError("disk on fire")

    monkeypatch.setattr(store, "iter_batches", broken)
    with pytest.raises(StoreError, match="disk on fire"):
        list(store.prefetch_batches("r", "c", "t"))


@pytest.mark.parametrize("where", ["open", "close"])
def test_a_writer_interrupted_while_opening_or_closing_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Outside the `with` block's own clean-up: an interrupted system call (a Ctrl-C or a
    # parallel dump's stop reaching the writer) while the Parquet file is opened, or while
    # its footer is written on close, once left a stray `.ep001.parquet.*.tmp` behind.
    from kdlens.store import writer as writer_mod

    class Interrupted(pq.ParquetWriter):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, **kw)  # type: ignore[arg-type]
            if where == "open":
                raise KeyboardInterrupt

        def close(self) -> None:
            super().close()
            if where == "close":
                raise KeyboardInterrupt

    monkeypatch.setattr(writer_mod.pq, "ParquetWriter", Interrupted)
    path = tmp_path / "ep001.parquet"
    with pytest.raises(KeyboardInterrupt):
        with CheckpointWriter(path, run="r", checkpoint="ep001", num_classes=3) as w:
            w.write(np.zeros((2, 3), np.float32), split="val", labels=np.zeros(2, np.int64))
    assert not list(tmp_path.iterdir())
