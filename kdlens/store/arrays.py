"""Reading the arrays ``kdlens import`` takes: ``.npy``, ``.npz``, ``.pt`` (tensors only,
``weights_only=True``), ``.safetensors``, Arrow / Parquet tables
(:mod:`kdlens.store.hfformats`) and ``.csv``, each one (N, K) array with optional labels.

Nothing here unpickles: ``.npy``/``.npz`` are read with ``allow_pickle=False``, ``.pt``
with torch's weights-only loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kdlens.errors import InputError
from kdlens.store.arraystream import RowArray, open_npy, open_npz

__all__ = ["read_array_file"]

_ARRAY_KEYS = (
    "logits",
    "log_probs",
    "probs",
    "probabilities",
    "predictions",
    "pred_probs",
    "outputs",
)
_LABEL_KEYS = ("labels", "label", "y", "targets", "ground_truth")


def read_array_file(
    path: Path, *, key: str | None = None, label_key: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load an (N, K) array and optional labels from one input file, safely."""
    arr, lab = open_array_file(path, key=key, label_key=label_key)
    return np.asarray(arr), (None if lab is None else np.asarray(lab))


def open_array_file(
    path: Path, *, key: str | None = None, label_key: str | None = None
) -> tuple[Any, Any]:
    """As :func:`read_array_file`, but ``.npy`` and ``.npz`` inputs come back as
    :class:`~kdlens.store.arraystream.RowArray` (read by row ranges, or whole with
    ``np.asarray``): what ``kdlens import`` streams."""
    if not path.is_file() and not path.is_dir():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".safetensors", ".arrow", ".parquet"):
        # Hugging Face formats (a directory: `datasets.save_to_disk`'s .arrow shards).
        from kdlens.store.hfformats import read_safetensors, read_table

        if suffix == ".safetensors" and not path.is_dir():
            return _pick(read_safetensors(path), path, key, label_key)
        asked = [k for k in (key, label_key) if k is not None]
        return _pick(read_table(path, asked), path, key, label_key)
    if suffix == ".npy":
        # Read by row ranges later (kdlens.store.arraystream): never loaded whole.
        npy = open_npy(path)
        if label_key:
            raise InputError(f"{path}: a .npy holds one array; give `labels` as a file instead")
        return _check_2d(npy, path), None
    if suffix == ".npz":
        return _pick(open_npz(path), path, key, label_key)
    if suffix in (".pt", ".pth"):
        return _pick(_load_pt(path), path, key, label_key)
    if suffix in (".csv", ".tsv", ".txt"):
        return _read_csv(path, label_key)
    raise InputError(
        f"{path}: unsupported file type {suffix!r} "
        "(use .npy, .npz, .pt, .safetensors, .arrow, .parquet or .csv)"
    )


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except OSError:
        raise  # the OS's own error (permission, I/O): the CLI reports it with the path
    except Exception as exc:  # numpy raises ValueError, EOFError, UnpicklingError, ...
        text = str(exc).strip().splitlines()
        why = text[0][:160] if text else type(exc).__name__
        raise InputError(f"{path}: not a plain numeric .npy array ({why})") from None


def _load_pt(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise InputError(
            f"{path}: reading .pt files needs torch (pip install 'kdlens[torch]')"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:160]  # an empty file: no text
        raise InputError(f"{path}: refused: not a tensor-only .pt file ({why})") from None
    if isinstance(obj, torch.Tensor):
        return {"logits": obj.detach().float().numpy()}
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v.detach().numpy() for k, v in obj.items()}
    raise InputError(f"{path}: refused: a .pt input must hold a tensor or a dict of tensors")


def _pick(
    data: Mapping[str, np.ndarray | RowArray], path: Path, key: str | None, label_key: str | None
) -> tuple[Any, Any]:
    keys = sorted(data)
    if key is not None:
        if key not in data:
            raise InputError(f"{path}: no array {key!r} (keys: {', '.join(keys)})")
        arr = data[key]
    else:
        found = [k for k in _ARRAY_KEYS if k in data]
        if not found:
            two_d = [k for k in keys if data[k].ndim == 2]
            if len(two_d) != 1:
                raise InputError(
                    f"{path}: cannot tell which array holds the outputs "
                    f"(keys: {', '.join(keys)}); pass `key`"
                )
            found = two_d
        arr = data[found[0]]
    lab = None
    if label_key is not None:
        if label_key not in data:
            raise InputError(f"{path}: no labels {label_key!r} (keys: {', '.join(keys)})")
        lab = data[label_key]
    else:
        for k in _LABEL_KEYS:
            if k in data:
                lab = data[k]
                break
    return _check_2d(arr, path), lab


def _read_csv(path: Path, label_key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    import polars as pl

    sep = "\t" if path.suffix == ".tsv" else ","
    with path.open(encoding="utf-8", errors="replace") as fh:
        first = fh.readline().strip().split(sep)
    # A first line of numbers is data, not a header: reading it as names would drop a row.
    has_header = not all(_is_number(c) for c in first if c.strip())
    try:
        df = pl.read_csv(path, separator=sep, has_header=has_header)
    except Exception as exc:
        raise InputError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    lab = None
    if label_key is None:
        label_key = next((c for c in _LABEL_KEYS if c in df.columns), None)
    elif label_key not in df.columns:
        raise InputError(f"{path}: no column {label_key!r}")
    if label_key is not None:
        lab = df[label_key].to_numpy()
        df = df.drop(label_key)
    bad = [c for c, t in zip(df.columns, df.dtypes, strict=True) if not t.is_numeric()]
    if bad:
        raise InputError(f"{path}: column {bad[0]!r} is not numeric")
    return _check_2d(df.to_numpy().astype(np.float64), path), lab


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_2d(arr: Any, path: Path) -> Any:
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{path}: array has dtype {arr.dtype}, expected numbers")
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2:
        raise InputError(f"{path}: expected an (N, K) array with K >= 2, got shape {arr.shape}")
    return arr
