"""One shared set of named test inputs: synthetic teachers with known properties.

Every generator returns ``(logits, labels)`` as float32 ``(n, K)`` and int64 ``(n,)``
(plus extras where named) and is deterministic in ``seed``. Property tests loop
over ``NAMED_TEACHERS`` instead of repeating one test per teacher.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: A logit gap that makes exp(-gap) underflow to exactly 0 in float64.
ONE_HOT_GAP = 1.0e4


def balanced_labels(n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(n) % k).astype(np.int64)


def random_teacher(n: int = 600, k: int = 10, *, seed: int = 0, scale: float = 3.0):
    """Gaussian logits with a bump on the label: a generic, imperfect teacher."""
    rng = np.random.default_rng(seed)
    y = balanced_labels(n, k, seed)
    z = rng.normal(0.0, scale, size=(n, k))
    z[np.arange(n), y] += scale
    return z.astype(np.float32), y


def one_hot_teacher(n: int = 600, k: int = 10, *, seed: int = 0):
    """All mass on the label: dark mass exactly 0 at any T <= 1."""
    y = balanced_labels(n, k, seed)
    z = np.zeros((n, k), np.float32)
    z[np.arange(n), y] = ONE_HOT_GAP
    return z, y


def label_smoothing_teacher(n: int = 600, k: int = 10, *, seed: int = 0, target_logit: float = 3.0):
    """Equal non-target logits: the non-target distribution is exactly uniform."""
    rng = np.random.default_rng(seed)
    y = balanced_labels(n, k, seed)
    z = np.zeros((n, k), np.float32)
    # Per-example target logits vary, so examples differ in dark mass but never in q.
    z[np.arange(n), y] = target_logit + rng.normal(0, 1, size=n).astype(np.float32)
    return z, y


def noisy_label_smoothing_teacher(
    n: int = 600, k: int = 10, *, seed: int = 0, noise: float = 0.5, target_logit: float = 4.0
):
    """The structure test's null: label smoothing plus noise with no class consistency."""
    rng = np.random.default_rng(seed)
    y = balanced_labels(n, k, seed)
    z = rng.normal(0.0, noise, size=(n, k))
    z[np.arange(n), y] = target_logit
    return z.astype(np.float32), y


def superclass_teacher(
    n_per_class: int = 40,
    n_super: int = 4,
    per_super: int = 3,
    *,
    seed: int = 0,
    noise: float = 0.3,
):
    """Non-target mass only inside the true superclass.

    Returns ``(logits, labels, superclass_of_class)``; classes ``c`` belong to
    superclass ``c // per_super``.
    """
    rng = np.random.default_rng(seed)
    k = n_super * per_super
    sup = np.arange(k) // per_super
    y = balanced_labels(n_per_class * k, k, seed)
    n = y.shape[0]
    z = np.full((n, k), -ONE_HOT_GAP, np.float64)
    same = sup[None, :] == sup[y][:, None]
    z[same] = rng.normal(0.0, noise, size=int(same.sum()))
    z[np.arange(n), y] = 5.0
    return z.astype(np.float32), y, sup


NAMED_TEACHERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "random": random_teacher,
    "one_hot": one_hot_teacher,
    "label_smoothing": label_smoothing_teacher,
    "noisy_label_smoothing": noisy_label_smoothing_teacher,
    "superclass": lambda **kw: superclass_teacher(**kw)[:2],
}


def partly_labelled_teacher(n: int = 600, k: int = 10, *, seed: int = 0, missing: float = 0.25):
    """The random teacher with a share of labels missing (-1), for the functions that
    document that they skip and count unlabelled rows."""
    z, y = random_teacher(n, k, seed=seed)
    rng = np.random.default_rng(seed + 1)
    y = y.copy()
    y[rng.random(n) < missing] = -1
    return z, y


#: Every named input: the teachers plus one with missing labels.
NAMED_INPUTS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    **NAMED_TEACHERS,
    "partly_labelled": partly_labelled_teacher,
}
