"""`kdlens import` and `kdlens validate`: formats, bad input, exit codes, no partial output."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.special import softmax
from typer.testing import CliRunner

from kdlens import InputError, import_files, open_store, validate, write_logits
from kdlens.cli import app
from kdlens.store.format import arrow_schema

runner = CliRunner()


def _logits(n: int = 20, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)).astype(np.float32), rng.integers(0, k, n)


# ------------------------------------------------------------------ import: formats


def test_import_npz_several_files_become_checkpoints(tmp_path: Path) -> None:
    for i in range(3):
        z, y = _logits(seed=i)
        np.savez(tmp_path / f"model{i}.npz", logits=z, labels=y)
    out = tmp_path / "store"
    done = import_files(sorted(tmp_path.glob("*.npz")), out, kind="logits", run="zoo")
    assert [d.checkpoint for d in done] == ["model0", "model1", "model2"]
    store = open_store(out)
    assert store.keys() == [("zoo", "model0"), ("zoo", "model1"), ("zoo", "model2")]
    z, y = _logits(seed=1)
    b = store.load("zoo", "model1", "test")
    np.testing.assert_array_equal(b.logits, z)
    np.testing.assert_array_equal(b.labels, y)
    np.testing.assert_array_equal(b.example_ids, np.arange(20))


def test_import_probs_become_log_probs_with_stated_floor(tmp_path: Path) -> None:
    z, y = _logits()
    p = softmax(z.astype(np.float64), axis=1)
    p[0] = [1.0, 0.0, 0.0, 0.0]
    np.save(tmp_path / "p.npy", p)
    np.save(tmp_path / "y.npy", y)
    import_files(
        [tmp_path / "p.npy"],
        tmp_path / "s",
        kind="probs",
        labels=str(tmp_path / "y.npy"),
        prob_floor=1e-9,
    )
    store = open_store(tmp_path / "s")
    got = store.load("imported", "p", "test")
    assert np.isfinite(got.logits).all()
    np.testing.assert_allclose(got.logits[0, 1:], np.log(1e-9), rtol=1e-6)
    np.testing.assert_allclose(softmax(got.logits[1:].astype(np.float64), axis=1), p[1:], rtol=1e-5)
    assert store.checkpoint_metadata("imported", "p")["config"]["prob_floor"] == 1e-9


def test_import_log_probs_and_csv(tmp_path: Path) -> None:
    z, y = _logits()
    logp = z - np.log(np.exp(z.astype(np.float64)).sum(1, keepdims=True))
    lines = ["a,b,c,d,label"] + [
        ",".join(map(str, r)) + f",{lab}" for r, lab in zip(logp, y, strict=True)
    ]
    (tmp_path / "lp.csv").write_text("\n".join(lines))
    import_files([tmp_path / "lp.csv"], tmp_path / "s", kind="log-probs", labels="label")
    b = open_store(tmp_path / "s").load("imported", "lp", "test")
    np.testing.assert_allclose(b.logits, logp, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.labels, y)


def test_import_pt_tensors(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    z, y = _logits()
    torch.save({"logits": torch.from_numpy(z), "labels": torch.from_numpy(y)}, tmp_path / "m.pt")
    import_files([tmp_path / "m.pt"], tmp_path / "s", kind="logits")
    np.testing.assert_array_equal(
        open_store(tmp_path / "s").load("imported", "m", "test").labels, y
    )


class Evil:
    def __reduce__(self):  # would run a command if unpickled
        return (Path("/tmp/kdlens-pwned").write_text, ("pwned",))


def test_pt_holding_objects_is_refused_never_unpickled(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    with (tmp_path / "evil.pt").open("wb") as f:
        pickle.dump({"logits": Evil()}, f)
    Path("/tmp/kdlens-pwned").unlink(missing_ok=True)
    with pytest.raises(InputError, match="evil.pt: refused"):
        import_files([tmp_path / "evil.pt"], tmp_path / "s", kind="logits")
    assert not Path("/tmp/kdlens-pwned").exists()
    assert not (tmp_path / "s").exists()


def test_pt_holding_non_tensors_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"logits": [1, 2, 3]}, tmp_path / "list.pt")
    with pytest.raises(InputError, match="must hold a tensor or a dict of tensors"):
        import_files([tmp_path / "list.pt"], tmp_path / "s", kind="logits")


# ------------------------------------------------------------------ import: bad input


@pytest.mark.parametrize(
    ("arrays", "kwargs", "match"),
    [
        ({"foo": np.zeros((3, 4)), "bar": np.zeros((3, 4))}, {}, "cannot tell which array"),
        ({"logits": np.zeros((3, 4)), "labels": np.zeros(2)}, {}, "2 labels for 3 rows"),
        ({"logits": np.zeros((3, 4)), "labels": np.array([0, 1, 9])}, {}, "label 9 at row 2"),
        ({"logits": np.zeros(4)}, {}, r"expected an \(N, K\) array"),
        ({"logits": np.zeros((3, 4))}, {"key": "nope"}, "no array 'nope'"),
        ({"logits": np.zeros((3, 4))}, {"labels": "y"}, "no labels 'y'"),
    ],
)
def test_npz_bad_keys_and_shapes(tmp_path: Path, arrays: dict, kwargs: dict, match: str) -> None:
    np.savez(tmp_path / "in.npz", **arrays)
    with pytest.raises(InputError, match=match):
        import_files([tmp_path / "in.npz"], tmp_path / "s", kind="logits", **kwargs)
    assert not (tmp_path / "s").exists()


def test_probabilities_that_do_not_sum_to_one(tmp_path: Path) -> None:
    z, _ = _logits()
    np.save(tmp_path / "z.npy", z)
    with pytest.raises(InputError, match=r"z.npy: probabilities must lie in \[0, 1\]"):
        import_files([tmp_path / "z.npy"], tmp_path / "s", kind="probs")
    np.save(tmp_path / "p.npy", np.full((3, 4), 0.2))
    with pytest.raises(
        InputError, match=r"3 rows do not sum to 1 within 0.001 \(row 0 sums to 0.8"
    ):
        import_files([tmp_path / "p.npy"], tmp_path / "s", kind="probs")


def test_failed_import_leaves_no_output(tmp_path: Path) -> None:
    z, y = _logits()
    np.savez(tmp_path / "a.npz", logits=z, labels=y)
    np.savez(tmp_path / "b.npz", logits=z + 1, labels=y)
    np.savez(
        tmp_path / "c.npz", logits=z, labels=y + 10
    )  # fails after a.npz and b.npz were written
    with pytest.raises(InputError, match="c.npz: label"):
        import_files(
            [tmp_path / n for n in ("a.npz", "b.npz", "c.npz")], tmp_path / "s", kind="logits"
        )
    assert not (tmp_path / "s").exists()


def test_existing_output_refused_unless_overwrite(tmp_path: Path) -> None:
    z, y = _logits()
    np.savez(tmp_path / "a.npz", logits=z, labels=y)
    import_files([tmp_path / "a.npz"], tmp_path / "s", kind="logits")
    with pytest.raises(InputError, match="already exists"):
        import_files([tmp_path / "a.npz"], tmp_path / "s", kind="logits")
    import_files([tmp_path / "a.npz"], tmp_path / "s", kind="logits", overwrite=True)


def test_class_names_must_match_k(tmp_path: Path) -> None:
    z, y = _logits()
    np.savez(tmp_path / "a.npz", logits=z, labels=y)
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    with pytest.raises(InputError, match="3 class names but K=4"):
        import_files(
            [tmp_path / "a.npz"], tmp_path / "s", kind="logits", classes=tmp_path / "names.txt"
        )


# ------------------------------------------------------------------ validate


def _write_raw(path: Path, z: np.ndarray, ids, labels, *, checkpoint: str = "c") -> None:
    n, k = z.shape
    table = pa.Table.from_pydict(
        {
            "run": ["r"] * n,
            "checkpoint": [checkpoint] * n,
            "epoch": pa.nulls(n, pa.int32()),
            "step": pa.nulls(n, pa.int64()),
            "batch_size": pa.nulls(n, pa.int32()),
            "split": ["test"] * n,
            "example_id": pa.array(ids, pa.int64()),
            "label": pa.array(labels, pa.int32()),
            "logits": pa.FixedSizeListArray.from_arrays(pa.array(z.ravel(), pa.float32()), k),
        },
        schema=arrow_schema(k),
    )
    pq.write_table(table, path)


def test_validate_clean_store(tmp_path: Path) -> None:
    z, y = _logits()
    write_logits(tmp_path / "a.parquet", z, split="test", run="r", checkpoint="a", labels=y)
    write_logits(tmp_path / "b.parquet", z, split="test", run="r", checkpoint="b", labels=y)
    rep = validate(tmp_path)
    assert rep.ok and rep.exit_code == 0
    assert rep.num_classes == 4 and rep.checkpoints == 2 and rep.splits == {"test": 40}


def test_validate_reports_every_problem(tmp_path: Path) -> None:
    z = np.zeros((4, 3), np.float32)
    z[1, 2] = np.nan
    z[3, 0] = np.inf
    _write_raw(tmp_path / "a.parquet", z, [0, 1, 1, 7], [0, 1, 5, 2], checkpoint="a")
    _write_raw(
        tmp_path / "b.parquet",
        np.zeros((4, 3), np.float32),
        [0, 1, 2, 3],
        [0, 1, 2, 0],
        checkpoint="b",
    )
    rep = validate(tmp_path)
    text = "\n".join(rep.problems)
    assert rep.exit_code == 1
    assert "1 NaN and 1 Inf logits (first at example_id 1)" in text
    assert "1 labels outside [0, 3)" in text
    assert "1 duplicate example ids" in text
    assert "example ids differ from checkpoint" in text


def test_validate_inconsistent_k_and_class_names(tmp_path: Path) -> None:
    write_logits(
        tmp_path / "a.parquet",
        np.zeros((2, 3)),
        split="t",
        run="r",
        checkpoint="a",
        class_names=["x", "y", "z"],
    )
    write_logits(tmp_path / "b.parquet", np.zeros((2, 3)), split="t", run="r", checkpoint="b")
    write_logits(tmp_path / "c.parquet", np.zeros((2, 4)), split="t", run="r", checkpoint="c")
    rep = validate(tmp_path)
    assert any("inconsistent K" in p and "c.parquet (K=4)" in p for p in rep.problems)


def test_validate_exit_codes_through_cli(tmp_path: Path) -> None:
    z, y = _logits()
    write_logits(tmp_path / "ok" / "a.parquet", z, split="test", run="r", checkpoint="a", labels=y)
    res = runner.invoke(app, ["validate", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    assert "valid" in res.output
    res = runner.invoke(app, ["validate", str(tmp_path / "ok"), "--json"])
    rep = json.loads(res.output)
    assert rep["num_classes"] == 4 and rep["ok"] is True
    (tmp_path / "junk.parquet").write_text("not parquet")
    res = runner.invoke(app, ["validate", str(tmp_path / "junk.parquet")])
    assert res.exit_code == 2
    assert "not a readable Parquet file" in res.output
    bad = np.zeros((2, 4), np.float32)
    bad[0, 0] = np.nan
    write_logits(tmp_path / "nan" / "a.parquet", bad, split="test", run="r", checkpoint="a")
    res = runner.invoke(app, ["validate", str(tmp_path / "nan")])
    assert res.exit_code == 1 and "NaN" in res.output


def test_import_cli_one_line_error_and_exit_code(tmp_path: Path) -> None:
    z, _ = _logits()
    np.save(tmp_path / "z.npy", z)
    res = runner.invoke(
        app, ["import", str(tmp_path / "z.npy"), "-o", str(tmp_path / "s"), "--kind", "probs"]
    )
    assert res.exit_code == 2
    assert "z.npy" in res.output and "must lie in [0, 1]" in res.output
    assert not (tmp_path / "s").exists()
    res = runner.invoke(
        app,
        [
            "import",
            str(tmp_path / "z.npy"),
            "-o",
            str(tmp_path / "s"),
            "--kind",
            "logits",
            "--checkpoint",
            "mine",
        ],
    )
    assert res.exit_code == 0, res.output
    assert open_store(tmp_path / "s").keys() == [("imported", "mine")]


def test_import_real_cifar10_models_as_one_store(external_dir: Path, tmp_path: Path) -> None:
    files = sorted((external_dir / "wasscal_chenyaofo_logits" / "cifar10").glob("*.npz"))
    files = [f for f in files if not f.name.startswith("extra_")]
    assert len(files) == 19
    import_files(files, tmp_path / "c10", kind="logits", run="chenyaofo")
    rep = validate(tmp_path / "c10")
    assert rep.ok and rep.checkpoints == 19 and rep.splits == {"test": 190_000}
    b = open_store(tmp_path / "c10").load("chenyaofo", "resnet20", "test")
    assert abs(float((b.logits.argmax(1) == b.labels).mean()) - 0.9260) < 1e-4


def test_csv_without_header_keeps_every_row(tmp_path: Path) -> None:
    z, _ = _logits(n=7, k=3)
    np.savetxt(tmp_path / "raw.csv", z, delimiter=",")
    import_files([tmp_path / "raw.csv"], tmp_path / "s", kind="logits")
    b = open_store(tmp_path / "s").load("imported", "raw", "test")
    np.testing.assert_allclose(b.logits, z, rtol=1e-6)
    np.testing.assert_array_equal(b.example_ids, np.arange(7))


def test_csv_label_column_is_found_without_flag(tmp_path: Path) -> None:
    z, y = _logits(n=6, k=3)
    rows = ["a,b,c,label"] + [
        ",".join(map(str, r)) + f",{v}" for r, v in zip(z, y % 3, strict=True)
    ]
    (tmp_path / "l.csv").write_text("\n".join(rows))
    import_files([tmp_path / "l.csv"], tmp_path / "s", kind="logits")
    store = open_store(tmp_path / "s")
    assert store.num_classes == 3
    np.testing.assert_array_equal(store.load("imported", "l", "test").labels, y % 3)


def test_probabilities_imported_as_logits_warn(tmp_path: Path) -> None:
    z, _ = _logits()
    np.save(tmp_path / "p.npy", softmax(z.astype(np.float64), axis=1))
    with pytest.warns(UserWarning, match="look like probabilities; use `kind=probs`"):
        import_files([tmp_path / "p.npy"], tmp_path / "s", kind="logits")
    res = runner.invoke(
        app, ["import", str(tmp_path / "p.npy"), "-o", str(tmp_path / "t"), "--kind", "logits"]
    )
    assert res.exit_code == 0 and "warning:" in res.output


def test_validate_missing_path_prints_only_the_reason(tmp_path: Path) -> None:
    res = runner.invoke(app, ["validate", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "no such file or directory" in res.output and "classes (K)" not in res.output


def test_class_names_from_a_hierarchy_csv_in_id_order(tmp_path: Path) -> None:
    # The README's CIFAR-100 recipe names the graph's nodes from the fine-to-coarse CSV.
    from kdlens.store.importing import _read_classes

    csv = tmp_path / "h.csv"
    csv.write_text("fine_id,fine_name,coarse_id,coarse_name\n1,fish,0,animal\n0,apple,1,fruit\n")
    assert _read_classes(csv) == ["apple", "fish"]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="name column|needs a column"):
        _read_classes(bad)
