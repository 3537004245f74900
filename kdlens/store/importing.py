"""Import logits or probabilities from .npy, .npz, .pt and CSV files into a store.

The kind of array is never guessed: ``kind`` says whether the numbers are logits,
probabilities or log-probabilities. Probabilities are stored as log-probabilities
(valid logits); zeros get the stated ``prob_floor`` instead of ``-inf``. Every
input becomes one checkpoint (named by its file stem unless given), all in one
run, and an import that fails part-way removes every file it wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.special import logsumexp

from kdlens._internal.lock import locked_output
from kdlens.errors import InputError
from kdlens.store.writer import CheckpointWriter

__all__ = ["ImportedCheckpoint", "import_files", "read_array_file"]

Kind = Literal["logits", "probs", "log-probs"]
KINDS = ("logits", "probs", "log-probs")
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


@dataclass(frozen=True)
class ImportedCheckpoint:
    source: Path
    path: Path
    run: str
    checkpoint: str
    rows: int


@locked_output("out")
def import_files(
    files: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    kind: Kind,
    labels: str | None = None,
    split: str = "test",
    run: str = "imported",
    checkpoints: Sequence[str] | None = None,
    classes: str | os.PathLike[str] | Sequence[str] | None = None,
    key: str | None = None,
    dataset: str | None = None,
    model: str | None = None,
    prob_floor: float = 1e-12,
    prob_tol: float = 1e-3,
    overwrite: bool = False,
) -> list[ImportedCheckpoint]:
    """Import each file as one checkpoint of one run into the store directory ``out``.

    Parameters
    ----------
    files : input arrays, shape (N, K) each: ``.npy``, ``.npz``, ``.pt`` (tensors
        only, loaded with ``weights_only=True``) or ``.csv`` (numeric columns).
    out : the store directory; each input is written to ``out/<run>/<checkpoint>.parquet``.
    kind : what the numbers are: ``logits``, ``probs`` or ``log-probs``.
    labels : a key (npz/pt) or column (csv) inside each input, or a path to a
        ``.npy``/``.txt``/``.csv`` file of N integer labels shared by every input.
        Default: a key or column named ``labels``, ``label``, ``y``, ``targets`` or
        ``ground_truth`` when present. A CSV whose first line is all numbers has no
        header.
    checkpoints : one name per input (default: the file stems).
    classes : class names: a list, or a ``.json`` list / ``.txt`` one name per line.
    key : the array's key inside ``.npz``/``.pt`` inputs (default: looked up by name).
    prob_floor : probabilities below it become ``log(prob_floor)``, never ``-inf``.
    prob_tol : rows of ``probs`` must sum to 1 within it (``log-probs``: logsumexp 0).
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not files:
        raise InputError("no input files given")
    if not 0 < prob_floor < 1:
        raise InputError(f"prob_floor must lie in (0, 1), got {prob_floor}")
    paths = [Path(f) for f in files]
    names = list(checkpoints) if checkpoints else [p.stem for p in paths]
    if len(names) != len(paths):
        raise InputError(f"{len(names)} checkpoint names for {len(paths)} input files")
    if len(set(names)) != len(names):
        raise InputError(f"checkpoint names must be unique, got {names}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: already exists and is not empty (pass `overwrite=True`)")
    class_names = _read_classes(classes)
    shared_labels = _read_label_file(Path(labels)) if labels and Path(labels).is_file() else None
    label_key = None if shared_labels is not None else labels

    created_dir = not out.exists()
    written: list[ImportedCheckpoint] = []
    try:
        for path, name in zip(paths, names, strict=True):
            arr, lab = read_array_file(path, key=key, label_key=label_key)
            if shared_labels is not None:
                lab = shared_labels
            z = _to_logits(arr, kind, path, prob_floor=prob_floor, prob_tol=prob_tol)
            if class_names is not None and len(class_names) != z.shape[1]:
                raise InputError(f"{path}: {len(class_names)} class names but K={z.shape[1]}")
            if lab is not None:
                lab = _check_labels(lab, z.shape, path)
            dest = out / run / f"{name}.parquet"
            config: dict[str, Any] = {"imported_from": str(path), "kind": kind}
            if kind == "probs":
                config["prob_floor"] = prob_floor
            with CheckpointWriter(
                dest,
                run=run,
                checkpoint=name,
                num_classes=z.shape[1],
                class_names=class_names,
                dataset=dataset,
                model=model,
                config=config,
                overwrite=overwrite,
            ) as w:
                w.write(z, split=split, labels=lab, example_ids=np.arange(z.shape[0]))
            written.append(ImportedCheckpoint(path, dest, run, name, z.shape[0]))
    except BaseException:
        for item in written:
            item.path.unlink(missing_ok=True)
        if created_dir and out.exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    return written


