"""Greedy forward selection with replacement (Caruana et al. 2004) on in-memory arrays.

Each checkpoint's predictions on a split are held once, as float32 arrays in the space
of its combination rule (:data:`RULES`): log-probabilities at T = 1 (``mean_prob``), at the
distillation temperature (``mean_prob_t``), or raw logits (``mean_logit``). A mixture of
``m`` selections is then one array in the same space, and adding checkpoint ``j`` is one
vectorised step for every candidate at once::

    mean_prob(_t):  log((m p + p_j) / (m + 1))
                  = logaddexp(log p + log(m / (m + 1)), log p_j - log(m + 1))
    mean_logit:     (m z + z_j) / (m + 1)

Each candidate mixture is scored by its NLL after the one temperature fit of kdlens
(:func:`kdlens.measures.calibration.fit_temperature` on the split's temperature-fit
sample); the fit is invariant to the scale of the mixture's log-probabilities, so the
``mean_prob_t`` mixture is scored as it is and stored as ``T log p`` (:func:`to_logits`),
whose softmax at T is the mixture of the members' tempered probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kdlens.measures.calibration import fit_temperature, nll_loss
from kdlens.store.mixture import RULES, check_rule, combine, member_array, to_logits

__all__ = ["RULES", "Greedy", "check_rule", "combine", "greedy_select", "member_array", "to_logits"]

#: Candidate mixtures are built in chunks of at most this many float32 elements (256 MiB).
_CHUNK_ELEMENTS = 1 << 26


def _step(cur: np.ndarray, cand: np.ndarray, m: int, rule: str) -> np.ndarray:
    """Every candidate added to a mixture of ``m`` selections: (C, n, K) float32."""
    if m == 0:
        return cand
    if rule == "mean_logit":
        return ((cur * m)[None] + cand) / np.float32(m + 1)
    keep, add = np.float32(math.log(m / (m + 1))), np.float32(-math.log(m + 1))
    return np.logaddexp((cur + keep)[None], cand + add)


def _score(mix: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(fitted temperature, NLL after the fit) of one mixture."""
    t = fit_temperature(mix, y)
    return t, nll_loss(mix, y, temperature=t)


@dataclass
class Greedy:
    """The selection path: the candidate added at each step, its NLL after the fit and
    the fitted temperature, and the step count of the chosen prefix."""

    picks: list[int]
    nll: list[float]
    temperature: list[float]
    chosen: int  # number of steps kept (1..len(picks))

    def counts(self, n_candidates: int, steps: int | None = None) -> np.ndarray:
        """Selection counts of every candidate after ``steps`` (default: the chosen)."""
        s = self.chosen if steps is None else steps
        return np.bincount(np.asarray(self.picks[:s], np.int64), minlength=n_candidates)


def greedy_select(arrays: np.ndarray, labels: np.ndarray, *, max_members: int, rule: str) -> Greedy:
    """Forward selection with replacement over candidates ``arrays`` (C, n, K).

    Runs ``max_members`` steps (the whole path is reported) and keeps the shortest
    prefix reaching the lowest NLL (a repeated pick that leaves the mixture unchanged,
    up to rounding, does not count as a gain). Ties between candidates go to the lower
    index.
    """
    c, n, k = arrays.shape
    y = np.asarray(labels, np.int64)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n * k))
    cur = np.zeros((n, k), np.float32)
    picks: list[int] = []
    nlls: list[float] = []
    temps: list[float] = []
    for m in range(max_members):
        best = (math.inf, math.nan, -1)
        for lo in range(0, c, chunk):
            cand = _step(cur, arrays[lo : lo + chunk], m, rule)
            for i in range(cand.shape[0]):
                t, v = _score(cand[i], y)
                if v < best[0]:
                    best = (v, t, lo + i)
        v, t, j = best
        cur = _step(cur, arrays[j : j + 1], m, rule)[0]
        picks.append(j)
        nlls.append(v)
        temps.append(t)
    low = min(nlls)
    tol = 1e-6 * max(1.0, abs(low))
    chosen = next(i for i, v in enumerate(nlls) if v <= low + tol) + 1
    return Greedy(picks, nlls, temps, chosen)
