"""``.npy`` files and ``.npz`` members read by row ranges, never whole: ``kdlens import``
streams them into the store in row groups, so its peak memory does not grow with N.

A ``.npy`` file and a *stored* (uncompressed) ``.npz`` member are a header followed by the
raw array at a known byte offset (for a member, the offset of its data inside the zip):
:meth:`RowArray.rows` reads rows ``[start, stop)`` with one positioned read into a fresh
buffer. That is memory mapping's access pattern without its cost in resident memory: pages
of a mapped 5 GB file count towards the process's RSS until the kernel reclaims them,
whereas a read leaves them in the page cache only. A *compressed* member (``np.savez_compressed``)
cannot be addressed by offset; it is decompressed sequentially, chunk by chunk, with
:mod:`zipfile`. A Fortran-ordered array holds no row contiguously and is read whole.

Nothing here unpickles: an array of Python objects is refused from its header.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from kdlens.errors import InputError

__all__ = ["RowArray", "open_npy", "open_npz"]

#: numpy's own bound on header size (``np.load``'s default ``max_header_size``).
_MAX_HEADER = 10_000


class RowArray:
    """A lazily read array of a ``.npy`` file or ``.npz`` member: ``shape``, ``dtype`` and
    ``ndim`` like an ndarray, :meth:`rows` for a row range, ``np.asarray`` for all of it."""

    def __init__(
        self,
        path: Path,
        *,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        fortran: bool,
        offset: int | None,
        member: str | None = None,
    ) -> None:
        self.path, self.shape, self.dtype, self.fortran = path, shape, dtype, fortran
        self.ndim = len(shape)
        self._offset, self._member = offset, member  # offset None: a compressed member
        self._stream: Any = None  # (zip, member file, next row) of a sequential read
        self._whole: np.ndarray | None = None

    @property
    def _row_items(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) if self.ndim > 1 else 1

    def __len__(self) -> int:
        return int(self.shape[0]) if self.shape else 1

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.rows(0, len(self)) if self.shape else self._read_all()
        return a if dtype is None else a.astype(dtype)

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, block)`` for consecutive blocks of at most ``rows`` rows."""
        for start in range(0, len(self), rows):
            yield start, self.rows(start, min(start + rows, len(self)))

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a new ndarray."""
        if self.fortran or not self.shape:
            return self._read_all()[start:stop]
        count = (stop - start) * self._row_items
        if self._offset is not None:
            with open(self.path, "rb") as f:
                f.seek(self._offset + start * self._row_items * self.dtype.itemsize)
                flat = np.fromfile(f, dtype=self.dtype, count=count)
        else:
            flat = self._read_member(start, count)
        if flat.size != count:
            raise InputError(f"{self.path}: truncated array data (expected {self.shape})")
        return flat.reshape((stop - start, *self.shape[1:]))

    def _read_all(self) -> np.ndarray:
        if self._whole is None:
            n = int(np.prod(self.shape, dtype=np.int64))
            if self._offset is not None:
                with open(self.path, "rb") as f:
                    f.seek(self._offset)
                    flat = np.fromfile(f, dtype=self.dtype, count=n)
            else:
                flat = self._read_member(0, n)
            if flat.size != n:
                raise InputError(f"{self.path}: truncated array data (expected {self.shape})")
            self._whole = flat.reshape(self.shape, order="F" if self.fortran else "C")
        return self._whole

    def _read_member(self, start: int, count: int) -> np.ndarray:
        """Decompress the next ``count`` items of a compressed member, from row ``start``
        (sequential; reading from an earlier row reopens the member)."""
        try:
            if self._stream is None or self._stream[2] != start:
                self.close()
                zf = zipfile.ZipFile(self.path)
                fh = zf.open(self._member or "")
                _read_header(fh, self.path)
                skip = start * self._row_items * self.dtype.itemsize
                while skip:
                    skip -= len(fh.read(min(skip, 1 << 24)))
                self._stream = [zf, fh, start]
            data = _read_exact(self._stream[1], count * self.dtype.itemsize)
        except OSError:
            self.close()
            raise  # the OS's own error: the CLI reports it with the path
        except Exception as exc:  # BadZipFile, zlib.error, EOFError: the member is damaged
            self.close()
            raise InputError(f"{self.path}: not a readable .npz ({_why(exc)})") from None
        self._stream[2] = start + (count // max(self._row_items, 1))
        return np.frombuffer(data, dtype=self.dtype).copy()

    def close(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream[0].close()
            self._stream = None


def _read_exact(fh: IO[bytes], size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        b = fh.read(min(size - got, 1 << 26))
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _read_header(fh: IO[bytes], path: Path) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(fh, max_header_size=_MAX_HEADER)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(fh, max_header_size=_MAX_HEADER)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if dtype.hasobject:
        raise ValueError("it holds Python objects, which would need unpickling")
    return tuple(int(s) for s in shape), bool(fortran), dtype


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def open_npy(path: Path) -> RowArray:
    """The array of a ``.npy`` file, its header checked (numeric, complete)."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = _read_header(f, path)
            offset = f.tell()
    except OSError:
        raise  # the OS's own error (permission, I/O): the CLI reports it with the path
    except Exception as exc:  # numpy raises ValueError, EOFError, ...
        raise InputError(f"{path}: not a plain numeric .npy array ({_why(exc)})") from None
    arr = RowArray(path, shape=shape, dtype=dtype, fortran=fortran, offset=offset)
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if os.path.getsize(path) < need:
        raise InputError(
            f"{path}: not a plain numeric .npy array (truncated: {os.path.getsize(path)} "
            f"bytes, the header's shape {shape} needs {need})"
        )
    return arr


def open_npz(path: Path) -> dict[str, RowArray]:
    """The ``.npy`` members of a ``.npz`` by key (the member name without ``.npy``)."""
    out: dict[str, RowArray] = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    shape, fortran, dtype = _read_header(fh, path)
                    header_len = fh.tell() if info.compress_type == zipfile.ZIP_STORED else 0
                offset = None
                if info.compress_type == zipfile.ZIP_STORED:
                    # The local file header (30 bytes + name + extra) precedes the data.
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                    if local[:4] != b"PK\x03\x04":
                        raise zipfile.BadZipFile("bad local file header")
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                    offset = info.header_offset + 30 + name_len + extra_len + header_len
                    need = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if info.file_size < need:
                        raise ValueError(f"member {info.filename} is truncated")
                out[info.filename[: -len(".npy")]] = RowArray(
                    path,
                    shape=shape,
                    dtype=dtype,
                    fortran=fortran,
                    offset=offset,
                    member=info.filename,
                )
    except OSError:
        raise
    except Exception as exc:  # zipfile and numpy raise several types
        raise InputError(f"{path}: not a readable .npz ({_why(exc)})") from None
    return out
