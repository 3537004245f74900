"""The engines of the pass give bit-identical results: local (in this process), a process
pool (--workers 2) and a Dask cluster of 2 worker processes, on a store whose parts are
split into several tasks of row groups, each of several batches."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from inputs import random_teacher
from typer.testing import CliRunner

import kdlens.analysis.executors as executors
import kdlens.analysis.tasks as tasks
from kdlens.analysis.tasks import plan_tasks
from kdlens.cli import app
from kdlens.store.reader import open_store
from kdlens.store.writer import CheckpointWriter

runner = CliRunner()
K = 10
#: Logits per task: two row groups of 200 rows, so every part of the store is 2 tasks.
SMALL_TASK = 200 * K * 2


def _write(path: Path, nan_at: int | None = None) -> Path:
    """3 checkpoints x (train, val), each split written as 3 row groups of 200 rows."""
    path.mkdir(parents=True, exist_ok=True)
    for ep in (1, 2, 3):
        with CheckpointWriter(
            path / f"ep{ep}.parquet", run="r", checkpoint=f"ep{ep}", num_classes=K, epoch=ep
        ) as w:
            for i, split in enumerate(("train", "val")):
                z, y = random_teacher(600, K, seed=10 * ep + i, scale=1.0 + ep)
                if nan_at is not None:
                    z[nan_at, 0] = np.nan
                ids = np.arange(600) + 10_000 * i
                for c in range(3):
                    s = slice(200 * c, 200 * (c + 1))
                    w.write(z[s], split=split, labels=y[s], example_ids=ids[s])
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("engines") / "store")


@pytest.fixture(autouse=True)
def small_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    # The plan is made in this process, so the workers receive these small tasks.
    monkeypatch.setattr(tasks, "TASK_ELEMENTS", SMALL_TASK)


@pytest.fixture(scope="module")
def cluster():
    """One Dask LocalCluster of 2 worker processes for the module, on 127.0.0.1 only."""
    distributed = pytest.importorskip("distributed")
    import logging

    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as c:
        assert c.scheduler_address.startswith("tcp://127.0.0.1:")
        yield c.scheduler_address


def test_the_plan_splits_every_part_into_consecutive_row_group_ranges(store: Path) -> None:
    st = open_store(store)
    parts = [[p] for p in st.parts]
    plan = plan_tasks(parts, K)
    assert len(plan) == 2 * len(parts)  # 3 row groups of 200 rows, 2 per task
    for i, (part,) in enumerate(parts):
        mine = [t for t in plan if t.index == i]
        assert [g for t in mine for g in t.row_groups] == list(part.row_groups)
        assert [len(t.row_groups) for t in mine] == [2, 1]
    assert len(plan_tasks(parts, K, max_elements=1)) == 3 * len(parts)  # one group at least


def _engines(address: str) -> list[list[str]]:
    return [[], ["--workers", "2"], ["--engine", "dask", "--scheduler", address]]


def _run(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.stdout


def test_analyze_and_recommend_are_bit_identical_on_every_engine(
    store: Path, cluster: str, tmp_path: Path
) -> None:
    analyses, recs = [], []
    for i, extra in enumerate(_engines(cluster)):
        out = tmp_path / f"a{i}"
        analyses.append(_run(["analyze", str(store), "-o", str(out), "--json", *extra]))
        recs.append(_run(["recommend", str(store), "--json", "-B", "20", *extra]))
        # The tables on disk too, compared exactly (every float of every table).
        assert all(
            (out / f).read_bytes() == (tmp_path / "a0" / f).read_bytes()
            for f in ("summary.parquet", "classes.parquet", "similarity.parquet")
        )
    assert analyses[0] == analyses[1] == analyses[2]
    assert recs[0] == recs[1] == recs[2]
    rows = json.loads(analyses[0])["rows"]
    assert len(rows) == 6 and all(r["n"] == 600 for r in rows)


def test_report_is_bit_identical_on_every_engine(store: Path, cluster: str, tmp_path: Path) -> None:
    pages = []
    for i, extra in enumerate(_engines(cluster)):
        out = tmp_path / f"r{i}.html"
        _run(["report", str(store), "-o", str(out), "-B", "10", "-q", *extra])
        # The page states when it was made (to the minute): the one part that may differ.
        pages.append(re.sub(rb"\d{4}-\d\d-\d\d \d\d:\d\d UTC", b"", out.read_bytes()))
    assert pages[0] == pages[1] == pages[2]


def test_a_task_split_does_not_change_the_results(store: Path, monkeypatch) -> None:
    """The local engine with one task per part agrees with two tasks per part to
    rounding (a merge order differs), and exactly on the counts."""
    from kdlens.analysis.engine import analyze

    two = analyze(store, n_permutations=0).summary
    monkeypatch.setattr(tasks, "TASK_ELEMENTS", 10**9)
    one = analyze(store, n_permutations=0).summary
    assert two["n"].to_list() == one["n"].to_list()
    np.testing.assert_allclose(two["dark_mass"], one["dark_mass"], rtol=1e-12)
    np.testing.assert_allclose(
        two["similarity_information"], one["similarity_information"], rtol=1e-9
    )


@pytest.mark.parametrize("extra", [[], ["--workers", "2"]], ids=["local", "workers2"])
def test_a_refusal_names_the_first_bad_row_whichever_task_finds_it(
    tmp_path: Path, extra: list[str]
) -> None:
    src = _write(tmp_path / "nan", nan_at=450)  # in the part's second task
    res = runner.invoke(app, ["analyze", str(src), "-o", str(tmp_path / "o"), "-q", *extra])
    assert res.exit_code == 2
    assert "3 rows hold NaN/Inf" not in res.stderr  # one row per part
    assert "1 rows hold NaN/Inf logits (first example_id 450)" in res.stderr


def test_an_unreachable_scheduler_is_one_line_and_exit_2(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("distributed")
    monkeypatch.setattr(executors, "DASK_CONNECT_TIMEOUT", 1.0)
    args = ["--engine", "dask", "--scheduler", "tcp://127.0.0.1:9"]  # the discard port
    res = runner.invoke(app, ["analyze", str(store), "-o", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--scheduler" in lines[0] and "tcp://127.0.0.1:9" in lines[0]
    assert "no Dask scheduler answered" in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--engine", "spark"], "--engine must be one of local, dask"),
        (["--scheduler", "tcp://127.0.0.1:9"], "needs --engine dask"),
        (["--engine", "dask", "--scheduler", "tcp://x:1", "--workers", "2"], "exclude"),
    ],
)
def test_bad_engine_options_are_refused_before_any_read(
    store: Path, tmp_path: Path, args: list[str], says: str
) -> None:
    res = runner.invoke(app, ["recommend", str(store), *args])
    assert res.exit_code == 2 and says in res.stderr, res.output


def test_dask_missing_is_a_clear_error(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    res = runner.invoke(app, ["recommend", str(store), "--engine", "dask"])
    assert res.exit_code == 2
    assert 'pip install "kdlens[dask]"' in res.stderr


@pytest.mark.parametrize("fail_at", [0, 1, 5])
def test_the_in_process_stream_raises_a_slot_failure_and_does_not_hang(
    store: Path, fail_at: int
) -> None:
    # A failure in either slot thread, in any task, reaches the caller (no thread waits
    # for a batch that never comes); the other slot's partials before it are complete.
    from kdlens.analysis.stream import stream_tasks

    st = open_store(store)
    plan = plan_tasks([[p] for p in st.parts], K, max_elements=200 * K)

    class Acc:
        seen = 0

        def __init__(self, task: tasks.Task) -> None:
            self.rows = 0

        def update(self, b) -> None:  # noqa: ANN001
            Acc.seen += 1
            if Acc.seen > fail_at:
                raise RuntimeError("boom")
            self.rows += len(b)

        def merge(self, other: Acc) -> Acc:
            self.rows += other.rows
            return self

    got = stream_tasks(plan, Acc, tasks.CheckOptions(), K, 100, lambda n: None)
    with pytest.raises(RuntimeError, match="boom"):
        for acc, stats in got:
            assert acc.rows == stats["rows"]  # every row of a finished task counted once
