"""Rank teacher checkpoints for distillation and recommend the sweet spot.

The raw ingredients come from two splits of a logits store (``science.md``,
"Recommending the sweet spot"), measured by the same accumulators as ``analyze``
(:mod:`kdlens.recommend.signals`):

* the **held-out** split (``val``, else ``test``): accuracy, NLL (also after a
  temperature fit) and entropy of the teacher on examples it never trained on;
* the **transfer** split (``train``): what the student actually sees. A teacher
  that memorises its training examples becomes one-hot there, so its dark mass,
  OEMC share and similarity information on the transfer split collapse even
  when its held-out accuracy keeps rising.

The score (:data:`SCORE_DEFINITION`, :mod:`kdlens.recommend.score`) is the held-out
log-loss of the teacher's temperature-calibrated probabilities, penalised by the
*collapse* of its transfer-split soft labels relative to held-out ones, both in nats::

    collapse = max(0, log(dark_mass_heldout / dark_mass_transfer))   # at T
    score    = -(nll_heldout_after_temperature_fit + collapse_weight * collapse)

The first term asks how close the teacher's probabilities are to the truth on
examples it never saw (Menon et al. 2021); the second how much less non-target
mass it puts on the examples the student will actually see. T should be the
distillation temperature: at T = 1 every well-trained teacher looks collapsed,
at T = 4 only one that memorised its transfer set does. ``collapse_weight`` and
the choice of NLL over accuracy were fixed on one benchmark and checked on others
(``examples/VALIDATION.md``), where the evidence is also reported honestly.

Uncertainty: a Poisson bootstrap over id-hashed blocks of examples
(:mod:`kdlens.recommend.bootstrap`), paired across checkpoints, as one more
accumulator on the pass: its cost does not grow with the number of replicates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import polars as pl

from kdlens._internal.defaults import BOOTSTRAP_SEED, N_BOOTSTRAP
from kdlens.analysis.executors import engine_spec
from kdlens.analysis.passes import PartResult, run_pass
from kdlens.errors import InputError
from kdlens.recommend.bootstrap import N_BUCKETS
from kdlens.recommend.result import (
    DEFAULT_COLLAPSE_WEIGHT,
    DEFAULT_TEMPERATURE,
    SCORE_DEFINITION,
    Recommendation,
)
from kdlens.recommend.score import compute_recommendation, nothing_to_rank, score_checkpoints
from kdlens.recommend.signals import (
    RecommendRequest,
    _check_options,
    as_summary,
    checkpoint_signals,
    pass_options,
    recommend_request,
    signal_frame,
    summary_signals,
)
from kdlens.store.reader import LogitsStore

__all__ = [
    "DEFAULT_COLLAPSE_WEIGHT",
    "DEFAULT_TEMPERATURE",
    "SCORE_DEFINITION",
    "Recommendation",
    "checkpoint_signals",
    "recommend",
    "score_checkpoints",
]


def recommend(
    source: LogitsStore | pl.DataFrame | str | os.PathLike[str] | Sequence[str],
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    top: int | None = None,
    collapse_weight: float = DEFAULT_COLLAPSE_WEIGHT,
    progress: Any = None,
    engine: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
) -> Recommendation:
    """Rank every (run, checkpoint) of a store or an analysis and recommend one.

    Parameters
    ----------
    source
        A logits store (object, file, directory or glob), an analysis directory
        holding ``summary.parquet`` (no bootstrap: it has no per-example values),
        a ``summary.parquet`` file, or such a summary frame.
    temperature
        Temperature of the soft-label signals (dark mass, OEMC, similarity).
    n_bootstrap
        Bootstrap replicates (0 = none); store sources only. Each is a Poisson(1)
        reweighting of :data:`~kdlens.recommend.bootstrap.N_BUCKETS` id-hashed blocks
        of examples (:mod:`kdlens.recommend.bootstrap`).
    seed
        Seed of the bootstrap; the same seed gives the same probabilities.
    top
        Keep only the best ``top`` rows of ``ranking`` (the map and front use all).
    collapse_weight
        ``w`` in :data:`SCORE_DEFINITION`.
    progress
        A rich ``Progress``-like object or a callable ``(done, total, description)``.
    engine, workers, scheduler
        Where the pass runs (:func:`~kdlens.analysis.executors.engine_spec`); the result
        is bit-identical whichever runs it.

    A store with fewer than two checkpoints is answered (``ok`` false, ``reason``
    saying why) before any logits are read.
    """
    _check_options(temperature, n_bootstrap)
    spec = engine_spec(engine, workers, scheduler)
    if top is not None and int(top) < 1:
        raise InputError(f"top must be >= 1, got {top}")
    if not (math.isfinite(collapse_weight) and collapse_weight >= 0):
        raise InputError(f"collapse_weight must be >= 0, got {collapse_weight!r}")
    label = source if isinstance(source, str) else getattr(source, "source", type(source).__name__)
    summary = as_summary(source)
    if summary is not None:
        rec = _from_summary(summary, float(temperature), n_bootstrap, collapse_weight, top)
    else:
        req = recommend_request(source, temperature=temperature, n_bootstrap=n_bootstrap, seed=seed)
        early = too_few_checkpoints(req, collapse_weight)
        if early is not None:
            rec = early
        else:
            results = run_pass(
                req.st, req.plans(), **pass_options(), progress=progress, engine=spec
            )
            rec = recommend_from_pass(req, results, collapse_weight=collapse_weight, top=top)
    rec.source = str(label)
    return rec


def too_few_checkpoints(req: RecommendRequest, collapse_weight: float) -> Recommendation | None:
    """The answer for a store of fewer than two checkpoints (nothing read), else None."""
    if len(req.st.keys()) >= 2:
        return None
    run, ck = req.st.keys()[0]
    p = req.st.find(run, ck)[0]
    ident: dict[str, Any] = {"run": run, "checkpoint": ck, "epoch": p.epoch, "step": p.step}
    ident.update(batch_size=p.batch_size, temperature=req.temperature)
    return nothing_to_rank(
        signal_frame([ident]),
        req.notes,
        temperature=req.temperature,
        collapse_weight=collapse_weight,
        n_bootstrap=0,  # nothing was read, so no bootstrap ran: say so, not the count asked for
    )


def recommend_from_pass(
    req: RecommendRequest,
    results: Sequence[PartResult],
    *,
    collapse_weight: float = DEFAULT_COLLAPSE_WEIGHT,
    top: int | None = None,
) -> Recommendation:
    """The recommendation from a pass that ran (at least) ``req.plans()``."""
    signals, boot, notes = req.signals(results)
    return compute_recommendation(
        signals,
        boot,
        notes,
        temperature=req.temperature,
        collapse_weight=float(collapse_weight),
        n_bootstrap=req.n_bootstrap,
        top=top,
        n_buckets=N_BUCKETS if req.n_bootstrap else 0,
        seed=req.seed,
    )


def _from_summary(
    summary: pl.DataFrame,
    temperature: float,
    n_bootstrap: int,
    collapse_weight: float,
    top: int | None,
) -> Recommendation:
    signals, notes = summary_signals(summary, temperature=temperature)
    if signals.height and not math.isclose(float(signals["temperature"][0]), temperature):
        collapse_weight = 0.0
    if n_bootstrap:
        notes.append(
            "an analysis summary has no per-example values: no bootstrap, no P(best score)"
        )
    return compute_recommendation(
        signals,
        {},
        notes,
        temperature=float(signals["temperature"][0]) if signals.height else temperature,
        collapse_weight=float(collapse_weight),
        n_bootstrap=0,
        top=top,
    )
