"""The one table of kdlens's per-checkpoint metrics.

Each :class:`Metric` names a column of the analysis ``summary`` table and says which way
is better, whether it needs labels and whether it depends on the soft-label temperature.
``analyze`` (its "needs labels" message), ``recommend`` (its signal columns and their
signs) and the report read these facts from here instead of restating them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METRICS", "Metric", "label_needers", "metric"]


@dataclass(frozen=True)
class Metric:
    """One per-checkpoint metric.

    ``higher_is_better`` is ``None`` where neither direction is better in itself (an
    entropy is a property, not a quality). ``temperature_dependent`` is true for the
    soft-label measures at T; accuracy, NLL, margin and ECE are at T = 1.
    """

    name: str
    column: str
    higher_is_better: bool | None
    needs_labels: bool
    temperature_dependent: bool
    description: str


METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "accuracy", True, True, False, "top-1 accuracy at T = 1"),
    Metric("nll", "nll", False, True, False, "mean -log p_y at T = 1 (nats)"),
    Metric(
        "nll_fitted",
        "nll_fitted",
        False,
        True,
        False,
        "mean NLL after the held-out temperature fit, on the fit's id-hashed sample (nats)",
    ),
    Metric(
        "fitted_temperature",
        "fitted_temperature",
        None,
        True,
        False,
        "the T minimising held-out NLL (fitted on val when analysed)",
    ),
    Metric("ece", "ece", False, True, False, "expected calibration error, equal-width bins"),
    Metric("target_prob", "target_prob", None, True, True, "mean p_y at T"),
    Metric("entropy", "entropy", None, False, True, "mean entropy H(p) at T (nats)"),
    Metric("dark_mass", "dark_mass", True, True, True, "mean non-target mass 1 - p_y at T"),
    Metric(
        "nontarget_entropy",
        "nontarget_entropy",
        True,
        True,
        True,
        "mean entropy of the renormalised non-target distribution q at T (nats)",
    ),
    Metric(
        "oemc_share",
        "oemc_share",
        True,
        True,
        True,
        "share of examples whose dark mass at T is at least the OEMC threshold",
    ),
    Metric(
        "similarity_information",
        "similarity_information",
        True,
        True,
        True,
        "mean over classes of KL(S[c] || uniform): class structure in the soft labels",
    ),
    Metric(
        "instance_information",
        "instance_information",
        True,
        True,
        True,
        "mean over classes of the per-example spread of q around S[c]",
    ),
)

_BY_NAME = {m.name: m for m in METRICS}


def metric(name: str) -> Metric:
    """The metric called ``name`` (a KeyError names the known ones)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(_BY_NAME)}") from None


def label_needers() -> tuple[str, ...]:
    """Names of the metrics that need a label per example."""
    return tuple(m.name for m in METRICS if m.needs_labels)
