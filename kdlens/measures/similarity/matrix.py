"""Class similarity ``S``, similarity information ``SI`` and instance information ``II``:
the streaming accumulator and the array functions (definitions in
:mod:`kdlens.measures.similarity`)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import log_softmax, xlogy

from kdlens._internal.accumulator import Accumulator
from kdlens._internal.checks import (
    check_logits_labels,
    check_num_classes,
    check_square,
    check_temperature,
)
from kdlens.errors import InputError
from kdlens.measures.similarity.classsums import ClassIndex, add_class_sums
from kdlens.measures.similarity.spread import EntryHistogram, pooled_or_empty

__all__ = [
    "SimilarityAccumulator",
    "SimilarityResult",
    "instance_information",
    "similarity_estimate",
    "similarity_information",
    "similarity_matrix",
]


def _nontarget_logq(z: np.ndarray, y: np.ndarray, temperature: float) -> np.ndarray:
    """``log q`` (n, K) float64 with ``-inf`` at the label: log-softmax of z_{≠y}/T."""
    s = z.astype(np.float64) / temperature
    s[np.arange(s.shape[0]), y] = -np.inf
    return log_softmax(s, axis=1)


@dataclass
class SimilarityResult:
    """Class similarity of one checkpoint and split (see :mod:`kdlens.measures.similarity`).

    Arrays are indexed by class; classes absent from the data have NaN rows/entries.
    """

    matrix: np.ndarray  #: (K, K) S, rows sum to 1, zero diagonal
    counts: np.ndarray  #: (K,) examples per class
    si_per_class: np.ndarray  #: (K,) KL(S[c] ‖ U)
    ii_per_class: np.ndarray  #: (K,) mean KL(q_x ‖ S[c])
    similarity_information: float  #: mean SI_c over present classes
    instance_information: float  #: mean II_c over present classes
    temperature: float
    estimate: np.ndarray  #: (K, K) degree-normalised symmetrised S, for graphs/clustering
    #: (K,) mean over x in c of KL(q_x ‖ uniform) = SI_c + II_c
    kl_uniform_per_class: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: (K,) sum over x in c of sum_j q_x(j)^2 (the structure test's analytic null needs it)
    q_sqsum_per_class: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: (K, bins, 3) per class and bin of q: entries, sum q, sum q^2 (the analytic null's
    #: input; :mod:`kdlens.measures.similarity.spread`)
    entry_hist_per_class: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 3)))
    #: rows labelled -1 (missing) that the accumulator skipped
    n_unlabeled: int = 0

    @property
    def num_classes(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def present(self) -> np.ndarray:
        """(K,) bool: classes with at least one example."""
        return np.asarray(self.counts > 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (matrices as nested lists, NaN as None)."""

        def _l(a: np.ndarray) -> Any:
            return np.where(np.isfinite(a), a, np.nan).astype(object).tolist()

        def _clean(v: Any) -> Any:
            if isinstance(v, list):
                return [_clean(x) for x in v]
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v

        return {
            "temperature": self.temperature,
            "num_classes": self.num_classes,
            "similarity_information": _clean(self.similarity_information),
            "instance_information": _clean(self.instance_information),
            "counts": self.counts.tolist(),
            "n_unlabeled": self.n_unlabeled,
            "si_per_class": _clean(_l(self.si_per_class)),
            "ii_per_class": _clean(_l(self.ii_per_class)),
            "matrix": _clean(_l(self.matrix)),
        }


