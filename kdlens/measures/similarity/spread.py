"""Per-class histograms of the non-target probabilities, for the structure test's null.

The structure test's analytic null (:mod:`kdlens.hypotheses.structure`) needs the
distribution of one class's non-target entries, not only its power sums: ``SI_c`` under the
permutation null is ``Σ_j r_j log r_j`` of means ``r_j`` of heavy-tailed entries, and
``E[r log r]`` depends on the bulk of that distribution, which moments (dominated by the
largest entries) do not pin down. So each class keeps, per bin of ``q`` (two per octave,
``[2^e, 1.5·2^e)`` and ``[1.5·2^e, 2^(e+1))``, read from the float's exponent and first
mantissa bit: no logarithm), the number of entries, ``Σ q`` and ``Σ q²``. Entries below
``2^-LOW_OCTAVES`` share the lowest bin (their mass is < K·2^-40). Sums add, so merging is exact.

Cost per batch: three ``bincount`` over the (n, K) entries; memory K x :data:`N_BINS` x 3
float64 (2 KB per class).
"""

from __future__ import annotations

import numpy as np

#: Octaves below q = 1 that get their own bins; smaller entries share the lowest bin.
LOW_OCTAVES = 40
#: Bins per class: two per octave, plus the lowest shared one.
N_BINS = 2 * LOW_OCTAVES + 1
#: The exponent and first mantissa bit (bits >> 51) of q in [0.75, 1): bin 0.
_TOP = (1022 << 1) + 1


def empty_histogram(k: int) -> np.ndarray:
    """(K, :data:`N_BINS`, 3) zeros: per class and bin, entries, Σ q, Σ q²."""
    return np.zeros((k, N_BINS, 3), np.float64)


def add_entries(hist: np.ndarray, q: np.ndarray, labels: np.ndarray) -> None:
    """Add a batch's non-target entries to ``hist`` in place.

    ``q`` (n, K) float64 with exactly 0 at the label (that zero is not an entry: it is
    taken back out of the lowest bin), ``labels`` (n,) in ``[0, K)``.
    """
    k = hist.shape[0]
    qf = np.ascontiguousarray(q, dtype=np.float64)
    # Bin from the bits: 0 for q in [0.75, 1], 1 for [0.5, 0.75), ...; q = 0 → the last.
    # In place: each n x K temporary costs ~2 ns an entry.
    cell = qf.view(np.int64) >> 51
    np.subtract(_TOP, cell, out=cell)
    np.clip(cell, 0, N_BINS - 1, out=cell)
    cell += (labels.astype(np.int64) * N_BINS)[:, None]
    cell = cell.ravel()
    size = k * N_BINS
    flat = hist.reshape(size, 3)
    flat[:, 0] += np.bincount(cell, minlength=size)
    flat[:, 1] += np.bincount(cell, weights=qf.ravel(), minlength=size)
    flat[:, 2] += np.bincount(cell, weights=np.square(qf).ravel(), minlength=size)
    # Each row's label holds q = 0, which landed in the lowest bin: it is no entry.
    hist[:, N_BINS - 1, 0] -= np.bincount(labels, minlength=k)
