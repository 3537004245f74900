"""Atomic output: write beside the target, then rename, so no reader (and no crash or
Ctrl-C) ever sees a half-written file, and a failed command leaves the old output as it was.

:func:`atomic_path` does it for one file, :func:`staged_dir` for a directory of them
(an import, an analysis directory).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__: list[str] = []  # internal; used by kdlens.store and kdlens.analysis


def new_temp(path: str | os.PathLike[str]) -> Path:
    """An empty temporary file in ``path``'s directory (created if needed)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    return Path(tmp)


def commit_temp(tmp: Path, path: str | os.PathLike[str]) -> Path:
    """Move a finished temporary file into place."""
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; honour the umask instead
    os.replace(tmp, path)
    return Path(path)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` when the block succeeds
    and is removed when it raises."""
    tmp = new_temp(path)
    try:
        yield tmp
        commit_temp(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextmanager
def staged_dir(target: str | os.PathLike[str], *, remove: Iterable[str] = ()) -> Iterator[Path]:
    """Yield an empty directory beside ``target`` to build an output in; swap it in on success.

    The stage is a hidden directory in ``target``'s parent (same file system, so every
    move is a rename), or inside an existing ``target`` whose parent is read-only. When
    the block succeeds and ``target`` does not exist, the stage is renamed to it in one
    step. When ``target`` exists, each staged file replaces the file of the same relative
    path (each one atomically), and the relative paths in ``remove`` that the block did
    not write are deleted: a re-run drops the outputs it no longer makes (a stale
    ``examples.parquet``) while files kdlens does not own stay. When the block raises
    (Ctrl-C included), the stage and every parent directory this call created are
    removed and ``target`` is not touched.
    """
    dest = Path(target)
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(20, "exists and is not a directory", str(dest))
    created = _make_parents(dest.parent)
    try:
        stage = _make_stage(dest)
    except BaseException:
        _remove_dirs(created)
        raise
    try:
        yield stage
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700; honour the umask instead
        if not dest.exists():
            os.replace(stage, dest)
            return
        _merge_into(stage, dest, remove)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_dirs(created)
        raise
    shutil.rmtree(stage, ignore_errors=True)


def _make_stage(dest: Path) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    except PermissionError:
        if not dest.is_dir():
            raise
    # A writable directory under a read-only parent (``-o ~``): stage inside it, hidden
    # (stores skip dot-directories), still on the same file system.
    return Path(tempfile.mkdtemp(prefix=".kdlens-stage.", suffix=".tmp", dir=dest))


def _merge_into(stage: Path, dest: Path, remove: Iterable[str]) -> None:
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    rel = [p.relative_to(stage) for p in files]
    # Check every destination first, so that a conflict stops before anything moves.
    for r in rel:
        d = dest / r
        if d.is_dir():
            raise IsADirectoryError(21, "is a directory; cannot replace it with a file", str(d))
        for parent in d.parents:
            if parent == dest:
                break
            if parent.exists() and not parent.is_dir():
                raise NotADirectoryError(20, "exists and is not a directory", str(parent))
    for src, r in zip(files, rel, strict=True):
        (dest / r).parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest / r)
    written = {str(r) for r in rel}
    for name in remove:
        if name not in written and (dest / name).is_file():
            (dest / name).unlink()


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created, deepest first."""
    missing = []
    p = directory
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_dirs(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first; only directories that are still empty
        try:
            d.rmdir()
        except OSError:
            return


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
