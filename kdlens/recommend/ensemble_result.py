"""What :func:`kdlens.recommend.ensemble.select_ensemble` returns."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

__all__ = ["RULE_DEFINITIONS", "EnsembleRecommendation"]

#: Each combination rule in one sentence (stated in every output).
RULE_DEFINITIONS = {
    "mean_prob": "the mixture is the weighted mean of the members' probabilities at T = 1",
    "mean_prob_t": (
        "the mixture is the weighted mean of the members' probabilities at the distillation "
        "temperature T (stored as T * log p, so that softmax(logits / T) is that mean)"
    ),
    "mean_logit": "the mixture is the softmax of the weighted mean of the members' logits",
}


@dataclass
class EnsembleRecommendation:
    """An ensemble teacher chosen by greedy forward selection with replacement.

    ``members`` are distinct (run, checkpoint) pairs and ``weights`` their selection
    counts over the kept steps (summing to 1). ``path`` has one row per greedy step
    (M = 1..max_members): the checkpoint added, the distinct members so far (the
    teacher-inference multiplier of online KD), and the NLL after the temperature fit and
    the accuracy on every evaluated split. ``comparison`` has the mixture against the
    best single checkpoint per split and measure, with the difference's bootstrap interval.
    """

    ok: bool
    reason: str | None
    rule: str
    temperature: float
    selection_split: str | None
    members: list[tuple[str, str]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    best_single: tuple[str, str] | None = None
    path: pl.DataFrame = field(default_factory=pl.DataFrame)
    comparison: pl.DataFrame = field(default_factory=pl.DataFrame)
    statement: str = ""
    notes: list[str] = field(default_factory=list)
    max_members: int = 0
    n_candidates: int = 0
    n_bootstrap: int = 0
    n_buckets: int = 0
    seed: int = 0
    memory_bytes: int = 0
    source: str = ""

    @property
    def n_members(self) -> int:
        """Distinct members: forward passes per example when the teacher runs online."""
        return len(self.members)

    @property
    def member_names(self) -> list[str]:
        return [f"{r}/{c}" for r, c in self.members]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN -> null)."""
        return _clean(
            {
                "ok": self.ok,
                "reason": self.reason,
                "source": self.source,
                "rule": self.rule,
                "rule_definition": RULE_DEFINITIONS.get(self.rule),
                "temperature": self.temperature,
                "selection_split": self.selection_split,
                "members": [{"run": r, "checkpoint": c} for r, c in self.members],
                "member_names": self.member_names,
                "weights": self.weights,
                "counts": self.counts,
                "inference_multiplier": self.n_members,
                "best_single": None
                if self.best_single is None
                else {"run": self.best_single[0], "checkpoint": self.best_single[1]},
                "path": self.path.to_dicts(),
                "comparison": self.comparison.to_dicts(),
                "statement": self.statement,
                "notes": self.notes,
                "max_members": self.max_members,
                "n_candidates": self.n_candidates,
                "n_bootstrap": self.n_bootstrap,
                "n_buckets": self.n_buckets,
                "seed": self.seed,
                "memory_bytes": self.memory_bytes,
            }
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return None if not math.isfinite(x) else x
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x
