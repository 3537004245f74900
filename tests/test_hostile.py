"""Hostile names, metadata, labels and arrays (issue 10, part A): one clear line, exit 2,
nothing written outside the output, nothing changed on failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kdlens import StoreError, open_store, write_logits
from kdlens._internal.atomic import staged_dir
from kdlens._internal.names import MAX_NAME_BYTES, path_component
from kdlens.cli import app
from kdlens.errors import InputError
from kdlens.store.format import METADATA_KEY, arrow_schema

runner = CliRunner()

BAD_NAMES = [
    "",
    ".",
    "..",
    ".hidden",
    "a/b",
    "a\\b",
    "x/../../../../ESCAPE",
    "../../x",
    "a\x00b",
    "a\nb",
    "\x1b[31mred",
    "a\udcffb",
    "a" * (MAX_NAME_BYTES + 1),
    "é" * (MAX_NAME_BYTES // 2 + 1),
]
GOOD_NAMES = ["ep001", "bs64-seed0+permuted", "a..b", "x y", "é" * (MAX_NAME_BYTES // 2)]


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: what a failed command must not change."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _ok_store(path: Path, *, k: int = 4, n: int = 30, run: str = "r", ck: str = "c") -> Path:
    rng = np.random.default_rng(0)
    for split in ("test",):
        write_logits(
            path / run / f"{ck}.parquet",
            rng.normal(size=(n, k)).astype(np.float32),
            split=split,
            run=run,
            checkpoint=ck,
            labels=rng.integers(0, k, n),
        )
    return path


def _raw_file(
    path: Path,
    *,
    k: int = 4,
    n: int = 30,
    run: str = "r",
    ck: str = "c",
    labels: np.ndarray | None = None,
    logits: np.ndarray | None = None,
    meta: bytes | None = None,
    split: str = "test",
) -> Path:
    """A Parquet file written by pyarrow directly: whatever a hostile producer likes."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(n, k)).astype(np.float32) if logits is None else logits
    y = rng.integers(0, k, n) if labels is None else labels
    schema = arrow_schema(k)
    if meta is not None:
        schema = schema.with_metadata({METADATA_KEY: meta})
    table = pa.Table.from_arrays(
        [
            pa.array([run] * n),
            pa.array([ck] * n),
            pa.nulls(n, pa.int32()),
            pa.nulls(n, pa.int64()),
            pa.nulls(n, pa.int32()),
            pa.array([split] * n),
            pa.array(np.arange(n, dtype=np.int64)),
            pa.array(np.asarray(y, dtype=np.int32)),
            pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1), pa.float32()), k),
        ],
        schema=schema,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _no_traceback(res: object) -> None:
    out = getattr(res, "output", "") + (getattr(res, "stderr", "") or "")
    assert "Traceback" not in out
    exc = getattr(res, "exception", None)
    assert exc is None or isinstance(exc, SystemExit), repr(exc)


# ------------------------------------------------------------------ names never become paths


@pytest.mark.parametrize("name", BAD_NAMES)
def test_path_component_refuses_bad_names(name: str) -> None:
    with pytest.raises(InputError, match="`checkpoint`"):
        path_component(name, field="checkpoint")


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_path_component_keeps_good_names(name: str) -> None:
    assert path_component(name, field="run") == name


@pytest.mark.parametrize(
    "opt", [["--run", "../../x"], ["--checkpoint", "../../../x"], ["--run", "a/b"]]
)
def test_import_names_from_the_command_line_cannot_escape(tmp_path: Path, opt: list[str]) -> None:
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    np.save(work / "in.npy", np.random.default_rng(0).normal(size=(10, 3)))
    before = _tree(tmp_path)
    res = runner.invoke(
        app, ["import", str(work / "in.npy"), "-o", str(work / "out"), "--kind", "logits", *opt]
    )
    _no_traceback(res)
    assert res.exit_code == 2, res.output
    assert "cannot name a file" in res.output
    assert _tree(tmp_path) == before
    assert not (work / "out").exists()


def test_controls_refuse_a_hostile_run_name_from_data(tmp_path: Path) -> None:
    _raw_file(tmp_path / "store" / "f.parquet", run="x/../../../../ESCAPE")
    out = tmp_path / "deep" / "er" / "out"
    res = runner.invoke(
        app, ["controls", str(tmp_path / "store"), "--kind", "permuted", "-o", str(out)]
    )
    _no_traceback(res)
    assert res.exit_code == 2, res.output
    assert "`run`" in res.output or "--run" in res.output or "run" in res.output
    assert not (tmp_path / "deep").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_store_writer_refuses_names_no_command_could_read_back(tmp_path: Path) -> None:
    for run, ck in (("a/b", "c"), ("r", "..")):
        with pytest.raises(InputError, match="cannot name a file"):
            write_logits(
                tmp_path / "x.parquet", np.zeros((2, 3)), split="test", run=run, checkpoint=ck
            )
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ transactions


