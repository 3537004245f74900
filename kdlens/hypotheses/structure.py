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
    A moment-matched null. For one example with non-target vector ``q`` (mean
    ``1/(K−1)``, population variance ``σ²``), a random permutation of ``q`` has covariance
    ``σ²·(K−1)/(K−2)·(I − 11ᵀ/(K−1))``. The class sum of ``n_c`` independently permuted
    vectors is therefore close to Gaussian with covariance ``(Σ_x σ_x²)·(K−1)/(K−2)·(I −
    11ᵀ/(K−1))``; each draw of a null row of ``S`` is ``1/(K−1) + (g − ḡ)·sqrt(that
    variance)/n_c`` with ``g`` standard normal (entries clipped at a tiny positive value
    and renormalised), and ``SI`` is computed from it. It needs only per-class counts
    and sums of ``Σ_j q_j²``, which :class:`~kdlens.measures.similarity.SimilarityAccumulator`
    keeps, so it runs on a streamed result; cost ∝ K²·B, independent of n (1,000 draws
    on K = 100 take well under a second). The Gaussian approximation is good when
    classes have tens of examples or more; with fewer, prefer ``"exact"``.
    At large K (more than 5·10⁷ normal draws) and when the null rows stay within 5 %
    relative deviation of uniform, the draws of each class's ``SI_c`` come from the
    series ``KL(u + d ‖ u) ≈ (m/2)Σd² − (m²/6)Σd³ + (m³/12)Σd⁴`` instead: a chi-square,
    a normal and a constant per class and draw (cost ∝ K·B; K = 1000 in well under a
    second). A test checks it against the full Gaussian draws.
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


#: Above this many normal draws (classes x (K-1) x B) the analytic null draws each
#: class's SI_c from its series form (a chi-square and a normal), for the classes whose
#: null rows stay within this relative standard deviation of uniform (there the
#: series' 95 % quantile is within 0.1 null-sd of the Gaussian draws'; tested).
_QUADRATIC_WORK = 50_000_000
_QUADRATIC_REL_SD = 0.15


def _compute_analytic_null(
    counts: np.ndarray, q_sqsum: np.ndarray, k: int, b: int, rng: np.random.Generator
) -> np.ndarray:
    """B draws of SI under the moment-matched Gaussian null (see module docstring)."""
    present = counts > 0
    n_c = counts[present].astype(np.float64)
    m = k - 1
    # Σ_x σ_x² with σ_x² = mean_j q_j² − 1/m² (population variance of the entries).
    var_sum = np.maximum(q_sqsum[present] / m - n_c / m**2, 0.0)
    scale = np.sqrt(var_sum * m / (m - 1)) / n_c  # sd of each row entry's deviation
    kp = n_c.size
    total = np.zeros(b)  # sum over classes of each draw's SI_c
    full = np.ones(kp, bool)
    if kp * m * b > _QUADRATIC_WORK:
        # Large K: B x K x (K-1) normal draws would dominate analyze. Near uniform,
        # KL(u + d || u) = sum_k (-1)^k m^(k-1) sum d^k / (k (k-1)), k >= 2.
        # For the projected Gaussian, sum d^2 = s^2 chi2_{m-1}; sum d^3 is ~normal with
        # variance 15 m s^6 (uncorrelated with the even terms); sum d^4 ~ 3 m s^4, and
        # E sum d^6 = 15 m s^6. So a few numbers per class and draw replace K-1 normal
        # draws, for the classes whose null rows stay close enough to uniform.
        full = m * scale >= _QUADRATIC_REL_SD
        s = scale[None, ~full]
        quad = 0.5 * m * s**2 * rng.chisquare(m - 1, size=(b, s.shape[1]))
        cubic = (m**2 / 6.0) * np.sqrt(15.0 * m) * s**3 * rng.standard_normal(quad.shape)
        quartic = (m**3 / 12.0) * 3.0 * m * s**4
        sextic = (m**5 / 30.0) * 15.0 * m * s**6
        total += (quad - cubic + quartic + sextic).sum(axis=1)
    sc = scale[full]
    if sc.size:
        chunk = max(1, int(4_000_000 // max(sc.size * m, 1)))
        for start in range(0, b, chunk):
            nb = min(chunk, b - start)
            g = rng.standard_normal((nb, sc.size, m))
            g -= g.mean(axis=-1, keepdims=True)
            rows = 1.0 / m + g * sc[None, :, None]
            if (rows <= 0).any():  # only with tiny classes: keep a valid distribution
                np.maximum(rows, 1e-300, out=rows)
                rows /= rows.sum(axis=-1, keepdims=True)
            total[start : start + nb] += _si_of_rows(rows) * sc.size
    return total / kp


def structure_test_from_result(
    result: SimilarityResult, *, n_permutations: int = N_PERMUTATIONS, seed: int | None = 0
) -> StructureTestResult:
    """The structure test on a streamed :class:`~kdlens.measures.similarity.SimilarityResult`.

    Uses the analytic (moment-matched) null, which needs only the per-class sums the
    accumulator keeps. Deterministic in ``seed``.
    """
    if not isinstance(result, SimilarityResult):
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
