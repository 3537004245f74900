"""The harness's train / val / test split of a dataset source.

:func:`split_dataset` makes a seeded, stratified split of a
:class:`~kdlens.harness.sources.SourceData` into ``train`` (the transfer set),
``val`` (held out) and ``test``, normalised with the transfer set's statistics;
:func:`prepare_data` loads a spec (:func:`~kdlens.harness.sources.load_source`) and
splits it. ``example_id`` is the row index in the source, the same in every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdlens.errors import InputError
from kdlens.harness.sources import SourceData, load_source

__all__ = ["SPLITS", "SplitArrays", "Splits", "prepare_data", "split_dataset"]

SPLITS = ("train", "val", "test")


@dataclass
class SplitArrays:
    x: np.ndarray  # float32, normalised
    y: np.ndarray  # int64
    ids: np.ndarray  # int64, row index in the source


@dataclass
class Splits:
    """The three splits, normalised with the transfer set's statistics."""

    splits: dict[str, SplitArrays]
    class_names: list[str]
    spec: str
    input_shape: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __getitem__(self, split: str) -> SplitArrays:
        return self.splits[split]


# --------------------------------------------------------------------------- split


def _size(value: float | int | None, n: int, name: str) -> int | None:
    if value is None:
        return None
    if value < 0:
        raise InputError(f"`{name}_size` must be positive, got {value}")
    if isinstance(value, float) and value < 1.0:
        return int(round(value * n))
    if float(value) != int(value):
        raise InputError(f"`{name}_size` must be a fraction below 1 or a count, got {value}")
    return int(value)


def _stratified_take(
    idx: np.ndarray, y: np.ndarray, count: int, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (taken ``count``, rest), stratified by ``y[idx]``."""
    from sklearn.model_selection import train_test_split

    if count <= 0:
        return idx[:0], idx
    if count >= len(idx):
        if count > len(idx):
            raise InputError(f"{what} asks for {count} examples but only {len(idx)} are left")
        return idx, idx[:0]
    try:
        rest, taken = train_test_split(idx, test_size=count, random_state=seed, stratify=y[idx])
    except ValueError as exc:
        raise InputError(f"cannot make a stratified {what} of {count} examples: {exc}") from None
    return np.sort(taken), np.sort(rest)


def split_dataset(
    src: SourceData,
    *,
    seed: int = 0,
    train_size: float | int | None = None,
    val_size: float | int | None = 0.2,
    test_size: float | int | None = None,
    label_noise: float = 0.0,
) -> Splits:
    """Seeded, stratified split into ``train`` / ``val`` / ``test`` (float32, normalised).

    When the dataset has its own test set, that is ``test`` (``test_size`` then
    subsamples it) and ``val`` comes out of the training rows; otherwise
    ``test_size`` defaults to 0.2. A dataset with its own val set (an image folder's
    ``val/``) uses it whole as ``val``; ``val_size`` then does not apply.
    ``train_size=None`` gives ``train`` every remaining row.
    ``label_noise`` flips that seeded fraction of ``train`` labels to another class;
    the flipped labels are the ones stored (the teacher trained on them).
    """
    if not 0.0 <= label_noise < 1.0:
        raise InputError(f"`label_noise` must lie in [0, 1), got {label_noise}")
    y = src.y
    n = len(y)
    # Fractions are of the rows available for training (the whole dataset when it
    # has no own test set), so "--val-size 0.2" means the same thing everywhere.
    base = src.n_train_rows if src.n_train_rows is not None else n
    n_own_val = src.n_val_rows or 0
    pool = np.arange(base)
    test_idx = np.arange(base + n_own_val, n)
    if len(test_idx):  # the dataset's own test set; `test_size` subsamples it
        t = _size(test_size, len(test_idx), "test")
        if t is not None and t < len(test_idx):
            test_idx, _ = _stratified_take(test_idx, y, t, seed, "test split")
    else:
        t = _size(0.2 if test_size is None else test_size, base, "test") or 0
        test_idx, pool = _stratified_take(pool, y, t, seed, "test split")
    if src.n_val_rows is not None:  # the dataset's own val set, used whole
        val_idx = np.arange(base, base + n_own_val)
    else:
        v = _size(val_size, base, "val") or 0
        val_idx, pool = _stratified_take(pool, y, v, seed + 1, "val split")
    tr = _size(train_size, base, "train")
    if tr is not None and tr > len(pool):
        raise InputError(f"train split asks for {tr} examples but only {len(pool)} are left")
    if tr is not None and tr < len(pool):
        train_idx, _ = _stratified_take(pool, y, tr, seed + 2, "train split")
    else:
        train_idx = pool
    if len(train_idx) == 0:
        raise InputError("the train split is empty: lower `val_size` / `test_size`")

    # Normalise with the transfer set's statistics: per channel for images. Each split is
    # cast to float32 on its own, so no float32 copy of the whole dataset is ever held.
    axes = (0, 2, 3) if src.x.ndim == 4 else (0,)
    xt = np.asarray(src.x[train_idx], dtype=np.float32)  # fancy indexing: a fresh copy
    mean = xt.mean(axis=axes, keepdims=True)
    std = xt.std(axis=axes, keepdims=True)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)

    def arrays(idx: np.ndarray, xs: np.ndarray | None = None) -> SplitArrays:
        xs = np.asarray(src.x[idx], dtype=np.float32) if xs is None else xs
        xs -= mean
        xs /= std
        return SplitArrays(xs, y[idx].copy(), idx.astype(np.int64))

    splits = {"train": arrays(train_idx, xt), "val": arrays(val_idx), "test": arrays(test_idx)}
    flipped = 0
    if label_noise > 0:
        rng = np.random.default_rng([seed, 7919])
        ytr = splits["train"].y
        m = int(round(label_noise * len(ytr)))
        which = rng.choice(len(ytr), size=m, replace=False)
        shift = rng.integers(1, src.num_classes, size=m)  # never the same class
        ytr[which] = (ytr[which] + shift) % src.num_classes
        flipped = m
    info = {
        "dataset": src.spec,
        "split_seed": seed,
        "train_size": train_size,
        "val_size": val_size,
        "test_size": test_size,
        "label_noise": label_noise,
        "labels_flipped": flipped,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_test": len(test_idx),
    }
    return Splits(splits, list(src.class_names), src.spec, tuple(src.x.shape[1:]), info)


def prepare_data(
    spec: str,
    *,
    seed: int = 0,
    train_size: float | int | None = None,
    val_size: float | int | None = 0.2,
    test_size: float | int | None = None,
    label_noise: float = 0.0,
) -> Splits:
    """:func:`load_source` then :func:`split_dataset`; what dump and distill both call."""
    return split_dataset(
        load_source(spec),
        seed=seed,
        train_size=train_size,
        val_size=val_size,
        test_size=test_size,
        label_noise=label_noise,
    )
