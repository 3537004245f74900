"""The similarity's class sums ``sum_{x in c} q(x)``: one (K, K) update per batch.

A batch's labels are indexed once (:class:`ClassIndex`) and the index is shared by every
accumulator of the pass that sums the same rows (the report's T = 1 and T = 4), so the
class counts and the sparse class indicator are built once per slice, not per temperature.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csc_matrix

__all__ = ["ClassIndex", "add_class_sums"]

#: Largest class-sum temporary (values) built in one step: 4 M float64 = 32 MB.
_PRODUCT_VALUES = 1 << 22


class ClassIndex:
    """A batch's labels (n,) in ``[0, K)``: class counts, whether sorted, the indicator."""

    __slots__ = ("labels", "k", "counts", "present", "u", "ordered", "_onehot")

    def __init__(self, labels: np.ndarray, k: int) -> None:
        self.labels, self.k = labels, k
        self.counts = np.bincount(labels, minlength=k)
        self.present = self.counts > 0
        self.u = int(np.count_nonzero(self.present))
        self.ordered = labels.size > 1 and bool((labels[1:] >= labels[:-1]).all())
        self._onehot: csc_matrix | None = None

    def onehot(self) -> csc_matrix:
        """The sparse (classes present, n) indicator. Built column-wise (one entry per
        example, at its class's row): no sort or duplicate check. Only the classes present
        get a row, so a small batch at a large K stays small."""
        if self._onehot is None:
            n, y = self.labels.size, self.labels
            row = y if self.u == self.k else (np.cumsum(self.present) - 1)[y]
            self._onehot = csc_matrix((np.ones(n), row, np.arange(n + 1)), shape=(self.u, n))
        return self._onehot


def add_class_sums(q_sum: np.ndarray, q: np.ndarray, index: ClassIndex) -> None:
    """``q_sum[c] += sum of the rows of q labelled c``, in place (q: (n, K) float64)."""
    k, labels = index.k, index.labels
    if not index.ordered and index.u * k <= _PRODUCT_VALUES:
        # The sparse indicator times (n, K): O(nK), where a dense product is O(nK^2).
        if index.u == k:
            q_sum += index.onehot() @ q
        else:
            q_sum[index.present] += index.onehot() @ q
        return
    # Rows sorted by label (the pass sorts large-K batches): one run per class, no K x K
    # scatter. Unsorted rows at large K (where the product is a dense u x K temporary:
    # 200 MB at K = 5,000) are sorted here, in sub-blocks of ~4 M values.
    order = None if index.ordered else np.argsort(labels, kind="stable")
    step = max(1, _PRODUCT_VALUES // max(k, 1))
    for a in range(0, labels.size, step):
        o = slice(a, a + step) if order is None else order[a : a + step]
        ys = labels[o]
        starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
        q_sum[ys[starts]] += np.add.reduceat(q[o], starts, axis=0)
