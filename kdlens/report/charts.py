"""The report's charts: altair (Vega-Lite) specs built from polars frames.

Every builder takes plain frames (the tables of :mod:`kdlens.analysis.engine` and
:mod:`kdlens.recommend.rank`, or frames with the same columns) and returns an altair
chart whose data is inlined as JSON values, so a spec renders with no file or
network access. A builder that cannot draw anything meaningful (one checkpoint,
a missing column) raises :class:`ChartUnavailable` with a sentence that the
report shows instead of an empty chart.

Column conventions: a *teacher* is one (run, checkpoint); its display label is
``"run / checkpoint"`` (:func:`teacher_label`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import altair as alt
import numpy as np
import polars as pl

__all__ = [
    "ChartUnavailable",
    "class_layout",
    "class_order",
    "entropy_chart",
    "pareto_chart",
    "reliability_chart",
    "similarity_graph_chart",
    "similarity_heatmap",
    "sweet_spot_chart",
    "teacher_label",
    "trajectory_chart",
]

#: Metrics of the trajectory chart: (column in the summary, title, split role).
TRAJECTORY_METRICS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "held-out accuracy", "heldout"),
    ("dark_mass", "dark mass 1 − p_y", "both"),
    ("nontarget_entropy_normalized", "non-target entropy / log(K−1)", "both"),
    ("similarity_information", "similarity information (nats)", "both"),
    ("oemc_share", "OEMC share", "both"),
)

#: Why the sweet-spot map and the trajectories are absent for checkpoints without epochs.
NO_TRAINING_TIME = (
    "the checkpoints record no epoch (or step), so there is {what}: "
    "models imported with kdlens import carry none. Dump checkpoints along training with "
    "kdlens dump (or pass epoch= and batch_size= to kdlens.CheckpointWriter)"
)

_WIDTH = 260  # one small-multiple panel; three fit a 1000 px column


class ChartUnavailable(Exception):
    """A chart cannot be drawn from the data given; ``str(exc)`` says why."""


# --------------------------------------------------------------------------- helpers


def teacher_label(run: Any, checkpoint: Any) -> str:
    """The display label of one (run, checkpoint)."""
    return f"{run} / {checkpoint}"


def _with_teacher(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(
        (pl.col("run").cast(pl.Utf8) + pl.lit(" / ") + pl.col("checkpoint").cast(pl.Utf8)).alias(
            "teacher"
        )
    )


def _values(df: pl.DataFrame) -> dict[str, Any]:
    """Inline JSON rows; NaN/inf become null (JSON has no NaN, Vega skips nulls).

    A plain ``{"values": rows}`` rather than ``alt.Data``: altair then moves the rows
    to the spec's top-level ``datasets`` (once, however many layers share them)
    instead of validating every row against the schema, which took seconds for
    the 10,000-cell matrices of K = 100.
    """
    floats = [c for c, t in df.schema.items() if t in (pl.Float32, pl.Float64)]
    if floats:
        df = df.with_columns(
            [
                pl.when(pl.col(c).is_finite()).then(pl.col(c)).otherwise(None).alias(c)
                for c in floats
            ]
        )
    return {"values": df.to_dicts()}


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
        color=alt.condition(f"datum.score > {light!r}", alt.value("#1d2330"), alt.value("white")),
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
    long = pl.concat(frames)
    order = [t for _, t, _ in TRAJECTORY_METRICS if t in set(long["metric"].to_list())]
    groups = sorted(long["group"].unique().to_list(), key=_natural)
    split_order = [s for s in (transfer_split, heldout_split) if s is not None]
    base = alt.Chart().encode(
        x=alt.X("time:Q", axis=_time_axis(long["time"], ttitle)),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        color=alt.Color("group:N", title=gtitle, sort=groups),
        strokeDash=alt.StrokeDash("split:N", title="split", sort=split_order),
        detail="run:N",
    )
    lines = base.mark_line(strokeWidth=2)
    points = base.mark_point(filled=True, size=36).encode(
        tooltip=[
            alt.Tooltip("metric:N"),
            alt.Tooltip("run:N"),
            alt.Tooltip("checkpoint:N"),
            alt.Tooltip("split:N"),
            alt.Tooltip("time:Q", title=ttitle),
            alt.Tooltip("value:Q", format=".4f"),
        ]
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


# --------------------------------------------------------------------------- classes


def _symmetric(S: np.ndarray) -> np.ndarray:
    W = 0.5 * (S + S.T)
    W = np.where(np.isfinite(W), W, 0.0)
    np.fill_diagonal(W, 0.0)
    return W


def _class_distance(S: np.ndarray) -> np.ndarray:
    """1 − correlation of the log rows of the symmetrised matrix (diagonal left out).

    Two classes are close when they are alike to the same other classes; this is
    the distance :func:`kdlens.measures.similarity.cluster_classes` clusters on.
    """
    W = _symmetric(S)
    k = W.shape[0]
    L = np.log(np.maximum(W, 1e-12))
    off = ~np.eye(k, dtype=bool)
    D = np.zeros((k, k))
    for a in range(k):
        for b in range(a + 1, k):
            m = off[a] & off[b]
            x = L[a, m] - L[a, m].mean()
            y = L[b, m] - L[b, m].mean()
            den = math.sqrt(float(x @ x) * float(y @ y))
            D[a, b] = D[b, a] = 1.0 - (float(x @ y) / den if den > 0 else 0.0)
    return D


def class_order(S: np.ndarray, clusters: np.ndarray | None = None) -> np.ndarray:
    """A display order of the K classes: clusters contiguous, dendrogram order inside.

    Parameters
    ----------
    S : (K, K) similarity matrix.
    clusters : optional (K,) cluster labels; classes of one cluster are kept together.

    Returns
    -------
    (K,) permutation of ``range(K)``.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    k = S.shape[0]
    if k < 3:
        leaves = np.arange(k)
    else:
        D = _class_distance(S)
        leaves = leaves_list(linkage(squareform(D, checks=False), method="average"))
    if clusters is None:
        return np.asarray(leaves, dtype=np.int64)
    pos = np.empty(k, np.int64)
    pos[leaves] = np.arange(k)
    first: dict[int, int] = {}
    for c in leaves:
        first.setdefault(int(clusters[c]), int(pos[c]))
    return np.asarray(
        sorted(range(k), key=lambda c: (first[int(clusters[c])], int(pos[c]))), dtype=np.int64
    )


