"""`kdlens import` of `.safetensors` tensors and Arrow / Parquet tables (Hugging Face formats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.errors import InputError
from kdlens.store.importing import import_files
from kdlens.store.reader import open_store
from tests.inputs import random_teacher

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _one(out: Path, split: str = "test") -> object:
    st = open_store(out)
    ((run, ck),) = st.keys()
    return st.load(run, ck, split)


def test_safetensors_round_trip_with_key_rule_and_kinds(tmp_path: Path) -> None:
    z, y = random_teacher(40, 5, seed=1)
    f = tmp_path / "ep3.safetensors"
    safetensors_numpy.save_file({"logits": z, "labels": y, "hidden": z[:, :4].copy()}, str(f))
    r = CliRunner().invoke(app, ["import", str(f), "--kind", "logits", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    got = _one(tmp_path / "a")
    assert np.array_equal(got.logits, z) and np.array_equal(got.labels, y)  # type: ignore[attr-defined]
    # No known name and two 2-D tensors: the key is asked for, then used.
    g = tmp_path / "out.safetensors"
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    safetensors_numpy.save_file({"a": p.astype(np.float32), "b": z[:, :4].copy()}, str(g))
    with pytest.raises(InputError, match="cannot tell which array holds the outputs.*pass `key`"):
        import_files([g], tmp_path / "b", kind="probs")
    import_files([g], tmp_path / "b", kind="probs", key="a")
    got = _one(tmp_path / "b")
    assert np.allclose(got.logits, np.log(p), atol=1e-5)  # type: ignore[attr-defined]
    assert not any((tmp_path / "b").rglob("*.tmp*"))


def test_safetensors_bfloat16_is_read_through_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    z = torch.randn(12, 3).bfloat16()
    f = tmp_path / "bf.safetensors"
    save_file({"logits": z}, str(f))
    import_files([f], tmp_path / "o", kind="logits")
    assert np.array_equal(_one(tmp_path / "o").logits, z.float().numpy())  # type: ignore[attr-defined]


def _hf_table(n: int = 30, k: int = 4, *, list_type: pa.DataType | None = None) -> pa.Table:
    """What a `datasets` table of predictions looks like: text, label, id, a logits list."""
    z, y = random_teacher(n, k, seed=2)
    lt = list_type or pa.list_(pa.float32())
    return pa.table(
        {
            "text": [f"sentence {i}" for i in range(n)],
            "label": pa.array(y, pa.int64()),
            "idx": pa.array(np.arange(1000, 1000 + n), pa.int64()),
            "logits": pa.array(list(z), lt),
            "input_ids": pa.array([list(range(i % 5 + 1)) for i in range(n)]),  # ragged
        }
    )


def _write_arrow(t: pa.Table, path: Path, *, stream: bool) -> Path:
    with pa.OSFile(str(path), "wb") as f:
        opener = pa.ipc.new_stream if stream else pa.ipc.new_file
        with opener(f, t.schema) as w:
            for batch in t.to_batches(max_chunksize=7):  # several chunks, as datasets writes
                w.write_batch(batch)
    return path


@pytest.mark.parametrize("form", ["stream", "file", "parquet", "fixed-size"])
def test_arrow_and_parquet_tables_round_trip(tmp_path: Path, form: str) -> None:
    lt = pa.list_(pa.float32(), 4) if form == "fixed-size" else None
    t = _hf_table(list_type=lt)
    if form == "parquet":
        f = tmp_path / "preds.parquet"
        pq.write_table(t, f, row_group_size=8)
    else:
        f = _write_arrow(t, tmp_path / "data-00000-of-00001.arrow", stream=form != "file")
    r = CliRunner().invoke(
        app,
        ["import", str(f), "--kind", "logits", "--id-column", "idx", "--split", "val"]
        + ["--checkpoint", "ep1", "-o", str(tmp_path / "o"), "--quiet"],
    )
    assert r.exit_code == 0, r.output
    got = _one(tmp_path / "o", "val")
    want = np.stack(t.column("logits").to_pylist()).astype(np.float32)
    assert np.array_equal(got.logits, want)  # type: ignore[attr-defined]
    assert got.labels.tolist() == t.column("label").to_pylist()  # type: ignore[attr-defined]
    assert got.example_ids.tolist() == list(range(1000, 1030))  # type: ignore[attr-defined]
    assert CliRunner().invoke(app, ["validate", str(tmp_path / "o"), "-q"]).exit_code == 0


def test_a_save_to_disk_directory_is_one_table_of_its_shards(tmp_path: Path) -> None:
    t = _hf_table()
    shards = tmp_path / "preds"
    shards.mkdir()
    _write_arrow(t.slice(0, 12), shards / "data-00000-of-00002.arrow", stream=True)
    _write_arrow(t.slice(12), shards / "data-00001-of-00002.arrow", stream=True)
    (shards / "state.json").write_text("{}")  # what datasets writes beside them
    import_files([shards], tmp_path / "o", kind="logits", id_column="idx")
    got = _one(tmp_path / "o")
    assert got.example_ids.tolist() == list(range(1000, 1030))  # type: ignore[attr-defined]
    assert open_store(tmp_path / "o").keys() == [("imported", "preds")]
    _fails(tmp_path, [str(tmp_path / "o" / "imported")], "must hold .arrow shards")


def test_table_columns_named_by_key_and_labels(tmp_path: Path) -> None:
    t = _hf_table().rename_columns(["text", "gold", "idx", "scores", "input_ids"])
    f = tmp_path / "t.parquet"
    pq.write_table(t, f)
    import_files([f], tmp_path / "o", kind="logits", key="scores", labels="gold")
    assert _one(tmp_path / "o").labels.tolist() == t.column("gold").to_pylist()  # type: ignore[attr-defined]


def _fails(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "never"
    r = CliRunner().invoke(app, ["import", *args, "--kind", "logits", "-o", str(out)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.output
    assert not out.exists()


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    garbage = tmp_path / "x.safetensors"
    garbage.write_bytes(b"\x00" * 3 + b"not safetensors")
    _fails(tmp_path, [str(garbage)], "not a readable .safetensors file")
    bad_arrow = tmp_path / "x.arrow"
    bad_arrow.write_bytes(b"ARROW1 but not really")
    _fails(tmp_path, [str(bad_arrow)], "not a readable .arrow table")
    t = _hf_table()
    f = tmp_path / "t.parquet"
    pq.write_table(t, f)
    _fails(tmp_path, [str(f), "--key", "input_ids"], "column 'input_ids' (list<")
    _fails(tmp_path, [str(f), "--key", "nope"], "no column 'nope'")
    _fails(tmp_path, [str(f), "--id-column", "text"], "column 'text' (string) is neither")
    dup = t.set_column(2, "idx", pa.array(np.zeros(30, np.int64)))
    pq.write_table(dup, tmp_path / "dup.parquet")
    _fails(tmp_path, [str(tmp_path / "dup.parquet"), "--id-column", "idx"], "ids 'idx' repeat")
    holes = t.set_column(3, "logits", pa.array([None] + t.column("logits").to_pylist()[1:]))
    pq.write_table(holes, tmp_path / "holes.parquet")
    _fails(tmp_path, [str(tmp_path / "holes.parquet"), "--key", "logits"], "without nulls")
    np.save(tmp_path / "z.npy", random_teacher(5, 3)[0])
    _fails(tmp_path, [str(tmp_path / "z.npy"), "--id-column", "i"], "--id-column needs a keyed")
    pq.write_table(t.select(["text"]), tmp_path / "text.parquet")
    _fails(tmp_path, [str(tmp_path / "text.parquet")], "(columns: text (string))")
    pq.write_table(t.slice(0, 0), tmp_path / "empty.parquet")
    _fails(tmp_path, [str(tmp_path / "empty.parquet")], "the table has no rows")
    # A kdlens store's own Parquet file is not an input table.
    import_files([f], tmp_path / "store", kind="logits")
    (stored,) = (tmp_path / "store").rglob("*.parquet")
    _fails(tmp_path, [str(stored)], "is a kdlens store file already")
