"""The structure test: is a teacher's non-target mass class-consistent, or just noise?

``science.md``, "Distillation vs regularization", test 1. H0: the non-target mass has no
class-consistent structure (the teacher is label smoothing plus noise). The statistic is
the similarity information ``SI`` (:mod:`kdlens.measures.similarity`). The null permutes each
example's K − 1 non-target probabilities at random, which keeps every example's entropy
and dark mass and destroys only the agreement between examples of one class. The
p-value is ``(1 + #{null ≥ observed}) / (B + 1)``; the effect size ``SI`` and
``SI / log(K − 1)`` are reported beside it, because with many examples any real teacher
rejects H0.

Two ways to draw the null (``method``):

``"exact"``
    B genuine permutations: per example, the non-target probabilities are reordered by
    the argsort of uniform random keys, class sums are formed and ``SI`` recomputed.
    ``SI_c`` does not depend on which non-target column is which, so the work is done
    on the (n, K − 1) array of non-target probabilities. Cost ∝ n·K·B.
``"analytic"``
    A moment-matched null from per-class histograms. Under the permutation null, entry j of
    class c's mean row is the mean over the class's ``n_c`` examples of one entry drawn
    from each, so ``E[SI_c] = m·E[r log r] + log m`` (m = K − 1) depends only on that
    entry's distribution. Its moments do not pin ``E[r log r]`` down (they are dominated by
    the largest entries; three cumulants in a Pearson type I/III model were measured worse
    than two), so each class keeps a histogram of its non-target entries (two bins per
    octave of q with count, Σ q and Σ q²; :mod:`kdlens.measures.similarity.spread`), and
    :mod:`kdlens.hypotheses.structure_null` takes the mean from the Laplace transform of
    the pooled entries (one integral) and the variance from the second-order Hoeffding
    terms of the class's n_c independent permutations (pairs of examples; the first-order
    terms vanish). A null draw of SI is the mean over classes of a gamma draw per class
    with these moments (one normal with their sums when classes x B > 5·10⁶). It runs on a
    streamed result (:class:`~kdlens.measures.similarity.SimilarityAccumulator` keeps the
    histograms; above 256 examples a class samples ≥ 256 of its rows by a hash of their
    content, which moved the null by ≤ 0.1 sd at 10,000 per class). Cost: in the pass ~10 ns
    per entry while classes have ≤ ~500 examples, ~2 ns at 10,000 per class; the moments
    ~1 ms per class, independent of n (K = 1,000, B = 1,000: ~1.1 s, where the two-moment
    gamma null took 0.09 s); ``tests/benchmarks/bench_structure_null.py`` measures both.

    Measured against genuine permutations (B = 300; ImageNet's shape B = 20) on
    ``inputs.random_teacher`` logits ``scale·N(0, 1)`` + scale on the label: error of the
    null mean in units of the permutation null's sd, and the sd ratio, this null (the
    earlier two-moment gamma null in brackets); ``tests/test_structure.py`` checks five rows:

    ===============================================  ================  =================
    case                                             mean error        sd ratio
    ===============================================  ================  =================
    K = 10, 60 per class, scale 3                    +0.01 (−0.09)     0.97 (0.91)
    K = 10, 30 per class, scale 1                    +0.08 (+0.08)     1.11 (1.05)
    K = 20, 30 per class, label smoothing + noise    −0.00 (+0.03)     1.02 (1.01)
    K = 100, 30 per class, scale 3                   +0.15 (+3.7)      1.04 (1.45)
    K = 30, 30 per class, scale 6 (very peaked)      −0.00 (−3.3)      1.02 (1.05)
    K = 50, 10 per class, scale 3                    +0.25 (+0.59)     1.03 (1.62)
    K = 200, 50 per class, scale 3                   +0.11 (+18.8)     1.05 (1.55)
    K = 100, 5 per class, scale 3                    +0.54 (+14.9)     1.02 (2.92)
    K = 1,000, 50 per class, ``3·N(0, 1)`` + 6       +0.62 (+419)      0.80 (2.05)
    ===============================================  ================  =================

    The last row is ImageNet's validation shape: 20 permutations (4 min) give 0.6723 ±
    0.0005 nats, this null 0.6726, the gamma null 0.896 (a teacher had to pass ~0.9 nats
    of SI to be called structured); the sd of 20 draws is itself uncertain by ±16 %. The
    remaining errors are the pooling of a class's examples into one distribution (largest
    with few examples per class) and the Hoeffding terms of order ≥ 3 (left out).
``"auto"``
    ``"exact"`` when ``n·(K−1)·B ≤ 2·10⁷`` and the smallest class has fewer than 30
    examples or the data are small anyway; otherwise ``"analytic"``.

K = 2: the non-target distribution is a point mass, so ``SI = 0`` always and the test
reports ``p = 1`` with ``method = "degenerate"``; its verdict (:func:`structure_verdict`) is
:data:`NOT_APPLICABLE_K2`, never "no structure".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy.special import xlogy

from kdlens._internal.checks import check_logits_labels, check_positive_int, check_temperature
from kdlens._internal.defaults import ALPHA, N_PERMUTATIONS
from kdlens.errors import InputError
from kdlens.measures.similarity import SimilarityResult
from kdlens.measures.similarity.matrix import _nontarget_logq
from kdlens.measures.similarity.spread import N_BINS, EntryHistogram

__all__ = [
    "NOT_APPLICABLE_K2",
    "WEAK_EFFECT",
    "StructureTestResult",
    "structure_verdict",
    "structure_test",
    "structure_test_from_result",
]

#: n·(K−1)·B up to which ``method="auto"`` may run the exact permutation test.
EXACT_BUDGET = 20_000_000
#: Smallest class size from which the analytic null is trusted by ``method="auto"``.
ANALYTIC_MIN_CLASS = 30
_METHODS = ("auto", "exact", "analytic")

#: Below this SI / log(K − 1) a significant structure is called weak.
WEAK_EFFECT = 0.05
#: The verdict with two classes, where the test cannot apply.
NOT_APPLICABLE_K2 = "not applicable (K = 2: the non-target distribution has one class)"
NO_STRUCTURE = "no structure detected: regularization effect only"
WEAK_STRUCTURE = "structure significant but weak"
STRUCTURE = "class-similarity structure: knowledge to distill"


def structure_verdict(
    p_value: float | None,
    normalized_effect: float | None,
    num_classes: int | None,
    *,
    alpha: float = ALPHA,
) -> str:
    """The verdict of one structure test: :data:`NOT_APPLICABLE_K2` when K = 2, else by
    ``p_value`` at ``alpha`` and the effect ``SI / log(K − 1)`` (weak below
    :data:`WEAK_EFFECT`); "" when the test did not run."""
    if num_classes is not None and int(num_classes) <= 2:
        return NOT_APPLICABLE_K2
    if p_value is None or not math.isfinite(float(p_value)):
        return ""
    if float(p_value) >= alpha:
        return NO_STRUCTURE
    eff = normalized_effect
    if eff is not None and math.isfinite(float(eff)) and float(eff) < WEAK_EFFECT:
        return WEAK_STRUCTURE
    return STRUCTURE


@dataclass(frozen=True)
class StructureTestResult:
    """Outcome of the structure test (see the module docstring)."""

    statistic: float  #: observed SI (nats)
    p_value: float  #: (1 + #{null ≥ observed}) / (B + 1)
    effect_size: float  #: SI
    normalized_effect: float  #: SI / log(K − 1); 0 when K = 2
    n_permutations: int  #: B
    method: str  #: "exact", "analytic" or "degenerate"
    temperature: float = 1.0
    null_mean: float = float("nan")
    null_std: float = float("nan")
    n_examples: int = 0  #: labelled examples the test used
    num_classes: int = 0
    n_unlabeled: int = 0  #: rows labelled -1 (missing), skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


def _si_of_rows(rows: np.ndarray) -> np.ndarray:
    """Mean over the last-but-one axis of KL(row ‖ uniform over m) for rows on the last axis."""
    m = rows.shape[-1]
    si = xlogy(rows, rows).sum(axis=-1) + math.log(m)
    # An exactly uniform row gives |si| ~ 1e-16 from rounding: report 0 (as similarity does).
    si = np.where(si < 1e-13, 0.0, si)
    return si.mean(axis=-1)


def _result(
    observed: float, null: np.ndarray, *, k: int, method: str, t: float, n: int
) -> StructureTestResult:
    b = int(null.shape[0])
    # Ties (e.g. an exactly uniform teacher, where every draw equals the observation)
    # must count as "null ≥ observed" despite rounding.
    tol = 1e-12 * max(1.0, abs(observed))
    exceed = int(np.count_nonzero(null >= observed - tol))
    return StructureTestResult(
        statistic=float(observed),
        p_value=(1 + exceed) / (b + 1),
        effect_size=float(observed),
        normalized_effect=float(observed / math.log(k - 1)) if k > 2 else 0.0,
        n_permutations=b,
        method=method,
        temperature=t,
        null_mean=float(null.mean()),
        null_std=float(null.std(ddof=1)) if b > 1 else float("nan"),
        n_examples=n,
        num_classes=k,
    )


def _degenerate(k: int, b: int, t: float, n: int, observed: float = 0.0) -> StructureTestResult:
    return StructureTestResult(
        statistic=observed,
        p_value=1.0,
        effect_size=observed,
        normalized_effect=0.0,
        n_permutations=b,
        method="degenerate",
        temperature=t,
        null_mean=0.0,
        null_std=0.0,
        n_examples=n,
        num_classes=k,
    )


# --------------------------------------------------------------------------- analytic null


#: Above this many per-class draws (classes x B), a draw of SI is the normal with the
#: summed classes' mean and variance instead of a sum of per-class gamma draws: the
#: skewness of a sum of >= 5,000 classes is below 1/70 of one class's.
_SUM_DRAWS = 5_000_000


def _compute_analytic_null(
    counts: np.ndarray, entry_hist: np.ndarray, k: int, b: int, rng: np.random.Generator
) -> np.ndarray:
    """B draws of SI: per class a gamma draw with the null mean and variance of ``SI_c``
    (:func:`~kdlens.hypotheses.structure_null.class_null_moments`), averaged over classes."""
    from kdlens.hypotheses.structure_null import class_null_moments

    present = counts > 0
    mean, var = class_null_moments(entry_hist[present], counts[present], k - 1)
    kp = mean.size
    if kp * b > _SUM_DRAWS:
        return mean.sum() / kp + math.sqrt(var.sum()) / kp * rng.standard_normal(b)
    random = (var > 0) & (mean > 0)
    total = np.full(b, mean[~random].sum())
    if random.any():
        mu, vr = mean[random], var[random]
        chunk = max(1, _SUM_DRAWS // (10 * mu.size))
        for start in range(0, b, chunk):
            nb = min(chunk, b - start)
            total[start : start + nb] += rng.gamma(mu**2 / vr, vr / mu, (nb, mu.size)).sum(1)
    return total / kp


def structure_test_from_result(
    result: Any, *, n_permutations: int = N_PERMUTATIONS, seed: int | None = 0
) -> StructureTestResult:
    """The structure test on a streamed :class:`~kdlens.measures.similarity.SimilarityResult`.

    Uses the analytic (moment-matched) null, which needs only the per-class sums the
    accumulator keeps. Deterministic in ``seed``.
    """
    from kdlens.measures.similarity.sparse import SparseSimilarityResult

    if not isinstance(result, (SimilarityResult, SparseSimilarityResult)):
        raise InputError(f"expected a SimilarityResult, got {type(result).__name__}")
    b = check_positive_int(n_permutations, name="n_permutations")
    k = result.num_classes
    counts = np.asarray(result.counts)
    n = int(counts.sum())
    hist = np.asarray(result.entry_hist_per_class)
    if hist.shape != (k, N_BINS, 3):
        raise InputError("this SimilarityResult lacks entry_hist_per_class; recompute it")
    if n == 0:
        raise InputError("the structure test needs labelled examples, got none")
    if k == 2:
        return replace(_degenerate(k, b, result.temperature, n), n_unlabeled=result.n_unlabeled)
    rng = np.random.default_rng(seed)
    null = _compute_analytic_null(counts, hist, k, b, rng)
    res = _result(
        float(result.similarity_information),
        null,
        k=k,
        method="analytic",
        t=result.temperature,
        n=n,
    )
    return replace(res, n_unlabeled=result.n_unlabeled)


# --------------------------------------------------------------------------- exact null


def _compute_exact_null(
    q_nt: np.ndarray, y: np.ndarray, k: int, b: int, rng: np.random.Generator
) -> np.ndarray:
    """B draws of SI with every example's non-target probabilities permuted."""
    n, m = q_nt.shape
    counts = np.bincount(y, minlength=k)
    present = counts > 0
    onehot = np.zeros((k, n), np.float64)
    onehot[y, np.arange(n)] = 1.0
    onehot = onehot[present] / counts[present][:, None]
    out = np.empty(b)
    for i in range(b):
        order = np.argsort(rng.random((n, m)), axis=1)
        rows = onehot @ np.take_along_axis(q_nt, order, axis=1)
        out[i] = _si_of_rows(rows)
    return out


