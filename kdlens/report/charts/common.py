"""What every chart shares: the exception for an undrawable chart, labels, inlined data, axes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import altair as alt
import numpy as np
import polars as pl

#: Why the sweet-spot map and the trajectories are absent for checkpoints without epochs.
NO_TRAINING_TIME = (
    "the checkpoints record no epoch (or step), so there is {what}: record them with "
    "kdlens import --epoch N --batch-size B, kdlens dump, or epoch= of "
    "kdlens.LogitsWriter.dump in your own training loop"
)

_WIDTH = 260  # one small-multiple panel; three fit a 1000 px column


class ChartUnavailable(Exception):
    """A chart cannot be drawn from the data given; ``str(exc)`` says why."""


def _with_teacher(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(
        (pl.col("run").cast(pl.Utf8) + pl.lit(" / ") + pl.col("checkpoint").cast(pl.Utf8)).alias(
            "teacher"
        )
    )


def _values(df: pl.DataFrame) -> dict[str, Any]:
    """Inline data as one JSON text; polars writes NaN/inf as null (JSON has no NaN, Vega
    skips nulls: pinned by a test).

    Vega-Lite parses inline ``values`` given as a string with ``format: json``. The text
    is written by polars (milliseconds for the 10,000-cell matrix of K = 100), where
    Python rows cost three passes over the data: ``to_dicts``, altair's hash of every
    row to name the dataset it moves to the spec's top-level ``datasets`` (once, however
    many layers share it), and ``json.dumps`` of the page; together ~0.2 s of a report.
    A string is also never deep-copied or validated by altair as layers are added.
    """
    return {"values": df.write_json(), "format": {"type": "json"}}


def _need(df: pl.DataFrame | None, columns: Sequence[str], what: str) -> pl.DataFrame:
    if df is None or df.height == 0:
        raise ChartUnavailable(f"no data for the {what}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ChartUnavailable(
            f"the {what} needs column(s) {', '.join(missing)}, which the input lacks"
        )
    return df


def _axis_of(df: pl.DataFrame) -> tuple[str, str] | None:
    """The training-time axis: epoch when recorded, else step, else ``None``.

    Checkpoint names or file order are no time axis: imported models
    (``kdlens import``) record neither, and joining them with lines would draw a
    trajectory that does not exist.
    """
    for name, title in (("epoch", "epoch"), ("step", "step")):
        if name in df.columns and df[name].null_count() < df.height:
            return name, title
    return None


def _integer_valued(values: pl.Series) -> bool:
    v = values.drop_nulls().cast(pl.Float64).to_numpy()
    return bool(v.size) and bool(np.all(np.isfinite(v) & (v == np.round(v))))


def _time_axis(values: pl.Series, title: str) -> alt.Axis:
    """Integer ticks for integer epochs/steps (no epoch 1.5 between 1 and 2).

    Over a short span every integer is a tick (``tickMinStep`` alone still lets
    Vega put a tick at 1.5, printed "2"); over a longer one Vega's nice steps
    are integers anyway.
    """
    if not _integer_valued(values):
        return alt.Axis(title=title)
    lo, hi = int(values.min()), int(values.max())  # type: ignore[arg-type]
    if hi - lo <= 10:
        return alt.Axis(title=title, values=list(range(lo, hi + 1)), format="d")
    return alt.Axis(title=title, tickMinStep=1, format="d")


def _group_of(df: pl.DataFrame) -> tuple[str, str]:
    if "batch_size" in df.columns and df["batch_size"].null_count() < df.height:
        return "batch_size", "batch size"
    return "run", "run"


def value_scale(values: pl.Series) -> alt.Scale:
    """A quantitative scale that never squeezes a (nearly) constant column into a range of
    1e-17: such a column gets a small padded domain around its value instead of axis labels
    with seventeen digits."""
    v = values.cast(pl.Float64)
    v = v.filter(v.is_finite())
    if v.len() == 0:
        return alt.Scale(zero=False)
    lo, hi = float(v.min()), float(v.max())  # type: ignore[arg-type]
    tol = 1e-9 * max(1.0, abs(lo), abs(hi))
    if hi - lo > tol:
        return alt.Scale(zero=False)
    pad = max(0.05 * abs(hi), 0.01)  # round ticks, short labels
    return alt.Scale(zero=False, domain=[lo - pad, hi + pad])


def _natural(s: Any) -> tuple[float, str]:
    try:
        return (float(s), "")
    except (TypeError, ValueError):
        return (math.inf, str(s))
