"""Class similarity: what a teacher's non-target mass says about which classes are alike.

Definitions (``science.md``), with ``q = softmax(z_{≠y} / T)`` the non-target
distribution of one example over the K − 1 other classes, computed in log space so
it stays exact when ``p_y`` rounds to 1:

* similarity matrix ``S[c, j] = mean over examples of class c of q(j)``, ``S[c, c] = 0``;
  each row sums to 1. Rows of classes absent from the data are NaN.
* similarity information ``SI_c = KL(S[c] ‖ uniform over K − 1)``; ``SI = mean_c SI_c``
  over the classes present.
* instance information ``II_c = mean_{x in c} KL(q_x ‖ S[c])``; ``II = mean_c II_c``.
* the identity ``mean_{x in c} KL(q_x ‖ uniform) = SI_c + II_c`` holds exactly; the
  accumulator obtains ``II_c`` through it (only per-class sums are kept), while
  :func:`instance_information` computes the KL directly, so a test can compare the two.

K = 2: the non-target distribution is a point mass on the one other class, so no
non-target structure is possible; ``SI = II = 0`` by definition.

**The similarity estimate used for graphs and clustering** (``SimilarityResult.estimate``)
is the degree-normalised symmetrised matrix

    W = (S + Sᵀ) / 2,   E = D^{-1/2} W D^{-1/2},   D = diag(row sums of W)

(zero diagonal, NaN for absent classes). Symmetrising makes "c is mistaken for j" and
"j is mistaken for c" one piece of evidence; the degree normalisation (as in the
normalised cut) stops "hub" classes that attract mass from every class from pulling
unrelated classes into one cluster. It is a function of ``S`` only, so it streams
exactly like ``S``. :func:`cluster_classes` uses average linkage on ``max E − E``.

Evidence (``examples/similarity_cifar.py``; published CIFAR-100 / CIFAR-10 test logits):
superclass recovery (ARI, 20 clusters) over six CIFAR-100 models and agreement
(Spearman over off-diagonal entries) with the CIFAR-10H human similarity over nineteen
CIFAR-10 models, mean/min, at T = 1:

==============================  ===========  ===========
estimate                        ARI          agreement
==============================  ===========  ===========
naive S, affinity linkage       0.542/0.499  0.816/0.793
naive S, both symmetrised       (same)       0.836/0.802
E (this module), symmetrised    0.552/0.503  0.842/0.804
==============================  ===========  ===========

The gain is small: the targets of ARI 0.70 and agreement 0.90 were not reached.
Alternatives tried and rejected for lack of a consistent gain (same data): geometric
class means of ``q`` (0.548 ARI with affinity linkage, 0.384 with row-correlation
distance), temperatures 1.5–8, dark-mass weighting of examples, top-k truncation of
``q``, correct- or wrong-only examples, PMI / column normalisation, mutual ranks,
profile (Hellinger / correlation / cosine) distances, spectral clustering (0.47–0.52),
complete linkage. Even the average ``S`` of all six CIFAR-100 models reaches only
ARI 0.63: the CIFAR-100 superclasses are partly semantic, not visual, so an ARI of
0.7 from one model's test logits looks out of reach for per-class-sum estimates.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.sparse import csr_matrix
from scipy.special import log_softmax, xlogy

from kdlens._internal.atomic import atomic_path, write_text_atomic
from kdlens.errors import InputError

__all__ = [
    "SimilarityAccumulator",
    "SimilarityResult",
    "similarity_matrix",
    "similarity_information",
    "instance_information",
    "similarity_from_probs",
    "similarity_estimate",
    "similarity_graph",
    "cluster_classes",
    "superclass_recovery",
    "reference_agreement",
    "write_graph",
    "write_edges_parquet",
    "ClassGraph",
    "read_hierarchy",
    "store_class_graph",
]

# --------------------------------------------------------------------------- validation


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise InputError(f"temperature must be a positive finite number, got {temperature}")
    return t


def _check_logits_labels(
    logits: Any, labels: Any, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits)
    if z.ndim != 2:
        raise InputError(f"logits must be 2-D (n, K), got shape {z.shape}")
    if num_classes is not None and z.shape[1] != num_classes:
        raise InputError(f"logits must have K={num_classes} columns, got {z.shape[1]}")
    if z.shape[1] < 2:
        raise InputError(f"logits need at least 2 classes, got {z.shape[1]}")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise InputError(f"labels must be 1-D (n,), got shape {y.shape}")
    if y.shape[0] != z.shape[0]:
        raise InputError(
            f"logits and labels must be same length, but logits is length {z.shape[0]} "
            f"and labels is length {y.shape[0]}"
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    k = z.shape[1]
    bad = (y < -1) | (y >= k)
    if bad.any():
        raise InputError(f"labels must lie in [0, {k}) or be -1 (missing), found {int(y[bad][0])}")
    keep = y >= 0
    z = z[keep]
    y = y[keep]
    if not np.isfinite(z).all():
        raise InputError("logits contain NaN or infinite values")
    return z, y


def _check_square(S: Any, name: str = "S") -> np.ndarray:
    m = np.asarray(S, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise InputError(f"{name} must be a square (K, K) matrix, got shape {m.shape}")
    if m.shape[0] < 2:
        raise InputError(f"{name} needs at least 2 classes, got {m.shape[0]}")
    return m


# --------------------------------------------------------------------------- per-example core


def _nontarget_logq(z: np.ndarray, y: np.ndarray, temperature: float) -> np.ndarray:
    """``log q`` (n, K) float64 with ``-inf`` at the label: log-softmax of z_{≠y}/T."""
    s = z.astype(np.float64) / temperature
    s[np.arange(s.shape[0]), y] = -np.inf
    return log_softmax(s, axis=1)


# --------------------------------------------------------------------------- accumulator


@dataclass
class SimilarityResult:
    """Class similarity of one checkpoint and split (see the module docstring).

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
            "si_per_class": _clean(_l(self.si_per_class)),
            "ii_per_class": _clean(_l(self.ii_per_class)),
            "matrix": _clean(_l(self.matrix)),
        }


