"""The one error boundary: OS errors, Ctrl-C and locks end in one line and a documented code."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
from inputs import random_teacher
from typer.testing import CliRunner

from kdlens._internal.lock import lock_path, output_lock
from kdlens.cli import app
from kdlens.cli._app import handle_errors, os_error_line
from kdlens.errors import EXIT_CODES, LockedError
from kdlens.store.writer import write_logits

REPO = Path(__file__).resolve().parents[1]


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    for c in ("ep1", "ep2"):
        z, y = random_teacher(200, 6, seed=len(c))
        write_logits(
            tmp_path / "store" / "r" / f"{c}.parquet",
            z,
            split="test",
            run="r",
            checkpoint=c,
            labels=y,
        )
    np.save(tmp_path / "good.npy", z)
    return tmp_path / "store"


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---------------------------------------------------------------- OS errors


def test_every_documented_code_is_listed_in_the_module_docstring():
    import kdlens.errors

    for code in EXIT_CODES:
        assert f"\n{code} " in kdlens.errors.__doc__


@pytest.mark.parametrize(
    "code", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOENT]
)
def test_an_os_error_is_one_line_with_path_and_reason(code, capsys):
    @handle_errors
    def command(output: str = "x") -> None:
        raise OSError(code, os.strerror(code), "/some/where/file.parquet")

    with pytest.raises((SystemExit, typer.Exit)) as info:
        command()
    exit_code = getattr(info.value, "exit_code", getattr(info.value, "code", None))
    assert exit_code == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "/some/where/file.parquet" in err and os.strerror(code) in err
    assert errno.errorcode[code] in err


def test_os_error_line_without_a_path():
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device")) == (
        "No space left on device (ENOSPC)"
    )


def test_output_under_a_regular_file_is_exit_3(store, tmp_path):
    (tmp_path / "afile").write_text("keep")
    line = one_line_error(run("analyze", store, "-o", tmp_path / "afile" / "x", "-q"), 3)
    assert "afile" in line and "Not a directory" in line
    line = one_line_error(
        run("import", tmp_path / "good.npy", "--kind", "logits", "-o", tmp_path / "afile" / "s"), 3
    )
    assert "Not a directory" in line
    assert (tmp_path / "afile").read_text() == "keep"


def test_dump_into_a_regular_file_fails_at_once(tmp_path):
    (tmp_path / "afile").write_text("keep")
    t0 = time.perf_counter()
    line = one_line_error(run("dump", "-o", tmp_path / "afile", "--epochs", "1", "-q"), 3)
    assert time.perf_counter() - t0 < 20  # before any data is prepared or trained
    assert "afile" in line and "Not a directory" in line
    assert tree(tmp_path) == {"afile"}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_failing_write_leaves_no_directory_behind(store, tmp_path, monkeypatch, code):
    """Disk full / permission / read-only while writing: exit 3, the new directories gone."""
    import polars as pl

    def refuse(self, file, *a, **k):
        raise OSError(code, os.strerror(code), str(file))

    monkeypatch.setattr(pl.DataFrame, "write_parquet", refuse)
    before = tree(tmp_path)
    line = one_line_error(run("analyze", store, "-o", tmp_path / "new" / "deeper", "-q"), 3)
    assert os.strerror(code) in line and "summary.parquet" in line
    assert tree(tmp_path) == before  # no empty new/ or new/deeper/, no temp file, no lock


def test_a_failing_import_leaves_no_directory_behind(store, tmp_path, monkeypatch):
    def refuse(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "imported.parquet")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", refuse)
    before = tree(tmp_path)
    out = tmp_path / "out" / "s"
    line = one_line_error(run("import", tmp_path / "good.npy", "--kind", "logits", "-o", out), 3)
    assert "No space left on device" in line
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- locks


def test_a_second_writer_fails_at_once_naming_the_holder(store, tmp_path):
    holder = os.getppid()  # alive, and not this process
    out = tmp_path / "s"
    lock = lock_path(out)
    lock.write_text(f"{holder}\n")
    line = one_line_error(run("import", tmp_path / "good.npy", "--kind", "logits", "-o", out), 4)
    assert f"pid {holder}" in line
    assert not out.exists() and lock.read_text() == f"{holder}\n"
    line = one_line_error(run("analyze", store, "-o", out, "-q"), 4)
    assert f"pid {holder}" in line


def test_a_stale_lock_is_taken_over_and_removed(store, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "s"
    lock_path(out).write_text(f"{dead.pid}\n")
    r = run("import", tmp_path / "good.npy", "--kind", "logits", "-o", out)
    assert r.exit_code == 0, r.output
    assert (out / "imported" / "good.parquet").is_file()
    assert not lock_path(out).exists()


def test_the_lock_is_reentrant_and_removed_after_use(tmp_path):
    out = tmp_path / "a" / "b"
    with output_lock(out) as path:
        assert path.read_text().strip() == str(os.getpid())
        with output_lock(out):
            pass
        assert path.exists()
    assert not path.exists()
    assert not (tmp_path / "a").exists()  # made only for the lock file, so removed again


def test_a_live_lock_raises_locked_error(tmp_path):
    lock_path(tmp_path / "x").write_text(f"{os.getppid()}\n")
    with pytest.raises(LockedError, match=f"pid {os.getppid()}"):
        with output_lock(tmp_path / "x"):
            pass


# ---------------------------------------------------------------- Ctrl-C

#: A dump that trains for ~25 s on an idle machine (50 epochs took 0.6 s: on an idle CI
#: machine the first of two dumps could finish before the test's Ctrl-C reached it). Every
#: test that starts it interrupts it; none waits for it to finish.
_DUMP = (
    "dump",
    "--epochs",
    "2000",
    "--batch-sizes",
    "16",
    "--train-size",
    "400",
    "--val-size",
    "100",
    "--test-size",
    "200",
    "--hidden",
    "64",
    "-q",
)


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "kdlens", *_DUMP, "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=out.parent,
    )


def _nothing_partial(root: Path) -> None:
    assert not [p for p in root.rglob("*") if ".tmp" in p.name or p.name.endswith(".lock")]
    for p in root.rglob("*.parquet"):
        pq.read_metadata(p)  # every Parquet file is whole


@pytest.mark.parametrize("delay", [0.4, 1.5, 3.0])
def test_ctrl_c_at_any_moment_exits_130_within_3_s(tmp_path, delay):
    out = tmp_path / "runs"
    proc = _start(out)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    t0 = time.perf_counter()
    try:
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    took = time.perf_counter() - t0
    assert proc.returncode == 130, err.decode()
    assert took < 3.0, took
    assert b"Traceback" not in err, err.decode()
    _nothing_partial(tmp_path)


_SWALLOWED = """
import sys, time
from kdlens._internal import interrupt
interrupt.install()

