"""Import logits or probabilities from .npy, .npz, .pt, .safetensors, Arrow/Parquet tables
and CSV files into a store.

The kind of array is never guessed: ``kind`` says whether the numbers are logits,
probabilities or log-probabilities. Probabilities are stored as log-probabilities
(valid logits); zeros get the stated ``prob_floor`` instead of ``-inf``. Every
input becomes one checkpoint (named by its file stem unless given), all in one
run, and an import that fails part-way removes every file it wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kdlens._internal.atomic import staged_dir
from kdlens._internal.lock import locked_output
from kdlens._internal.names import path_component
from kdlens._internal.progress import as_progress
from kdlens.errors import InputError
from kdlens.store.adding import read_existing
from kdlens.store.arrays import _load_npy, open_array_file, read_array_file
from kdlens.store.arraystream import RowArray
from kdlens.store.converting import LogitsConverter
from kdlens.store.format import default_batch_rows
from kdlens.store.fs import StorePath, store_path
from kdlens.store.hfformats import read_example_ids
from kdlens.store.scan import scan_file
from kdlens.store.writer import CheckpointWriter

__all__ = ["ImportedCheckpoint", "import_files", "read_array_file"]

Kind = Literal["logits", "probs", "log-probs"]
KINDS = ("logits", "probs", "log-probs")


@dataclass(frozen=True)
class ImportedCheckpoint:
    source: Path
    path: StorePath
    run: str
    checkpoint: str
    rows: int
    num_classes: int = 0


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
    epoch: int | None = None,
    batch_size: int | None = None,
    id_column: str | None = None,
    progress: Any = None,
    chunk_rows: int | None = None,
) -> list[ImportedCheckpoint]:
    """Import each file as one checkpoint of one run into the store directory ``out``.

    Parameters
    ----------
    files : input arrays, shape (N, K) each: ``.npy``, ``.npz``, ``.pt`` (tensors
        only, loaded with ``weights_only=True``), ``.safetensors``, an Arrow (``.arrow``,
        IPC file or stream, as ``datasets`` saves) or Parquet table (not a kdlens store)
        with a column of equal-length lists, or ``.csv`` (numeric columns).
    out : the store directory or URL; each input is written to
        ``out/<run>/<checkpoint>.parquet``.
    kind : what the numbers are: ``logits``, ``probs`` or ``log-probs``.
    labels : a key (npz/pt/safetensors) or column (table, csv) inside each input, or a path to a
        ``.npy``/``.txt``/``.csv`` file of N integer labels shared by every input.
        Default: a key or column named ``labels``, ``label``, ``y``, ``targets`` or
        ``ground_truth`` when present. A CSV whose first line is all numbers has no
        header.
    checkpoints : one name per input (default: the file stems).
    classes : class names: a list, or a ``.json`` list / ``.txt`` one name per line.
    key : the array's key or column inside ``.npz``/``.pt``/``.safetensors``/table inputs
        (default: ``logits``, ``log_probs``, ``probs``, ... when present, else the only
        2-D array).
    id_column : a key or column of a keyed input holding each row's ``example_id``
        (distinct integers); default: the row index.
    prob_floor : probabilities below it become ``log(prob_floor)``, never ``-inf``.
    prob_tol : rows of ``probs`` must sum to 1 within it (``log-probs``: logsumexp 0).
    epoch, batch_size : recorded on every imported checkpoint (the teacher's training
        epoch and batch size), so that recommend can map the grid.
    chunk_rows : rows converted and written at a time (default: one row group of the
        store, ``default_batch_rows(K)``). ``.npy``/``.npz`` inputs are read by row ranges
        (:mod:`kdlens.store.arraystream`), so memory holds one block, whatever N; the
        stored file does not depend on it (tested).

    A checkpoint file that exists gets ``split`` added when it does not hold that split
    yet (train and val logits from separate files); one that holds it is refused unless
    ``overwrite``.
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
    path_component(run, field="run")
    for name in names:
        path_component(name, field="checkpoint")
    out = store_path(out)  # a directory or a URL prefix (s3://bucket/store)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    class_names = _read_classes(classes)
    shared_labels = _read_label_file(Path(labels)) if labels and Path(labels).is_file() else None
    label_key = None if shared_labels is not None else labels
    kept_k = _kept_num_classes(out, run, names)

    prog = as_progress(progress)
    task = prog.add_task("importing", total=len(paths))
    written: list[ImportedCheckpoint] = []
    # A transaction: the new files are built beside `out` and moved in only when every
    # input has been read and written; on any failure `out` is as it was.
    with staged_dir(out) as stage:
        for path, name in zip(paths, names, strict=True):
            arr, lab = open_array_file(path, key=key, label_key=label_key)
            if shared_labels is not None:
                lab = shared_labels
            n, kk = int(arr.shape[0]), int(arr.shape[1])
            k = kept_k if kept_k is not None else (written[0].num_classes if written else None)
            if k is not None and kk != k:
                raise InputError(f"{path}: K={kk} but the store has K={k}")
            if class_names is not None and len(class_names) != kk:
                raise InputError(f"{path}: {len(class_names)} class names but K={kk}")
            if lab is not None:
                lab = _check_labels(lab, (n, kk), path)
            ids = read_example_ids(path, id_column, n) if id_column else np.arange(n)
            config: dict[str, Any] = {"imported_from": str(path), "kind": kind}
            if kind == "probs":
                config["prob_floor"] = prob_floor
            dest = out / run / f"{name}.parquet"
            # An existing checkpoint gets this split added (rewritten with its old rows),
            # unless it holds the split already; `overwrite` replaces it.
            old = (
                read_existing(dest, split=split, num_classes=kk)
                if (dest.exists() and not overwrite)
                else None
            )
            with CheckpointWriter(
                stage / run / f"{name}.parquet",
                run=run,
                checkpoint=name,
                num_classes=kk,
                epoch=epoch if old is None or epoch is not None else old.epoch,
                batch_size=batch_size if old is None or batch_size is not None else old.batch_size,
                class_names=class_names or (old.meta.get("class_names") if old else None),
                dataset=dataset or (old.meta.get("dataset") if old else None),
                model=model or (old.meta.get("model") if old else None),
                config=config,
            ) as w:
                if old is not None:
                    old.write_into(w)
                conv = LogitsConverter(kind, path, prob_floor=prob_floor, prob_tol=prob_tol)
                _stream(w, arr, conv, split=split, labels=lab, ids=ids, rows=chunk_rows)
            written.append(ImportedCheckpoint(path, dest, run, name, n, kk))
            prog.advance(task)
    return written


