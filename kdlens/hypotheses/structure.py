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
    A moment-matched null in closed form. Under the permutation null, entry j of class
    c's mean row is the mean over the class's ``n_c`` examples of one entry drawn from
    each: mean ``1/m`` (m = K − 1) and variance ``v = Σ_x σ_x² / n_c²`` exactly, with
    ``σ_x²`` the population variance of ``q_x``'s entries. Each entry is taken as
    Gamma(α, 1/(mα)) with ``α = 1/(m² v)`` (positive and right-skewed, as the mean of
    a few large and many tiny probabilities is), and the row's sum to 1 is imposed by
    conditioning a joint normal approximation of ``(Σ_j r log r, Σ_j r)``: the class's
    ``SI_c`` then has mean ``ψ(α+1) − log α`` and variance ``R(α)/(m α²)`` with
    ``R(α) = Var(G log G) − Cov(G log G, G)²/α``, ``G ~ Gamma(α, 1)`` (all closed
    forms; near uniform they are the chi-square series ``m²v/2`` and ``m³v²/2``). A null
    draw of SI is the mean over classes of a gamma draw per class with these moments
    (one normal with their sums when classes x B > 5·10⁶). It needs only per-class counts
    and sums of ``Σ_j q_j²``, which :class:`~kdlens.measures.similarity.SimilarityAccumulator`
    keeps, so it runs on a streamed result; cost ∝ K·B (K = 1,000 and B = 1,000: about
    0.1 s, where the earlier Gaussian draws took ~39 s at ImageNet's validation shape).

    Measured against B = 300 genuine permutations on normal logits ``scale·N(0, 1)``
    (error in units of the permutation null's sd; ``tests/test_structure.py`` checks the
    first rows): near-uniform to moderately peaked non-target distributions (scale ≤ 3
    with ≥ 30 examples per class, K = 10–100): null mean within 0.6 sd, sd within 0.95–1.05×,
    95 % quantile within 0.5 sd. Very peaked (scale 6, 30 per class, K = 30): the null is
    3.3 sd too low, so p-values are too small (anti-conservative). Peaked with few
    examples per class (10 per class at K = 50: +0.4 sd, sd 1.7×; 50 per class at
    K = 200, scale 3: +19 sd; 5 per class at K = 100: +37 sd): the null is too high, so
    p-values are too large (conservative: a weak structure can be missed). The exact
    test is the reference there and ``"auto"`` picks it whenever it is affordable. The
    Gaussian null draws this replaced were off by −17, −3.4 and −39 sd (anti-conservative)
    on those three peaked cases and by +0.3 to +1.2 sd on the others. At ImageNet's
    validation shape (K = 1,000, 50 per class, logits ``3·N(0, 1)`` + 6 on the label, no
    structure) 20 permutations gave a null of 0.672 ± 0.0005 nats; this null's mean is
    0.896 (+419 sd: p-values far too large, a teacher must pass ~0.9 nats of SI to be called
    structured) and the replaced Gaussian draws' was 0.550 (−230 sd: every teacher
    significant). The gamma entries are more skewed than the mean of 50 peaked rows is; a
    third moment per class (``Σ q³``) would fix the skew and is not kept yet.
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
#: Above this shape the closed forms lose digits to cancellation; their series are exact
#: to O(1/alpha^3) there.
_SERIES_ALPHA = 1e3


def _class_null_moments(alpha: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``SI_c`` when each entry of the class's null row is
    Gamma(alpha, 1/(m alpha)) (mean 1/m) and the row sums to 1 (see the module docstring):
    ``ψ(α+1) − log α`` and ``R(α)/(m α²)``."""
    from scipy.special import digamma, polygamma

    a = np.asarray(alpha, np.float64)
    big = a > _SERIES_ALPHA
    ab = np.where(big, a, 1.0)
    mean = np.where(big, 1 / (2 * ab) - 1 / (12 * ab**2), 0.0)
    resid = np.where(big, 0.5 - 1 / (3 * ab) + 1 / (6 * ab**2), 0.0)
    sm = ~big & (a > 0)
    if sm.any():
        x = a[sm]
        p1, p2 = digamma(x + 1), digamma(x + 2)
        eg2 = x * (x + 1)  # E G^2 of G ~ Gamma(x, 1)
        cov = eg2 * p2 - x * x * p1  # Cov(G log G, G)
        var = eg2 * (p2**2 + polygamma(1, x + 2)) - (x * p1) ** 2  # Var(G log G)
        mean[sm] = p1 - np.log(x)
        resid[sm] = var - cov**2 / x  # the part a row summing to 1 keeps
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(a > 0, np.maximum(resid, 0.0) / (m * np.where(a > 0, a, 1.0) ** 2), 0.0)
    mean = np.where(np.isinf(a), 0.0, np.maximum(mean, 0.0))
    return mean, np.where(np.isinf(a), 0.0, v)


def _compute_analytic_null(
    counts: np.ndarray, q_sqsum: np.ndarray, k: int, b: int, rng: np.random.Generator
) -> np.ndarray:
    """B draws of SI under the moment-matched gamma null (see the module docstring)."""
    present = counts > 0
    n_c = counts[present].astype(np.float64)
    m = k - 1
    # Var of one entry of the class mean row: (1/n_c²) Σ_x σ_x², σ_x² = mean_j q_j² − 1/m².
    v = np.maximum(q_sqsum[present] / m - n_c / m**2, 0.0) / n_c**2
    with np.errstate(divide="ignore"):
        alpha = np.where(v > 0, 1.0 / (m * m * np.where(v > 0, v, 1.0)), np.inf)
    mean, var = _class_null_moments(alpha, m)
    kp = n_c.size
    if kp * b > _SUM_DRAWS:
        return mean.sum() / kp + math.sqrt(var.sum()) / kp * rng.standard_normal(b)
    random = var > 0
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
    if result.q_sqsum_per_class.shape != (k,):
        raise InputError("this SimilarityResult lacks q_sqsum_per_class; recompute it")
    if n == 0:
        raise InputError("the structure test needs labelled examples, got none")
    if k == 2:
        return replace(_degenerate(k, b, result.temperature, n), n_unlabeled=result.n_unlabeled)
    rng = np.random.default_rng(seed)
    null = _compute_analytic_null(counts, np.asarray(result.q_sqsum_per_class), k, b, rng)
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
        q_sqsum = np.bincount(y, weights=np.square(q_nt).sum(axis=1), minlength=k)
        null = _compute_analytic_null(counts, q_sqsum, k, b, rng)
    res = _result(observed, null, k=k, method=method, t=t, n=n)
    return replace(res, n_unlabeled=n_unlabeled)