class SimilarityAccumulator:
    """Streaming class similarity: ``update`` batches, ``merge`` partial results, ``finalize``.

    Keeps only per-class sums in float64 (memory O(K²)); merging is exact (sums add),
    so the result does not depend on how the data were split into batches or workers.

    Parameters
    ----------
    num_classes : int
        K.
    temperature : float
        T of ``q = softmax(z_{≠y} / T)``; recorded in the result.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        temperature: float = 1.0,
    ) -> None:
        k = int(num_classes)
        if k < 2:
            raise InputError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = k
        self.temperature = _check_temperature(temperature)
        self.counts = np.zeros(k, np.int64)
        self.q_sum = np.zeros((k, k), np.float64)  # sum of q per class
        self.negent_sum = np.zeros(k, np.float64)  # sum of sum_j q log q per class
        self.q_sqsum = np.zeros(k, np.float64)  # sum of sum_j q^2 per class

    def update(self, logits: Any, labels: Any) -> SimilarityAccumulator:
        """Add a batch: ``logits`` (n, K), ``labels`` (n,) int with -1 = skip."""
        z, y = _check_logits_labels(logits, labels, self.num_classes)
        if y.size == 0:
            return self
        self._update(z, y)
        return self

    def _update(self, z: np.ndarray, y: np.ndarray) -> None:
        q = np.exp(_nontarget_logq(z, y, self.temperature))  # exactly 0 at the label
        self.update_nontarget(q, -xlogy(q, q).sum(axis=1), y)

    def update_nontarget(
        self, q: np.ndarray, nontarget_entropy: np.ndarray, labels: np.ndarray
    ) -> SimilarityAccumulator:
        """Add a batch whose non-target distributions are already computed.

        For callers that hold ``q`` from their own log-softmax pass (``analyze``):
        ``q`` (n, K) float64 with 0 at the label and rows summing to 1, computed at
        this accumulator's temperature; ``nontarget_entropy`` (n,) is ``H(q)``;
        ``labels`` (n,) in ``[0, K)``. Trusted, not validated.
        """
        k = self.num_classes
        n = labels.shape[0]
        self.counts += np.bincount(labels, minlength=k)
        # Class sums as a sparse (K, n) indicator times (n, K): O(nK), where a dense
        # indicator product would be O(nK^2).
        onehot = csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n))
        self.q_sum += onehot @ q
        self.negent_sum -= np.bincount(labels, weights=nontarget_entropy, minlength=k)
        self.q_sqsum += np.bincount(labels, weights=np.einsum("ij,ij->i", q, q), minlength=k)
        return self

    def merge(self, other: SimilarityAccumulator) -> SimilarityAccumulator:
        """Add another accumulator's sums into this one (exact); returns ``self``."""
        if not isinstance(other, SimilarityAccumulator):
            raise InputError(f"can only merge a SimilarityAccumulator, got {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise InputError(
                f"cannot merge accumulators with K={self.num_classes} and K={other.num_classes}"
            )
        if other.temperature != self.temperature:
            raise InputError(
                f"cannot merge accumulators at temperature {self.temperature} "
                f"and {other.temperature}"
            )
        self.counts += other.counts
        self.q_sum += other.q_sum
        self.negent_sum += other.negent_sum
        self.q_sqsum += other.q_sqsum
        return self

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
    )