def _corrupt_npz(path: Path) -> Path:
    path.write_bytes(b"PK\x03\x04 this is not a zip file at all")
    return path


def test_import_overwrite_failing_later_input_leaves_the_old_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "good.npy", rng.normal(size=(10, 3)).astype(np.float32))
    np.save(tmp_path / "f64.npy", rng.normal(size=(10, 3)))
    out = tmp_path / "imported"
    res = runner.invoke(
        app,
        ["import", str(tmp_path / "good.npy"), str(tmp_path / "f64.npy"), "-o", str(out)]
        + ["--kind", "logits"],
    )
    assert res.exit_code == 0, res.output
    before = _tree(tmp_path)
    bad = _corrupt_npz(tmp_path / "bad.npz")
    before[bad.name] = bad.read_bytes()
    res = runner.invoke(
        app,
        ["import", str(tmp_path / "good.npy"), str(bad), "-o", str(out), "--kind", "logits"]
        + ["--run", "imported", "--overwrite"],
    )
    _no_traceback(res)
    assert res.exit_code == 2, res.output
    assert "bad.npz" in res.output
    assert _tree(tmp_path) == before  # old store untouched, nothing staged left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.npz",
        "f64.npy",
        "good.npy",
        "imported",
    ]


def test_import_failure_into_a_new_nested_directory_leaves_nothing(tmp_path: Path) -> None:
    np.save(tmp_path / "good.npy", np.zeros((4, 3), np.float32))
    bad = _corrupt_npz(tmp_path / "bad.npz")
    res = runner.invoke(
        app,
        ["import", str(tmp_path / "good.npy"), str(bad), "-o", str(tmp_path / "n" / "e" / "w")]
        + ["--kind", "logits"],
    )
    assert res.exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "good.npy"]


def test_import_overwrite_replaces_its_checkpoints_and_keeps_other_runs(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((4, 3), np.float32))
    np.save(tmp_path / "b.npy", np.ones((4, 3), np.float32))
    out = tmp_path / "s"
    for run, f in (("one", "a.npy"), ("two", "a.npy")):
        args = ["import", str(tmp_path / f), "-o", str(out), "--kind", "logits", "--run", run]
        assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    args = ["import", str(tmp_path / "b.npy"), "-o", str(out), "--kind", "logits"]
    res = runner.invoke(app, [*args, "--run", "two", "--checkpoint", "a", "--overwrite"])
    assert res.exit_code == 0, res.output
    st = open_store(out)
    assert st.keys() == [("one", "a"), ("two", "a")]
    assert float(st.load("two", "a", "test").logits.mean()) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npy", "s"]


def test_staged_dir_swaps_in_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "p" / "q"
    with pytest.raises(RuntimeError), staged_dir(target) as stage:
        (stage / "f").write_text("x")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with staged_dir(target) as stage:
        (stage / "f").write_text("x")
        assert not target.exists()
    assert (target / "f").read_text() == "x"
    with staged_dir(target, remove=("g", "f")) as stage:
        (stage / "g").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["g"]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["q"]


