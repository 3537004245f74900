"""Atomic file output: write beside the target, then rename, so no reader (and no
crash or Ctrl-C) ever sees a half-written file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__: list[str] = []


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