def _nanmean(a: np.ndarray) -> float:
    finite = a[np.isfinite(a)]
    return float(finite.mean()) if finite.size else float("nan")


def _si_rows(S: np.ndarray) -> np.ndarray:
    """KL(S[c] ‖ uniform over K−1) per row, ignoring the diagonal; NaN rows stay NaN."""
    k = S.shape[0]
    off = ~np.eye(k, dtype=bool)
    with np.errstate(invalid="ignore"):
        terms = np.where(off, xlogy(S, S), 0.0)
        si = terms.sum(axis=1) + math.log(k - 1)
    si = np.where(np.isnan(S).any(axis=1), np.nan, np.maximum(si, 0.0))
    # An exactly uniform row gives |si| ~ 1e-16 from rounding: report 0.
    return np.where(np.abs(si) < 1e-13, 0.0, si)


def _compute_estimate(S: np.ndarray) -> np.ndarray:
    """Degree-normalised symmetrised similarity ``D^{-1/2} W D^{-1/2}`` (module docstring)."""
    present = ~np.isnan(S).all(axis=1)
    W = _symmetric_affinity(S)
    d = W.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.where(d > 0, 1.0 / np.sqrt(d), 0.0)
    E = W * inv[:, None] * inv[None, :]
    E[~present, :] = np.nan
    E[:, ~present] = np.nan
    return E


# --------------------------------------------------------------------------- array level


def _accumulate(logits: Any, labels: Any, temperature: float) -> SimilarityAccumulator:
    z, y = _check_logits_labels(logits, labels)
    acc = SimilarityAccumulator(z.shape[1], temperature=temperature)
    if y.size:
        acc._update(z, y)
    return acc


def similarity_matrix(logits: Any, labels: Any, *, temperature: float = 1.0) -> np.ndarray:
    """The similarity matrix ``S`` (K, K) of ``science.md``.

    Parameters
    ----------
    logits : (n, K) array
    labels : (n,) int array, -1 = skip
    temperature : float
    """
    return _accumulate(logits, labels, temperature).finalize().matrix


def similarity_estimate(S: Any) -> np.ndarray:
    """The (K, K) estimate used for graphs and clustering, from a similarity matrix ``S``:
    ``D^{-1/2} W D^{-1/2}`` with ``W = (S + Sᵀ)/2`` (see the module docstring)."""
    return _compute_estimate(_check_square(S))