def class_layout(S: np.ndarray, *, iterations: int = 200) -> np.ndarray:
    """Deterministic 2-D positions of the classes for the similarity graph.

    Start from classical MDS of the class distance (an eigendecomposition: no
    random start; each axis's sign fixed by its largest coordinate), then relax
    with a Fruchterman-Reingold force layout on the symmetrised weights so that
    classes of one tight cluster do not sit on top of each other.

    Returns
    -------
    (K, 2) float64 coordinates in roughly [-1, 1].
    """
    k = S.shape[0]
    if k == 1:
        return np.zeros((1, 2))
    D = _class_distance(S)
    J = np.eye(k) - 1.0 / k
    B = -0.5 * J @ (D**2) @ J
    vals, vecs = np.linalg.eigh(B)
    idx = np.argsort(vals)[::-1][:2]
    X = vecs[:, idx] * np.sqrt(np.maximum(vals[idx], 0.0))
    for j in range(2):
        i = int(np.argmax(np.abs(X[:, j])))
        if X[i, j] < 0:
            X[:, j] = -X[:, j]
    # A small fixed spiral offset separates coincident starts without randomness.
    angle = np.arange(k) * 2.399963  # golden angle
    X = X / (np.abs(X).max() or 1.0) + 0.05 * np.column_stack([np.cos(angle), np.sin(angle)])
    W = _symmetric(S)
    W = W / (W.max() or 1.0)
    opt = 1.0 / math.sqrt(k)  # ideal edge length in the unit square
    temp = 0.1
    for _ in range(int(iterations)):
        delta = X[:, None, :] - X[None, :, :]
        dist = np.maximum(np.linalg.norm(delta, axis=-1), 1e-3)
        force = (opt**2 / dist**2 - W * dist / opt)[:, :, None] * delta
        disp = force.sum(axis=1)
        length = np.maximum(np.linalg.norm(disp, axis=1, keepdims=True), 1e-9)
        X = X + disp / length * np.minimum(length, temp)
        temp *= 0.98
    X = X - X.mean(axis=0)
    return X / (np.abs(X).max() or 1.0)


#: Largest K whose class names label the heatmap's axes.
MAX_AXIS_LABELS = 32
#: Largest number of class names written next to the graph's nodes (the rest on tooltips).
MAX_NODE_LABELS = 25
#: Plot side of the heatmap with and without axis labels: with its axes and legend the
#: chart then fits a half-width report card (about 550 px of content).
_HEATMAP_SIDE = (380, 420)