def test_reanalysis_drops_a_stale_examples_file(tmp_path: Path) -> None:
    a = _ok_store(tmp_path / "a")
    b = _ok_store(tmp_path / "b", run="other")
    out = tmp_path / "out"
    res = runner.invoke(app, ["analyze", str(a), "-o", str(out), "--per-example", "-q"])
    assert res.exit_code == 0, res.output
    (out / "notes.txt").write_text("mine")
    assert (out / "examples.parquet").is_file()
    res = runner.invoke(app, ["analyze", str(b), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert not (out / "examples.parquet").exists()
    assert (out / "notes.txt").read_text() == "mine"  # files kdlens did not write stay
    import polars as pl

    assert pl.read_parquet(out / "summary.parquet")["run"].unique().to_list() == ["other"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]


def test_failed_analysis_leaves_the_output_directory_as_it_was(tmp_path: Path) -> None:
    a = _ok_store(tmp_path / "a")
    out = tmp_path / "out"
    assert (
        runner.invoke(app, ["analyze", str(a), "-o", str(out), "--per-example", "-q"]).exit_code
        == 0
    )
    before = _tree(out)
    z = np.zeros((30, 4), np.float32)
    z[3, 1] = np.nan
    bad = _raw_file(tmp_path / "bad" / "f.parquet", logits=z)
    res = runner.invoke(app, ["analyze", str(bad), "-o", str(out), "--per-example", "-q"])
    assert res.exit_code == 2, res.output
    assert _tree(out) == before
    res = runner.invoke(app, ["analyze", str(bad), "-o", str(tmp_path / "new" / "o"), "-q"])
    assert res.exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "bad", "out"]


# ------------------------------------------------------------------ metadata of the wrong shape

BAD_META = [
    (b"[1,2,3]", "not a JSON object"),
    (b'{"num_classes": "abc"}', "num_classes"),
    (b'{"num_classes": true}', "num_classes"),
    (b'{"class_names": 5}', "class_names"),
    (b'{"class_names": [1, 2, 3, 4]}', "class_names"),
    (b'{"config": [1]}', "config"),
    (b'{"format_version": 1}', "format_version"),
    (b'{"dataset": {"a": 1}}', "dataset"),
    (b"[" * 100_000 + b"]" * 100_000, "nested"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
]


def _meta(extra: bytes) -> bytes:
    base = {
        "format_version": "1.0",
        "num_classes": 4,
        "producer": "test",
        "producer_version": "0",
        "class_names": None,
        "config": {},
    }
    try:
        patch = json.loads(extra)
    except (ValueError, RecursionError):
        return extra
    if not isinstance(patch, dict):
        return extra
    return json.dumps({**base, **patch}).encode()


@pytest.mark.parametrize(
    ("raw", "field"), BAD_META, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_META)]
)
def test_metadata_of_the_wrong_shape_is_one_store_error(
    tmp_path: Path, raw: bytes, field: str
) -> None:
    f = _raw_file(tmp_path / "s" / "f.parquet", meta=_meta(raw))
    with pytest.raises(StoreError) as err:
        open_store(f)
    assert str(f) in str(err.value) and field in str(err.value)
    for cmd in (["validate"], ["analyze", "-o", str(tmp_path / "o"), "-q"], ["recommend"]):
        res = runner.invoke(app, [cmd[0], str(f), *cmd[1:]])
        _no_traceback(res)
        assert res.exit_code == 2, (cmd, res.output)
        assert "f.parquet" in res.output


def test_validate_reports_bad_metadata_beside_good_files(tmp_path: Path) -> None:
    _ok_store(tmp_path / "s")
    _raw_file(tmp_path / "s" / "z" / "bad.parquet", meta=_meta(b'{"num_classes": "abc"}'))
    res = runner.invoke(app, ["validate", str(tmp_path / "s")])
    _no_traceback(res)
    assert res.exit_code == 1, res.output
    assert "bad.parquet" in res.output and "num_classes" in res.output


# ------------------------------------------------------------------ labels outside [0, K)


@pytest.mark.parametrize("label", [4, 99, -5])
def test_labels_outside_range_are_refused_by_analyze_and_controls(
    tmp_path: Path, label: int
) -> None:
    y = np.zeros(30, np.int64)
    y[7] = label
    _raw_file(tmp_path / "s" / "a.parquet", ck="a", k=4)  # a good checkpoint read first
    _raw_file(tmp_path / "s" / "f.parquet", labels=y, k=4)
    f = tmp_path / "s"
    for cmd in (
        ["analyze", str(f), "-o", str(tmp_path / "o"), "-q"],
        ["controls", str(f), "--kind", "ls", "-o", str(tmp_path / "c")],
        ["controls", str(f), "--kind", "class-mean", "-o", str(tmp_path / "c")],
        ["recommend", str(f)],
    ):
        res = runner.invoke(app, cmd)
        _no_traceback(res)
        assert res.exit_code == 2, (cmd, res.output)
        assert "f.parquet" in res.output and "example_id 7" in res.output, res.output
        assert "run 'r' checkpoint 'c' split 'test'" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


# ------------------------------------------------------------------ import writes valid stores