def similarity_information(S: Any, *, per_class: bool = False) -> Any:
    """``SI`` = mean over present classes of ``KL(S[c] ‖ uniform over K−1)``.

    With ``per_class=True`` returns the (K,) vector ``SI_c`` (NaN for absent rows).
    """
    m = _check_square(S)
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
    t = _check_temperature(temperature)
    z, y = _check_logits_labels(logits, labels)
    k = z.shape[1]
    m = similarity_matrix(z, y, temperature=t) if S is None else _check_square(S)
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


def similarity_from_probs(probs: Any, labels: Any, *, weighting: str = "example") -> np.ndarray:
    """A reference similarity matrix from probability rows (e.g. human soft labels).

    Parameters
    ----------
    probs : (n, K) array of probabilities (rows sum to 1), **not** logits.
    labels : (n,) int array, -1 = skip.
    weighting : {"example", "mass"}
        ``"example"``: ``S[c]`` is the class mean of the renormalised non-target
        distribution ``q`` (the definition of ``science.md``); examples with no
        non-target mass at all (every annotator chose the label) carry no
        non-target information and are skipped. ``"mass"``: ``S[c]`` is the class
        sum of the non-target probabilities, normalised once per row (examples
        weighted by their non-target mass).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise InputError(f"probs must be 2-D (n, K), got shape {p.shape}")
    if (p < 0).any() or not np.isfinite(p).all():
        raise InputError("probs must be finite and non-negative (are these logits?)")
    rowsum = p.sum(axis=1)
    if p.size and np.abs(rowsum - 1.0).max() > 1e-3:
        raise InputError(
            f"probs rows must sum to 1 (max deviation {np.abs(rowsum - 1.0).max():.3g}); "
            "pass logits to similarity_matrix instead"
        )
    if weighting not in ("example", "mass"):
        raise InputError(f"weighting must be 'example' or 'mass', got {weighting!r}")
    _, y = _check_logits_labels(p, labels)
    p = p[np.asarray(labels) >= 0]
    k = p.shape[1]
    nt = p.copy()
    nt[np.arange(y.shape[0]), y] = 0.0
    mass = nt.sum(axis=1)
    S = np.full((k, k), np.nan)
    for c in range(k):
        rows = nt[(y == c) & (mass > 0)]
        if rows.shape[0] == 0:
            continue
        if weighting == "example":
            S[c] = (rows / rows.sum(axis=1, keepdims=True)).mean(axis=0)
        else:
            S[c] = rows.sum(axis=0) / rows.sum()
        S[c, c] = 0.0
    return S


# --------------------------------------------------------------------------- graph and clusters


def _symmetric_affinity(S: np.ndarray) -> np.ndarray:
    W = 0.5 * (S + S.T)
    W = np.where(np.isfinite(W), W, 0.0)
    np.fill_diagonal(W, 0.0)
    return W


def similarity_graph(
    S: Any, *, top_k: int | None = 5, threshold: float | None = None
) -> pl.DataFrame:
    """Sparse undirected class graph from a similarity matrix.

    The matrix is symmetrised, ``W = (S + Sᵀ) / 2``; an edge ``{c, j}`` is kept when
    ``j`` is among the ``top_k`` strongest neighbours of ``c`` or ``c`` among those of
    ``j`` (with ``top_k``), and when ``W[c, j] ≥ threshold`` (with ``threshold``).
    Absent classes (NaN rows) have no edges.

    Returns
    -------
    pl.DataFrame with columns ``source`` (int, the smaller class), ``target`` (int),
    ``weight`` (float64), strongest first.
    """
    m = _check_square(S)
    if top_k is None and threshold is None:
        raise InputError("give top_k, threshold, or both to sparsify the graph")
    if top_k is not None and int(top_k) < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    if threshold is not None and not math.isfinite(float(threshold)):
        raise InputError(f"threshold must be finite, got {threshold}")
    k = m.shape[0]
    W = _symmetric_affinity(m)
    present = ~np.isnan(m).all(axis=1)
    keep = np.zeros((k, k), bool)
    if top_k is not None:
        kk = min(int(top_k), k - 1)
        Wm = np.where(present[None, :] & ~np.eye(k, dtype=bool), W, -np.inf)
        order = np.argsort(-Wm, axis=1, kind="stable")[:, :kk]
        rows = np.repeat(np.arange(k), kk)
        keep[rows, order.ravel()] = True
        keep &= np.isfinite(Wm)
        keep |= keep.T
    else:
        keep[:] = True
    if threshold is not None:
        keep &= W >= float(threshold)
    keep &= present[:, None] & present[None, :]
    keep &= np.triu(np.ones((k, k), bool), 1)
    src, dst = np.nonzero(keep)
    df = pl.DataFrame(
        {"source": src.astype(np.int64), "target": dst.astype(np.int64), "weight": W[src, dst]}
    )
    return df.sort(["weight", "source", "target"], descending=[True, False, False])


def cluster_classes(S: Any, *, n_clusters: int, method: str = "average") -> np.ndarray:
    """Group classes by a similarity matrix (scikit-learn).

    Parameters
    ----------
    S : (K, K) similarity matrix or estimate (``SimilarityResult.estimate``); it is
        symmetrised first. NaN rows (absent classes) are left out.
    n_clusters : int
    method : {"average", "spectral"}
        ``"average"`` (default): agglomerative clustering, average linkage, on the
        distance ``max W − W`` of the symmetrised matrix ``W``. ``"spectral"``:
        spectral clustering on ``W`` as a precomputed affinity (it did worse on real
        data; see the module docstring).

    Returns
    -------
    (K,) int cluster labels; absent classes get -1.
    """
    m = _check_square(S)
    if method not in ("average", "spectral"):
        raise InputError(f"method must be 'average' or 'spectral', got {method!r}")
    if np.nanmin(m) < 0 if np.isfinite(m).any() else False:
        raise InputError("S must be non-negative (a similarity, not a distance)")
    k = m.shape[0]
    present = ~np.isnan(m).all(axis=1)
    idx = np.flatnonzero(present)
    nc = int(n_clusters)
    if nc < 1 or nc > idx.size:
        raise InputError(
            f"n_clusters must lie in [1, {idx.size}] (the classes present), got {n_clusters}"
        )
    return _compute_clusters(m, idx, nc, method, k)


def _compute_clusters(m: np.ndarray, idx: np.ndarray, nc: int, method: str, k: int) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering, SpectralClustering

    out = np.full(k, -1, np.int64)
    if nc == idx.size:
        out[idx] = np.arange(nc)
        return out
    if nc == 1:
        out[idx] = 0
        return out
    W = _symmetric_affinity(m[np.ix_(idx, idx)])
    if method == "spectral":
        model = SpectralClustering(n_clusters=nc, affinity="precomputed", random_state=0)
        out[idx] = model.fit_predict(W)
        return out
    D = W.max() - W
    np.fill_diagonal(D, 0.0)
    agg = AgglomerativeClustering(n_clusters=nc, metric="precomputed", linkage="average")
    out[idx] = agg.fit_predict(D)
    return out


def superclass_recovery(
    S_or_clusters: Any, superclass_of_class: Any, *, method: str = "average"
) -> dict[str, Any]:
    """How well clusters recover a known class → superclass map.

    Parameters
    ----------
    S_or_clusters : (K, K) similarity matrix (clustered with ``n_clusters`` = number of
        superclasses) or (K,) int cluster labels.
    superclass_of_class : (K,) int

    Returns
    -------
    dict with ``ari`` (adjusted Rand index), ``nmi`` (normalised mutual information),
    ``n_clusters``, ``labels`` (the (K,) cluster labels), over classes present.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    sup = np.asarray(superclass_of_class)
    if sup.ndim != 1 or (sup.size and not np.issubdtype(sup.dtype, np.integer)):
        raise InputError(f"superclass_of_class must be a 1-D int array, got shape {sup.shape}")
    arr = np.asarray(S_or_clusters)
    if arr.ndim == 2:
        if arr.shape[0] != sup.shape[0]:
            raise InputError(
                f"S is {arr.shape[0]}x{arr.shape[0]} but superclass_of_class has {sup.shape[0]} "
                "entries"
            )
        present = ~np.isnan(arr.astype(np.float64)).all(axis=1)
        n_sup = int(np.unique(sup[present]).size)
        labels = cluster_classes(arr, n_clusters=n_sup, method=method)
    elif arr.ndim == 1:
        if arr.shape[0] != sup.shape[0]:
            raise InputError(
                f"cluster labels and superclass_of_class must be same length, but they are "
                f"{arr.shape[0]} and {sup.shape[0]}"
            )
        labels = arr.astype(np.int64)
    else:
        raise InputError(f"expected a (K, K) matrix or (K,) labels, got shape {arr.shape}")
    keep = labels >= 0
    return {
        "ari": float(adjusted_rand_score(sup[keep], labels[keep])),
        "nmi": float(normalized_mutual_info_score(sup[keep], labels[keep])),
        "n_clusters": int(np.unique(labels[keep]).size),
        "labels": labels,
    }