def structure_test(
    logits: Any,
    labels: Any,
    *,
    temperature: float = 1.0,
    n_permutations: int = N_PERMUTATIONS,
    seed: int | None = 0,
    method: str = "auto",
) -> StructureTestResult:
    """The structure test on arrays.

    Parameters
    ----------
    logits : (n, K) array of logits (not probabilities).
    labels : (n,) int array; -1 (missing) rows are skipped and counted in the result's
        ``n_unlabeled``.
    temperature : float
    n_permutations : int
        B, the number of null draws.
    seed : int or None
    method : {"auto", "exact", "analytic"}
        See the module docstring; the result's ``method`` says which ran.
    """
    t = check_temperature(temperature)
    b = check_positive_int(n_permutations, name="n_permutations")
    if method not in _METHODS:
        raise InputError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
    z, y = check_logits_labels(logits, labels, allow_missing=True)
    labeled = y >= 0
    n_unlabeled = int(y.size - np.count_nonzero(labeled))
    if n_unlabeled:
        z, y = z[labeled], y[labeled]
    n, k = z.shape
    if n == 0:
        raise InputError("the structure test needs labelled examples, got none")
    if k == 2:
        return replace(_degenerate(k, b, t, n), n_unlabeled=n_unlabeled)
    m = k - 1
    q = np.exp(_nontarget_logq(z, y, t))
    keep = np.ones_like(q, dtype=bool)
    keep[np.arange(n), y] = False
    q_nt = q[keep].reshape(n, m)
    counts = np.bincount(y, minlength=k)
    present = counts > 0
    class_sum = np.zeros((k, m))
    np.add.at(class_sum, y, q_nt)
    observed = float(_si_of_rows(class_sum[present] / counts[present][:, None]))
    rng = np.random.default_rng(seed)
    if method == "auto":
        small = n * m * b <= EXACT_BUDGET
        method = (
            "exact"
            if small
            and (counts[present].min() < ANALYTIC_MIN_CLASS or n * m * b <= EXACT_BUDGET // 4)
            else "analytic"
        )
    if method == "exact":
        null = _compute_exact_null(q_nt, y, k, b, rng)
    else:
        entries = EntryHistogram(k)
        entries.add(q, y, np.einsum("ij,ij->i", q, q))  # as the accumulator: same sample
        null = _compute_analytic_null(counts, entries.pooled(), k, b, rng)
    res = _result(observed, null, k=k, method=method, t=t, n=n)
    return replace(res, n_unlabeled=n_unlabeled)
