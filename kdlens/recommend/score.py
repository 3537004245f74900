"""The score, its bootstrap summaries (P(best), rank and score intervals) and the ranking."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from kdlens._internal.defaults import (
    OEMC_DELTA,
    SMALL_HELDOUT_N,
    SMALL_HELDOUT_PER_CLASS,
    TEMPERATURE_BOUNDS,
    TRANSFER_SPLIT,
)
from kdlens.errors import InputError
from kdlens.measures.registry import metric
from kdlens.recommend.advice import edge_advice, pareto, reason, split_bootstrap, sweet_spot
from kdlens.recommend.result import (
    DEFAULT_COLLAPSE_WEIGHT,
    DEFAULT_TEMPERATURE,
    Recommendation,
    key_of,
    score_definition,
)

__all__ = ["compute_recommendation", "nothing_to_rank", "score_checkpoints"]

#: Columns of ``Recommendation.ranking``, in order.
RANKING_COLUMNS = (
    "rank",
    "run",
    "checkpoint",
    "batch_size",
    "epoch",
    "step",
    "score",
    "score_low",
    "score_high",
    "rank_low",
    "rank_high",
    "probability_best",
    "accuracy_heldout",
    "nll_heldout",
    "nll_fit_heldout",
    "fitted_temperature",
    "fitted_temperature_at_bound",
    "nll_scored_heldout",
    "entropy_heldout",
    "dark_mass_heldout",
    "accuracy_transfer",
    "nll_fit_transfer",
    "dark_mass_transfer",
    "oemc_share_transfer",
    "similarity_information_transfer",
    "collapse",
    "baseline_accuracy",
    "baseline_nll",
    "baseline_last",
    "baseline_entropy",
    "temperature",
    "heldout_split",
    "n_heldout",
    "n_transfer",
)
#: Signals the score reads; replicates missing from a bootstrap are NaN.
_SCORE_INPUTS = ("nll_fit_heldout", "dark_mass_heldout", "dark_mass_transfer", "nll_fit_transfer")


def score_checkpoints(
    signals: pl.DataFrame | dict[str, np.ndarray],
    *,
    collapse_weight: float = DEFAULT_COLLAPSE_WEIGHT,
) -> np.ndarray:
    """kdlens's score from signal columns (arrays of any shape broadcast together).

    ``score = -(nll_fit_heldout + w * max(0, log(dark_mass_heldout / dark_mass_transfer)))``,
    higher is better. Where ``fitted_temperature_at_bound`` is true (a degenerate fit,
    :func:`scored_nll`) the raw held-out NLL at T = 1 stands in for ``nll_fit_heldout``.
    Without a transfer split the collapse term is 0. Without a
    held-out split the score falls back to ``-(nll_fit_transfer + w * max(0,
    log(0.05 / dark_mass_transfer)))`` (collapse below the OEMC threshold), which
    cannot see memorisation; :func:`recommend` marks such rankings.
    """

    def col(name: str) -> np.ndarray:
        v = signals[name]
        return np.asarray(v.to_numpy() if isinstance(v, pl.Series) else v, dtype=np.float64)

    nll_h = scored_nll(signals)
    dm_t = col("dark_mass_transfer")
    collapse = _collapse(col("dark_mass_heldout"), dm_t)
    score = -(nll_h + collapse_weight * np.where(np.isnan(collapse), 0.0, collapse))
    fallback = -(
        col("nll_fit_transfer")
        + collapse_weight * np.maximum(0.0, math.log(OEMC_DELTA) - _safe_log(dm_t))
    )
    return np.where(np.isfinite(nll_h), score, fallback)


def scored_nll(signals: pl.DataFrame | dict[str, Any]) -> np.ndarray:
    """The held-out NLL the score uses: after the temperature fit, except where the fit
    reached a bound of its search (``fitted_temperature_at_bound``): there the fit is
    degenerate (e.g. a separable held-out split drives T and the NLL towards 0) and the
    raw held-out NLL at T = 1 (``nll_heldout``) is used instead."""

    def col(name: str) -> np.ndarray:
        v = signals[name]
        return np.asarray(v.to_numpy() if isinstance(v, pl.Series) else v, dtype=np.float64)

    nll_fit = col("nll_fit_heldout")
    if "fitted_temperature_at_bound" not in signals or "nll_heldout" not in signals:
        return nll_fit
    at_bound = col("fitted_temperature_at_bound") > 0
    return np.where(at_bound, col("nll_heldout"), nll_fit)


def _safe_log(x: np.ndarray) -> np.ndarray:
    # A one-hot teacher's mean dark mass underflows to 0; floor it so its collapse is huge, not NaN.
    return np.log(np.maximum(x, np.finfo(np.float64).tiny))


def _collapse(dm_heldout: np.ndarray, dm_transfer: np.ndarray) -> np.ndarray:
    """``max(0, log(dm_heldout / dm_transfer))`` in nats; NaN where either split is missing."""
    dm_h = np.asarray(dm_heldout, dtype=np.float64)
    dm_t = np.asarray(dm_transfer, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        c = np.maximum(0.0, _safe_log(dm_h) - _safe_log(dm_t))
    return np.where(np.isnan(dm_h) | np.isnan(dm_t), np.nan, c)


def _sign(name: str) -> int:
    """+1 where higher is better, -1 where lower is (from the metric registry)."""
    return 1 if metric(name).higher_is_better else -1


def _baseline_scores(frame: pl.DataFrame) -> pl.DataFrame:
    """The scores a user would otherwise rank by (higher is better for each)."""
    last = frame.with_columns(
        pl.col("epoch").cast(pl.Float64).fill_null(pl.col("step").cast(pl.Float64)).alias("_e")
    )["_e"].to_numpy()
    return frame.with_columns(
        baseline_accuracy=_sign("accuracy") * pl.col("accuracy_heldout"),
        baseline_nll=_sign("nll_fitted") * pl.col("nll_fit_heldout"),
        # "The last checkpoint": later is better; held-out accuracy breaks ties between runs.
        baseline_last=pl.Series(np.nan_to_num(last, nan=-1.0) * 1e3)
        + pl.col("accuracy_heldout").fill_nan(0.0),
        # "The softest teacher": entropy has no better direction in itself (registry);
        # this baseline deliberately ranks the higher held-out entropy first.
        baseline_entropy=pl.col("entropy_heldout"),
    )


def _basis(signals: pl.DataFrame, notes: list[str]) -> str:
    """Which splits the ranking rests on; notes what is missing."""
    has_heldout = bool(signals.height) and bool(
        np.isfinite(signals["accuracy_heldout"].to_numpy()).any()
    )
    has_transfer = bool(signals.height) and bool(
        np.isfinite(signals["dark_mass_transfer"].to_numpy()).any()
    )
    if not has_heldout and not has_transfer:
        raise InputError(
            "the store has neither a held-out (val/test) nor a transfer (train) split with labels"
        )
    if not has_heldout:
        notes.append(
            "no held-out split (val/test): held-out accuracy, NLL, entropy and the collapse "
            "term are missing; ranked on transfer-split NLL and dark mass only (weaker: a "
            "memorising teacher looks perfect)"
        )
        return "transfer split only"
    if not has_transfer:
        notes.append(
            f"no transfer split ({TRANSFER_SPLIT!r}): dark mass, OEMC share and similarity "
            "information on the examples the student sees are missing; ranked on held-out NLL "
            "(after a temperature fit) alone"
        )
        return "held-out only"
    return "held-out + transfer"


def _bootstrap_summaries(
    keys: list[str],
    boot: dict[str, dict[str, np.ndarray]],
    n_bootstrap: int,
    collapse_weight: float,
    at_bound: np.ndarray | None = None,
) -> dict[str, Any]:
    """Score replicates -> P(best) (ties share the win), 95% rank and score intervals."""
    n = len(keys)
    out: dict[str, Any] = {
        "prob": {k: float("nan") for k in keys},
        "rank_low": np.full(n, np.nan),
        "rank_high": np.full(n, np.nan),
        "score_low": np.full(n, np.nan),
        "score_high": np.full(n, np.nan),
    }
    if not (n_bootstrap and boot and n >= 2):
        return out
    reps = {name: np.stack([boot[name][k] for k in keys]) for name in boot}
    for name in _SCORE_INPUTS:
        reps.setdefault(name, np.full((n, n_bootstrap), np.nan))
    if at_bound is not None and "nll_heldout" in reps:
        reps["fitted_temperature_at_bound"] = at_bound.astype(np.float64)[:, None]
    sb = score_checkpoints(reps, collapse_weight=collapse_weight)  # (n, B)
    sb = np.where(np.isfinite(sb), sb, -np.inf)
    best = sb.max(axis=0)
    winners = sb == best[None, :]
    p = (winners / winners.sum(axis=0, keepdims=True)).mean(axis=1)
    out["prob"] = {k: float(v) for k, v in zip(keys, p, strict=False)}
    out["rank_low"], out["rank_high"] = np.percentile(_ranks_desc(sb), [2.5, 97.5], axis=1)
    finite = np.where(np.isfinite(sb), sb, np.nan)
    out["score_low"], out["score_high"] = np.nanpercentile(finite, [2.5, 97.5], axis=1)
    return out


def _ranks_desc(sb: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of each row in every column; ties get the average rank.

    ``scipy.stats.rankdata(-sb, axis=0, method="average")`` without NaN (the caller maps
    them to -inf): the rank is the mean of the first and last position of the value in
    the sorted column. Written out because importing ``scipy.stats`` costs more CPU
    than the rest of the recommendation (tests/test_recommend.py checks the agreement).
    """
    v = -np.asarray(sb, dtype=np.float64)
    s = np.sort(v, axis=0)
    out = np.empty(v.shape, np.float64)
    for j in range(v.shape[1]):
        lo = np.searchsorted(s[:, j], v[:, j], side="left")
        hi = np.searchsorted(s[:, j], v[:, j], side="right")
        out[:, j] = (lo + hi + 1) / 2.0
    return out


