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
the per-example NLL and its first two derivatives in log T at the fitted T are
bucket-summed, and each replicate's curve is minimised by one Newton step (exact to third
order in the small shift of a replicate's optimum; one exponential per logit where a
grid of temperatures would cost one per grid point). The point estimate stays the
continuous fit.
"""

from __future__ import annotations

import math

import numpy as np

from kdlens._internal.hashing import poisson_weights, splitmix64
from kdlens.measures.calibration import TemperatureFitAccumulator
from kdlens.store.format import Batch

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
    """NLL after a temperature refitted in each replicate, on the fit's sample (module doc).

    Each replicate's mean NLL as a function of ``u = log T`` is expanded to second order
    around the fitted ``u0`` from bucket sums of the per-example value, slope and
    curvature, and minimised in closed form: ``F - F'^2 / (2 F'')``. A replicate's
    optimum lies close to the full sample's (it reweights the same examples), where the
    expansion is accurate to third order in the shift; the step is clipped to ``bounds``.
    One exponential per logit, whatever the number of replicates.
    """
    nb, m = weights.shape
    ids, z, y = tfit.sample
    if ids.size == 0 or not math.isfinite(fitted_temperature):
        return np.full(nb, np.nan)
    f, d1, d2 = _nll_derivatives(z, y, fitted_temperature)
    b = bucket_of(ids, m)
    sums = np.stack([np.bincount(b, weights=v, minlength=m) for v in (f, d1, d2)])
    count = np.bincount(b, minlength=m).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        F, G, H = (weights @ sums.T / (weights @ count)[:, None]).T
        step = np.where(H > 0, -G / H, 0.0)
    u0 = math.log(fitted_temperature)
    step = np.clip(step, math.log(bounds[0]) - u0, math.log(bounds[1]) - u0)
    return F + G * step + 0.5 * H * step**2


def _nll_derivatives(
    z: np.ndarray, y: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example NLL at T and its first two derivatives in ``u = log T``.

    With ``a = 1 / T``, ``d = z - max z`` and ``p = softmax(a d)``: ``f = LSE(a d) - a d_y``,
    ``df/du = -a (E_p[d] - d_y)``, ``d2f/du2 = a^2 Var_p[d] + a (E_p[d] - d_y)``.
    """
    a = 1.0 / temperature
    d = z.astype(np.float64)
    d -= d.max(axis=1, keepdims=True)
    dy = d[np.arange(d.shape[0]), y]
    e = np.exp(d * a)
    s = e.sum(axis=1)
    m1 = np.einsum("ij,ij->i", e, d) / s
    m2 = np.einsum("ij,ij->i", e * d, d) / s
    f = np.log(s) - a * dy
    g = m1 - dy
    return f, -a * g, a * a * np.maximum(m2 - m1 * m1, 0.0) + a * g
