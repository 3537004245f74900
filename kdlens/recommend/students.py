"""Does a checkpoint score agree with real students? Metrics of the validation experiment.

The experiment (``examples/validate_recommend.py``) distills several student
seeds from every checkpoint of a teacher grid; this module turns one table of
``(run, checkpoint, score columns..., student accuracy per seed)`` into the
numbers ``science.md`` asks for: Spearman and Kendall correlation of each score
with mean student accuracy, the regret of each score's top pick, the seed noise
and the spread of student accuracy across checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from scipy import stats

from kdlens.errors import InputError

__all__ = ["evaluate_scores", "kendall", "regret", "spearman", "student_table"]


def _pair(
    score: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    if s.shape != t.shape:
        raise InputError(
            f"score and target must be the same length, but score is length {s.size} "
            f"and target is length {t.size}"
        )
    if s.size < 2:
        raise InputError(f"need at least 2 checkpoints to correlate, got {s.size}")
    if not (np.isfinite(s).all() and np.isfinite(t).all()):
        raise InputError("score and target must be finite")
    return s, t


def spearman(score: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of a score with the target (NaN when either is constant)."""
    s, t = _pair(score, target)
    if np.ptp(s) == 0 or np.ptp(t) == 0:
        return float("nan")
    return float(stats.spearmanr(s, t).statistic)


def kendall(score: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b of a score with the target (NaN when either is constant)."""
    s, t = _pair(score, target)
    if np.ptp(s) == 0 or np.ptp(t) == 0:
        return float("nan")
    return float(stats.kendalltau(s, t).statistic)


def regret(score: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray) -> float:
    """``max(target) - target at the top-scored checkpoint``, in the target's units.

    When several checkpoints tie for the top score, the mean of their targets is
    used (a user picking among them at random expects that).
    """
    s, t = _pair(score, target)
    top = s == s.max()
    return float(t.max() - t[top].mean())


def student_table(students: pl.DataFrame, *, accuracy: str = "accuracy") -> pl.DataFrame:
    """Mean, std and count of student accuracy per (run, checkpoint) over seeds.

    ``students`` has one row per (run, checkpoint, seed) with column ``accuracy``.
    """
    for c in ("run", "checkpoint", accuracy):
        if c not in students.columns:
            raise InputError(f"students is missing column {c!r}")
    return students.group_by("run", "checkpoint").agg(
        pl.col(accuracy).mean().alias("student_accuracy_mean"),
        pl.col(accuracy).std(ddof=1).alias("student_accuracy_std"),
        pl.len().alias("n_seeds"),
    )


def evaluate_scores(
    table: pl.DataFrame,
    *,
    scores: Sequence[str],
    target: str = "student_accuracy_mean",
) -> pl.DataFrame:
    """One row per score column: spearman, kendall, regret_pp and the top pick.

    ``table`` has one row per checkpoint with the score columns (higher = better)
    and the target column (a proportion; regret is reported in percentage points).
    """
    missing = [c for c in (*scores, target, "run", "checkpoint") if c not in table.columns]
    if missing:
        raise InputError(f"table is missing column(s) {missing}")
    t = table[target].to_numpy().astype(np.float64)
    rows = []
    for name in scores:
        s = table[name].to_numpy().astype(np.float64)
        s = np.where(np.isfinite(s), s, -np.inf)
        finite = np.isfinite(s)
        if finite.sum() < 2:
            raise InputError(f"score {name!r} has fewer than 2 finite values")
        # A -inf score (e.g. a missing signal) ranks last, consistently for every metric.
        s_rank = np.where(finite, s, np.nanmin(s[finite]) - 1.0)
        pick = int(np.argmax(s))
        rows.append(
            {
                "score": name,
                "spearman": spearman(s_rank, t),
                "kendall": kendall(s_rank, t),
                "regret_pp": 100.0 * regret(s_rank, t),
                "pick_run": table["run"][pick],
                "pick_checkpoint": table["checkpoint"][pick],
                "pick_student_accuracy": float(t[pick]),
            }
        )
    return pl.DataFrame(rows)
