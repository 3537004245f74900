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
    "SCORE_DEFINITION",
    "Recommendation",
]

#: Weight of the transfer-split collapse (nats of score per nat of lost dark mass).
DEFAULT_COLLAPSE_WEIGHT = COLLAPSE_WEIGHT
#: The distillation temperature most recipes use; signals are measured at it by default.
DEFAULT_TEMPERATURE = RECOMMEND_TEMPERATURE


def score_definition(temperature: float, collapse_weight: float) -> str:
    """The score with this ranking's numbers filled in (stated in every output)."""
    return (
        f"score = -(held-out NLL after a temperature fit + {collapse_weight:g} * max(0, "
        f"log(dark_mass_heldout / dark_mass_transfer))); dark mass at T = {temperature:g}"
    )


SCORE_DEFINITION = (
    "score = -(heldout NLL after a temperature fit + w * max(0, log(dark_mass_heldout / "
    "dark_mass_transfer))); dark mass at the temperature T, w = collapse_weight"
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

    @property
    def ok(self) -> bool:
        return self.recommended is not None

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` payload: recommended, ranking, probability_best, bootstrap settings."""
        rec = None
        if self.recommended is not None:
            rec = {
                k: self.recommended.get(k)
                for k in ("run", "checkpoint", "batch_size", "epoch", "score")
            }
        return {
            "recommended": rec,
            "ranking": _jsonable(self.ranking.to_dicts()),
            "probability_best": dict(self.probability_best),
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
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in r.items()
            }
        )
    return out


def key_of(run: str, checkpoint: str) -> str:
    return f"{run}/{checkpoint}"