class Swallows:
    def __del__(self):
        raise KeyboardInterrupt  # Python reports it to sys.unraisablehook and goes on

try:
    Swallows()
    deadline = time.monotonic() + 1.5  # well inside the 2 s watchdog
    while time.monotonic() < deadline:
        sum(range(1000))
    print("not delivered")
except KeyboardInterrupt:
    interrupt.exit_interrupted()
"""


def test_an_interrupt_swallowed_by_a_del_is_delivered_again_without_a_traceback():
    # The path of a Ctrl-C that lands in importlib's _get_module_lock: without the
    # re-delivery a dump trained on for a minute; re-delivered from inside the hook it
    # was "ignored" a second time, with a traceback (a CI failure).
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _SWALLOWED], capture_output=True, env=env, timeout=30
    )
    assert proc.returncode == 130, proc.stderr.decode()
    assert b"not delivered" not in proc.stdout
    assert proc.stderr.decode().strip() == "interrupted"


def test_two_dumps_on_one_output_the_second_fails_at_once(tmp_path):
    out = tmp_path / "runs"
    first = _start(out)
    try:
        deadline = time.time() + 30
        while not lock_path(out).exists() and time.time() < deadline:
            time.sleep(0.1)
        assert lock_path(out).exists(), "the first dump never took its lock"
        second = subprocess.run(
            [sys.executable, "-m", "kdlens", *_DUMP, "-o", str(out)],
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=60,
        )
        assert second.returncode == 4, second.stderr.decode()
        assert f"pid {first.pid}".encode() in second.stderr
        assert first.poll() is None  # the first goes on
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=10)
    assert first.returncode == 130
    _nothing_partial(tmp_path)


# ---------------------------------------------------------------- resource guards


def test_memory_estimate_and_limit(monkeypatch):
    from kdlens._internal import resources
    from kdlens.errors import InputError

    monkeypatch.setenv("KDLENS_MEMORY_LIMIT", "8G")
    assert resources.memory_limit() == 8 << 30
    resources.check_memory(5_000, 2)  # the 20,000 x 5,000 case fits
    with pytest.raises(InputError, match=r"K = 1,000,000 classes needs ~\d+\.\d TiB.*8\.0 GiB"):
        resources.check_memory(1_000_000, 2)
    monkeypatch.setenv("KDLENS_MEMORY_LIMIT", "1M")
    with pytest.raises(InputError, match="KDLENS_MEMORY_LIMIT"):
        resources.check_memory(1_000, 1)
    resources.check_memory(1_000, 0)  # no similarity state: nothing to refuse
    monkeypatch.setenv("KDLENS_MEMORY_LIMIT", "lots")
    with pytest.raises(InputError, match="not a size"):
        resources.memory_limit()


def test_analyze_refuses_a_k_that_does_not_fit(store, monkeypatch):
    import kdlens
    from kdlens.errors import InputError

    monkeypatch.setenv("KDLENS_MEMORY_LIMIT", "1K")
    with pytest.raises(InputError, match="K = 6 classes"):
        kdlens.analyze(store)
    r = run("analyze", store, "-o", store.parent / "a", "-q")
    assert r.exit_code == 2 and "K = 6 classes" in r.output


@pytest.mark.parametrize("where", ["writing the pid", "just after taking the lock"])
def test_an_interrupt_while_taking_the_lock_leaves_no_lock_file(tmp_path, monkeypatch, where):
    """A Ctrl-C that lands inside the lock's acquisition (the CI flake of a dump stopped at
    0.4 s left `.runs.lock` behind) removes the lock file it created."""
    import kdlens._internal.lock as lock

    out = tmp_path / "runs"
    if where == "writing the pid":

        def write(fd, data):
            raise KeyboardInterrupt

        monkeypatch.setattr(lock.os, "write", write)
    else:
        acquire = lock._acquire

        def acquire_then_interrupted(path, o):
            acquire(path, o)
            raise KeyboardInterrupt

        monkeypatch.setattr(lock, "_acquire", acquire_then_interrupted)
    with pytest.raises(KeyboardInterrupt), lock.output_lock(out):
        pass
    monkeypatch.undo()
    assert not lock_path(out).exists()
    with lock.output_lock(out):  # and the next writer takes it at once
        assert lock_path(out).exists()
    assert not lock_path(out).exists()


_HARD_EXIT = """
import os, signal, sys, time
from pathlib import Path
from kdlens._internal import interrupt
from kdlens._internal.lock import output_lock
interrupt.install()
with output_lock(Path(sys.argv[1])):
    try:
        os.kill(os.getpid(), signal.SIGINT)
    except KeyboardInterrupt:
        pass  # lost, as in a C extension's import: only the watchdog can end the process
    time.sleep(20)
