"""`kdlens distill`: offline students from stored logits, plain students, control stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from kdlens.cli import app  # noqa: E402
from kdlens.errors import InputError, StoreError  # noqa: E402
from kdlens.harness import RESULT_SCHEMA, DumpConfig, StudentConfig, distill, dump  # noqa: E402
from kdlens.store.reader import open_store  # noqa: E402
from kdlens.store.writer import CheckpointWriter  # noqa: E402

FAST = StudentConfig(hidden=(16,), epochs=60)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    dump(
        out,
        DumpConfig(
            hidden=(64,),
            batch_sizes=(64,),
            epochs=6,
            checkpoints=(1, 6),
            train_size=200,
            val_size=100,
            test_size=300,
            device="cpu",
            label_noise=0.1,
        ),
    )
    return out


def test_distill_one_checkpoint_writes_students_and_results(teacher: Path, tmp_path: Path) -> None:
    df = distill(teacher, tmp_path, checkpoint="ep006", seeds=(0, 1), student=FAST)
    assert df.schema == pl.Schema(RESULT_SCHEMA)
    assert df["run"].to_list() == ["bs64-seed0"] * 2 and df["seed"].to_list() == [0, 1]
    assert df["epoch"].to_list() == [6, 6] and df["batch_size"].to_list() == [64, 64]
    assert df["n_train"].to_list() == [200, 200] and df["n_test"].to_list() == [300, 300]
    assert (df["student_test_acc"] > 0.6).all()
    assert df["teacher_test_acc"][0] > 0.6
    # each student's test logits are a store whose accuracy matches the table
    st = open_store(tmp_path / "logits")
    assert st.keys() == [
        ("student-bs64-seed0-ep006", "seed0"),
        ("student-bs64-seed0-ep006", "seed1"),
    ]
    b = st.load("student-bs64-seed0-ep006", "seed1", "test")
    assert float((b.logits.argmax(1) == b.labels).mean()) == pytest.approx(
        df["student_test_acc"][1]
    )
    cfg = st.checkpoint_metadata("student-bs64-seed0-ep006", "seed0")["config"]
    assert (
        cfg["teacher_checkpoint"] == "ep006" and cfg["temperature"] == 4.0 and cfg["alpha"] == 0.9
    )
    assert pl.read_parquet(tmp_path / "results.parquet").height == 2
    # a second call adds rows; the same key replaces
    distill(teacher, tmp_path, checkpoint="ep001", seeds=(0,), student=FAST)
    distill(teacher, tmp_path, checkpoint="ep006", seeds=(0,), student=FAST)
    assert pl.read_parquet(tmp_path / "results.parquet").height == 3


def test_students_are_deterministic_and_depend_on_the_teacher(teacher: Path) -> None:
    a = distill(teacher, checkpoint="ep006", seeds=(0,), student=FAST, alpha=1.0)
    b = distill(teacher, checkpoint="ep006", seeds=(0,), student=FAST, alpha=1.0)
    c = distill(teacher, checkpoint="ep001", seeds=(0,), student=FAST, alpha=1.0)
    assert a["student_test_nll"][0] == b["student_test_nll"][0]
    assert a["student_test_nll"][0] != c["student_test_nll"][0]


def test_plain_students_ignore_the_teacher(teacher: Path) -> None:
    p = distill(teacher, plain=True, seeds=(0, 1), student=FAST)
    assert p["run"].to_list() == [None, None] and p["alpha"].to_list() == [0.0, 0.0]
    assert p["plain"].all()
    # alpha = 0 with a teacher trains exactly the plain student
    q = distill(teacher, checkpoint="ep001", seeds=(0,), student=FAST, alpha=0.0)
    # (equal up to float rounding: seeds 0 and 1 trained side by side vs seed 0 alone)
    assert q["student_test_nll"][0] == pytest.approx(p["student_test_nll"][0], abs=1e-6)


def test_side_by_side_students_equal_students_trained_alone(teacher: Path) -> None:
    together = distill(teacher, checkpoint="ep006", seeds=(0, 1, 2), student=FAST)
    # batch_size >= n is also full batch, but goes through the one-student-at-a-time loop
    alone_cfg = StudentConfig(hidden=FAST.hidden, epochs=FAST.epochs, batch_size=10**6)
    alone = distill(teacher, checkpoint="ep006", seeds=(0, 1, 2), student=alone_cfg)
    np.testing.assert_allclose(
        together["student_test_nll"].to_numpy(), alone["student_test_nll"].to_numpy(), atol=1e-5
    )


def test_control_teacher_store_is_accepted(teacher: Path, tmp_path: Path) -> None:
    """An LS-equivalent control written as an ordinary store (run '<run>+ls')."""
    st = open_store(teacher)
    md = st.checkpoint_metadata("bs64-seed0", "ep006")
    path = tmp_path / "controls" / "ls.parquet"
    with CheckpointWriter(
        path,
        run="bs64-seed0+ls",
        checkpoint="ep006",
        num_classes=10,
        epoch=6,
        batch_size=64,
        dataset=md["dataset"],
        config=md["config"],
    ) as w:
        for split in ("train", "test"):
            b = st.load("bs64-seed0", "ep006", split)
            z = np.zeros_like(b.logits)
            z[np.arange(len(z)), b.labels] = 3.0  # uniform non-target mass
            w.write(z, split=split, labels=b.labels, example_ids=b.example_ids)
    df = distill(path, checkpoint="ep006", seeds=(0,), student=FAST)
    assert df["run"][0] == "bs64-seed0+ls" and df["student_run"][0] == "student-bs64-seed0+ls-ep006"
    assert df["student_test_acc"][0] > 0.5


def test_all_checkpoints_and_bad_inputs(teacher: Path) -> None:
    df = distill(teacher, all_checkpoints=True, seeds=(0,), student=StudentConfig(epochs=5))
    assert df["checkpoint"].to_list() == ["ep001", "ep006"]
    with pytest.raises(InputError, match="no checkpoint 'ep999'.*ep001, ep006"):
        distill(teacher, checkpoint="ep999")
    with pytest.raises(InputError, match="say which teacher"):
        distill(teacher)
    with pytest.raises(InputError, match="alpha"):
        distill(teacher, checkpoint="ep001", alpha=1.5)
    with pytest.raises(InputError, match="example ids run"):
        distill(
            teacher,
            checkpoint="ep001",
            seeds=(0,),
            student=FAST,
            dataset=f"npz:{_small_npz(teacher.parent)}",
        )
    with pytest.raises(StoreError):
        distill(teacher / "nope", checkpoint="ep001")


def _small_npz(d: Path) -> Path:
    p = d / "small.npz"
    np.savez(p, X=np.zeros((20, 64), np.float32), y=np.arange(20) % 10)
    return p


def test_cli_distill_and_plain(teacher: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "distill",
            str(teacher),
            "--checkpoint",
            "ep006",
            "--seeds",
            "0",
            "--student-epochs",
            "30",
            "-o",
            str(tmp_path),
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "bs64-seed0" in r.output and "student acc" in r.output
    r = runner.invoke(
        app,
        [
            "distill",
            str(teacher),
            "--plain",
            "--seeds",
            "0,1",
            "--student-epochs",
            "30",
            "-o",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "(none)" in r.output
    assert pl.read_parquet(tmp_path / "results.parquet").height == 3
    r = runner.invoke(app, ["distill", str(teacher), "--checkpoint", "nope", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "no checkpoint 'nope'" in r.output


def test_distill_refuses_a_run_name_that_would_climb_out_of_out(
    teacher: Path, tmp_path: Path
) -> None:
    # A store someone else wrote: its `run` column holds a path that leaves OUT.
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = next(teacher.rglob("ep006.parquet"))
    table = pq.read_table(src)
    hostile = "x/../../../../ESCAPE"
    table = table.set_column(
        table.schema.get_field_index("run"),
        table.schema.field("run"),
        pa.array([hostile] * table.num_rows, pa.string()),
    )
    store = tmp_path / "a" / "store"
    store.mkdir(parents=True)
    pq.write_table(table, store / "f.parquet")
    out = tmp_path / "a" / "b" / "c" / "d" / "out"
    res = CliRunner().invoke(
        app,
        ["distill", str(store), "--checkpoint", "ep006", "-o", str(out)]
        + ["--seeds", "0", "--student-epochs", "2"],
    )
    assert "Traceback" not in res.output
    assert res.exit_code == 2, res.output
    assert "cannot name a file" in res.output and "ESCAPE" in res.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "f.parquet", "store"]


def test_logits_writer_refuses_names_that_are_not_file_names(tmp_path: Path) -> None:
    from kdlens.harness.writer import LogitsWriter

    with pytest.raises(InputError, match="cannot name a file"):
        LogitsWriter(tmp_path, run="..", num_classes=3)
    w = LogitsWriter(tmp_path, run="r", num_classes=3)
    for bad in ("../x", "a/b", ".hidden"):
        with pytest.raises(InputError, match="cannot name a file"):
            w.path(bad, "test")
    with pytest.raises(InputError, match="`split`"):
        w.path("ep1", "../test")
    assert list(tmp_path.iterdir()) == []