def read_array_file(
    path: Path, *, key: str | None = None, label_key: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load an (N, K) array and optional labels from one input file, safely."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{path}: not a plain numeric .npy array ({exc})") from None
        if label_key:
            raise InputError(f"{path}: a .npy holds one array; give `labels` as a file instead")
        return _check_2d(arr, path), None
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except Exception as exc:  # zipfile and numpy raise several types
            raise InputError(f"{path}: not a readable .npz ({exc})") from None
        return _pick(data, path, key, label_key)
    if suffix in (".pt", ".pth"):
        return _pick(_load_pt(path), path, key, label_key)
    if suffix in (".csv", ".tsv", ".txt"):
        return _read_csv(path, label_key)
    raise InputError(f"{path}: unsupported file type {suffix!r} (use .npy, .npz, .pt or .csv)")


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
        raise InputError(
            f"{path}: refused: not a tensor-only .pt file ({str(exc).splitlines()[0][:160]})"
        ) from None
    if isinstance(obj, torch.Tensor):
        return {"logits": obj.detach().float().numpy()}
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v.detach().numpy() for k, v in obj.items()}
    raise InputError(f"{path}: refused: a .pt input must hold a tensor or a dict of tensors")


def _pick(
    data: dict[str, np.ndarray], path: Path, key: str | None, label_key: str | None
) -> tuple[np.ndarray, np.ndarray | None]:
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


def _check_2d(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{path}: array has dtype {arr.dtype}, expected numbers")
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2:
        raise InputError(f"{path}: expected an (N, K) array with K >= 2, got shape {arr.shape}")
    return arr


def _check_labels(lab: Any, shape: tuple[int, ...], path: Path) -> np.ndarray:
    y = np.asarray(lab).reshape(-1)
    if y.shape[0] != shape[0]:
        raise InputError(f"{path}: {y.shape[0]} labels for {shape[0]} rows")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InputError(f"{path}: labels must be integers")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= shape[1])
    if bad.any():
        raise InputError(
            f"{path}: label {int(y[bad][0])} at row {int(np.flatnonzero(bad)[0])} "
            f"is outside [0, {shape[1]})"
        )
    return y


def _to_logits(
    arr: np.ndarray, kind: str, path: Path, *, prob_floor: float, prob_tol: float
) -> np.ndarray:
    x = arr.astype(np.float64)
    if kind == "logits":
        finite = np.isfinite(x).all()
        if finite and (x >= 0).all() and np.allclose(x.sum(axis=1), 1.0, atol=prob_tol):
            warnings.warn(
                f"{path}: every row lies in [0, 1] and sums to 1: these look like "
                "probabilities; use `kind=probs` unless they really are logits",
                stacklevel=3,
            )
        return x.astype(np.float32)
    if kind == "probs":
        if np.isnan(x).any() or (x < 0).any() or (x > 1 + prob_tol).any():
            raise InputError(f"{path}: probabilities must lie in [0, 1]; are these logits?")
        sums = x.sum(axis=1)
        off = np.abs(sums - 1.0) > prob_tol
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise InputError(
                f"{path}: {int(off.sum())} rows do not sum to 1 within {prob_tol} "
                f"(row {i} sums to {sums[i]:.6g}); are these logits?"
            )
        return np.log(np.maximum(x, prob_floor)).astype(np.float32)
    # log-probs: -inf is a zero probability; give it the same stated floor
    if np.isnan(x).any() or (x == np.inf).any():
        raise InputError(f"{path}: log-probabilities contain NaN or +inf")
    x = np.maximum(x, np.log(prob_floor))
    lse = logsumexp(x, axis=1)
    off = np.abs(lse) > prob_tol
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise InputError(
            f"{path}: {int(off.sum())} rows are not normalised log-probabilities "
            f"(row {i}: logsumexp = {lse[i]:.6g}); use `kind=logits`?"
        )
    return x.astype(np.float32)


def _read_label_file(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        raise InputError(f"{path}: give labels as a key of each input or a .npy/.txt file")
    try:
        return np.loadtxt(path, dtype=np.int64, delimiter=",", ndmin=1)
    except ValueError as exc:
        raise InputError(f"{path}: labels file is not a list of integers ({exc})") from None


def _read_classes(classes: Any) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, (list, tuple)):
        return [str(c) for c in classes]
    p = Path(classes)
    if not p.is_file():
        raise InputError(f"{p}: class-names file not found")
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        if not isinstance(data, list):
            raise InputError(f"{p}: expected a JSON list of class names")
        return [str(c) for c in data]
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]
