"""Charts over the checkpoint grid: the sweet-spot map, the trajectories, the Pareto front."""

from __future__ import annotations

import altair as alt
import polars as pl

from kdlens.report.charts.common import (
    _WIDTH,
    NO_TRAINING_TIME,
    ChartUnavailable,
    _axis_of,
    _group_of,
    _natural,
    _need,
    _time_axis,
    _values,
    _with_teacher,
    value_scale,
)

#: Metrics of the trajectory chart: (column in the summary, title, split role).
TRAJECTORY_METRICS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "held-out accuracy", "heldout"),
    ("dark_mass", "dark mass 1 − p_y", "both"),
    ("nontarget_entropy_normalized", "non-target entropy / log(K−1)", "both"),
    ("similarity_information", "similarity information (nats)", "both"),
    ("oemc_share", "OEMC share", "both"),
)

#: Colour of the split legend's line samples (neutral: colour encodes the batch size).
_LEGEND_STROKE = "#555555"

# --------------------------------------------------------------------------- sweet spot


def sweet_spot_chart(
    sweet_spot: pl.DataFrame,
    *,
    students: pl.DataFrame | None = None,
) -> alt.TopLevelMixin:
    """Heatmap of the score over the batch size x epoch grid, the pick outlined.

    Parameters
    ----------
    sweet_spot : long form grid with ``row``, ``column`` (the two axis values),
        ``score``, ``run``, ``checkpoint``, ``rank``, ``recommended`` and optionally
        ``missing``, ``row_axis``, ``column_axis`` (as :class:`kdlens.recommend.rank.Recommendation`
        gives it).
    students : optional (run, checkpoint, student_accuracy) from a validation
        experiment; its values are printed in the cells.
    """
    if sweet_spot is not None and sweet_spot.height == 0:
        raise ChartUnavailable(NO_TRAINING_TIME.format(what="no batch size × epoch grid to map"))
    df = _need(sweet_spot, ["row", "column", "score"], "sweet-spot map")
    cells = df.filter(pl.col("score").is_not_null())
    if cells.height < 2:
        raise ChartUnavailable(
            "the sweet-spot map needs at least two checkpoints; this input has "
            f"{cells.height}: dump several epochs and/or batch sizes"
        )
    row_t = str(df["row_axis"][0]).replace("_", " ") if "row_axis" in df.columns else "batch size"
    col_t = str(df["column_axis"][0]).replace("_", " ") if "column_axis" in df.columns else "epoch"
    df, text_field, text_title = _sweet_spot_cells(df, students)
    return _draw_sweet_spot(df, cells, row_t, col_t, text_field, text_title)


def _sweet_spot_cells(
    df: pl.DataFrame, students: pl.DataFrame | None
) -> tuple[pl.DataFrame, str, str]:
    """The grid with the columns the map draws, and which text (score or student) the cells show."""
    for c in ("run", "checkpoint"):
        if c not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.Utf8).alias(c))
    if "recommended" not in df.columns:
        df = df.with_columns(pl.lit(False).alias("recommended"))
    df = df.with_columns(pl.col("recommended").fill_null(False))
    text_field, text_title = "score_text", "score"
    if students is not None and {"run", "checkpoint", "student_accuracy"} <= set(students.columns):
        st = students.group_by(["run", "checkpoint"]).agg(pl.col("student_accuracy").mean())
        df = df.join(st, on=["run", "checkpoint"], how="left")
        if df["student_accuracy"].null_count() < df.height:
            text_field, text_title = "student_text", "student accuracy"
            df = df.with_columns(
                pl.when(pl.col("student_accuracy").is_not_null())
                .then((pl.col("student_accuracy") * 100).round(1).cast(pl.Utf8) + pl.lit("%"))
                .otherwise(pl.lit(""))
                .alias("student_text")
            )
    df = df.with_columns(
        pl.when(pl.col("score").is_not_null())
        .then(pl.col("score").round(3).cast(pl.Utf8))
        .otherwise(pl.lit("—"))
        .alias("score_text")
    )
    return df, text_field, text_title