def reference_agreement(S: Any, S_ref: Any, *, symmetric: bool = False) -> float:
    """Spearman correlation between two similarity matrices over off-diagonal entries.

    Entries that are NaN in either matrix are left out. With ``symmetric=True`` both
    are symmetrised first and each unordered pair counts once.
    """
    from scipy.stats import spearmanr

    a = _check_square(S)
    b = _check_square(S_ref, "S_ref")
    if a.shape != b.shape:
        raise InputError(f"S is {a.shape} but S_ref is {b.shape}")
    k = a.shape[0]
    if symmetric:
        a, b = 0.5 * (a + a.T), 0.5 * (b + b.T)
        mask = np.triu(np.ones((k, k), bool), 1)
    else:
        mask = ~np.eye(k, dtype=bool)
    x, yv = a[mask], b[mask]
    ok = np.isfinite(x) & np.isfinite(yv)
    if ok.sum() < 3:
        return float("nan")
    return float(spearmanr(x[ok], yv[ok]).statistic)


# --------------------------------------------------------------------------- export


def write_graph(
    edges: pl.DataFrame,
    path: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    clusters: Any = None,
    superclasses: Any = None,
    temperature: float | None = None,
) -> Path:
    """Write a similarity graph as GraphML (``.graphml``), JSON node-link (``.json``)
    or an edge-list Parquet (``.parquet``), atomically (temporary file, then rename).

    Nodes are classes ``0..K−1`` with optional ``name``, ``cluster`` and ``superclass``
    attributes; edges carry ``weight``.
    """
    for col in ("source", "target", "weight"):
        if col not in edges.columns:
            raise InputError(f"edges must have a {col!r} column (from similarity_graph)")
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".graphml", ".json", ".parquet"):
        raise InputError(f"{p}: graph output must end in .graphml, .json or .parquet")
    if suffix == ".parquet":
        return write_edges_parquet(edges, p, temperature=temperature)
    k = num_classes
    if k is None:
        if class_names is not None:
            k = len(class_names)
        elif edges.height:
            ends = np.concatenate([edges["source"].to_numpy(), edges["target"].to_numpy()])
            k = int(ends.max()) + 1
        else:
            k = 0
    nodes = []
    for c in range(int(k)):
        node: dict[str, Any] = {"id": c}
        if class_names is not None:
            node["name"] = str(class_names[c])
        if clusters is not None:
            node["cluster"] = int(np.asarray(clusters)[c])
        if superclasses is not None:
            node["superclass"] = int(np.asarray(superclasses)[c])
        nodes.append(node)
    links = [
        {"source": int(s), "target": int(t), "weight": float(w)}
        for s, t, w in edges.select("source", "target", "weight").iter_rows()
    ]
    if suffix == ".json":
        doc: dict[str, Any] = {
            "directed": False,
            "multigraph": False,
            "graph": {"temperature": temperature},
            "nodes": nodes,
            "links": links,
        }
        text = json.dumps(doc, indent=1)
    else:
        text = _graphml(nodes, links, temperature)
    write_text_atomic(p, text)
    return p


