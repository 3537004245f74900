"""The paired statistics of the student comparison (:mod:`kdlens.hypotheses.compare`):
bootstrap CI of the accuracy difference, the seed-level test, and the verdict's reason."""

from __future__ import annotations

import math

import numpy as np

__all__: list[str] = []


def _bootstrap_ci(
    d: np.ndarray, n_bootstrap: int, seed: int | None, confidence: float
) -> tuple[float, float]:
    """Paired bootstrap CI of the mean of the per-example differences ``d``."""
    n = d.shape[0]
    rng = np.random.default_rng(seed)
    boots = np.empty(n_bootstrap)
    chunk = max(1, 2_000_000 // n)
    for s in range(0, n_bootstrap, chunk):
        m = min(chunk, n_bootstrap - s)
        idx = rng.integers(0, n, size=(m, n))
        boots[s : s + m] = d[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def _seed_test(acc_a: np.ndarray, acc_b: np.ndarray) -> tuple[str | None, float | None]:
    """The seed-level test (paired t when the seeds pair up, else Welch) and its p-value;
    ``(None, None)`` with fewer than two seeds on a side."""
    from scipy import stats

    if acc_a.shape[0] < 2 or acc_b.shape[0] < 2:
        return None, None
    if acc_a.shape[0] == acc_b.shape[0]:
        seed_test = "paired t-test"
        diffs = acc_a - acc_b
        seed_p = (
            1.0
            if np.all(diffs == diffs[0]) and diffs[0] == 0
            else float(stats.ttest_rel(acc_a, acc_b).pvalue)
        )
    else:
        seed_test = "Welch t-test"
        seed_p = float(stats.ttest_ind(acc_a, acc_b, equal_var=False).pvalue)
    if not math.isfinite(seed_p):  # zero variance with a non-zero difference
        seed_p = 0.0 if acc_a.mean() != acc_b.mean() else 1.0
    return seed_test, seed_p


def _reason(
    significant: bool,
    lo: float,
    hi: float,
    mcnemar_p: float,
    a_only: int,
    b_only: int,
    seed_test: str | None,
    seed_p: float | None,
    alpha: float,
    n_a: int,
    n_b: int,
) -> str:
    if significant:
        return "the real teacher's students are significantly better on every test"
    if hi < 0 and mcnemar_p < alpha and b_only > a_only:
        return (
            "the control's students are significantly better: the real teacher's soft labels "
            "carry nothing the control's do not"
        )
    failed = []
    if not lo > 0:
        failed.append("the accuracy-difference CI includes 0" if hi > 0 else "the CI is below 0")
    if not (mcnemar_p < alpha and a_only > b_only):
        failed.append(f"McNemar p = {mcnemar_p:.3g}")
    if seed_p is not None and seed_p >= alpha:
        failed.append(f"the {seed_test} over seeds gives p = {seed_p:.3g} ({n_a} vs {n_b} seeds)")
    text = "no significant advantage for the real teacher: " + "; ".join(failed)
    if min(n_a, n_b) < 5:
        text += " (few seeds: more seeds could show a small real difference)"
    return text