class SimilarityAccumulator(Accumulator):
    """Streaming class similarity: ``update`` batches, ``merge`` partial results, ``finalize``.

    Keeps only per-class sums in float64 (memory O(K²)); merging is exact (sums add),
    so the result does not depend on how the data were split into batches or workers.

    Parameters
    ----------
    num_classes : int
        K.
    temperature : float
        T of ``q = softmax(z_{≠y} / T)``; recorded in the result.

    Rows labelled -1 (missing) carry no class and are skipped by :meth:`update`; they are
    counted in ``n_unlabeled`` (and the result's), not dropped silently.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        temperature: float = 1.0,
        entries: bool = True,
    ) -> None:
        k = check_num_classes(num_classes)
        self.num_classes = k
        self.temperature = check_temperature(temperature)
        self.n_unlabeled = 0
        self.counts = np.zeros(k, np.int64)
        self.q_sum = np.zeros((k, k), np.float64)  # sum of q per class
        self.negent_sum = np.zeros(k, np.float64)  # sum of sum_j q log q per class
        self.q_sqsum = np.zeros(k, np.float64)  # sum of sum_j q^2 per class
        # The structure test's null needs it; ``entries=False`` where none reads it (a
        # histogram update costs about as much as the rest of this accumulator's update).
        self.entry_hist = EntryHistogram(k) if entries else None

    def update(self, logits: Any, labels: Any) -> SimilarityAccumulator:
        """Add a batch: ``logits`` (n, K), ``labels`` (n,) int with -1 = skip (counted)."""
        z, y = check_logits_labels(logits, labels, num_classes=self.num_classes, allow_missing=True)
        labeled = y >= 0
        if not labeled.all():
            self.n_unlabeled += int(y.size - np.count_nonzero(labeled))
            z, y = z[labeled], y[labeled]
        if y.size:
            self._update(z, y)
        return self

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "temperature": self.temperature,
            "entries": self.entry_hist is not None,
        }

    def _update(self, z: np.ndarray, y: np.ndarray) -> None:
        q = np.exp(_nontarget_logq(z, y, self.temperature))  # exactly 0 at the label
        self.update_nontarget(q, -xlogy(q, q).sum(axis=1), y)

    def update_nontarget(
        self,
        q: np.ndarray,
        nontarget_entropy: np.ndarray,
        labels: np.ndarray,
        index: ClassIndex | None = None,
    ) -> SimilarityAccumulator:
        """Add a batch whose non-target distributions are already computed.

        For callers that hold ``q`` from their own log-softmax pass (``analyze``):
        ``q`` (n, K) float64 with 0 at the label and rows summing to 1, computed at
        this accumulator's temperature; ``nontarget_entropy`` (n,) is ``H(q)``;
        ``labels`` (n,) in ``[0, K)``; ``index``: their :class:`ClassIndex`, when the
        caller shares one between accumulators. Trusted, not validated.
        """
        k = self.num_classes
        index = ClassIndex(labels, k) if index is None else index
        self.counts += index.counts
        add_class_sums(self.q_sum, q, index)
        self.negent_sum -= np.bincount(labels, weights=nontarget_entropy, minlength=k)
        row_sq = np.einsum("ij,ij->i", q, q)
        self.q_sqsum += np.bincount(labels, weights=row_sq, minlength=k)
        if self.entry_hist is not None:
            self.entry_hist.add(q, labels, row_sq)
        return self

    def _merge(self, other: SimilarityAccumulator) -> None:
        """Add another accumulator's sums into this one (exact)."""
        self.n_unlabeled += other.n_unlabeled
        self.counts += other.counts
        self.q_sum += other.q_sum
        self.negent_sum += other.negent_sum
        self.q_sqsum += other.q_sqsum
        if self.entry_hist is not None and other.entry_hist is not None:
            self.entry_hist.merge(other.entry_hist)

    def finalize(self, *, warn_absent: bool = True) -> SimilarityResult:
        """The :class:`SimilarityResult`; warns when classes are absent."""
        return _finalize(self, warn_absent=warn_absent)