def fit_notes(frame: pl.DataFrame) -> list[str]:
    """Notes on degenerate temperature fits and on a small held-out split, with the numbers."""
    notes = []
    lo, hi = TEMPERATURE_BOUNDS
    for r in frame.filter(pl.col("fitted_temperature_at_bound")).iter_rows(named=True):
        notes.append(
            f"{key_of(r['run'], r['checkpoint'])}: the temperature fit reached the bound of its "
            f"search (T = {r['fitted_temperature']:.4g}, search [{lo:g}, {hi:g}]), so its NLL "
            f"after the fit ({r['nll_fit_heldout']:.4g}) is degenerate (a held-out split the "
            "teacher separates drives it to 0); it is scored with its raw held-out NLL at "
            f"T = 1 ({r['nll_heldout']:.4g}) instead"
        )
    n = frame["n_labeled_heldout"].drop_nulls()
    mc = frame["min_class_heldout"].drop_nulls()
    n_min = int(n.min()) if n.len() else None  # type: ignore[arg-type]
    mc_min = int(mc.min()) if mc.len() else None  # type: ignore[arg-type]
    small_n = n_min is not None and 0 < n_min < SMALL_HELDOUT_N
    small_c = mc_min is not None and mc_min < SMALL_HELDOUT_PER_CLASS
    if small_n or small_c:
        bits = []
        if n_min is not None:
            bits.append(f"{n_min:,} labelled example(s)")
        if mc_min is not None:
            bits.append(f"{mc_min} in its smallest class")
        notes.append(
            f"the held-out split is small ({', '.join(bits)}; kdlens calls a held-out split "
            f"small below {SMALL_HELDOUT_N} labelled examples or {SMALL_HELDOUT_PER_CLASS} per "
            "class): its NLL, temperature fit and P(best score) are noisy; hold out more "
            "examples if you can"
        )
    return notes


