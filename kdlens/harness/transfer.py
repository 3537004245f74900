"""What a student trains and is tested on: one teacher checkpoint's data, matched by id.

The store holds the teacher's logits and ``example_id`` per row; the inputs come
from the dataset source (re-created from the store's metadata), normalised with
the transfer set's statistics as ``kdlens dump`` did. A store without a test
split has its test ids re-created from the dump's recorded split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdlens.errors import InputError, StoreError
from kdlens.harness.data import prepare_data
from kdlens.harness.sources import SourceData
from kdlens.store.reader import LogitsStore

__all__ = ["TeacherData", "teacher_data"]


@dataclass
class TeacherData:
    """One teacher checkpoint's transfer set and test set, as its students see them."""

    run: str
    checkpoint: str
    spec: str
    epoch: int | None
    batch_size: int | None
    xtr: np.ndarray
    ytr: np.ndarray
    zt: np.ndarray | None  # the teacher's train logits; None for plain students
    xte: np.ndarray
    te_ids: np.ndarray
    te_y: np.ndarray
    teacher_acc: float
    plain: bool


def teacher_data(
    st: LogitsStore,
    r: str,
    ck: str,
    meta: dict[str, Any],
    spec: str,
    src: SourceData,
    *,
    plain: bool,
) -> TeacherData:
    tr = st.load(r, ck, "train")
    if len(tr) == 0:
        raise StoreError(f"{st.source}: run={r!r} checkpoint={ck!r} has no train rows")
    te_ids, te_y, te_logits = _test_part(st, r, ck, meta, spec, src)
    part = st.find(r, ck, "train")[0]
    xtr, xte = _inputs(src, tr.example_ids, te_ids, where=f"{r}/{ck}")
    ytr = np.where(tr.labels >= 0, tr.labels, src.y[tr.example_ids]).astype(np.int64)
    if (ytr >= st.num_classes).any() or src.num_classes > st.num_classes:
        raise InputError(
            f"dataset {spec!r} has {src.num_classes} classes but the store has K={st.num_classes}"
        )
    teacher_acc = (
        float((te_logits.argmax(1) == te_y).mean())
        if te_logits is not None and not plain
        else float("nan")
    )
    zt = None if plain else tr.logits
    return TeacherData(
        r,
        ck,
        spec,
        part.epoch,
        part.batch_size,
        xtr,
        ytr,
        zt,
        xte,
        te_ids,
        te_y,
        teacher_acc,
        plain,
    )


def _test_part(
    st: LogitsStore, r: str, ck: str, meta: dict[str, Any], spec: str, src: SourceData
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Test ids, labels and teacher logits; ids re-created from the dump's split if absent."""
    if any(p.split == "test" for p in st.find(r, ck)):
        te = st.load(r, ck, "test")
        ids = te.example_ids
        _check_ids(ids, len(src.y), f"{r}/{ck} test")
        y = np.where(te.labels >= 0, te.labels, src.y[ids]).astype(np.int64)
        return ids, y, te.logits
    d = (meta.get("config") or {}).get("data") or {}
    if not d:
        raise StoreError(
            f"{st.source}: run={r!r} checkpoint={ck!r} has no test split and no "
            "recorded split to re-create it from"
        )
    splits = prepare_data(
        spec,
        seed=int(d.get("split_seed", 0)),
        train_size=d.get("train_size"),
        val_size=d.get("val_size", 0.2),
        test_size=d.get("test_size"),
    )
    te_ids = splits["test"].ids
    return te_ids, src.y[te_ids].astype(np.int64), None


def _check_ids(ids: np.ndarray, n: int, where: str) -> None:
    if len(ids) and (ids.min() < 0 or ids.max() >= n):
        raise InputError(
            f"{where}: example ids run {int(ids.min())}..{int(ids.max())} but the dataset "
            f"has {n} rows; "
            "is `dataset` the one the teacher was dumped from?"
        )


_NORM_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _inputs(
    src: SourceData, train_ids: np.ndarray, test_ids: np.ndarray, *, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised inputs of the given rows, with the transfer set's statistics (as dump does)."""
    _check_ids(train_ids, len(src.y), f"{where} train")
    x = src.x
    key = hashlib.sha1(np.ascontiguousarray(np.sort(train_ids)).tobytes()).hexdigest() + src.spec
    if key not in _NORM_CACHE:
        axes = (0, 2, 3) if x.ndim == 4 else (0,)
        xt = x[train_ids].astype(np.float32)
        mean = xt.mean(axis=axes, keepdims=True)
        std = xt.std(axis=axes, keepdims=True)
        _NORM_CACHE.clear()  # one transfer set at a time is the common case
        _NORM_CACHE[key] = (mean, np.where(std > 1e-6, std, 1.0).astype(np.float32))
    mean, std = _NORM_CACHE[key]
    xtr = ((x[train_ids].astype(np.float32) - mean) / std).astype(np.float32)
    xte = ((x[test_ids].astype(np.float32) - mean) / std).astype(np.float32)
    return xtr, xte
