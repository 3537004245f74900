"""What :func:`kdlens.recommend.rank.recommend` returns, and the score's stated definition."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from kdlens._internal.defaults import COLLAPSE_WEIGHT, RECOMMEND_TEMPERATURE

__all__ = [
    "DEFAULT_COLLAPSE_WEIGHT",
    "DEFAULT_TEMPERATURE",
    "PICK_RULE",
    "SCORE_DEFINITION",
    "Recommendation",
    "probability_best_definition",
]

#: Weight of the transfer-split collapse (nats of score per nat of lost dark mass).
DEFAULT_COLLAPSE_WEIGHT = COLLAPSE_WEIGHT
#: The distillation temperature most recipes use; signals are measured at it by default.
DEFAULT_TEMPERATURE = RECOMMEND_TEMPERATURE


def score_definition(temperature: float, collapse_weight: float) -> str:
    """The score with this ranking's numbers filled in (stated in every output)."""
    return (
        f"score = -(held-out NLL after a temperature fit + {collapse_weight:g} * max(0, "
        f"log(dark_mass_heldout / dark_mass_transfer))); dark mass at T = {temperature:g}; "
        "where the temperature fit reached a bound of its search, the raw held-out NLL at "
        "T = 1 stands in for the NLL after the fit"
    )


#: How the recommended checkpoint is chosen, stated beside P(best score) in every output.
PICK_RULE = (
    "the recommended checkpoint is the one with the best score on all examples (the point "
    "estimate); when the bootstrap favours another, the output says so"
)


def probability_best_definition(n_bootstrap: int, n_buckets: int) -> str:
    """What P(best score) is, in one sentence, with this ranking's counts."""
    if not n_bootstrap or not n_buckets:  # no bootstrap, or nothing was ranked
        return "P(best score) was not computed (no bootstrap was run)"
    return (
        f"P(best score) is the share of {n_bootstrap} bootstrap replicates (Poisson "
        f"reweightings of {n_buckets} id-hashed blocks of examples) in which a checkpoint has "
        "the highest score: a statement about the score, not a promise that its students "
        "will be the best"
    )


SCORE_DEFINITION = (
    "score = -(heldout NLL after a temperature fit + w * max(0, log(dark_mass_heldout / "
    "dark_mass_transfer))); dark mass at the temperature T, w = collapse_weight; the raw "
    "held-out NLL at T = 1 stands in where the temperature fit reached a bound"
)


@dataclass
class Recommendation:
    """What :func:`recommend` found.

    ``ranking`` has one row per (run, checkpoint), best first; ``recommended`` is
    its top row as a dict (``None`` when nothing can be ranked, with ``reason``
    saying why); ``sweet_spot`` is the batch size x epoch grid in long form with
    ``missing`` marking cells without a checkpoint.
    """

    ranking: pl.DataFrame
    recommended: dict[str, Any] | None
    reason: str
    pareto: pl.DataFrame
    sweet_spot: pl.DataFrame
    probability_best: dict[str, float]
    advice: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    distinguishable: bool | None = None
    temperature: float = DEFAULT_TEMPERATURE
    collapse_weight: float = DEFAULT_COLLAPSE_WEIGHT
    n_bootstrap: int = 0
    #: Id buckets the bootstrap resamples (see :mod:`kdlens.recommend.bootstrap`); 0 = none.
    n_buckets: int = 0
    seed: int = 0
    basis: str = "held-out + transfer"
    score_definition: str = SCORE_DEFINITION
    source: str = ""
    #: One sentence when another checkpoint has a higher P(best score) than the pick.
    pick_note: str = ""

    @property
    def ok(self) -> bool:
        return self.recommended is not None

    @property
    def probability_best_definition(self) -> str:
        return probability_best_definition(self.n_bootstrap, self.n_buckets)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` payload: everything the text output says (reason, ties, notes,
        advice, Pareto front, sweet-spot map, bootstrap counts and definitions).

        ``probability_best`` keeps its name (P(best score) in text);
        ``probability_best_definition`` says what it is.
        """
        rec = None
        if self.recommended is not None:
            rec = {
                k: self.recommended.get(k)
                for k in (
                    "run",
                    "checkpoint",
                    "batch_size",
                    "epoch",
                    "score",
                    "probability_best",
                    "fitted_temperature_at_bound",
                )
            }
            rec = _jsonable([rec])[0]
        return {
            "source": self.source,
            "ok": self.ok,
            "recommended": rec,
            "reason": self.reason,
            "distinguishable": self.distinguishable,
            "pick_rule": PICK_RULE,
            "pick_note": self.pick_note,
            "advice": list(self.advice),
            "notes": list(self.notes),
            "basis": self.basis,
            "temperature": self.temperature,
            "validated_temperature": DEFAULT_TEMPERATURE,
            "collapse_weight": self.collapse_weight,
            "score_definition": self.score_definition,
            "ranking": _jsonable(self.ranking.to_dicts()),
            "probability_best": dict(self.probability_best),
            "probability_best_definition": self.probability_best_definition,
            "pareto": _jsonable(self.pareto.to_dicts()),
            "sweet_spot": _jsonable(self.sweet_spot.to_dicts()),
            "bootstrap": {
                "replicates": self.n_bootstrap,
                "buckets": self.n_buckets,
                "seed": self.seed,
            },
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        out.append(
            {
                k: (None if isinstance(v, float) and not math.isfinite(v) else _plain(v))
                for k, v in r.items()
            }
        )
    return out


def _plain(v: Any) -> Any:
    # numpy scalars (the recommended row's values) as Python numbers.
    return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v


def key_of(run: str, checkpoint: str) -> str:
    return f"{run}/{checkpoint}"
