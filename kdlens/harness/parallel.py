"""Grid cells on several devices: ``kdlens dump --devices cpu,cpu | auto | cuda:0,cuda:1``.

Each device gets one worker process (started by a fork server, as CUDA cannot be forked),
which receives the data the parent prepared; the runs of the grid (batch size x seed)
are dealt to whichever worker is free. A run's logits depend on
its configuration and seed only (:mod:`kdlens.harness.train`), so the store equals the
one a sequential dump writes, bit for bit on the same kind of device; and every run
resumes as in a sequential dump (:mod:`kdlens.harness.rundir`): after a failure or an
interruption, the same command skips finished runs and resumes the others.

A failure in one worker (or Ctrl-C) stops the others as Ctrl-C would: they raise
:class:`KeyboardInterrupt`, their unfinished writes are removed, their last finished epoch
is on disk; the failure is raised here.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdlens.errors import InputError
from kdlens.harness.config import DumpConfig
from kdlens.harness.data import Splits
from kdlens.harness.reporting import Reporter, RunResult

__all__ = ["parse_devices", "train_runs_parallel"]


def parse_devices(spec: str) -> list[str]:
    """The devices of ``devices``: ``auto`` (every CUDA device, else the CPU once) or a
    comma-separated list (``cpu,cpu``, ``cuda:0,cuda:1``); each checked."""
    import torch

    from kdlens.harness.runtime import resolve_device

    text = str(spec).strip()
    if text == "auto":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    names = [d.strip() for d in text.split(",")]
    if not names or any(not d for d in names):
        raise InputError(f"`devices` must be auto or a comma-separated list, got {spec!r}")
    for d in names:
        if d == "auto":
            raise InputError(f"`devices` {spec!r}: auto stands alone")
        try:
            resolve_device(d)
        except InputError as exc:
            raise InputError(f"`devices` {spec!r}: {exc}") from exc
        if d.startswith("cuda:") and int(d.split(":")[1]) >= torch.cuda.device_count():
            raise InputError(
                f"`devices` {spec!r}: {d} does not exist ({torch.cuda.device_count()} CUDA devices)"
            )
    return names


def _worker(
    device: str,
    data: Splits,
    cells: Any,
    results: Any,
    on_epoch_end: Callable[[str, int], None] | None,
) -> None:
    """A worker process: trains the cells it takes from ``cells`` on ``device`` until the
    sentinel ``None``; answers ``(index, result, error)`` for each."""
    from kdlens.harness.runtime import resolve_device
    from kdlens.harness.train import train_run

    dev = resolve_device(device)
    while (cell := cells.get()) is not None:
        i, cfg, batch_size, seed, out, overwrite = cell
        try:
            res = train_run(
                cfg,
                data,
                batch_size=batch_size,
                seed=seed,
                out=out,
                device=dev,
                overwrite=overwrite,
                on_epoch_end=on_epoch_end,
            )
        except BaseException as exc:  # Ctrl-C included: the atomic writes are cleaned up
            results.put((i, None, _picklable(exc)))
            return
        results.put((i, res, None))


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def train_runs_parallel(
    cfg: DumpConfig,
    data: Splits,
    devices: list[str],
    out: Path,
    *,
    overwrite: bool,
    reporter: Reporter,
    on_epoch_end: Callable[[str, int], None] | None = None,
) -> list[RunResult]:
    """Train every run of ``cfg`` in one process per device; results in grid order.

    ``on_epoch_end`` must be picklable (a module-level function): it runs in the workers.
    """
    # Not fork: CUDA cannot be forked. The forkserver imports the harness once and forks
    # the workers from it (two imports of torch at once are slow on a busy machine).
    if sys.platform.startswith("linux"):
        ctx: Any = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["kdlens.harness.train"])
    else:
        ctx = multiprocessing.get_context("spawn")
    grid = [(b, s) for b in cfg.batch_sizes for s in cfg.seeds]
    cells, results = ctx.Queue(), ctx.Queue()
    for i, (b, s) in enumerate(grid):
        cells.put((i, cfg, b, s, out, overwrite))
    for _ in devices:
        cells.put(None)
    procs = [
        ctx.Process(
            target=_worker,
            args=(d, data, cells, results, on_epoch_end),
            name=f"kdlens-dump-{d}",
            daemon=True,
        )
        for d in devices
    ]
    for p in procs:
        p.start()
    done: dict[int, RunResult] = {}
    try:
        while len(done) < len(grid):
            try:
                i, res, exc = results.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    raise RuntimeError("every dump worker ended before the grid was done") from None
                continue
            if exc is not None:
                raise exc
            done[i] = res
            reporter.message(f"{res.run}: {res.status}")
            reporter.run_done(res.run, res)
    except BaseException:
        _stop(procs)
        _remove_temporaries(out)
        raise
    for p in procs:
        p.join()
    return [done[i] for i in range(len(grid))]


def _stop(procs: list[Any]) -> None:
    """Interrupt the workers as Ctrl-C would (their atomic writes clean up), then end them."""
    for p in procs:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.terminate()
            p.join()


def _remove_temporaries(out: Path) -> None:
    """Remove the temporary files the stopped workers may have left in the run directories.

    A worker stopped inside a store write normally discards its file, but one that ends
    by ``terminate()`` or while exiting cannot (a stray ``.ep001.parquet.*.tmp`` was seen
    under load). This process holds the output's lock, so every such file is ours.
    """
    for tmp in Path(out).glob("*/.*.tmp"):
        if tmp.is_file():
            with contextlib.suppress(OSError):
                tmp.unlink()