def _heatmap_side(k: int) -> int:
    """Width (= height) in px of the K x K heatmap: 28 px cells, shrunk to fit a card."""
    cap = _HEATMAP_SIDE[0] if k <= MAX_AXIS_LABELS else _HEATMAP_SIDE[1]
    return int(min(28 * max(k, 1), cap))


def similarity_heatmap(
    similarity: pl.DataFrame,
    *,
    order: Sequence[int],
    class_names: Sequence[str],
    teachers: Sequence[str],
    default: str,
) -> alt.TopLevelMixin:
    """The class-similarity matrix of one teacher, classes ordered by cluster.

    Parameters
    ----------
    similarity : long form with ``teacher``, ``source``, ``target`` (int class
        indices) and ``weight``; rows for several teachers add a selector.
    order : display order of the classes (see :func:`class_order`).
    class_names : name per class index.
    teachers : the teachers offered by the selector (first = default).
    default : the teacher shown first.
    """
    df = _need(similarity, ["teacher", "source", "target", "weight"], "similarity heatmap")
    names = [class_names[int(i)] for i in order]
    df = (
        df.filter(pl.col("teacher").is_in(list(teachers)))
        .with_columns(
            pl.col("source")
            .map_elements(lambda i: class_names[int(i)], return_dtype=pl.Utf8)
            .alias("from"),
            pl.col("target")
            .map_elements(lambda i: class_names[int(i)], return_dtype=pl.Utf8)
            .alias("to"),
        )
        .select("teacher", "from", "to", "weight")
    )
    k = len(class_names)
    side = _heatmap_side(k)
    if k <= MAX_AXIS_LABELS:
        font = 11 if k <= 20 else 9
        x_axis = alt.Axis(title="non-target class j", labelAngle=-60, labelFontSize=font)
        y_axis = alt.Axis(title="true class c", labelFontSize=font)
    else:  # too many to read: names are on the tooltip
        x_axis = alt.Axis(title="non-target class j (hover for names)", labels=False, ticks=False)
        y_axis = alt.Axis(title="true class c", labels=False, ticks=False)
    chart = (
        alt.Chart(_values(df))
        .mark_rect()
        .encode(
            x=alt.X("to:N", sort=names, axis=x_axis),
            y=alt.Y("from:N", sort=names, axis=y_axis),
            color=alt.Color(
                "weight:Q", title="S[c, j]", scale=alt.Scale(scheme="blues", type="sqrt")
            ),
            tooltip=[
                alt.Tooltip("teacher:N"),
                alt.Tooltip("from:N", title="true class"),
                alt.Tooltip("to:N", title="non-target class"),
                alt.Tooltip("weight:Q", format=".4f", title="S[c, j]"),
            ],
        )
        .properties(width=side, height=side)
    )
    if len(teachers) > 1:
        pick = alt.param(
            name="teacher_pick",
            value=default,
            bind=alt.binding_select(options=list(teachers), name="checkpoint "),
        )
        chart = chart.add_params(pick).transform_filter("datum.teacher == teacher_pick")
    else:
        chart = chart.transform_filter(alt.datum.teacher == default)
    return chart


