"""recommend's bootstrap: one more accumulator on the pass, at a cost independent of its size.

Design. Every example id is hashed (:func:`kdlens._internal.hashing.splitmix64`, the one
hash) into one of :data:`N_BUCKETS` buckets; the pass keeps, per bucket, the count and the
sums of the per-example signals (``np.bincount``: O(rows x signals) per batch, whatever
the number of replicates). Replicate ``r`` gives bucket ``b`` the Poisson(1) weight
:func:`~kdlens._internal.hashing.poisson_weights` of (seed, r, b), and a replicate's
signal is the weighted mean ``sum_b w_rb S_b / sum_b w_rb n_b``. This is a Poisson
bootstrap over random blocks of examples (about n / 1024 examples per block, i.i.d.
assigned by the hash): because examples are exchangeable within a split, resampling
random blocks has the variance of resampling examples, up to the block count (1024
blocks estimate a mean's spread to a few per cent). Because buckets and weights depend
only on example ids and the seed, the same example carries the same weight in every
checkpoint (paired comparisons), results do not depend on batch order, chunking or
workers, and merging two accumulators adds their sums exactly.

The NLL after a temperature fit is refitted in every replicate on the bounded
temperature-fit sample (:class:`~kdlens.measures.calibration.TemperatureFitAccumulator`):
per-example NLLs on a log-T grid around the fitted T are bucket-summed, each replicate's
curve is minimised (parabolic refinement at the grid minimum). The point estimate stays
the continuous fit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kdlens._internal.hashing import poisson_weights, splitmix64
from kdlens.measures.calibration import TemperatureFitAccumulator
from kdlens.store.parquet import Batch

__all__ = ["N_BUCKETS", "BootstrapExtra", "bucket_of", "refit_replicates", "replicate_weights"]

#: Buckets of example ids; stated in every output that shows bootstrap results.
N_BUCKETS = 1024
#: Per-example columns of the pass summed per bucket, and the signal each becomes.
_COLUMNS = {
    "correct": "accuracy",
    "nll": "nll",
    "entropy": "entropy",
    "dark_mass": "dark_mass",
    "oemc": "oemc_share",
}
#: Salt of the bucket hash, so buckets are independent of the temperature-fit sample,
#: which takes the ids with the smallest ``splitmix64(id)``.
_BUCKET_SALT = np.uint64(0x6B64_6C65_6E73_0001)
#: Log-T grid of the refitted replicates: half-width around log(fitted T), and points.
_GRID_HALF_WIDTH = 0.5
_GRID_POINTS = 41


def bucket_of(example_ids: np.ndarray, n_buckets: int = N_BUCKETS) -> np.ndarray:
    """The bootstrap bucket of each example id (int64 in ``[0, n_buckets)``)."""
    h = splitmix64(splitmix64(example_ids) ^ _BUCKET_SALT)
    return (h % np.uint64(n_buckets)).astype(np.int64)


def replicate_weights(n_bootstrap: int, seed: int, n_buckets: int = N_BUCKETS) -> np.ndarray:
    """Poisson(1) weights of the buckets, shape (n_bootstrap, n_buckets)."""
    return poisson_weights(np.arange(n_buckets, dtype=np.int64), n_bootstrap, seed)


class BootstrapExtra:
    """Pass extra: per-bucket count and signal sums of one part at ``temperature``."""

    def __init__(self, temperature: float, n_buckets: int = N_BUCKETS) -> None:
        self.temperature = float(temperature)
        self.n_buckets = int(n_buckets)
        self.count = np.zeros(self.n_buckets)
        self.sums = np.zeros((len(_COLUMNS), self.n_buckets))

    def update(self, batch: Batch, cols: dict[str, np.ndarray]) -> None:
        b = bucket_of(batch.example_ids, self.n_buckets)
        m = self.n_buckets
        self.count += np.bincount(b, minlength=m)
        for i, c in enumerate(_COLUMNS):
            self.sums[i] += np.bincount(b, weights=cols[c].astype(np.float64), minlength=m)

    def merge(self, other: BootstrapExtra) -> BootstrapExtra:
        if (other.temperature, other.n_buckets) != (self.temperature, self.n_buckets):
            raise ValueError("cannot merge bootstrap accumulators with different settings")
        self.count += other.count
        self.sums += other.sums
        return self

    def replicates(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Each signal's replicates (n_bootstrap,) for bucket weights (n_bootstrap, B)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            wn = weights @ self.count
            means = (weights @ self.sums.T) / wn[:, None]
        return {name: means[:, i] for i, name in enumerate(_COLUMNS.values())}


def refit_replicates(
    tfit: TemperatureFitAccumulator,
    fitted_temperature: float,
    weights: np.ndarray,
    bounds: tuple[float, float],
) -> np.ndarray:
    """NLL after a temperature refitted in each replicate, on the fit's sample (module doc)."""
    nb = weights.shape[0]
    # The sample of the fit (ids, logits, labels); read through its private arrays because
    # the accumulator keeps them for exactly this kind of re-evaluation.
    ids: np.ndarray = tfit._ids
    z: np.ndarray = tfit._z
    y: np.ndarray = tfit._y
    if ids.size == 0 or not math.isfinite(fitted_temperature):
        return np.full(nb, np.nan)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    c = math.log(fitted_temperature)
    grid = np.linspace(max(lo, c - _GRID_HALF_WIDTH), min(hi, c + _GRID_HALF_WIDTH), _GRID_POINTS)
    b = bucket_of(ids, weights.shape[1])
    curves = np.empty((weights.shape[1], grid.size))
    for j, nll in enumerate(_nll_on_grid(z, y, grid)):
        curves[:, j] = np.bincount(b, weights=nll, minlength=weights.shape[1])
    count = np.bincount(b, minlength=weights.shape[1]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rep = (weights @ curves) / (weights @ count)[:, None]
    return _parabolic_min(rep)


def _nll_on_grid(z: np.ndarray, y: np.ndarray, log_t: np.ndarray) -> Any:
    """Per-example NLL at each ``exp(log_t)``, one (n,) array per grid point."""
    d = z.astype(np.float64)
    d -= d.max(axis=1, keepdims=True)
    dy = d[np.arange(d.shape[0]), y]
    buf = np.empty_like(d)
    for lt in log_t:
        inv_t = math.exp(-lt)
        np.multiply(d, inv_t, out=buf)
        np.exp(buf, out=buf)
        yield np.log(buf.sum(axis=1)) - dy * inv_t


def _parabolic_min(curves: np.ndarray) -> np.ndarray:
    """Minimum of each row, refined by the parabola through the grid minimum's neighbours."""
    i = np.nanargmin(np.where(np.isnan(curves), np.inf, curves), axis=1)
    rows = np.arange(curves.shape[0])
    f0 = curves[rows, i]
    inner = (i > 0) & (i < curves.shape[1] - 1)
    il, ir = np.maximum(i - 1, 0), np.minimum(i + 1, curves.shape[1] - 1)
    fl, fr = curves[rows, il], curves[rows, ir]
    curv = fl - 2 * f0 + fr
    with np.errstate(invalid="ignore", divide="ignore"):
        refined = f0 - (fr - fl) ** 2 / (8 * curv)
    ok = inner & (curv > 0) & np.isfinite(refined)
    return np.where(ok, np.minimum(refined, f0), f0)
