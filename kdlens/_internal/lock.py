"""One writer per output: a lock file beside the output, holding the writer's pid.

``dump``, ``import`` and the analysis writer take it; a second kdlens process writing
the same output fails at once with :class:`~kdlens.errors.LockedError` naming the
holder's pid. The file is ``<parent>/.<name>.lock`` (beside, not inside, so that it is
never part of a store and survives an output directory being swapped in). A lock whose
pid is no longer running (the holder was killed) is stale and taken over.

Outputs at object-store URLs (``s3://``, ``gs://``) take no lock: an object store has no
exclusive create that every backend honours, and a lock file there could not tell a
live holder from a dead one. Two writers of one URL at once are not stopped; each file
either writes is still whole (see :mod:`kdlens._internal.atomic`), the last move wins.
A ``file://`` URL is a local path and is locked as one.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kdlens._internal import interrupt
from kdlens._internal.atomic import local_path, remote_url
from kdlens.errors import LockedError

__all__: list[str] = []

F = TypeVar("F", bound=Callable[..., Any])

#: A lock file without a pid (its writer died between creating and writing it) is
#: taken over once it is this old.
UNREADABLE_STALE_SECONDS = 5.0

#: Locks this process holds: path -> depth (a holder may take its own lock again).
_held: dict[Path, int] = {}


def _release_all() -> None:
    """Remove this process's lock files: the interrupt watchdog's hard exit skips the
    ``finally`` of :func:`output_lock` (a Ctrl-C during a long C call, a torch import)."""
    for path in list(_held):
        if _read_pid(path) == os.getpid():
            path.unlink(missing_ok=True)


interrupt.on_hard_exit(_release_all)


def lock_path(output: str | os.PathLike[str]) -> Path:
    """Where the lock of ``output`` lives."""
    p = Path(os.path.abspath(output))
    return p.parent / f".{p.name}.lock"


@contextmanager
def output_lock(output: str | os.PathLike[str], *, directory: bool = True) -> Iterator[Path]:
    """Hold the lock of ``output`` for the block; :class:`LockedError` if another holds it.

    ``directory``: ``output`` must be a directory if it exists (NotADirectoryError at
    once, before any work, rather than after it).
    """
    out = Path(output)
    if directory and out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out))
    path = lock_path(out)
    made: list[Path] = []  # directories made for the lock file, removed again if left empty
    first = path not in _held
    if first:
        made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
    # Counted before the lock is taken and released in one finally: a Ctrl-C that lands
    # just after the lock file is written (before the block starts) still removes it.
    _held[path] = _held.get(path, 0) + 1
    try:
        if first:
            _acquire(path, out)
        yield path
    finally:
        _held[path] -= 1
        if not _held[path]:
            del _held[path]
            if _read_pid(path) == os.getpid():
                path.unlink(missing_ok=True)
            _remove_empty(made)


def locked_output(
    parameter: str, *, parent: bool = False, directory: bool = True
) -> Callable[[F], F]:
    """Decorate a writer: hold the lock of its ``parameter`` (or that path's parent)
    while it runs. A ``None`` argument takes no lock; ``directory`` as in :func:`output_lock`."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = signature.bind(*args, **kwargs).arguments.get(parameter)
            if value is None or remote_url(value) is not None:
                return fn(*args, **kwargs)  # no lock on an object store (see above)
            target = local_path(value).parent if parent else local_path(value)
            with output_lock(target, directory=directory):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return wrap


def _acquire(path: Path, out: Path) -> None:
    for _ in range(3):  # a stale lock is removed and the creation tried again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _read_pid(path)
            if pid is None:
                if _age(path) < UNREADABLE_STALE_SECONDS:
                    raise LockedError(
                        f"{out}: another kdlens process is starting to write it (lock file {path})"
                    ) from None
            elif _alive(pid):
                raise LockedError(
                    f"{out}: another kdlens process (pid {pid}) is writing it; wait for it "
                    f"to finish (lock file {path})"
                ) from None
            path.unlink(missing_ok=True)  # stale: its holder is gone
            continue
        except OSError as exc:  # the user named the output, not the hidden lock file
            reason = f"{exc.strerror}: its lock file {path.name} cannot be created there"
            raise OSError(exc.errno, reason, str(out)) from None
        try:
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
        except BaseException:
            path.unlink(missing_ok=True)  # created above: not left behind pid-less
            raise
        return
    raise LockedError(f"{out}: could not take the lock file {path}")


def _remove_empty(directories: list[Path]) -> None:
    for d in directories:  # deepest first
        try:
            d.rmdir()
        except OSError:
            return


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # not in _held, so left by an earlier process that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