def similarity_graph_chart(
    edges: pl.DataFrame,
    positions: np.ndarray,
    *,
    class_names: Sequence[str],
    clusters: np.ndarray | None,
    title: str,
) -> alt.TopLevelMixin:
    """Node-link diagram of the sparsified class graph of one teacher.

    Parameters
    ----------
    edges : (source, target, weight) with int class indices.
    positions : (K, 2) layout (see :func:`class_layout`).
    class_names : name per class index.
    clusters : optional (K,) cluster label per class (node colour).
    """
    _need(edges, ["source", "target", "weight"], "similarity graph")
    k = positions.shape[0]
    nodes = pl.DataFrame(
        {
            "class": list(class_names),
            "x": positions[:, 0].astype(float),
            "y": positions[:, 1].astype(float),
            "cluster": [
                f"cluster {int(c) + 1}" if clusters is not None and c >= 0 else "—"
                for c in (clusters if clusters is not None else np.zeros(k, np.int64))
            ],
        }
    )
    s = edges["source"].cast(pl.Int64).to_numpy()
    t = edges["target"].cast(pl.Int64).to_numpy()
    ok = (s >= 0) & (s < k) & (t >= 0) & (t < k)
    s, t = s[ok], t[ok]
    w = edges["weight"].cast(pl.Float64).to_numpy()[ok]
    links = pl.DataFrame(
        {
            "from": [class_names[i] for i in s],
            "to": [class_names[i] for i in t],
            "x": positions[s, 0],
            "y": positions[s, 1],
            "x2": positions[t, 0],
            "y2": positions[t, 1],
            "weight": w,
        }
    )
    strength = np.zeros(k)
    np.add.at(strength, s, w)
    np.add.at(strength, t, w)
    n_labels = min(k, MAX_NODE_LABELS)
    labelled = np.zeros(k, dtype=bool)
    # stable: ties keep class order, so the labels are the same on every run
    labelled[np.argsort(-strength, kind="stable")[:n_labels]] = True
    nodes = nodes.with_columns(
        pl.Series(
            "label", [n if lab else "" for n, lab in zip(class_names, labelled, strict=True)]
        ),
        pl.Series("strength", strength),
    )
    clusters_sorted = sorted(set(nodes["cluster"].to_list()), key=_cluster_key)
    node_size = float(max(45, min(220, 220 * 20 / max(k, 1))))
    pad = 0.08 * float(np.ptp(positions) or 1.0)
    xs = alt.Scale(domain=[float(positions[:, 0].min() - pad), float(positions[:, 0].max() + pad)])
    ys = alt.Scale(domain=[float(positions[:, 1].min() - pad), float(positions[:, 1].max() + pad)])
    rule = (
        alt.Chart(_values(links))
        .mark_rule(color="#7a869a")
        .encode(
            x=alt.X("x:Q", scale=xs, axis=None),
            y=alt.Y("y:Q", scale=ys, axis=None),
            x2="x2:Q",
            y2="y2:Q",
            strokeWidth=alt.StrokeWidth(
                "weight:Q",
                scale=alt.Scale(range=[0.5, 6]),
                legend=alt.Legend(title="edge weight", orient="bottom", format=".3f"),
            ),
            opacity=alt.value(0.6),
            tooltip=[
                alt.Tooltip("from:N"),
                alt.Tooltip("to:N"),
                alt.Tooltip("weight:Q", format=".4f"),
            ],
        )
    )
    node_base = alt.Chart(_values(nodes)).encode(
        x=alt.X("x:Q", scale=xs, axis=None), y=alt.Y("y:Q", scale=ys, axis=None)
    )
    dots = node_base.mark_circle(
        size=node_size, opacity=0.95, stroke="white", strokeWidth=1
    ).encode(
        color=alt.Color(
            "cluster:N", sort=clusters_sorted, legend=alt.Legend(title="cluster", orient="right")
        ),
        tooltip=[
            alt.Tooltip("class:N"),
            alt.Tooltip("cluster:N"),
            alt.Tooltip("strength:Q", format=".3f", title="edge weight sum"),
        ],
    )
    labels = (
        node_base.transform_filter("datum.label != ''")
        .mark_text(
            dy=-(math.sqrt(node_size) / 2 + 7),
            fontSize=11 if k <= MAX_NODE_LABELS else 10,
            fontWeight="bold",
        )
        .encode(text="label:N")
    )
    subtitle = (
        f"names of the {n_labels} best-connected of {k} classes; hover a node for the others"
        if n_labels < k
        else ""
    )
    return alt.layer(rule, dots, labels).properties(
        width=400, height=380, title=alt.Title(title, subtitle=subtitle or alt.Undefined)
    )


def _cluster_key(name: str) -> tuple[float, str]:
    """``"cluster 2"`` before ``"cluster 10"``."""
    return _natural(name.rsplit(" ", 1)[-1])


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
    titles = {
        "accuracy_heldout": "held-out accuracy",
        "similarity_information_transfer": "similarity information, transfer split (nats)",
        "dark_mass_transfer": "dark mass, transfer split",
    }
    x_enc = alt.X(f"{x}:Q", title=titles.get(x, x), scale=alt.Scale(zero=False))
    y_enc = alt.Y(f"{y}:Q", title=titles.get(y, y), scale=alt.Scale(zero=False))
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
        width=380,
        height=320,
        title="Pareto front: accurate and still carrying similarity information",
    )


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
        .encode(x="a:Q", y="b:Q")
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


def _natural(s: Any) -> tuple[float, str]:
    try:
        return (float(s), "")
    except (TypeError, ValueError):
        return (math.inf, str(s))