def nothing_to_rank(signals: pl.DataFrame, notes: list[str], **context: Any) -> Recommendation:
    """The answer for fewer than two checkpoints: nothing recommended, and why."""
    keys = [key_of(r, c) for r, c in zip(signals["run"], signals["checkpoint"], strict=False)]
    only = keys[0] if keys else "none"
    frame = signals.with_columns(
        *[pl.lit(None, dtype=pl.Float64).alias(c) for c in RANKING_COLUMNS if c not in signals]
    ).with_columns(pl.lit(None, dtype=pl.Int64).alias("rank"))
    return Recommendation(
        ranking=frame.select(RANKING_COLUMNS),
        recommended=None,
        reason=(
            f"only one checkpoint ({only}): there is nothing to rank. Dump several checkpoints "
            "(e.g. kdlens dump with more epochs or batch sizes) and run recommend again"
        ),
        pareto=pl.DataFrame(),
        sweet_spot=pl.DataFrame(),
        probability_best={},
        notes=list(notes),
        **context,
    )


def compute_recommendation(
    signals: pl.DataFrame,
    boot: dict[str, dict[str, np.ndarray]],
    notes: list[str],
    *,
    temperature: float,
    collapse_weight: float,
    n_bootstrap: int,
    top: int | None,
    **context: Any,
) -> Recommendation:
    """Score, rank and explain; ``context`` (n_buckets, seed) is recorded in the result."""
    notes = list(notes)
    context.update(
        temperature=temperature,
        collapse_weight=collapse_weight,
        n_bootstrap=n_bootstrap,
        score_definition=score_definition(temperature, collapse_weight),
    )
    if not math.isclose(temperature, DEFAULT_TEMPERATURE) and collapse_weight > 0:
        # (With no collapse term, as from an analysis at another T, T plays no part.)
        notes.append(
            f"ranked at T = {temperature:g}: the score (its collapse weight, and NLL over "
            f"accuracy) was validated at T = {DEFAULT_TEMPERATURE:g} (examples/VALIDATION.md); "
            "at another T the pick can change without being better"
        )
    if signals.height < 2:
        return nothing_to_rank(signals, notes, **context)
    basis = _basis(signals, notes)
    score = score_checkpoints(signals, collapse_weight=collapse_weight)
    dm_h, dm_t = signals["dark_mass_heldout"].to_numpy(), signals["dark_mass_transfer"].to_numpy()
    frame = signals.with_columns(
        score=pl.Series(score),
        collapse=pl.Series(_collapse(dm_h, dm_t)),
        nll_scored_heldout=pl.Series(scored_nll(signals)),
    )
    frame = _baseline_scores(frame)
    keys = [key_of(r, c) for r, c in zip(frame["run"], frame["checkpoint"], strict=False)]
    n = frame.height
    at_bound = frame["fitted_temperature_at_bound"].to_numpy()
    bs = _bootstrap_summaries(keys, boot, n_bootstrap, collapse_weight, at_bound)
    notes.extend(fit_notes(frame))
    order = np.lexsort((np.arange(n), -np.nan_to_num(score, nan=-np.inf)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    frame = frame.with_columns(
        rank=pl.Series(rank),
        rank_low=pl.Series(bs["rank_low"]),
        rank_high=pl.Series(bs["rank_high"]),
        score_low=pl.Series(bs["score_low"]),
        score_high=pl.Series(bs["score_high"]),
        probability_best=pl.Series([bs["prob"][k] for k in keys], dtype=pl.Float64),
    ).sort("rank")
    sweet, grid_notes = sweet_spot(frame)
    notes.extend(grid_notes)
    ranking = frame.select(RANKING_COLUMNS)
    best = frame.row(0, named=True)
    distinguishable, why = reason(frame, best, basis=basis, bootstrapped=bool(n_bootstrap and boot))
    return Recommendation(
        ranking=ranking.head(int(top)) if top is not None else ranking,
        recommended=dict(best),
        reason=why,
        pareto=pareto(frame),
        sweet_spot=sweet,
        probability_best=bs["prob"],
        advice=edge_advice(frame, best),
        notes=notes,
        distinguishable=distinguishable,
        basis=basis,
        pick_note=split_bootstrap(frame, best) if n_bootstrap and boot else "",
        **context,
    )
