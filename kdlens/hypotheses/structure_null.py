"""Mean and variance of each class's ``SI_c`` under the structure test's permutation null.

Used by the analytic null of :mod:`kdlens.hypotheses.structure` (its docstring states the
measured errors). Input: per class, the histogram of its non-target entries that
:mod:`kdlens.measures.similarity.spread` keeps. Each class's entries are pooled into atoms
(two per bin, at the bin's mean ± sd, so every bin keeps its count, mean and variance), and
the permutation null is approximated by drawing each of the class's ``n`` examples' entries
from that pooled distribution.

Mean. Entry j of the class mean row is ``r = S / n`` with ``S`` the sum of ``n`` draws, and
``E[SI_c] = m·E[r log r] + log m`` exactly (m = K − 1). By Frullani's integral
``r log r = ∫₀^∞ (r e^{-t} − r e^{-tr}) dt / t``, and ``E[r e^{-tr}] = L(s)^{n-1} M(s)`` at
``s = t/n`` with ``L(s) = E e^{-sU}`` and ``M(s) = E U e^{-sU}`` of one draw: one integral
over ``log t`` (trapezoid rule, which converges fast for this smooth, decaying integrand),
taken as the difference to a point mass at ``1/m`` so that a uniform class gives exactly 0.

Variance. ``SI_c`` is a function of the class's n independent permutations. Its first-order
Hoeffding terms vanish (given one example's permutation, the expected ``Σ_j`` is a sum over
all its entries whatever their order), so the variance is taken as the second-order terms:
``C(n, 2)`` pairs of examples, each a random matching of two rows, whose variance is
``m²/(m−1)·E[d(U, V)²]`` with ``d`` the doubly centred ``g(u, v) = E f((u + v + S_{n-2})/n)``
(exact when ``f`` is quadratic, i.e. near uniform). Here the atoms are coarsened to two per
4 octaves to keep the pairs few. A single example (n = 1) has no variance.

Cost per class: ≤ 162 atoms and ≤ 253 pairs of coarse atoms, each on 156 points of
``log t``; independent of n.
"""

from __future__ import annotations

import numpy as np

#: log t grid of the integrals: the trapezoid rule on this smooth, decaying integrand is
#: exact to < 0.001 null-sd already at step 0.5 (measured on the docstring's cases).
_LOG_T = np.arange(-12.0, 50.0 + 1e-9, 0.4)
_T = np.exp(_LOG_T)
#: Fine bins merged per coarse group for the variance (4 octaves).
_GROUP = 8


def _two_point(cnt: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Atoms at each group's mean ± sd, half its weight each (weights sum to 1)."""
    keep = cnt > 0
    c, s1, s2 = cnt[keep], s1[keep], s2[keep]
    mu = s1 / c
    sd = np.sqrt(np.maximum(s2 / c - mu * mu, 0.0))
    v = np.maximum(np.concatenate([mu - sd, mu + sd]), 0.0)
    w = np.concatenate([c, c]) / (2.0 * c.sum())
    return v, w


def _power(x: np.ndarray, k: int) -> np.ndarray:
    """x**k for 0 ≤ x ≤ 1 without overflow warnings (0**0 = 1)."""
    if k == 0:
        return np.ones_like(x)
    with np.errstate(divide="ignore"):
        return np.exp(k * np.log(x))


def _class_moments(hist: np.ndarray, n: int, m: int) -> tuple[float, float]:
    """Null mean and variance of one class's ``SI_c`` (module docstring)."""
    v, w = _two_point(hist[:, 0], hist[:, 1], hist[:, 2])
    if v.size == 0 or np.ptp(v) <= 1e-12 * float(v.max()):
        return 0.0, 0.0  # all entries equal (uniform): SI_c = 0 whatever the order
    t = _T
    e = np.exp(-(t / n)[:, None] * v[None, :])
    lap, mom = e @ w, (e * v[None, :]) @ w  # E e^{-sU}, E U e^{-sU} at s = t / n
    mu = 1.0 / m
    mean = m * float(np.trapezoid(mu * np.exp(-t * mu) - _power(lap, n - 1) * mom, _LOG_T))
    if n < 2 or m < 2:
        return max(mean, 0.0), 0.0
    groups = np.arange(hist.shape[0]) // _GROUP
    size = int(groups[-1]) + 1
    coarse = (np.bincount(groups, weights=hist[:, i], minlength=size) for i in range(3))
    cv, cw = _two_point(*coarse)
    k = n - 2
    rest = _power(lap, k)  # E e^{-sS} of the other n - 2 draws, and (k/n) E (S/k) e^{-sS}
    rest_m = (k / n) * _power(lap, k - 1) * mom if k else np.zeros_like(lap)
    i, j = np.triu_indices(cv.size)
    a = (cv[i] + cv[j]) / n  # (u + v) / n of each pair of atoms
    ert = np.exp(-t[None, :] * a[:, None]) * (a[:, None] * rest[None, :] + rest_m[None, :])
    pair = np.trapezoid((a + k / (n * m))[:, None] * np.exp(-t)[None, :] - ert, _LOG_T, axis=1)
    g = np.empty((cv.size, cv.size))
    g[i, j] = pair
    g[j, i] = pair
    gb = g @ cw
    d = g - gb[:, None] - gb[None, :] + cw @ gb
    var = n * (n - 1) / 2 * m * m / (m - 1) * float(cw @ (d * d) @ cw)
    return max(mean, 0.0), var


def class_null_moments(
    hist: np.ndarray, counts: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``SI_c`` under the permutation null, per class (module docstring).

    ``hist`` (classes, N_BINS, 3) from :mod:`kdlens.measures.similarity.spread`, ``counts``
    (classes,) examples per class (all > 0), m = K − 1.
    """
    mean = np.zeros(counts.size)
    var = np.zeros(counts.size)
    for i, (h, n) in enumerate(zip(hist, counts, strict=True)):
        mean[i], var[i] = _class_moments(h, int(n), m)
    if not (np.isfinite(mean).all() and np.isfinite(var).all()):
        raise FloatingPointError("the structure test's analytic null is not finite")
    return mean, var


__all__ = ["class_null_moments"]