def _finalize(acc: SimilarityAccumulator, *, warn_absent: bool) -> SimilarityResult:
    k = acc.num_classes
    n = acc.counts.astype(np.float64)
    present = acc.counts > 0
    if warn_absent and not present.all():
        missing = np.flatnonzero(~present)
        shown = ", ".join(map(str, missing[:10])) + (" ..." if missing.size > 10 else "")
        if present.any():
            warnings.warn(
                f"{missing.size} of {k} classes have no examples (classes {shown}); "
                "their similarity rows are NaN and SI/II average over the present classes",
                stacklevel=3,
            )
        else:
            warnings.warn("no labelled examples: similarity is undefined (NaN)", stacklevel=3)
    with np.errstate(invalid="ignore", divide="ignore"):
        S = acc.q_sum / n[:, None]
        kl_u = acc.negent_sum / n + math.log(k - 1)  # mean KL(q_x ‖ U)
    S[~present] = np.nan
    np.fill_diagonal(S, np.where(present, 0.0, np.nan))
    si = _si_rows(S)
    if k == 2:
        # q is a point mass: nothing to learn beyond the label; avoid 0 - tiny rounding.
        si = np.where(present, 0.0, np.nan)
        kl_u = np.where(present, 0.0, np.nan)
    kl_u = np.where(present, np.maximum(kl_u, 0.0), np.nan)
    # II_c by the identity; the rounding floor keeps an exactly uniform teacher at 0.
    ii = np.where(present, np.maximum(kl_u - si, 0.0), np.nan)
    # A uniform non-target distribution gives ~1e-15 from rounding in log(K-1): report 0.
    tiny = 1e-12 * max(1.0, math.log(k - 1))
    kl_u = np.where(np.abs(kl_u) < tiny, 0.0, kl_u)
    ii = np.where(np.abs(ii) < tiny, 0.0, ii)
    est = _compute_estimate(S)
    return SimilarityResult(
        matrix=S,
        counts=acc.counts.copy(),
        si_per_class=si,
        ii_per_class=ii,
        similarity_information=_nanmean(si),
        instance_information=_nanmean(ii),
        temperature=acc.temperature,
        estimate=est,
        kl_uniform_per_class=kl_u,
        q_sqsum_per_class=acc.q_sqsum.copy(),
        entry_hist_per_class=pooled_or_empty(acc.entry_hist),
        n_unlabeled=acc.n_unlabeled,
    )


def _nanmean(a: np.ndarray) -> float:
    finite = a[np.isfinite(a)]
    return float(finite.mean()) if finite.size else float("nan")


def _si_rows(S: np.ndarray) -> np.ndarray:
    """KL(S[c] ‖ uniform over K−1) per row, ignoring the diagonal; NaN rows stay NaN."""
    k = S.shape[0]
    with np.errstate(invalid="ignore"):
        terms = xlogy(S, S)  # one K x K temporary; the diagonal is 0 or NaN already
        np.fill_diagonal(terms, np.where(np.isnan(np.diagonal(S)), np.nan, 0.0))
        si = terms.sum(axis=1) + math.log(k - 1)
        del terms
    si = np.where(np.isnan(S).any(axis=1), np.nan, np.maximum(si, 0.0))
    # An exactly uniform row gives |si| ~ 1e-16 from rounding: report 0.
    return np.where(np.abs(si) < 1e-13, 0.0, si)


def _compute_estimate(S: np.ndarray) -> np.ndarray:
    """Degree-normalised symmetrised similarity ``D^{-1/2} W D^{-1/2}``
    (:mod:`kdlens.measures.similarity`). Built in place: one K x K array besides ``S``
    (at K = 5,000 each temporary is 200 MB)."""
    present = ~np.isnan(S).all(axis=1)
    E = _symmetric_affinity(S)
    d = E.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.where(d > 0, 1.0 / np.sqrt(d), 0.0)
    E *= inv[:, None]
    E *= inv[None, :]
    E[~present, :] = np.nan
    E[:, ~present] = np.nan
    return E


