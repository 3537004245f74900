"""Per-class histograms of the non-target probabilities, for the structure test's null.

The structure test's analytic null (:mod:`kdlens.hypotheses.structure`) needs the
distribution of one class's non-target entries, not only its power sums: ``SI_c`` under the
permutation null is ``Σ_j r_j log r_j`` of means ``r_j`` of heavy-tailed entries, and
``E[r log r]`` depends on the bulk of that distribution, which moments (dominated by the
largest entries) do not pin down. So each class keeps, per bin of ``q`` (two per octave,
``[2^e, 1.5·2^e)`` and ``[1.5·2^e, 2^(e+1))``, read from the float's exponent and first
mantissa bit: no logarithm), the number of entries, ``Σ q`` and ``Σ q²``. Entries below
``2^-LOW_OCTAVES`` share the lowest bin (their mass is < K·2^-40). Sums add, so merging is exact.

Rows sampled, not all: the histogram describes the class's pooled entries, which a few
hundred rows pin down, so each row gets a level from a hash of its content (level l with
probability 2^-(l+1), the last level taking the rest), and a class keeps the rows of levels
≥ its base ``b``: the highest level with ≥ :data:`SAMPLE_ROWS` rows at or above it (0 while
the class has fewer). Counts only grow, so a row skipped because its level was below the
running base is never needed, and the kept set depends only on the data, not on batching,
workers or order: merging is exact (sums add). Cost per batch: a hash per row, and three
``bincount`` over the kept rows' entries. The result pools ~256-512 rows per class (all of a
class with fewer), but rows are binned as they come, while the base is still rising: about
256 per class for every level the base passes (a class of 4,500 rows bins ~1,300 of them);
histograms of the same part that share their counts (:class:`PartLevels`, the analysis
pass's slots and tasks) pass the low levels sooner. Memory K x levels x :data:`N_BINS` x 3
float64 (2 KB per class and level).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

#: Octaves below q = 1 that get their own bins; smaller entries share the lowest bin.
LOW_OCTAVES = 40
#: Bins per class: two per octave, plus the lowest shared one.
N_BINS = 2 * LOW_OCTAVES + 1
#: The exponent and first mantissa bit (bits >> 51) of q in [0.75, 1): bin 0.
_TOP = (1022 << 1) + 1
#: Rows per class from which the histogram samples (module docstring).
SAMPLE_ROWS = 256
#: Sampling levels: down to a rate of 2^-(LEVELS-1) (1/512), i.e. all rows up to ~130,000
#: examples per class at >= 256 rows.
LEVELS = 10
#: Largest histogram (bytes) per accumulator: above K ~ 860 it gets fewer levels.
HIST_BYTES = 16 << 20


def levels_for(k: int) -> int:
    """Sampling levels of a K-class histogram: :data:`LEVELS`, fewer where K x levels x
    :data:`N_BINS` x 3 float64 would pass :data:`HIST_BYTES` (at K = 5,000: 1 level, 10 MB,
    where 10 took 97 MB per accumulator and pushed analyze past its 1.5 GiB goal). Fewer
    levels only keep more rows of very large classes (rate >= 2^-(levels-1)): more work,
    no less accuracy. A function of K alone, so every engine's partials merge."""
    return max(1, min(LEVELS, HIST_BYTES // (max(k, 1) * N_BINS * 3 * 8)))


class EntryHistogram:
    """Per class and level: the histogram of the kept rows' entries (module docstring).

    ``levels=1`` keeps every row (no sampling; K x 2 KB, for the large-K path).
    """

    def __init__(self, k: int, levels: int | None = None) -> None:
        self.levels = levels_for(k) if levels is None else int(levels)
        self.hist = np.zeros((k, self.levels, N_BINS, 3), np.float64)
        self.rows = np.zeros((k, self.levels), np.int64)  # rows seen per class and level
        #: the rows the other histograms of the same part have seen (:class:`PartLevels`)
        self.shared: PartLevels | None = None

    def add(self, q: np.ndarray, labels: np.ndarray, row_sq: np.ndarray) -> None:
        """Add a batch: ``q`` (n, K) with exactly 0 at the label, ``labels`` (n,),
        ``row_sq`` (n,) = Σ_j q_j² per row (the hash's input)."""
        k, nl = self.hist.shape[0], self.levels
        level = _level(row_sq, labels, nl)
        seen = np.bincount(labels * nl + level, minlength=k * nl).reshape(k, nl)
        self.rows += seen
        base = _base(self.rows) if self.shared is None else self.shared.add(seen)
        keep = level >= base[labels]
        add_entries(self.hist.reshape(k * nl, N_BINS, 3), q, labels * nl + level, keep)

    def merge(self, other: EntryHistogram) -> None:
        self.hist += other.hist
        self.rows += other.rows

    def __getstate__(self) -> dict[str, Any]:
        # The shared counts (and their lock) stay in the process that made them.
        return {**self.__dict__, "shared": None}

    def pooled(self) -> np.ndarray:
        """(K, N_BINS, 3): per class, the entries of its rows at levels ≥ its base."""
        base = _base(self.rows)
        use = np.arange(self.levels)[None, :] >= base[:, None]
        return np.einsum("kl,klbs->kbs", use.astype(np.float64), self.hist)


class PartLevels:
    """Rows per class and level seen so far by all the histograms of one part in this
    process (the pass's slots and tasks of that part, at one temperature).

    A histogram that counts only its own rows keeps half of its first batch (its base is
    still low), and the pass gives each task's slot a fresh histogram: at 1,000,000 x 100
    each saw one batch, so half of every row's entries were binned (40 % of the pass's
    profile samples). A histogram's base taken from these counts instead is still at most
    the part's final base (they are a subset of the part's rows, and the base only grows
    with counts), so every row the merged histogram pools is still kept: results are
    unchanged, bit for bit; only rows at levels below the final base, which
    :meth:`EntryHistogram.pooled` drops anyway, are skipped sooner.
    """

    def __init__(self, k: int, levels: int) -> None:
        self.rows = np.zeros((k, levels), np.int64)
        self._lock = threading.Lock()

    def add(self, seen: np.ndarray) -> np.ndarray:
        """Add one batch's rows per class and level; the bases of all rows seen so far."""
        with self._lock:
            self.rows += seen
            return _base(self.rows)


def _base(rows: np.ndarray) -> np.ndarray:
    """Per class, the highest level with >= SAMPLE_ROWS rows at or above it (else 0)."""
    tail = np.cumsum(rows[:, ::-1], axis=1)[:, ::-1]  # rows at level >= l
    ok = tail >= SAMPLE_ROWS
    return np.where(ok.any(axis=1), rows.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1), 0)


def _level(row_sq: np.ndarray, labels: np.ndarray, levels: int) -> np.ndarray:
    """A row's level from a splitmix64 hash of its Σ q² bits and label: l with probability
    2^-(l+1), capped at ``levels - 1``."""
    if levels == 1:
        return np.zeros(labels.shape, np.int64)
    h = np.ascontiguousarray(row_sq, np.float64).view(np.uint64).copy()
    h ^= labels.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    # Leading zero bits of h: 63 - floor(log2 h); via the top 53 bits as a float.
    top = (h >> np.uint64(11)).astype(np.float64)
    with np.errstate(divide="ignore"):
        lz = 52 - np.floor(np.log2(top))
    return np.minimum(np.where(top > 0, lz, levels - 1), levels - 1).astype(np.int64)


def empty_histogram(k: int) -> np.ndarray:
    """(K, :data:`N_BINS`, 3) zeros: per class and bin, entries, Σ q, Σ q²."""
    return np.zeros((k, N_BINS, 3), np.float64)


def add_entries(
    hist: np.ndarray, q: np.ndarray, labels: np.ndarray, keep: np.ndarray | None = None
) -> None:
    """Add a batch's non-target entries to ``hist`` (rows, N_BINS, 3) in place.

    ``q`` (n, K) float64 with exactly 0 at its label (that zero is not an entry: it is
    taken back out of the lowest bin), ``labels`` (n,): the ``hist`` row of each;
    ``keep`` (n,) bool: only these rows (default: all).
    """
    # In chunks of ~1 M entries: whole-batch n x K temporaries (int64 cells, squares) are
    # page-faulted in at every batch and made it 10x slower at K = 1,000. The chunks are
    # cut from the whole batch before ``keep`` filters it, so each cell's sum adds the same
    # rows in the same groups whichever other rows are kept (:class:`PartLevels` keeps
    # fewer rows at levels the result drops): the kept cells' bits do not depend on it.
    step = max(1, _CHUNK // max(q.shape[1], 1))
    for a in range(0, q.shape[0], step):
        qc, lc = q[a : a + step], labels[a : a + step]
        if keep is not None:
            kc = keep[a : a + step]
            if not kc.all():
                qc, lc = qc[kc], lc[kc]
        if lc.size:
            _add_chunk(hist, qc, lc)


#: Entries per chunk of :func:`add_entries`.
_CHUNK = 1 << 20


def _add_chunk(hist: np.ndarray, q: np.ndarray, labels: np.ndarray) -> None:
    # Count into the rows of ``hist`` this chunk touches only: a bincount over all of
    # ``hist`` (K x levels x bins) per chunk costs more than the chunk at K = 1,000.
    rows, local = _unique_inverse(labels)
    u = rows.size
    qf = np.ascontiguousarray(q, dtype=np.float64)
    # Bin from the bits: 0 for q in [0.75, 1], 1 for [0.5, 0.75), ...; q = 0 → the last.
    cell = qf.view(np.int64) >> 51
    np.subtract(_TOP, cell, out=cell)
    np.clip(cell, 0, N_BINS - 1, out=cell)
    cell += (local.astype(np.int64) * N_BINS)[:, None]
    cell = cell.ravel()
    size = u * N_BINS
    part = np.empty((size, 3))
    part[:, 0] = np.bincount(cell, minlength=size)
    part[:, 1] = np.bincount(cell, weights=qf.ravel(), minlength=size)
    part[:, 2] = np.bincount(cell, weights=np.square(qf).ravel(), minlength=size)
    # Each row's label holds q = 0, which landed in the lowest bin: it is no entry.
    part[N_BINS - 1 :: N_BINS, 0] -= np.bincount(local, minlength=u)
    hist[rows] += part.reshape(u, N_BINS, 3)


def _unique_inverse(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(labels, return_inverse=True)``, without its sort where the labels are
    sorted already (the analysis pass sorts large-K batches by label)."""
    if labels.size > 1 and bool((labels[1:] >= labels[:-1]).all()):
        new = np.empty(labels.size, bool)
        new[0] = True
        np.not_equal(labels[1:], labels[:-1], out=new[1:])
        return labels[new], np.cumsum(new) - 1
    return np.unique(labels, return_inverse=True)


def pooled_or_empty(hist: EntryHistogram | None) -> np.ndarray:
    """``hist.pooled()``, or an empty (0, 0, 3) array for an accumulator kept without one
    (``entries=False``: no structure test reads it)."""
    return hist.pooled() if hist is not None else np.zeros((0, 0, 3))
