"""Stores at URLs: ``s3://``, ``gs://``, any fsspec protocol, beside plain paths.

A store source or output is either a local path (``file://`` URLs included, read and
written exactly as plain paths) or an object-store URL, held as a :class:`Url`: the URL
as a string with the few ``pathlib`` methods the store code uses (``/``, ``name``,
``exists``, ...). The file system behind a URL is fsspec's (``s3fs`` for ``s3://``,
``gcsfs`` for ``gs://``), and Parquet is read through it by pyarrow
(``PyFileSystem(FSSpecHandler(fs))``), so one set of credentials serves listing,
reading and writing for every protocol.

Credentials and options: each protocol's own environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ...; ``GOOGLE_*`` for
gcsfs), plus ``KDLENS_STORAGE_OPTIONS``: a JSON object of keyword arguments for the
fsspec file system (``{"endpoint_url": "http://127.0.0.1:9000", "anon": false}``).
An environment variable reaches every command, the Python API and worker processes alike.

Nothing read from a store becomes a path unchecked: keys are listed from the store's
own prefix, dot-components (stages, temporaries) are skipped as on disk, and names
written into keys pass :func:`kdlens._internal.names.path_component` in the writer.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from kdlens._internal.atomic import local_path, remote_url
from kdlens.errors import InputError, StoreError

__all__ = ["OPTIONS_ENV", "StorePath", "Url", "filesystem", "open_parquet", "store_path"]

#: The environment variable holding fsspec storage options as a JSON object.
OPTIONS_ENV = "KDLENS_STORAGE_OPTIONS"


class Url(str):
    """A file or directory at an object-store URL (``s3://bucket/key``).

    A ``str`` (its value is the URL, so it prints, compares and pickles as one) with the
    ``pathlib`` methods the store uses. Never pass one to :class:`pathlib.Path`, which
    would fold ``//`` and make it a relative local path.
    """

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> Url:
        head = self.rstrip("/").rsplit("/", 1)[0]
        return Url(head) if "://" in head and not head.endswith(":/") else Url(self)

    def __truediv__(self, other: str | os.PathLike[str]) -> Url:
        return Url(self.rstrip("/") + "/" + os.fspath(other).strip("/"))

    def exists(self) -> bool:
        fs, key = filesystem(self)
        return bool(fs.exists(key))

    def is_dir(self) -> bool:
        fs, key = filesystem(self)
        return bool(fs.isdir(key))

    def is_file(self) -> bool:
        fs, key = filesystem(self)
        return bool(fs.isfile(key))

    def rglob(self, pattern: str) -> list[Url]:
        """Files below this directory whose name matches ``pattern`` (dot-parts skipped)."""
        return [u for u in list_files(self) if fnmatch.fnmatch(u.name, pattern)]


#: A store file or directory: a local path or a URL.
StorePath = Path | Url


def store_path(value: str | os.PathLike[str]) -> StorePath:
    """``value`` as a :class:`Url` when it names an object store, else as a local ``Path``."""
    url = remote_url(value)
    return Url(url) if url is not None else local_path(value)


def storage_options() -> dict[str, Any]:
    """The fsspec options of ``KDLENS_STORAGE_OPTIONS`` (``{}`` when unset)."""
    raw = os.environ.get(OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        opts = json.loads(raw)
    except ValueError:
        raise InputError(f"{OPTIONS_ENV} must be a JSON object, got {raw[:80]!r}") from None
    if not isinstance(opts, dict):
        raise InputError(f"{OPTIONS_ENV} must be a JSON object, got {raw[:80]!r}")
    return opts


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system behind ``url`` and the path on it (no protocol).

    fsspec caches file-system instances by their options, so repeated calls are cheap.
    """
    try:
        import fsspec.core
    except ImportError:
        raise InputError(
            f"{url}: reading and writing URLs needs fsspec and the protocol's package "
            "(pip install 'kdlens[s3]' for s3://, gcsfs for gs://)"
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(str(url), **storage_options())
    except (ImportError, ValueError) as exc:  # an unknown protocol or its package missing
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"{url}: cannot open this URL ({why})") from None
    return fs, str(path)


def list_files(root: Url) -> list[Url]:
    """Every file below ``root``, as URLs, sorted; files in dot-directories and dot-files
    (stages, temporaries being uploaded) are not part of a store and are left out."""
    fs, key = filesystem(root)
    fs.invalidate_cache(key)  # another process may have written since this one listed
    base = key.rstrip("/")
    out = []
    for found in fs.find(base):
        rel = str(found)[len(base) :].lstrip("/")
        if not rel or any(c.startswith(".") or c in ("", "..") for c in rel.split("/")):
            continue
        out.append(root / rel)
    return sorted(out)


def resolve_url(url: Url) -> list[Url]:
    """The Parquet files behind a URL naming a file, a directory (prefix) or a glob."""
    fs, key = filesystem(url)
    fs.invalidate_cache(key.rstrip("/"))
    if any(ch in key for ch in "*?["):
        scheme = url.split("://", 1)[0]
        found = [Url(f"{scheme}://{f}") for f in fs.glob(key) if fs.isfile(f)]
        files = sorted(u for u in found if not u.name.startswith("."))  # as glob.glob does
        if not files:
            raise StoreError(f"{url}: glob matches no files")
        return files
    if fs.isfile(key):
        return [url]
    if fs.isdir(key):
        files = [u for u in list_files(url) if u.name.endswith(".parquet")]
        if not files:
            raise StoreError(f"{url}: directory holds no .parquet files")
        return files
    raise StoreError(f"{url}: no such file or directory")


def open_parquet(path: StorePath) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` for a local path or a URL."""
    import pyarrow.parquet as pq

    if not isinstance(path, Url):
        return pq.ParquetFile(path)
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, key = filesystem(path)
    return pq.ParquetFile(key, filesystem=PyFileSystem(FSSpecHandler(fs)))