def test_import_refuses_what_validate_would_reject(tmp_path: Path) -> None:
    z = np.random.default_rng(0).normal(size=(10, 3))
    nan = z.copy()
    nan[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    big = z.copy()
    big[4, 0] = 1e300
    np.save(tmp_path / "big.npy", big)
    np.save(tmp_path / "k3.npy", z)
    np.save(tmp_path / "k5.npy", np.zeros((10, 5)))
    cases = {
        "nan.npy": [tmp_path / "nan.npy"],
        "big.npy": [tmp_path / "big.npy"],
        "k5.npy": [tmp_path / "k3.npy", tmp_path / "k5.npy"],
    }
    for name, files in cases.items():
        out = tmp_path / f"out-{name}"
        args = ["import", *map(str, files), "-o", str(out), "--kind", "logits"]
        res = runner.invoke(app, args)
        _no_traceback(res)
        assert res.exit_code == 2, (name, res.output)
        assert name in res.output, res.output
        assert not out.exists()


def test_import_refuses_a_k_that_differs_from_the_store_it_adds_to(tmp_path: Path) -> None:
    np.save(tmp_path / "k3.npy", np.zeros((10, 3)))
    np.save(tmp_path / "k5.npy", np.zeros((10, 5)))
    out = tmp_path / "s"
    res = runner.invoke(
        app, ["import", str(tmp_path / "k3.npy"), "-o", str(out), "--kind", "logits"]
    )
    assert res.exit_code == 0
    before = _tree(out)
    res = runner.invoke(
        app,
        ["import", str(tmp_path / "k5.npy"), "-o", str(out), "--kind", "logits", "--run", "b"]
        + ["--overwrite"],
    )
    assert res.exit_code == 2, res.output
    assert "K" in res.output
    assert _tree(out) == before


# ------------------------------------------------------------------ recommend refuses like analyze


def test_recommend_refuses_nan_logits_like_analyze(tmp_path: Path) -> None:
    _ok_store(tmp_path / "s", ck="good")
    z = np.random.default_rng(3).normal(size=(30, 4)).astype(np.float32)
    z[5, 2] = np.nan
    _raw_file(tmp_path / "s" / "r" / "nan.parquet", ck="nan", logits=z)
    outs = {}
    for cmd in (["analyze", "-o", str(tmp_path / "o"), "-q"], ["recommend"]):
        res = runner.invoke(app, [cmd[0], str(tmp_path / "s"), *cmd[1:]])
        _no_traceback(res)
        outs[cmd[0]] = res
        assert res.exit_code == 2, (cmd, res.output)
        assert "NaN/Inf" in res.output and "example_id 5" in res.output, res.output


# ------------------------------------------------------------------ malformed side files


def test_malformed_classes_json_and_empty_npy_name_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "in.npy", np.zeros((4, 3)))
    (tmp_path / "classes.json").write_text('["a", "b",')
    res = runner.invoke(
        app,
        ["import", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o"), "--kind", "logits"]
        + ["--classes", str(tmp_path / "classes.json")],
    )
    _no_traceback(res)
    assert res.exit_code == 2 and "classes.json" in res.output, res.output
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "labels.npy").write_bytes(b"\x93NUMPY garbage")
    for args in (
        [str(tmp_path / "empty.npy")],
        [str(tmp_path / "in.npy"), "--labels", str(tmp_path / "labels.npy")],
    ):
        res = runner.invoke(app, ["import", *args, "-o", str(tmp_path / "o"), "--kind", "logits"])
        _no_traceback(res)
        assert res.exit_code == 2, res.output
        assert Path(args[-1]).name in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_staged_dir_stages_inside_a_target_whose_parent_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    target = tmp_path / "ro" / "out"
    target.mkdir(parents=True)
    (target / "keep").write_text("k")
    real = tempfile.mkdtemp

    def mkdtemp(**kw: str) -> str:  # the parent refuses new entries, as `chmod 555` would
        if Path(kw["dir"]) == target.parent:
            raise PermissionError(13, "Permission denied", kw["dir"])
        return real(**kw)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    with staged_dir(target) as stage:
        assert stage.parent == target and stage.name.startswith(".")
        (stage / "f").write_text("x")
    assert sorted(p.name for p in target.iterdir()) == ["f", "keep"]


def test_a_store_skips_files_under_dot_directories(tmp_path: Path) -> None:
    _ok_store(tmp_path / "s")
    _ok_store(tmp_path / "s" / ".stage", run="hidden")
    assert open_store(tmp_path / "s").keys() == [("r", "c")]


@pytest.mark.parametrize("command", ["analyze", "recommend", "report", "graph"])
def test_a_corrupt_data_page_is_bad_input_naming_the_file(tmp_path: Path, command: str) -> None:
    # The footer is intact, so the store opens; the page fails only when decoded. pyarrow
    # raises that as an OSError without errno: it must be exit 2 naming the file, not 3.
    store = tmp_path / "store"
    rng = np.random.default_rng(0)
    for ck in ("ep1", "ep2"):
        z = rng.normal(size=(64, 3)).astype(np.float32)
        y = rng.integers(0, 3, 64)
        write_logits(store / f"{ck}.parquet", z, split="train", run="r", checkpoint=ck, labels=y)
    victim = next(store.rglob("ep2*.parquet"))
    raw = bytearray(victim.read_bytes())
    for i in range(40, min(len(raw) - 64, 600)):
        raw[i] = (raw[i] * 7 + 13) % 256
    victim.write_bytes(bytes(raw))
    out = tmp_path / ("out.json" if command == "graph" else "out")
    args = {
        "analyze": [str(store), "-o", str(out)],
        "recommend": [str(store)],
        "report": [str(store), "-o", str(tmp_path / "r.html")],
        "graph": [
            str(store),
            "--run",
            "r",
            "--checkpoint",
            "ep2",
            "--split",
            "train",
            "-o",
            str(out),
        ],
    }[command]
    res = runner.invoke(app, [command, *args])
    assert res.exit_code == 2, res.output
    assert str(victim) in res.output and "data unreadable" in res.output
    assert not out.exists() and not (tmp_path / "r.html").exists()
