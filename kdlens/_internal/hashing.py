"""splitmix64: the one hash that turns example ids into fixed pseudo-random numbers.

Both the temperature-fit sample (the examples with the smallest hash) and the bootstrap
weights (a hash of seed, replicate and id) are keyed by example id, so they are the same
in every checkpoint, batch order and chunking.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["poisson_weights", "splitmix64"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 in and out; products wrap mod 2^64)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M2
        x = (x ^ (x >> np.uint64(27))) * _M3
        return x ^ (x >> np.uint64(31))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 of ``x``: the finaliser of ``x + golden ratio``."""
    with np.errstate(over="ignore"):
        return _mix(np.asarray(x).astype(np.uint64) + _GOLDEN)


_POISSON1_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(20)])


def poisson_weights(example_ids: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """Deterministic Poisson(1) weights, shape (n_bootstrap, n), keyed by example id.

    The weight of an example depends only on (seed, replicate, id), so weighted sums
    stream, merge in any order and pair across checkpoints.
    """
    ids = np.asarray(example_ids, dtype=np.int64).astype(np.uint64)
    reps = np.arange(n_bootstrap, dtype=np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(
        1 << 20
    )
    with np.errstate(over="ignore"):
        x = _mix(ids[None, :] * _GOLDEN + (reps[:, None] + np.uint64(1)) * _M2)
    u = (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return np.searchsorted(_POISSON1_CDF, u, side="right").astype(np.float64)