def _symmetric_affinity(S: np.ndarray) -> np.ndarray:
    W = np.add(S, S.T)
    W *= 0.5
    np.nan_to_num(W, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.fill_diagonal(W, 0.0)
    return W


def top_entries(S: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(source, target, weight)`` of each present row's ``top`` largest off-diagonal
    entries (all K − 1 when ``top >= K − 1``), by row then target (ties at the cut are
    broken by numpy's partition). Works on blocks of rows, so it holds O(block x K)."""
    k = S.shape[0]
    top = max(0, min(int(top), k - 1))
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    step = max(1, (1 << 22) // max(k, 1))
    for a in range(0, k, step):
        blk = np.array(S[a : a + step], np.float64)
        rows = np.arange(a, a + blk.shape[0])
        blk[np.arange(blk.shape[0]), rows] = -np.inf  # the diagonal is never an entry
        keep = ~np.isnan(blk).any(axis=1)  # absent classes have NaN rows
        blk, rows = blk[keep], rows[keep]
        idx: np.ndarray
        if top == 0:
            idx = np.zeros((blk.shape[0], 0), np.int64)
        elif top < k - 1:
            idx = np.argpartition(-blk, top - 1, axis=1)[:, :top]
        else:
            idx = np.broadcast_to(np.arange(k), blk.shape)
        idx = np.sort(idx, axis=1)
        w = np.take_along_axis(blk, idx, axis=1)
        ok = np.isfinite(w)  # drops the diagonal's -inf
        src = np.broadcast_to(rows[:, None], idx.shape)[ok]
        out.append((src.astype(np.int64), idx[ok].astype(np.int64), w[ok]))
    if not out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return tuple(np.concatenate(c) for c in zip(*out, strict=True))  # type: ignore[return-value]


def _accumulate(logits: Any, labels: Any, temperature: float) -> SimilarityAccumulator:
    z, y = check_logits_labels(logits, labels)
    acc = SimilarityAccumulator(z.shape[1], temperature=temperature)
    if y.size:
        acc._update(z, y)
    return acc


def similarity_matrix(logits: Any, labels: Any, *, temperature: float = 1.0) -> np.ndarray:
    """The similarity matrix ``S`` (K, K) of ``science.md``.

    Parameters
    ----------
    logits : (n, K) array
    labels : (n,) int array in ``[0, K)``, every row labelled (for partly labelled data,
        :class:`SimilarityAccumulator` skips and counts the -1 rows)
    temperature : float
    """
    return _accumulate(logits, labels, temperature).finalize().matrix


def similarity_estimate(S: Any) -> np.ndarray:
    """The (K, K) estimate used for graphs and clustering, from a similarity matrix ``S``:
    ``D^{-1/2} W D^{-1/2}`` with ``W = (S + Sᵀ)/2`` (see :mod:`kdlens.measures.similarity`)."""
    return _compute_estimate(check_square(S))


def similarity_information(S: Any, *, per_class: bool = False) -> Any:
    """``SI`` = mean over present classes of ``KL(S[c] ‖ uniform over K−1)``.

    With ``per_class=True`` returns the (K,) vector ``SI_c`` (NaN for absent rows).
    """
    m = check_square(S)
    si = np.zeros(m.shape[0]) if m.shape[0] == 2 else _si_rows(m)
    si = np.where(np.isnan(m).all(axis=1) | np.isnan(m).any(axis=1), np.nan, si)
    return si if per_class else _nanmean(si)


def instance_information(
    logits: Any,
    labels: Any,
    S: Any = None,
    *,
    temperature: float = 1.0,
    per_class: bool = False,
) -> Any:
    """``II`` computed directly as the class mean of ``mean_{x in c} KL(q_x ‖ S[c])``.

    ``S`` defaults to the similarity matrix of the same data. With ``per_class=True``
    returns the (K,) vector ``II_c``.
    """
    t = check_temperature(temperature)
    z, y = check_logits_labels(logits, labels)
    k = z.shape[1]
    m = similarity_matrix(z, y, temperature=t) if S is None else check_square(S)
    if m.shape[0] != k:
        raise InputError(f"S is {m.shape[0]}x{m.shape[0]} but logits have K={k}")
    ii = np.full(k, np.nan)
    if y.size:
        if k == 2:
            per_x = np.zeros(y.shape[0])
        else:
            logq = _nontarget_logq(z, y, t)
            q = np.exp(logq)
            with np.errstate(divide="ignore", invalid="ignore"):
                logS = np.log(m[y])
                terms = np.where(q > 0, q * (logq - logS), 0.0)
            per_x = terms.sum(axis=1)
        counts = np.bincount(y, minlength=k)
        sums = np.bincount(y, weights=per_x, minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            ii = np.where(counts > 0, sums / counts, np.nan)
    return ii if per_class else _nanmean(ii)
