"""The Hugging Face world's files for ``kdlens import``: ``.safetensors`` tensors and
Arrow / Parquet tables (a ``datasets`` table with a logits column).

Both are read as named arrays, and :func:`kdlens.store.arrays.read_array_file` picks the
outputs and labels among them by the rule every keyed input follows (``key``, else a
known name such as ``logits`` or ``probs``, else the only 2-D array). Safe by
construction: safetensors holds raw tensors only, and Arrow and Parquet are data.

- ``.safetensors``: every tensor, as numpy; bfloat16 / float8 tensors (numpy has no
  such type) are read through torch, as float32.
- ``.arrow``: an Arrow IPC file or stream, memory-mapped; a directory of them (what
  ``datasets.Dataset.save_to_disk`` writes: ``data-*.arrow`` stream shards) is read as
  one table, shard by shard in name order. ``.parquet``: any Parquet file that is not a
  kdlens store. A column of equal-length numeric lists becomes an (N, K) array
  (HF ``Sequence(float)`` or a fixed-size list), a numeric column an (N,) array; other
  columns (text, ragged token ids) are left out unless named.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdlens.errors import InputError

__all__ = ["TABLE_SUFFIXES", "read_column", "read_example_ids", "read_safetensors", "read_table"]

TABLE_SUFFIXES = (".arrow", ".parquet")


def _why(exc: Exception) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_safetensors(path: Path, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file (only ``names`` when given) as numpy arrays."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise InputError(
            f"{path}: reading .safetensors needs safetensors: pip install 'kdlens[safetensors]'"
        ) from None
    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = list(f.keys()) if names is None else [k for k in names if k in f.keys()]
            wide = [k for k in keys if f.get_slice(k).get_dtype() in ("BF16", "F8_E4M3", "F8_E5M2")]
            out = {k: f.get_tensor(k) for k in keys if k not in wide}
    except InputError:
        raise
    except Exception as exc:  # SafetensorError for a bad header, OSError, ...
        raise InputError(f"{path}: not a readable .safetensors file ({_why(exc)})") from None
    if wide:
        out.update(_through_torch(path, wide))
    return out


def _through_torch(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    try:
        import torch  # noqa: F401  (safe_open's "pt" framework needs it)
        from safetensors import safe_open
    except ImportError:
        raise InputError(
            f"{path}: tensor {keys[0]!r} is bfloat16/float8, which numpy cannot hold; reading "
            "it needs torch (pip install 'kdlens[torch]') or a float32 copy"
        ) from None
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).float().numpy() for k in keys}


def read_table(
    path: Path, names: Sequence[str] = (), *, only: bool = False
) -> dict[str, np.ndarray]:
    """The numeric columns of an Arrow or Parquet table as arrays (see the module docstring).

    ``names`` are columns the caller asked for: each must exist and convert, or the read
    fails with a line naming it; ``only`` reads just those.
    """
    table = _open_table(path, list(names) if only else None)
    if table.num_rows == 0:
        raise InputError(f"{path}: the table has no rows")
    wanted = set(names or ())
    missing = sorted(wanted - set(table.column_names))
    if missing:
        raise InputError(
            f"{path}: no column {missing[0]!r} (columns: {', '.join(table.column_names)})"
        )
    out: dict[str, np.ndarray] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        arr = _column(col)
        if arr is None and name in wanted:
            raise InputError(
                f"{path}: column {name!r} ({col.type}) is neither numbers nor equal-length "
                "lists of numbers without nulls"
            )
        if arr is not None:
            out[name] = arr
    if not out:
        cols = ", ".join(f"{f.name} ({f.type})" for f in table.schema)
        raise InputError(
            f"{path}: no column holds numbers or equal-length lists of numbers without nulls "
            f"(columns: {cols})"
        )
    return out


def _open_table(path: Path, columns: list[str] | None) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdlens.store.format import METADATA_KEY

    if path.is_dir():  # a `datasets.save_to_disk` directory: its shards, in order
        shards = sorted(path.glob("*.arrow"))
        if not shards:
            raise InputError(f"{path}: a directory input must hold .arrow shards (data-*.arrow)")
        try:
            return pa.concat_tables([_open_table(f, columns) for f in shards])
        except pa.ArrowInvalid as exc:
            raise InputError(f"{path}: its shards do not share one schema ({_why(exc)})") from None
    try:
        if path.suffix.lower() == ".parquet":
            pf = pq.ParquetFile(path)
            if METADATA_KEY in (pf.schema_arrow.metadata or {}):
                raise InputError(
                    f"{path}: is a kdlens store file already; analyse it as it is, or copy "
                    "it into a store directory"
                )
            if columns is not None:
                columns = [c for c in columns if c in pf.schema_arrow.names]
            return pf.read(columns=columns)
        with pa.memory_map(str(path)) as src:
            try:
                return pa.ipc.open_file(src).read_all()
            except pa.ArrowInvalid:  # not the file format: datasets writes the stream one
                src.seek(0)
                return pa.ipc.open_stream(src).read_all()
    except InputError:
        raise
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        raise InputError(f"{path}: not a readable {path.suffix} table ({_why(exc)})") from None
    except Exception as exc:  # ArrowInvalid, ArrowTypeError, ...
        raise InputError(f"{path}: not a readable {path.suffix} table ({_why(exc)})") from None


def _column(col: Any) -> np.ndarray | None:
    """A numeric column as (N,), a column of equal-length numeric lists as (N, K), else None."""
    import pyarrow as pa

    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return None if col.null_count else col.to_numpy()
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        return None
    if not (pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type)):
        return None
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if arr.null_count:
        return None
    if pa.types.is_fixed_size_list(t):
        k = t.list_size
    else:
        offsets = arr.offsets.to_numpy()
        lengths = np.diff(offsets)
        if len(lengths) == 0 or (lengths != lengths[0]).any():
            return None
        k = int(lengths[0])
    values = arr.flatten()  # the values of this (possibly sliced) array, in row order
    if values.null_count:
        return None
    return values.to_numpy(zero_copy_only=False).reshape(len(arr), k)


def read_column(path: Path, name: str) -> np.ndarray:
    """One named array of a keyed input (``.npz``, ``.pt``, ``.safetensors``, a table)."""
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES or path.is_dir():
        return read_table(path, [name], only=True)[name]
    if suffix == ".safetensors":
        data = read_safetensors(path, [name])
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            data = {name: npz[name]} if name in npz.files else {}
    elif suffix in (".pt", ".pth"):
        from kdlens.store.arrays import _load_pt

        data = _load_pt(path)
    else:
        raise InputError(
            f"{path}: `id_column` needs a keyed input (.npz, .pt, .safetensors, .arrow or "
            f".parquet), not {suffix or 'a file without a suffix'}"
        )
    if name not in data:
        raise InputError(f"{path}: no array {name!r}")
    return np.asarray(data[name])


def read_example_ids(path: Path, name: str, rows: int) -> np.ndarray:
    """The ``example_id`` of each of ``rows`` rows: the key or column ``name``, checked to
    hold one distinct integer per row."""
    ids = read_column(path, name)
    if ids.ndim == 2 and 1 in ids.shape:
        ids = ids.reshape(-1)
    if ids.ndim != 1 or ids.shape[0] != rows:
        raise InputError(f"{path}: ids {name!r} have shape {ids.shape}, expected ({rows},)")
    if ids.dtype.kind not in "iu":
        raise InputError(f"{path}: ids {name!r} have dtype {ids.dtype}, expected integers")
    if ids.dtype.kind == "u" and ids.size and int(ids.max()) > np.iinfo(np.int64).max:
        raise InputError(f"{path}: ids {name!r} exceed the int64 range")
    ids = ids.astype(np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[np.argmax(counts > 1)])
        raise InputError(f"{path}: ids {name!r} repeat: {dup} appears {int(counts.max())} times")
    return ids
