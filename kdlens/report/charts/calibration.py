"""Calibration charts: the reliability diagram and the entropy distributions."""

from __future__ import annotations

import altair as alt
import polars as pl

from kdlens.report.charts.common import ChartUnavailable, _need, _values

# --------------------------------------------------------------------------- calibration / entropy


def reliability_chart(table: pl.DataFrame, *, n_bins: int) -> alt.TopLevelMixin:
    """Reliability diagram: accuracy against mean confidence per bin, per teacher.

    Parameters
    ----------
    table : ``teacher``, ``confidence``, ``accuracy``, ``count`` per bin.
    """
    df = _need(table, ["teacher", "confidence", "accuracy", "count"], "reliability diagram")
    df = df.filter(pl.col("count") > 0)
    if df.height == 0:
        raise ChartUnavailable("the reliability diagram has no labelled examples")
    diag = (
        alt.Chart(_values(pl.DataFrame({"a": [0.0, 1.0], "b": [0.0, 1.0]})))
        .mark_line(color="#999", strokeDash=[4, 4])
        .encode(x=alt.X("a:Q"), y=alt.Y("b:Q"))
    )
    teachers = list(dict.fromkeys(df["teacher"].to_list()))
    base = alt.Chart(_values(df.select("teacher", "confidence", "accuracy", "count"))).encode(
        x=alt.X("confidence:Q", title="mean confidence in bin", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("accuracy:Q", title="accuracy in bin", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("teacher:N", sort=teachers, legend=alt.Legend(orient="bottom", columns=1)),
    )
    line = base.mark_line()
    pts = base.mark_point(filled=True).encode(
        size=alt.Size("count:Q", title="examples", scale=alt.Scale(range=[15, 300])),
        tooltip=[
            alt.Tooltip("teacher:N"),
            alt.Tooltip("confidence:Q", format=".3f"),
            alt.Tooltip("accuracy:Q", format=".3f"),
            alt.Tooltip("count:Q"),
        ],
    )
    return alt.layer(diag, line, pts).properties(
        width=380, height=340, title=f"Reliability ({n_bins} equal-width confidence bins)"
    )


def entropy_chart(hist: pl.DataFrame, *, split: str) -> alt.TopLevelMixin:
    """Per-example distributions (pre-binned) of normalised entropies, per teacher.

    Parameters
    ----------
    hist : ``teacher``, ``quantity``, ``lower``, ``upper``, ``share`` (fraction of
        the examples of the teacher in the bin).
    """
    df = _need(hist, ["teacher", "quantity", "lower", "upper", "share"], "entropy distributions")
    teachers = list(dict.fromkeys(df["teacher"].to_list()))
    quantities = list(dict.fromkeys(df["quantity"].to_list()))
    df = df.with_columns(((pl.col("lower") + pl.col("upper")) / 2).alias("mid"))
    return (
        alt.Chart(_values(df))
        .mark_line(interpolate="monotone", strokeWidth=2)
        .encode(
            x=alt.X(
                "mid:Q", title="value (0 = one class, 1 = uniform)", scale=alt.Scale(domain=[0, 1])
            ),
            y=alt.Y(
                "share:Q",
                title="share of examples (sqrt scale)",
                axis=alt.Axis(format="%"),
                scale=alt.Scale(type="sqrt"),
            ),
            color=alt.Color(
                "teacher:N", sort=teachers, legend=alt.Legend(orient="bottom", columns=1)
            ),
            tooltip=[
                alt.Tooltip("teacher:N"),
                alt.Tooltip("lower:Q", format=".2f"),
                alt.Tooltip("upper:Q", format=".2f"),
                alt.Tooltip("share:Q", format=".1%"),
            ],
        )
        .properties(width=220, height=190)
        .facet(column=alt.Column("quantity:N", title=f"{split} split", sort=quantities))
    )