def _graphml(nodes: list[dict[str, Any]], links: list[dict[str, Any]], t: float | None) -> str:
    ns = "http://graphml.graphdrawing.org/xmlns"
    root = ET.Element("graphml", {"xmlns": ns})
    keys = [
        ("name", "node", "string"),
        ("cluster", "node", "int"),
        ("superclass", "node", "int"),
        ("weight", "edge", "double"),
        ("temperature", "graph", "double"),
    ]
    for name, dom, typ in keys:
        ET.SubElement(root, "key", {"id": name, "for": dom, "attr.name": name, "attr.type": typ})
    g = ET.SubElement(root, "graph", {"id": "similarity", "edgedefault": "undirected"})
    if t is not None:
        ET.SubElement(g, "data", {"key": "temperature"}).text = repr(float(t))
    for node in nodes:
        el = ET.SubElement(g, "node", {"id": f"n{node['id']}"})
        for attr in ("name", "cluster", "superclass"):
            if attr in node:
                ET.SubElement(el, "data", {"key": attr}).text = str(node[attr])
    for i, e in enumerate(links):
        el = ET.SubElement(
            g, "edge", {"id": f"e{i}", "source": f"n{e['source']}", "target": f"n{e['target']}"}
        )
        ET.SubElement(el, "data", {"key": "weight"}).text = repr(e["weight"])
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def write_edges_parquet(
    edges: pl.DataFrame, path: str | os.PathLike[str], *, temperature: float | None = None
) -> Path:
    """Write an edge list (source, target, weight[, temperature]) to Parquet atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    df = edges
    if temperature is not None:
        df = df.with_columns(pl.lit(float(temperature)).alias("temperature"))
    with atomic_path(p) as tmp:
        df.write_parquet(tmp)
    return p


# --------------------------------------------------------------------------- store level


@dataclass
class ClassGraph:
    """The similarity graph of one checkpoint and split, ready to write or render."""

    result: SimilarityResult
    edges: pl.DataFrame
    clusters: np.ndarray | None  #: (K,) when a hierarchy or n_clusters was given
    recovery: dict[str, Any] | None  #: ARI / NMI against the hierarchy
    superclass_of_class: np.ndarray | None
    class_names: list[str] | None


_CLASS_COLUMNS = ("class", "class_id", "fine_id", "class_name", "fine_name")
_SUPER_COLUMNS = ("superclass", "superclass_id", "coarse_id", "superclass_name", "coarse_name")


def read_hierarchy(
    path: str | os.PathLike[str], num_classes: int, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Read a class -> superclass map as ``(superclass_of_class (K,) ints, superclass names)``.

    A CSV with a header names its columns ``class,superclass`` (or the first present of
    ``class_id/fine_id/class_name/fine_name`` and ``superclass_id/coarse_id/...``, as in
    CIFAR-100's ``fine_to_coarse.csv``); a class is an index or, when the store has class
    names, a name, and every class appears exactly once. A ``.json`` file holds a list of
    K superclass ids, or an object with one under ``fine_to_coarse`` or
    ``superclass_of_class`` (at the top or one level down, as in ``class_names.json``).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such hierarchy file")
    if p.suffix.lower() == ".json":
        sup = _json_hierarchy(p, num_classes)
        return sup, [str(s) for s in np.unique(sup)]
    import csv

    with open(p, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    cols = list(rows[0]) if rows else []
    ccol = next((c for c in _CLASS_COLUMNS if c in cols), None)
    scol = next((c for c in _SUPER_COLUMNS if c in cols), None)
    if ccol is None or scol is None:
        raise InputError(f"{p}: hierarchy must be a CSV with columns 'class,superclass'")
    index = {name: i for i, name in enumerate(class_names or [])}
    sup_of = np.full(num_classes, -1, np.int64)
    sup_names: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        raw = (row.get(ccol) or "").strip()
        if raw in index:
            c = index[raw]
        elif raw.lstrip("-").isdigit():
            c = int(raw)
            if not 0 <= c < num_classes:
                raise InputError(f"{p}:{line}: class {c} is outside [0, {num_classes})")
        else:
            raise InputError(
                f"{p}:{line}: class {raw!r} is neither an index nor a class name of the store"
            )
        if sup_of[c] >= 0:
            raise InputError(f"{p}:{line}: class {raw!r} is listed twice")
        s = (row.get(scol) or "").strip()
        if not s:
            raise InputError(f"{p}:{line}: empty superclass")
        sup_of[c] = sup_names.setdefault(s, len(sup_names))
    missing = np.flatnonzero(sup_of < 0)
    if missing.size:
        raise InputError(
            f"{p}: {missing.size} of the store's {num_classes} classes have no superclass "
            f"(first: {int(missing[0])})"
        )
    return sup_of, list(sup_names)


def _json_hierarchy(p: Path, num_classes: int) -> np.ndarray:
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise InputError(f"{p}: not valid JSON") from None
    keys = ("fine_to_coarse", "superclass_of_class")
    found: Any = None
    if isinstance(doc, list):
        found = doc
    elif isinstance(doc, dict):
        found = next((doc[key] for key in keys if key in doc), None)
        if found is None:
            hits = [v[key] for v in doc.values() if isinstance(v, dict) for key in keys if key in v]
            hits = [h for h in hits if len(h) == num_classes]
            found = hits[0] if len(hits) == 1 else None
    if found is None:
        raise InputError(f"{p}: no class → superclass list found (fine_to_coarse)")
    sup = np.asarray(found)
    if sup.ndim != 1 or not np.issubdtype(sup.dtype, np.integer):
        raise InputError(f"{p}: the hierarchy must be a flat list of integers")
    if sup.shape[0] != num_classes:
        raise InputError(
            f"{p}: hierarchy has {sup.shape[0]} classes but the store has {num_classes}"
        )
    return sup.astype(np.int64)


def store_class_graph(
    store: Any,
    run: str,
    checkpoint: str,
    *,
    split: str = "test",
    temperature: float = 1.0,
    top_k: int | None = 5,
    threshold: float | None = None,
    superclass_of_class: Any = None,
    n_clusters: int | None = None,
) -> ClassGraph:
    """Stream one checkpoint's split of a logits store into its class similarity graph.

    Clusters the estimate into ``n_clusters`` (default: the number of superclasses when
    ``superclass_of_class`` is given) and scores them against the hierarchy.
    """
    from kdlens.store.reader import open_store

    st = open_store(store)
    k = st.num_classes
    acc = SimilarityAccumulator(k, temperature=temperature)
    for batch in st.iter_batches(run, checkpoint, split):
        acc.update(batch.logits, batch.labels)
    res = acc.finalize()
    edges = similarity_graph(res.estimate, top_k=top_k, threshold=threshold)
    sup = None
    if superclass_of_class is not None:
        sup = np.asarray(superclass_of_class)
        if sup.shape != (k,):
            raise InputError(f"superclass_of_class has shape {sup.shape}, expected ({k},)")
    clusters = None
    recovery = None
    if n_clusters is None and sup is not None:
        n_clusters = int(np.unique(sup).size)
    if n_clusters is not None:
        clusters = cluster_classes(res.estimate, n_clusters=n_clusters)
        if sup is not None:
            recovery = superclass_recovery(clusters, sup)
    return ClassGraph(res, edges, clusters, recovery, sup, st.class_names)
