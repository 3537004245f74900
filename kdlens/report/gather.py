"""The report's one pass over a store: analyze, recommend and the report's own details.

Each command states what it needs from each part (:class:`~kdlens.analysis.passes.PartPlan`);
the plans merge, every part is read once, and each command finishes from the same
accumulators. Nothing here re-reads the store.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from kdlens._internal.defaults import (
    BOOTSTRAP_SEED,
    N_BINS,
    N_PERMUTATIONS,
    OEMC_DELTA,
)
from kdlens.analysis.engine import AnalysisResult, analysis_request
from kdlens.analysis.passes import CheckOptions, PartPlan, PartResult, merge_plans, run_pass
from kdlens.analysis.tables import with_keys
from kdlens.errors import KdlensError
from kdlens.recommend.rank import recommend_from_pass, too_few_checkpoints
from kdlens.recommend.result import DEFAULT_COLLAPSE_WEIGHT, DEFAULT_TEMPERATURE
from kdlens.recommend.signals import recommend_request
from kdlens.report.details import EntropyHistExtra
from kdlens.store.reader import LogitsStore

__all__ = ["Gathered", "gather"]


@dataclass
class Gathered:
    """What one pass over the store produced for the report."""

    analysis: AnalysisResult | None = None
    recommendation: Any = None
    #: (run, checkpoint) -> entropy histograms of its transfer (else held-out) split.
    hists: dict[tuple[str, str], EntropyHistExtra] = field(default_factory=dict)
    #: Reliability tables of the held-out parts when no analysis ran on this pass.
    calibration: pl.DataFrame | None = None
    #: The ensemble teacher (``ensemble=True``), from the same pass.
    ensemble: Any = None


def gather(
    st: LogitsStore,
    *,
    analyze_at: float | None,
    details_at: float,
    heldout: str | None,
    transfer: str | None,
    rank: bool,
    n_bootstrap: int,
    n_bins: int | None,
    notes: list[str],
    ensemble: bool = False,
) -> Gathered:
    """One pass feeding analyze (at ``analyze_at``; None: skip), recommend (``rank``) and the
    entropy histograms (at ``details_at``, on ``transfer``) / reliability (``heldout``)."""
    out = Gathered()
    groups: list[list[PartPlan]] = []
    check, delta, bins = CheckOptions(skip_unlabeled=True), OEMC_DELTA, n_bins or N_BINS
    areq = None
    if analyze_at is not None:
        areq = analysis_request(st, temperature=analyze_at, n_permutations=N_PERMUTATIONS)
        groups.append(areq.plans())
        check, delta, bins = areq.check, areq.delta, areq.n_bins
    rreq = None
    if rank:
        try:
            # The ranking score has its own, validated temperature (recommend's default);
            # the analysis temperature only sets the soft-label charts.
            rreq = recommend_request(
                st, temperature=DEFAULT_TEMPERATURE, n_bootstrap=n_bootstrap, seed=BOOTSTRAP_SEED
            )
            out.recommendation = too_few_checkpoints(rreq, DEFAULT_COLLAPSE_WEIGHT)
            if out.recommendation is None:
                groups.append(rreq.plans())
            else:
                rreq = None
        except KdlensError as exc:
            notes.append(f"no recommendation: {exc}")
    ereq = _ensemble_request(st, n_bootstrap, notes) if ensemble else None
    if ereq is not None:
        groups.append(ereq.plans())
    groups.append(_detail_plans(st, details_at, heldout, transfer, calibration=areq is None))
    results = run_pass(st, merge_plans(*groups), delta=delta, n_bins=bins, check=check)
    if areq is not None:
        out.analysis = areq.finish(results, None)
    if rreq is not None:
        try:
            out.recommendation = recommend_from_pass(rreq, results)
            out.recommendation.source = st.source
        except KdlensError as exc:
            notes.append(f"no recommendation: {exc}")
    if ereq is not None:
        try:
            out.ensemble = ereq.result(results)
            out.ensemble.source = st.source
        except KdlensError as exc:
            notes.append(f"no ensemble: {exc}")
    out.hists = {
        r.part.key: r.extras["entropy_hist"] for r in results if "entropy_hist" in r.extras
    }
    if areq is None:
        out.calibration = _calibration(results, heldout, details_at)
    return out


def _ensemble_request(st: LogitsStore, n_bootstrap: int, notes: list[str]) -> Any:
    """The ensemble selection's request at its defaults (None, with a note, if refused)."""
    from kdlens._internal.defaults import ENSEMBLE_MAX_MEMBERS, ENSEMBLE_RULE
    from kdlens.recommend.ensemble import EnsembleRequest

    try:
        return EnsembleRequest(
            st,
            max_members=ENSEMBLE_MAX_MEMBERS,
            rule=ENSEMBLE_RULE,
            temperature=DEFAULT_TEMPERATURE,
            n_bootstrap=n_bootstrap,
            seed=BOOTSTRAP_SEED,
        )
    except KdlensError as exc:
        notes.append(f"no ensemble: {exc}")
        return None


def _detail_plans(
    st: LogitsStore, t: float, heldout: str | None, transfer: str | None, *, calibration: bool
) -> list[PartPlan]:
    plans = []
    for run, ck in st.keys():
        have = {p.split: p for p in st.find(run, ck)}
        if transfer in have:
            plans.append(
                PartPlan(have[transfer], {t: False}, extras={"entropy_hist": _hist_factory(t)})
            )
        if calibration and heldout in have:
            plans.append(PartPlan(have[heldout], {t: False}))
    return plans


def _hist_factory(t: float) -> Any:
    return functools.partial(EntropyHistExtra, t)  # picklable: worker processes get the plan


def _calibration(results: list[PartResult], heldout: str | None, t: float) -> pl.DataFrame | None:
    """The reliability tables (T = 1) of the held-out parts, keyed like analyze's table."""
    frames = []
    for r in results:
        if r.part.split != heldout or t not in r.sets:
            continue
        cal = r.sets[t].soft.calibration
        if cal.n:
            keys = {"run": r.part.run, "checkpoint": r.part.checkpoint, "split": r.part.split}
            frames.append(with_keys(cal.finalize().table, keys))
    return pl.concat(frames) if frames else None