"""


def test_the_watchdogs_hard_exit_removes_the_lock_file(tmp_path):
    """A Ctrl-C that is lost (in a C extension's import, say) ends the process by the
    watchdog's hard exit, which skips every finally: the lock file is removed there (a CI
    flake: a dump interrupted at 0.4 s left `.runs.lock`)."""
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _HARD_EXIT, str(out)], capture_output=True, env=env, timeout=30
    )
    assert proc.returncode == 130, proc.stderr.decode()
    assert not lock_path(out).exists()


# ---------------------------------------------------------------- click's own errors


@pytest.mark.parametrize(
    "args, said",
    [
        (["recommend", "x", "--bootsrap", "3"], "No such option: --bootsrap"),
        (["recommend"], "Missing argument"),
        (["recomend", "x"], "Did you mean 'recommend'?"),
        (["recommend", "x", "-B", "abc"], "Invalid value for '--bootstrap'"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_help(args, said):
    """An unknown option, a missing argument or a bad value: one `error:` line (not click's
    usage block), exit 2, and the command whose --help lists the options."""
    result = run(*args)
    line = one_line_error(result, 2)
    assert said in line and "--help`" in line
    assert result.output.strip() == line and "Usage:" not in result.output


def test_bare_kdlens_prints_its_help():
    result = run()
    assert result.exit_code == 2 and "Usage: kdlens" in result.output
    assert "recommend" in result.output and "error:" not in result.output


def test_an_output_whose_lock_cannot_be_created_is_named_not_the_lock(store, tmp_path, monkeypatch):
    import kdlens._internal.lock as lock

    def refuse(path, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(lock.os, "open", refuse)
    line = one_line_error(run("analyze", store, "-o", tmp_path / "out", "-q"), 3)
    assert line.startswith(f"error: {tmp_path / 'out'}: ") and "EACCES" in line, line
    assert ".out.lock cannot be created" in line and not (tmp_path / "out").exists()
