"""Which parts a command reads, and the one rule for the fitted temperature.

The fitted temperature of a checkpoint is the T minimising the NLL on its ``val``
split's temperature-fit sample when that split was read, else on each split's own
sample; ``nll_fitted`` is each split's NLL at that T on its own sample. ``analyze``
(columns ``fitted_temperature`` / ``nll_fitted``) and ``recommend`` (``fitted_temperature``
/ ``nll_fit_heldout``) both take it from :func:`fitted_temperatures`, so they agree exactly.

A fit that ends at a bound of :data:`~kdlens._internal.defaults.TEMPERATURE_BOUNDS` is
degenerate: the optimum lies outside the search interval (a held-out sample the teacher
separates perfectly drives T towards 0 and the NLL after the fit towards 0). ``Fit.at_bound``
flags it (``analyze``: column ``fitted_temperature_at_bound``) and ``recommend`` does not
rank by that NLL (:mod:`kdlens.recommend.score`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kdlens._internal.defaults import FIT_SPLIT, TEMPERATURE_BOUNDS
from kdlens.errors import InputError
from kdlens.measures.calibration import TemperatureFitAccumulator
from kdlens.store.format import Part
from kdlens.store.reader import LogitsStore

__all__ = ["Fit", "at_temperature_bound", "fitted_temperatures", "select_parts"]

#: A fit within this distance of a bound, in log T, is "at the bound" (the search stops
#: 1e-4 in log T from its optimum; a bound-limited optimum ends within about that of it).
BOUND_TOLERANCE = 1e-3

_SPLIT_ORDER = {s: i for i, s in enumerate(("train", "val", "test"))}


def select_parts(st: LogitsStore, splits: Sequence[str] | None) -> list[Part]:
    """One part per run x checkpoint x split (the first file's), in a fixed order."""
    if splits is not None:
        wanted = [str(s) for s in splits]
        unknown = [s for s in wanted if s not in st.splits()]
        if unknown:
            raise InputError(
                f"split {unknown[0]!r} is not in the store (it has: {', '.join(st.splits())})"
            )
    out: list[Part] = []
    for run, ck in st.keys():
        seen: dict[str, Part] = {}
        for p in st.find(run, ck):
            if splits is None or p.split in splits:
                seen.setdefault(p.split, p)
        out.extend(seen[s] for s in sorted(seen, key=lambda s: (_SPLIT_ORDER.get(s, 9), s)))
    if not out:
        raise InputError("no part of the store matches the requested splits")
    return out


@dataclass(frozen=True)
class Fit:
    """The fitted temperature of a split, where it was fitted, and the NLL there."""

    temperature: float
    split: str
    nll: float
    #: The fit ended at a bound of the search: its NLL is not a calibrated one.
    at_bound: bool = False


def at_temperature_bound(
    temperature: float, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> bool:
    """Whether a fitted temperature lies at a bound of the search (a degenerate fit)."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)):
        return False
    if temperature <= 0:
        return True
    u = math.log(temperature)
    return any(abs(u - math.log(b)) < BOUND_TOLERANCE for b in bounds) or not (
        bounds[0] < temperature < bounds[1]
    )


def fitted_temperatures(tfits: Mapping[str, TemperatureFitAccumulator | None]) -> dict[str, Fit]:
    """The fit of every split of one checkpoint that has a sample (module docstring)."""
    cache: dict[str, float] = {}

    def fit(split: str) -> float:
        if split not in cache:
            acc = tfits[split]
            cache[split] = acc.finalize() if acc is not None else math.nan
        return cache[split]

    held = FIT_SPLIT if tfits.get(FIT_SPLIT) is not None else None
    out: dict[str, Fit] = {}
    for split, acc in tfits.items():
        if acc is None:
            continue
        src = held or split
        t = fit(src)
        out[split] = Fit(t, src, acc.nll_at(t), at_temperature_bound(t))
    return out