def _draw_sweet_spot(
    df: pl.DataFrame, cells: pl.DataFrame, row_t: str, col_t: str, text_field: str, text_title: str
) -> alt.TopLevelMixin:
    rows = sorted(df["row"].drop_nulls().unique().to_list())
    cols = sorted(df["column"].drop_nulls().unique().to_list())
    base = alt.Chart(_values(df)).encode(
        x=alt.X("column:O", title=col_t, sort=cols),
        y=alt.Y("row:O", title=row_t, sort=rows),
    )
    tooltip = [
        alt.Tooltip("run:N"),
        alt.Tooltip("checkpoint:N"),
        alt.Tooltip("score:Q", format=".4f"),
        alt.Tooltip("rank:Q"),
    ]
    if "student_accuracy" in df.columns:
        tooltip.append(alt.Tooltip("student_accuracy:Q", format=".2%", title="student accuracy"))
    heat = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.Color(
            "score:Q", scale=alt.Scale(scheme="viridis"), legend=alt.Legend(title="score")
        ),
        tooltip=tooltip,
    )
    lo, hi = float(cells["score"].min()), float(cells["score"].max())  # type: ignore[arg-type]
    light = lo + 0.55 * (hi - lo)  # viridis turns light above this: use dark text there
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text(f"{text_field}:N"),
        # A typed value, not alt.condition's dict: altair turns a dict into a schema object
        # by hashing its whole Vega-Lite schema (~15-30 ms a call); the spec is the same.
        color=alt.ColorValue(
            "white", condition={"test": f"datum.score > {light!r}", "value": "#1d2330"}
        ),
        tooltip=tooltip,
    )
    pick = (
        base.transform_filter("datum.recommended")
        .mark_rect(fill=None, stroke="#e4572e", strokeWidth=4)
        .encode(tooltip=tooltip)
    )
    cw = max(28, min(64, 640 // max(len(cols), 1)))
    return (heat + text + pick).properties(
        width=cw * len(cols),
        height=max(24, min(48, 320 // max(len(rows), 1))) * len(rows),
        title=alt.Title(
            f"Score over {row_t} × {col_t} (outlined: recommended; cells show {text_title})"
        ),
    )


# --------------------------------------------------------------------------- trajectories


def trajectory_chart(
    summary: pl.DataFrame,
    *,
    heldout_split: str | None,
    transfer_split: str | None,
) -> alt.TopLevelMixin:
    """Per batch size, each metric over training time, one panel per metric.

    Accuracy is drawn on the held-out split; the soft-label metrics on both the
    transfer split (solid) and the held-out split (dashed), since their gap is
    the collapse the paper describes.
    """
    df = _need(summary, ["run", "checkpoint", "split"], "trajectory chart")
    n_teachers = df.select(["run", "checkpoint"]).unique().height
    if n_teachers < 2:
        raise ChartUnavailable("trajectories need at least two checkpoints; this input has one")
    axis = _axis_of(df)
    if axis is None:
        raise ChartUnavailable(NO_TRAINING_TIME.format(what="no training time to draw them over"))
    tcol, ttitle = axis
    timed = df.filter(pl.col(tcol).is_not_null())
    counts = timed.group_by("run").agg(pl.col(tcol).n_unique().alias("n"))
    keep = sorted(counts.filter(pl.col("n") >= 2)["run"].to_list(), key=_natural)
    if not keep:
        raise ChartUnavailable(
            f"trajectories need at least two checkpoints with an {tcol} in one run; "
            f"no run here has two (runs: {', '.join(map(str, sorted(set(df['run'].to_list()))))})"
        )
    left_out = sorted(set(df["run"].to_list()) - set(keep), key=_natural)
    df = timed.filter(pl.col("run").is_in(keep)).sort(["run", tcol])
    gcol, gtitle = _group_of(df)
    long = _trajectory_long(df, tcol, gcol, heldout_split, transfer_split)
    order = [t for _, t, _ in TRAJECTORY_METRICS if t in set(long["metric"].to_list())]
    groups = sorted(long["group"].unique().to_list(), key=_natural)
    split_order = [s for s in (transfer_split, heldout_split) if s is not None]
    base = alt.Chart().encode(
        x=alt.X("time:Q", axis=_time_axis(long["time"], ttitle)),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        color=alt.Color("group:N", title=gtitle, sort=groups),
        detail="run:N",
    )
    # The legend draws strokes: as dots (the points' symbol) solid and dashed looked the
    # same. The dash is encoded on the lines only, with a stroke colour of its own: a
    # filled point layer sharing the channel merges its legend in and blanks the samples.
    lines = base.mark_line(strokeWidth=2).encode(
        strokeDash=alt.StrokeDash(
            "split:N",
            title="split (line style)",
            sort=split_order,
            legend=alt.Legend(
                symbolType="stroke",
                symbolStrokeWidth=2,
                symbolSize=400,
                symbolStrokeColor=_LEGEND_STROKE,
            ),
        ),
    )
    points = base.mark_point(filled=True, size=36).encode(
        shape=alt.Shape("split:N", sort=split_order, legend=None),
        tooltip=[
            alt.Tooltip("metric:N"),
            alt.Tooltip("run:N"),
            alt.Tooltip("checkpoint:N"),
            alt.Tooltip("split:N"),
            alt.Tooltip("time:Q", title=ttitle),
            alt.Tooltip("value:Q", format=".4f"),
        ],
    )
    chart = (
        alt.layer(lines, points, data=_values(long))
        .properties(width=_WIDTH, height=170)
        .facet(facet=alt.Facet("metric:N", title=None, sort=order), columns=3)
        .resolve_scale(y="independent")
    )
    if left_out:
        shown = ", ".join(map(str, left_out[:8])) + (" ..." if len(left_out) > 8 else "")
        chart = chart.properties(
            title=alt.Title(
                f"Left out (no {tcol} recorded, or a single checkpoint): {shown}",
                fontSize=12,
                fontWeight="normal",
                anchor="start",
                color="#8a5a00",
            )
        )
    return chart


def _trajectory_long(
    df: pl.DataFrame,
    tcol: str,
    gcol: str,
    heldout_split: str | None,
    transfer_split: str | None,
) -> pl.DataFrame:
    """One row per (checkpoint, split, metric): the long frame the trajectory panels facet."""
    frames = []
    for metric, title, role in TRAJECTORY_METRICS:
        if metric not in df.columns:
            continue
        splits = [heldout_split] if role == "heldout" else [transfer_split, heldout_split]
        for sp in splits:
            if sp is None:
                continue
            part = df.filter(pl.col("split") == sp)
            if part.height == 0 or part[metric].null_count() == part.height:
                continue
            frames.append(
                part.select(
                    pl.col("run").cast(pl.Utf8),
                    pl.col("checkpoint").cast(pl.Utf8),
                    pl.col(tcol).cast(pl.Float64).alias("time"),
                    pl.col(gcol).cast(pl.Utf8).alias("group"),
                    pl.lit(sp).alias("split"),
                    pl.lit(title).alias("metric"),
                    pl.col(metric).cast(pl.Float64).alias("value"),
                )
            )
    if not frames:
        raise ChartUnavailable(
            "no trajectory metric is present (expected columns "
            + ", ".join(m for m, _, _ in TRAJECTORY_METRICS)
            + ")"
        )
    return pl.concat(frames)


# --------------------------------------------------------------------------- pareto


def pareto_chart(
    ranking: pl.DataFrame,
    pareto: pl.DataFrame | None,
    *,
    x: str = "accuracy_heldout",
    y: str = "similarity_information_transfer",
) -> alt.TopLevelMixin:
    """Accuracy against similarity information, the Pareto front joined by a line.

    Parameters
    ----------
    ranking : one row per teacher with ``run``, ``checkpoint``, ``x``, ``y`` and
        optionally ``batch_size``, ``epoch``, ``score``, ``rank``.
    pareto : the front (rows of ``ranking``); computed here when ``None``.
    """
    df = _need(ranking, ["run", "checkpoint"], "Pareto chart")
    if y not in df.columns or df[y].null_count() == df.height:
        y = "dark_mass_transfer"
    _need(df, [x, y], "Pareto chart")
    for col, split in ((y, "transfer split ('train')"), (x, "held-out split (val or test)")):
        if not df[col].cast(pl.Float64).is_finite().any():
            raise ChartUnavailable(
                f"the Pareto front needs {col}, measured on the {split}, which this input lacks"
            )
    df = df.filter(pl.col(x).is_not_null() & pl.col(y).is_not_null())
    df = df.filter(pl.col(x).is_finite() & pl.col(y).is_finite())
    if df.height < 2:
        raise ChartUnavailable(
            f"the Pareto front needs at least two checkpoints with {x} and {y}; "
            f"this input has {df.height}"
        )
    df, gtitle = _pareto_points(df, pareto, x, y)
    titles = {
        "accuracy_heldout": "held-out accuracy",
        "similarity_information_transfer": "similarity information, transfer split (nats)",
        "dark_mass_transfer": "dark mass, transfer split",
    }
    x_enc = alt.X(f"{x}:Q", title=titles.get(x, x), scale=value_scale(df[x]))
    y_enc = alt.Y(f"{y}:Q", title=titles.get(y, y), scale=value_scale(df[y]))
    tooltip = [
        alt.Tooltip("teacher:N"),
        alt.Tooltip(f"{x}:Q", format=".4f"),
        alt.Tooltip(f"{y}:Q", format=".4f"),
    ]
    tooltip += [alt.Tooltip(f"{c}:Q") for c in ("epoch", "rank") if c in df.columns]
    if "score" in df.columns:
        tooltip.append(alt.Tooltip("score:Q", format=".4f"))
    base = alt.Chart(_values(df)).encode(x=x_enc, y=y_enc)
    line = (
        base.transform_filter("datum.on_front")
        .mark_line(color="#444", strokeDash=[4, 3])
        .encode(order=alt.Order(f"{x}:Q"))
    )
    dots = base.mark_point(filled=True, size=70).encode(
        color=alt.Color(
            "group:N", title=gtitle, sort=sorted(set(df["group"].to_list()), key=_natural)
        ),
        shape=alt.Shape("on_front:N", title="on the front"),
        tooltip=tooltip,
    )
    ring = base.transform_filter("datum.recommended").mark_point(
        size=400, color="#e4572e", strokeWidth=3
    )
    return alt.layer(line, dots, ring).properties(
        width=360,  # leaves room for the legend in a half-width card
        height=320,
        title="Pareto front: accurate and still carrying similarity information",
    )


def _pareto_points(
    df: pl.DataFrame, pareto: pl.DataFrame | None, x: str, y: str
) -> tuple[pl.DataFrame, str]:
    """The points with their teacher label, group, front membership and pick; the group title."""
    df = _with_teacher(df)
    if pareto is not None and {"run", "checkpoint"} <= set(pareto.columns):
        front_keys = set(zip(pareto["run"].to_list(), pareto["checkpoint"].to_list(), strict=True))
    else:
        a, s = df[x].to_numpy(), df[y].to_numpy()
        front_keys = {
            (r, c)
            for r, c, ai, si in zip(df["run"], df["checkpoint"], a, s, strict=True)
            if not (((a >= ai) & (s >= si) & ((a > ai) | (s > si))).any())
        }
    gcol, gtitle = _group_of(df)
    df = df.with_columns(
        pl.Series(
            "on_front",
            [
                k in front_keys
                for k in zip(df["run"].to_list(), df["checkpoint"].to_list(), strict=True)
            ],
        ),
        pl.col(gcol).cast(pl.Utf8).alias("group"),
        (pl.col("rank") == 1).fill_null(False).alias("recommended")
        if "rank" in df.columns
        else pl.lit(False).alias("recommended"),
    )
    keep = ["teacher", "run", "checkpoint", "group", "on_front", "recommended", x, y]
    keep += [c for c in ("epoch", "score", "rank") if c in df.columns]
    df = df.select(keep)
    return df, gtitle
