"""Where the pass's tasks run: this process, a process pool, or a Dask cluster.

:func:`engine_spec` checks a choice of engine (``engine``, ``workers``, ``scheduler``);
:func:`running` starts it for one pass and closes it after. Every engine returns the
results of the tasks in the plan's order (:mod:`kdlens.analysis.tasks`), so the merge
is the same fold whoever computed the partials. At most two tasks per worker are in
flight: memory stays bounded by the task size, not by the store.

- ``local`` with ``workers=1`` (the default) runs the tasks here: one reader streams every
  task's batches to a thread per accumulator slot (:mod:`kdlens.analysis.stream`; numpy
  and Parquet decoding release the GIL);
- ``local`` with ``workers=N`` runs them in ``N`` processes (one thread each);
- ``dask`` submits them to Dask's distributed scheduler (``kdlens[dask]``, imported only
  here): the cluster at ``scheduler`` (its workers must import kdlens), or a
  ``LocalCluster`` of :data:`~kdlens._internal.defaults.DASK_LOCAL_WORKERS` processes
  listening on 127.0.0.1 only, started and closed by kdlens.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kdlens._internal.checks import check_positive_int
from kdlens._internal.defaults import (
    DASK_CONNECT_TIMEOUT,
    DASK_LOCAL_WORKERS,
    ENGINES,
    LOCAL_WORKERS,
)
from kdlens.errors import InputError

__all__ = ["EngineSpec", "Runner", "current_engine", "engine_spec", "running", "using"]


@dataclass(frozen=True)
class EngineSpec:
    """A checked choice of engine (nothing started)."""

    kind: str = "local"
    workers: int = LOCAL_WORKERS
    scheduler: str | None = None

    @property
    def in_process(self) -> bool:
        return self.kind == "local" and self.workers == 1


def engine_spec(
    engine: str | EngineSpec | None = "local",
    workers: int | None = None,
    scheduler: str | None = None,
) -> EngineSpec:
    """Check ``engine`` (one of :data:`~kdlens._internal.defaults.ENGINES`), ``workers``
    (processes; default: 1 for ``local``, a 2-process ``LocalCluster`` for ``dask``) and
    ``scheduler`` (a Dask scheduler address, ``dask`` only)."""
    if isinstance(engine, EngineSpec):
        return engine
    kind = "local" if engine is None else str(engine)
    if kind not in ENGINES:
        raise InputError(f"`engine` must be one of {', '.join(ENGINES)}, got {engine!r}")
    if scheduler is not None and kind != "dask":
        raise InputError(f"`scheduler` {scheduler!r} needs `engine` dask")
    if scheduler is not None and workers is not None:
        raise InputError("`workers` and `scheduler` exclude each other: a scheduler has its own")
    default = DASK_LOCAL_WORKERS if kind == "dask" else LOCAL_WORKERS
    n = default if workers is None else check_positive_int(workers, name="workers")
    return EngineSpec(kind, n, scheduler)


_CURRENT: contextvars.ContextVar[EngineSpec | None] = contextvars.ContextVar(
    "kdlens_engine", default=None
)


@contextlib.contextmanager
def using(spec: EngineSpec) -> Iterator[EngineSpec]:
    """Make ``spec`` the engine of every pass run inside (a command of several layers,
    such as the report, sets it once at its entry)."""
    token = _CURRENT.set(spec)
    try:
        yield spec
    finally:
        _CURRENT.reset(token)


def current_engine() -> EngineSpec:
    """The engine set by :func:`using`, else the local default."""
    return _CURRENT.get() or EngineSpec()


class Runner:
    """A started engine: :meth:`map` runs ``fn`` on every argument tuple, results in order."""

    in_process = True

    def map(self, fn: Callable[..., Any], items: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        return (fn(*args) for args in items)


class _Windowed(Runner):
    """Submits ahead at most ``depth`` tasks and yields their results in submission order."""

    in_process = False

    def __init__(self, submit: Callable[..., Any], depth: int) -> None:
        self._submit, self._depth = submit, depth

    def map(self, fn: Callable[..., Any], items: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        pending: collections.deque[Any] = collections.deque()
        try:
            for args in items:
                pending.append(self._submit(fn, *args))
                if len(pending) >= self._depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:  # a failure or an early stop: drop what is not done
                f.cancel()


@contextlib.contextmanager
def running(spec: EngineSpec) -> Iterator[Runner]:
    """Start the engine of ``spec`` for one pass; close it (and any cluster) after."""
    if spec.in_process:
        yield Runner()
    elif spec.kind == "local":
        with _pool(spec.workers) as pool:
            yield _Windowed(pool.submit, 2 * spec.workers)
    else:
        with _dask_client(spec) as client:
            _warm(client, spec)
            workers = max(1, sum(client.nthreads().values()))
            # pure=False: a task's key is fresh, its (large) arguments are never hashed.
            yield _Windowed(lambda fn, *a: client.submit(fn, *a, pure=False), 2 * workers)


def _import_pass() -> None:
    import kdlens.analysis.passes  # noqa: F401


def _warm(client: Any, spec: EngineSpec) -> None:
    """Import the pass on every worker at once (not on each one's first task), which
    also finds workers that cannot import kdlens before any task is sent."""
    try:
        client.run(_import_pass)
    except Exception as exc:
        where = f"`scheduler` {spec.scheduler!r}" if spec.scheduler else "the local cluster"
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(
            f"{where}: a worker cannot import kdlens ({type(exc).__name__}: {reason}); "
            "install kdlens where the workers run"
        ) from exc


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the workers leave it to this process,
    # which cancels what is queued and ends them (exit 130, no worker tracebacks).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[Any]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forkserver: a clean process per worker (no copy of this process's threads), forked
    # from a server that has imported the pass once, so workers start at once.
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["kdlens.analysis.passes"])
    else:
        ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_ignore_sigint)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


#: A worker preload (Dask runs it as a script in each worker's main thread).
_IGNORE_SIGINT = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
#: glibc's settings that keep freed memory for reuse in the workers of kdlens's LocalCluster.
_MALLOC = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


@contextlib.contextmanager
def _dask_client(spec: EngineSpec) -> Iterator[Any]:
    try:
        import distributed
    except ImportError as exc:
        raise InputError(
            '`engine` dask needs Dask\'s distributed scheduler: pip install "kdlens[dask]"'
        ) from exc
    import logging

    import dask

    if spec.scheduler is None:
        # Dask's workers return freed memory to the system at once (MALLOC_TRIM_THRESHOLD_
        # of 64 KiB), so every batch's arrays were page-faulted in anew: tasks took 1.5x
        # as long here (tests/benchmarks/README.md). Memory stays bounded by the batch.
        heap: dict[str, Any] = {
            f"distributed.nanny.pre-spawn-environ.{k}": 1 << 30 for k in _MALLOC
        }
        # Ctrl-C reaches the whole process group; the workers leave it to this process,
        # which closes the cluster (exit 130 without a traceback from every worker).
        heap["distributed.worker.preload"] = [_IGNORE_SIGINT]
        # 127.0.0.1 only: nothing outside this machine can reach the cluster; no dashboard.
        with dask.config.set(heap):
            cluster = distributed.LocalCluster(
                n_workers=spec.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        try:
            with distributed.Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = distributed.Client(spec.scheduler, timeout=DASK_CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(
            f"`scheduler` {spec.scheduler!r}: no Dask scheduler answered within "
            f"{DASK_CONNECT_TIMEOUT:g} s ({reason})"
        ) from exc
    with client:
        yield client
