"""``module:function`` datasets: the user's own arrays or ``torch.utils.data.Dataset``.

The function is found as a ``--model module:function`` factory is (a dotted module on
``sys.path`` or the working directory, or ``path/to/file.py:function``) and, like a
model factory, is called with the keyword arguments its signature accepts:

- ``function(split)`` (a parameter named ``split``): called with ``split="train"``,
  ``"val"`` and ``"test"``; each call returns that split, or ``None`` when the user has
  no such split (it is then split off ``train`` by the seeded stratified split; a
  ``val`` returned is used whole, a ``test`` subsampled by ``test_size``).
- ``function()``: returns the whole dataset, split by the seeded stratified split.

What a call returns: arrays ``(X, y)`` or ``(X, y, class_names)``, with X of shape
(N, ...) (numpy or torch; (N, H, W) gains a channel axis) and y (N,) integer class
indices; or a map-style Dataset (``len`` and ``ds[i]``) whose items are ``(x, y)``
pairs, read once, in index order, into one preallocated array; its ``classes``
attribute, when present, names the classes. The row index over train, val, test (in
that order) is the ``example_id``; the function must return the same data every time
it is called (``kdlens distill`` calls it again to re-create the examples).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from kdlens.errors import InputError
from kdlens.harness.sources import SourceData

__all__ = ["is_factory_spec", "load_user_dataset"]

_SPLITS = ("train", "val", "test")


def is_factory_spec(spec: str) -> bool:
    """Whether ``spec`` reads as ``module:function`` or ``path/to/file.py:function``."""
    mod, sep, fn = spec.rpartition(":")
    if not sep or not mod or not fn.isidentifier():
        return False
    return mod.endswith(".py") or all(part.isidentifier() for part in mod.split("."))


def _accepts_split(fn: Any) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "split" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu().numpy()
    return np.asarray(v)


class _Part:
    """One split as returned: its length, one example's shape and dtype, and a filler."""

    def __init__(self, obj: Any, where: str):
        self.where = where
        self.names: list[str] | None = None
        if isinstance(obj, tuple) and len(obj) in (2, 3):
            self.x, self.y = _to_numpy(obj[0]), _to_numpy(obj[1]).reshape(-1)
            if len(obj) == 3:
                self.names = [str(n) for n in obj[2]]
            if self.x.ndim < 2 or self.x.shape[0] != self.y.shape[0]:
                raise InputError(
                    f"{where}: X must be (N, ...) with one label per row, got X of shape "
                    f"{self.x.shape} and {self.y.shape[0]} labels"
                )
            self.ds = None
            self.n, self.shape, self.dtype = len(self.y), self.x.shape[1:], self.x.dtype
        elif hasattr(obj, "__getitem__") and hasattr(obj, "__len__"):
            self.ds = obj
            self.n = len(obj)
            if self.n == 0:
                raise InputError(f"{where}: the Dataset is empty")
            first = self._item(0)[0]
            self.shape, self.dtype = first.shape, first.dtype
            names = getattr(obj, "classes", None)
            self.names = [str(n) for n in names] if isinstance(names, Sequence) else None
            self.y = np.empty(self.n, np.int64)
        else:
            raise InputError(
                f"{where}: returned {type(obj).__name__}; return (X, y), (X, y, class_names), "
                "a map-style torch Dataset of (x, y) items, or None"
            )
        if self.dtype.kind not in "biuf":
            raise InputError(f"{where}: inputs have dtype {self.dtype}, expected numbers")

    def _item(self, i: int) -> tuple[np.ndarray, Any]:
        assert self.ds is not None
        try:
            item = self.ds[i]
        except Exception as exc:
            raise InputError(f"{self.where}: item {i} raised {type(exc).__name__}: {exc}") from None
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise InputError(
                f"{self.where}: item {i} is a {type(item).__name__}; items must be (x, y) pairs"
            )
        return _to_numpy(item[0]), item[1]

    def fill(self, x: np.ndarray, y: np.ndarray) -> None:
        """Write this split's inputs and labels into ``x`` and ``y`` (views of the whole)."""
        if self.ds is None:
            x[...] = self.x.reshape(x.shape)
            y[...] = _labels(self.y, self.where)
            return
        for i in range(self.n):
            xi, yi = self._item(i)
            if xi.shape != self.shape:
                raise InputError(
                    f"{self.where}: item {i} has shape {xi.shape} but item 0 has {self.shape}"
                )
            x[i] = xi.reshape(x.shape[1:])
            self.y[i] = _labels(_to_numpy(yi).reshape(-1), f"{self.where} item {i}")[0]
        y[...] = self.y


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    if y.dtype.kind not in "biu" or (y < 0).any():
        raise InputError(f"{where}: labels must be non-negative integer class indices")
    return y.astype(np.int64)


def load_user_dataset(spec: str) -> SourceData:
    """Call the ``module:function`` dataset (see the module docstring) into a source."""
    from kdlens.harness.models import import_factory

    fn = import_factory(spec, param="dataset")
    per_split = _accepts_split(fn)
    parts: dict[str, _Part] = {}
    for split in _SPLITS if per_split else ("all",):
        where = f"`dataset` {spec!r}" + (f" split {split!r}" if per_split else "")
        try:
            obj = fn(split=split) if per_split else fn()
        except Exception as exc:
            raise InputError(f"{where}: the function raised {type(exc).__name__}: {exc}") from None
        if obj is None and split in ("val", "test"):
            continue
        if obj is None:
            raise InputError(f"{where}: returned None; the training data is required")
        parts[split] = _Part(obj, where)
    first = next(iter(parts.values()))
    for p in parts.values():
        if p.shape != first.shape:
            raise InputError(
                f"{p.where}: examples of shape {p.shape} but {first.where} has {first.shape}"
            )
    n = sum(p.n for p in parts.values())
    dtype = np.result_type(*(p.dtype for p in parts.values()))
    x = np.empty((n, *first.shape), dtype)
    y = np.empty(n, np.int64)
    start = 0
    for p in parts.values():
        p.fill(x[start : start + p.n], y[start : start + p.n])
        start += p.n
    if x.ndim == 3:  # (N, H, W) grey images
        x = x[:, None]
    k = int(y.max()) + 1
    names = first.names
    if names is not None and len(names) < k:
        raise InputError(f"{first.where}: {len(names)} class names but labels go up to {k - 1}")
    n_tr = parts["train"].n if per_split else None
    return SourceData(
        x,
        y,
        names or [str(i) for i in range(max(k, 2))],
        spec,
        n_train_rows=n_tr if n_tr is not None and len(parts) > 1 else None,
        n_val_rows=parts["val"].n if "val" in parts else None,
    )
