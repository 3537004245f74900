"""The one set of input checks of the measures and hypotheses (validate, then compute).

Every public function of :mod:`kdlens.measures` and :mod:`kdlens.hypotheses` checks its
arguments here and hands the checked arrays to a private ``_compute_*`` that trusts them.
Errors are :class:`~kdlens.errors.InputError` lines that name the parameter (``logits``,
``labels``, ``temperature``, ...), never a CLI flag, and the offending value and index.

The label rule, one for every function: labels are integers in ``[0, K)``. Integer
dtypes are taken as they are; float arrays are accepted when every value is integral
(``2.0`` is class 2, as scikit-learn reads it) and refused otherwise, naming the first
bad index. ``-1`` means "missing": it is accepted only by functions that document that
they skip (and count) unlabelled rows -- they pass ``allow_missing=True`` -- and refused
everywhere else.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kdlens.errors import InputError

__all__ = [
    "MISSING_LABEL",
    "check_class_names",
    "check_example_ids",
    "check_fraction",
    "check_labels",
    "check_logits",
    "check_logits_labels",
    "check_num_classes",
    "check_positive_int",
    "check_square",
    "check_temperature",
]

#: The label value that means "no label" where a function accepts unlabelled rows.
MISSING_LABEL = -1


def check_temperature(temperature: Any, *, name: str = "temperature") -> float:
    """A positive finite float."""
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive finite number, got {temperature!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise InputError(f"{name} must be a positive finite number, got {temperature!r}")
    return t


def check_fraction(value: Any, *, name: str) -> float:
    """A float in ``[0, 1]`` (e.g. the OEMC threshold ``oemc_delta``)."""
    try:
        d = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must lie in [0, 1], got {value!r}") from None
    if not 0.0 <= d <= 1.0:
        raise InputError(f"{name} must lie in [0, 1], got {value!r}")
    return d


def check_positive_int(value: Any, *, name: str, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (``n_bins``, ``n_permutations``, ...)."""
    try:
        i = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if i != value or i < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return i


def check_num_classes(value: Any, *, name: str = "num_classes") -> int:
    """K, at least 2 (one class has no soft label)."""
    return check_positive_int(value, name=name, minimum=2)


def check_class_names(class_names: Any, num_classes: Any) -> int:
    """K (at least 2), and as many class names as K when names are given."""
    k = check_num_classes(num_classes)
    if class_names is not None and len(class_names) != k:
        raise InputError(f"class_names has {len(class_names)} names but num_classes is {k}")
    return k


def check_logits(
    logits: Any, *, name: str = "logits", num_classes: int | None = None
) -> np.ndarray:
    """2-D ``(n, K)`` finite logits with ``K >= 2`` (and ``K == num_classes`` when given).

    Floating arrays are returned as they are (no copy: float32 stays float32 and the
    computation upcasts where it works); other numeric dtypes become float64.
    """
    z = np.asarray(logits)
    if z.ndim != 2:
        raise InputError(f"{name} must be 2-D (n, K), got shape {z.shape}")
    if num_classes is not None and z.shape[1] != num_classes:
        raise InputError(f"{name} must have K={num_classes} columns, got {z.shape[1]}")
    if z.shape[1] < 2:
        raise InputError(f"{name} must have at least 2 classes, got K={z.shape[1]}")
    if not np.issubdtype(z.dtype, np.floating):
        if not (np.issubdtype(z.dtype, np.integer) or z.dtype == np.bool_):
            raise InputError(f"{name} must be numeric, got dtype {z.dtype}")
        z = z.astype(np.float64)
    finite = np.isfinite(z).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise InputError(
            f"{name} holds {int(rows.size)} rows with NaN/Inf values (first at row {int(rows[0])})"
        )
    return z


def check_labels(
    labels: Any,
    n: int | None,
    k: int | None,
    *,
    name: str = "labels",
    allow_missing: bool = False,
) -> np.ndarray:
    """``(n,)`` int64 labels in ``[0, K)`` (or ``-1`` with ``allow_missing``); see the module
    docstring for the rule. A column vector ``(n, 1)`` is accepted as ``(n,)``. ``n=None``
    skips the length check and ``k=None`` the upper bound (where neither is known yet)."""
    y = np.asarray(labels)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise InputError(f"{name} must be 1-D (n,), got shape {y.shape}")
    if n is not None and y.shape[0] != n:
        raise InputError(
            f"logits and {name} must be same length, but logits has {n} rows "
            f"and {name} has {y.shape[0]}"
        )
    y = _as_int64(y, name)
    lo = MISSING_LABEL if allow_missing else 0
    bad = y < lo
    if k is not None:
        bad |= y >= k
    if bad.any():
        i = int(np.argmax(bad))
        v = int(y[i])
        if v == MISSING_LABEL:
            raise InputError(
                f"{name} must not be -1 (missing), found at index {i}: "
                "this function needs every row labelled"
            )
        top = "K" if k is None else k
        where = f"[0, {top}) or be -1 (missing)" if allow_missing else f"[0, {top})"
        raise InputError(f"{name} must lie in {where}, found {v} at index {i}")
    return y


def check_logits_labels(
    logits: Any,
    labels: Any,
    *,
    num_classes: int | None = None,
    allow_missing: bool = False,
    logits_name: str = "logits",
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`check_logits` and :func:`check_labels` of one batch."""
    z = check_logits(logits, name=logits_name, num_classes=num_classes)
    y = check_labels(labels, z.shape[0], z.shape[1], allow_missing=allow_missing)
    return z, y


def check_example_ids(example_ids: Any, n: int, *, name: str = "example_ids") -> np.ndarray:
    """``(n,)`` int64 ids, one per row of logits."""
    ids = np.asarray(example_ids)
    if ids.ndim != 1:
        ids = ids.reshape(-1)
    if ids.shape[0] != n:
        raise InputError(f"{name} has {ids.shape[0]} rows but logits has {n}")
    return _as_int64(ids, name)


def _as_int64(a: np.ndarray, name: str) -> np.ndarray:
    """Integers as int64; integral floats accepted, anything else refused at its first index."""
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"{name} must be integers, got dtype {a.dtype}")
        frac = ~(np.isfinite(a) & (np.mod(a, 1) == 0))
        if frac.any():
            i = int(np.argmax(frac))
            raise InputError(f"{name} must be integers, found {a[i].item()!r} at index {i}")
    return a.astype(np.int64, copy=False)


def check_square(m: Any, *, name: str = "S") -> np.ndarray:
    """A float64 ``(K, K)`` matrix with ``K >= 2`` (NaN rows allowed: absent classes)."""
    try:
        a = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a numeric (K, K) matrix") from None
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise InputError(f"{name} must be a square (K, K) matrix, got shape {a.shape}")
    if a.shape[0] < 2:
        raise InputError(f"{name} needs at least 2 classes, got {a.shape[0]}")
    return a