def _kept_num_classes(out: StorePath, run: str, names: Sequence[str]) -> int | None:
    """K of the store files an overwrite keeps (those this import does not replace)."""
    if not out.is_dir():
        return None
    replaced = {out / run / f"{n}.parquet" for n in names}
    found: list[StorePath] = sorted(out.rglob("*.parquet"), key=str)
    for f in found:
        if f not in replaced and not f.name.startswith("."):
            return scan_file(f).num_classes
    return None


def _check_labels(lab: Any, shape: tuple[int, ...], path: Path) -> np.ndarray:
    y = np.asarray(lab)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)  # a column or row vector of labels
    if y.ndim != 1:
        raise InputError(
            f"{path}: labels must be one integer per row, shape ({shape[0]},); "
            f"got an array of shape {y.shape} (one-hot or per-class scores? pass class indices)"
        )
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


def _stream(
    w: CheckpointWriter,
    arr: Any,
    conv: LogitsConverter,
    *,
    split: str,
    labels: np.ndarray | None,
    ids: np.ndarray,
    rows: int | None,
) -> None:
    """Convert and write ``arr`` one block of rows at a time (one row group per block by
    default), so memory holds one block, never the whole input."""
    n = int(arr.shape[0])
    step = max(1, rows or default_batch_rows(int(arr.shape[1])))
    for start in range(0, n, step):
        stop = min(start + step, n)
        block = arr.rows(start, stop) if isinstance(arr, RowArray) else arr[start:stop]
        z = conv.convert(block, start)
        if z is not None:
            w.write(
                z,
                split=split,
                labels=None if labels is None else labels[start:stop],
                example_ids=ids[start:stop],
            )
    if isinstance(arr, RowArray):
        arr.close()
    conv.finish()


def _read_label_file(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return _load_npy(path)
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
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise InputError(f"{p}: not a valid JSON list of class names ({exc})") from None
        if not isinstance(data, list):
            raise InputError(f"{p}: expected a JSON list of class names")
        return [str(c) for c in data]
    if p.suffix == ".csv":
        return _names_from_csv(p)
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


#: Name and id columns a class table may have (a CIFAR-100 fine-to-coarse CSV has both).
_NAME_COLUMNS = ("class_name", "fine_name", "name")
_ID_COLUMNS = ("class_id", "fine_id", "id")


def _names_from_csv(p: Path) -> list[str]:
    """Class names from a CSV with a header: a name column, in id order when an id column
    is there (the hierarchy files ``kdlens analyze --hierarchy`` reads qualify)."""
    import csv

    with p.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = set(rows[0]) if rows else set()
    name = next((c for c in _NAME_COLUMNS if c in cols), None)
    if name is None:
        raise InputError(f"{p}: a class-names CSV needs a column {' / '.join(_NAME_COLUMNS)}")
    ident = next((c for c in _ID_COLUMNS if c in cols), None)
    if ident is not None:
        try:
            rows.sort(key=lambda r: int(r[ident]))
        except ValueError:
            raise InputError(f"{p}: column {ident!r} must hold integer class ids") from None
    return [r[name].strip() for r in rows]
