"""Evaluating a greedy selection: the path per step and the comparison with one checkpoint."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from kdlens.recommend.ensemble import (
    bucket_means,
    mixture_of,
    nll_replicates,
    split_fits,
    weights_for,
)
from kdlens.recommend.ensemble_result import EnsembleRecommendation
from kdlens.recommend.ensemble_select import Greedy

if TYPE_CHECKING:
    from kdlens.recommend.ensemble import EnsembleRequest

__all__ = ["evaluate"]


def _measure(
    arrays: dict[str, np.ndarray],
    ids: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    counts: np.ndarray,
    rule: str,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """Fits, fit accumulators and per-example correctness of one mixture on every split."""
    mixes = {s: mixture_of(a, counts, rule) for s, a in arrays.items()}
    fits, accs = split_fits(mixes, ids, labels)
    correct = {s: (m.argmax(axis=1) == labels[s]).astype(np.float64) for s, m in mixes.items()}
    return fits, accs, correct


def evaluate(
    req: EnsembleRequest,
    rec: EnsembleRecommendation,
    cands: list[tuple[str, str]],
    greedy: Greedy,
    arrays: dict[str, np.ndarray],
    ids: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
) -> EnsembleRecommendation:
    """Fill ``rec`` with the members, the path table, the comparison and the statement."""
    c = len(cands)
    rows = []
    for m in range(1, len(greedy.picks) + 1):
        counts = greedy.counts(c, m)
        fits, _, correct = _measure(arrays, ids, labels, counts, req.rule)
        run, ck = cands[greedy.picks[m - 1]]
        row: dict[str, Any] = {"members": m, "added": f"{run}/{ck}"}
        row["distinct"] = int(np.count_nonzero(counts))
        row["inference_multiplier"] = row["distinct"]
        for s in arrays:
            row[f"nll_fit_{s}"] = fits[s].nll
            row[f"accuracy_{s}"] = float(correct[s].mean())
        row["fitted_temperature"] = fits[req.selection].temperature
        row["kept"] = m == greedy.chosen
        rows.append(row)
    rec.path = pl.DataFrame(rows)
    counts = greedy.counts(c)
    sel = np.flatnonzero(counts)
    rec.members = [cands[i] for i in sel]
    rec.counts = [int(counts[i]) for i in sel]
    rec.weights = [int(counts[i]) / int(counts.sum()) for i in sel]
    rec.best_single = cands[greedy.picks[0]]
    rec.comparison = _comparison(req, arrays, ids, labels, counts, greedy.picks[0])
    rec.statement = _statement(req, rec)
    rec.ok = True
    return rec


def _comparison(
    req: EnsembleRequest,
    arrays: dict[str, np.ndarray],
    ids: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    counts: np.ndarray,
    best: int,
) -> pl.DataFrame:
    single = np.zeros_like(counts)
    single[best] = 1
    mf, ma, mc = _measure(arrays, ids, labels, counts, req.rule)
    sf, sa, sc = _measure(arrays, ids, labels, single, req.rule)
    w = weights_for(req.n_bootstrap, req.seed)
    rows = []
    for s in arrays:
        on_sel = s == req.selection
        for measure in ("nll_fit", "accuracy"):
            if measure == "nll_fit":
                a, b = sf[s].nll, mf[s].nll
            else:
                a, b = float(sc[s].mean()), float(mc[s].mean())
            low = high = math.nan
            if w is not None:
                if measure == "nll_fit":
                    d = nll_replicates(ma[s], mf[s], on_sel, w) - nll_replicates(
                        sa[s], sf[s], on_sel, w
                    )
                else:
                    d = bucket_means(ids[s], mc[s] - sc[s], w)
                low, high = (float(v) for v in np.nanpercentile(d, [2.5, 97.5]))
            rows.append(
                {
                    "split": s,
                    "selection_split": on_sel,
                    "measure": measure,
                    "single": a,
                    "mixture": b,
                    "difference": b - a,
                    "low": low,
                    "high": high,
                }
            )
    return pl.DataFrame(rows)


def _statement(req: EnsembleRequest, rec: EnsembleRecommendation) -> str:
    """One plain sentence: is the mixture better than one checkpoint beyond noise?"""
    single = "/".join(rec.best_single or ("", ""))
    if rec.n_members == 1:
        return (
            f"the selection kept one checkpoint ({single}): no mixture of these checkpoints "
            f"had a lower NLL after the temperature fit on '{req.selection}'; distil from it"
        )
    honest = [s for s in rec.comparison["split"].unique(maintain_order=True) if s != req.selection]
    split = honest[0] if honest else req.selection
    r = rec.comparison.filter((pl.col("split") == split) & (pl.col("measure") == "nll_fit"))
    d, lo, hi = (float(r[c][0]) for c in ("difference", "low", "high"))
    where = f"on '{split}'" + ("" if honest else " (the split it was selected on: optimistic)")
    if math.isnan(hi):
        return (
            f"the mixture of {rec.n_members} checkpoints changes the NLL after the fit by "
            f"{d:+.4f} nats against {single} {where}; no bootstrap was run to tell it from noise"
        )
    if hi >= 0:
        return (
            f"the mixture of {rec.n_members} checkpoints is not better than the best single "
            f"checkpoint ({single}) beyond noise {where}: NLL after the fit {d:+.4f} nats "
            f"(95% interval {lo:+.4f} to {hi:+.4f}); distilling from {single} costs "
            f"{rec.n_members}x less teacher inference"
        )
    return (
        f"the mixture of {rec.n_members} checkpoints lowers the NLL after the fit by "
        f"{-d:.4f} nats against the best single checkpoint ({single}) {where} (95% interval "
        f"{-hi:.4f} to {-lo:.4f}), at {rec.n_members}x the teacher inference of online KD; "
        "a better teacher by held-out NLL, not a measured gain for students (docs/science.md, "
        "Ensemble teachers)"
    )
