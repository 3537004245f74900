"""Atomic output: write beside the target, then rename, so no reader (and no crash or
Ctrl-C) ever sees a half-written file, and a failed command leaves the old output as it was.

:func:`atomic_path` does it for one file, :func:`staged_dir` for a directory of them
(an import, an analysis directory).

Object stores (``s3://``, ``gs://``, any fsspec URL other than ``file://``) have no rename
and no directories, so the same calls work differently there and promise this:

- **each file is whole**: it is written to a local temporary file, uploaded to a hidden
  key beside its target (``.<name>.<random>.tmp``; readers skip dot-names) and then moved
  to the target (a server-side copy and delete on S3/GCS). A reader sees the old object
  or the new one, never part of one, and a failed upload leaves no visible key;
- **a directory of files** (:func:`staged_dir`) is uploaded completely to hidden keys
  before the first one is moved into place, so a failure while building or uploading
  (the slow part) leaves the old store unchanged. The moves that follow are per file:
  a failure among them (the network failing between two copies) leaves some files new
  and some old, each one whole. There is no manifest and no multi-object transaction.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__: list[str] = []  # internal; used by kdlens.store and kdlens.analysis

#: A URL scheme: two characters at least, so that a Windows drive (``C:\\``) is never one.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")
_LOCAL_SCHEMES = ("file", "local")


def remote_url(target: object) -> str | None:
    """``target`` as an object-store URL, or None when it names a local file (a path,
    a ``file://`` URL)."""
    if not isinstance(target, str):
        return None  # a Path (or any os.PathLike) is local
    m = _SCHEME.match(target)
    if m is None or m.group(1).lower() in _LOCAL_SCHEMES:
        return None
    return target


def local_path(target: str | os.PathLike[str]) -> Path:
    """A local target as a ``Path``; ``file:///x`` becomes ``/x``."""
    if isinstance(target, str):
        m = _SCHEME.match(target)
        if m is not None and m.group(1).lower() in _LOCAL_SCHEMES:
            from urllib.parse import urlparse
            from urllib.request import url2pathname

            return Path(url2pathname(urlparse(target).path))
    return Path(target)


def new_temp(path: str | os.PathLike[str]) -> Path:
    """An empty temporary file in ``path``'s directory (created if needed); for a URL,
    in the local temporary directory (uploaded by :func:`commit_temp`)."""
    if remote_url(path) is not None:
        fd, tmp = tempfile.mkstemp(prefix=".kdlens-upload.", suffix=".tmp")
        os.close(fd)
        return Path(tmp)
    p = local_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    return Path(tmp)


def commit_temp(tmp: Path, path: str | os.PathLike[str]) -> None:
    """Move a finished temporary file into place (upload it, for a URL)."""
    url = remote_url(path)
    if url is not None:
        try:
            upload_files([(tmp, url)])
        finally:
            tmp.unlink(missing_ok=True)
        return
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; honour the umask instead
    os.replace(tmp, local_path(path))


def upload_files(pairs: list[tuple[Path, str]], *, remove: Iterable[str] = ()) -> None:
    """Upload local files to their URLs: every one to a hidden key beside its target
    first, then each moved into place (see the module's guarantee). ``remove``: URLs
    deleted after the moves (outputs a re-run no longer makes)."""
    from kdlens.store.fs import filesystem

    staged: list[tuple[object, str, str]] = []
    try:
        for src, url in pairs:
            fs, key = filesystem(url)
            parent, _, name = key.rpartition("/")
            tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
            staged.append((fs, tmp, key))  # before the upload: a partial one is removed too
            fs.put_file(str(src), tmp)  # type: ignore[attr-defined]
        for fs, tmp, key in staged:
            fs.mv(tmp, key)  # type: ignore[attr-defined]
    except BaseException:
        for fs, tmp, _ in staged:
            try:
                fs.rm_file(tmp)  # type: ignore[attr-defined]
            except Exception:  # never uploaded, or moved already
                pass
        raise
    for url in remove:
        fs, key = filesystem(url)
        if fs.isfile(key):
            fs.rm_file(key)


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
    removed and ``target`` is not touched. A URL ``target``: the stage is a local
    temporary directory, uploaded by :func:`upload_files` when the block succeeds.
    """
    url = remote_url(target)
    if url is not None:
        with _remote_stage(url, remove) as stage:
            yield stage
        return
    dest = local_path(target)
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


@contextmanager
def _remote_stage(url: str, remove: Iterable[str]) -> Iterator[Path]:
    from kdlens.store.fs import filesystem

    fs, key = filesystem(url)
    if fs.isfile(key):
        raise NotADirectoryError(20, "exists and is not a directory", url)
    stage = Path(tempfile.mkdtemp(prefix=".kdlens-stage.", suffix=".tmp"))
    try:
        yield stage
        files = sorted(p for p in stage.rglob("*") if p.is_file())
        base = url.rstrip("/")
        pairs = [(p, f"{base}/{p.relative_to(stage).as_posix()}") for p in files]
        written = {p.relative_to(stage).as_posix() for p in files}
        stale = [f"{base}/{r}" for r in remove if r not in written]
        upload_files(pairs, remove=stale)
    finally:
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
