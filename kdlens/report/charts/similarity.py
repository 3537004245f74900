"""Class-similarity charts: the class order and layout, the heatmap and the class graph."""

from __future__ import annotations

import math
from collections.abc import Sequence

import altair as alt
import numpy as np
import polars as pl

from kdlens.report.charts.common import _natural, _need, _values

# --------------------------------------------------------------------------- classes


def _symmetric(S: np.ndarray) -> np.ndarray:
    W = 0.5 * (S + S.T)
    W = np.where(np.isfinite(W), W, 0.0)
    np.fill_diagonal(W, 0.0)
    return W


def class_distance(S: np.ndarray) -> np.ndarray:
    """1 − correlation of the log rows of the symmetrised matrix (diagonal left out).

    Two classes are close when they are alike to the same other classes. The order and
    the layout of the class-similarity charts both start from it (compute it once and
    pass it to both: at K = 1,000 it costs ~0.15 s).
    """
    W = _symmetric(S)
    k = W.shape[0]
    L = np.log(np.maximum(W, 1e-12))
    # The correlation of rows a and b over the columns other than a and b, for every pair
    # at once: full-row sums minus the two left-out entries (O(K^3) in BLAS, not a K^2
    # Python loop).
    n = k - 2
    d = np.diag(L)
    row, sq = L.sum(axis=1), (L * L).sum(axis=1)
    sx = row[:, None] - d[:, None] - L  # sum over j != a, b of L[a, j]
    sxx = sq[:, None] - (d * d)[:, None] - L * L
    sxy = L @ L.T - d[:, None] * L.T - L * d[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = sxy - sx * sx.T / max(n, 1)
        var = sxx - sx * sx / max(n, 1)
        # A row constant over the other columns has no correlation (rounding, not 0).
        var = np.where(var > 1e-12 * np.maximum(np.abs(sxx), 1.0), var, 0.0)
        den = np.sqrt(var * var.T)
        corr = np.where(den > 0, cov / den, 0.0)
    D = np.clip(1.0 - corr, 0.0, 2.0)  # |corr| <= 1 up to rounding
    np.fill_diagonal(D, 0.0)
    return (D + D.T) / 2  # exactly symmetric


def class_order(
    S: np.ndarray, clusters: np.ndarray | None = None, *, distance: np.ndarray | None = None
) -> np.ndarray:
    """A display order of the K classes: clusters contiguous, dendrogram order inside.

    Parameters
    ----------
    S : (K, K) similarity matrix.
    clusters : optional (K,) cluster labels; classes of one cluster are kept together.
    distance : optional :func:`class_distance` of ``S``, when the caller holds it.

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
        D = class_distance(S) if distance is None else distance
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


def class_layout(
    S: np.ndarray, *, iterations: int = 200, distance: np.ndarray | None = None
) -> np.ndarray:
    """Deterministic 2-D positions of the classes for the similarity graph.

    Start from classical MDS of the class distance (an eigendecomposition: no
    random start; each axis's sign fixed by its largest coordinate), then relax
    with a Fruchterman-Reingold force layout on the symmetrised weights so that
    classes of one tight cluster do not sit on top of each other. ``distance``: the
    :func:`class_distance` of ``S``, when the caller holds it.

    Returns
    -------
    (K, 2) float64 coordinates in roughly [-1, 1].
    """
    k = S.shape[0]
    if k == 1:
        return np.zeros((1, 2))
    D = class_distance(S) if distance is None else distance
    # Double centring -J D^2 J / 2 by row, column and grand means: O(K^2), not two K^3
    # products.
    D2 = D**2
    r = D2.mean(axis=1)
    B = -0.5 * (D2 - r[:, None] - D2.mean(axis=0)[None, :] + r.mean())
    # Only the two leading eigenpairs (LAPACK's subset driver): a full decomposition of
    # a K x K matrix costs seconds at K = 1,000.
    from scipy.linalg import eigh

    vals, vecs = eigh(B, subset_by_index=[k - 2, k - 1])
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
    # Each step costs K^2; large graphs get fewer steps (the MDS start is already a layout).
    steps = min(int(iterations), max(10, 8_000_000 // (k * k)))
    for _ in range(steps):
        # sum_j f_ij (x_i - x_j) = x_i sum_j f_ij - (f X)_i: K x K scalars and one
        # product instead of (K, K, 2) difference arrays (5x faster at K = 1,000).
        sq = np.einsum("ij,ij->i", X, X)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (X @ X.T), 1e-6))
        f = opt**2 / dist**2 - W * dist / opt
        np.fill_diagonal(f, 0.0)
        disp = X * f.sum(axis=1)[:, None] - f @ X
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
    nodes, links, n_labels = _graph_frames(edges, positions, class_names, clusters)
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
            x2=alt.X2("x2:Q"),
            y2=alt.Y2("y2:Q"),
            strokeWidth=alt.StrokeWidth(
                "weight:Q",
                scale=alt.Scale(range=[0.5, 6]),
                legend=alt.Legend(title="edge weight", orient="bottom", format=".3f"),
            ),
            opacity=alt.OpacityValue(0.6),  # typed: see grid.py's text colour
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
        .encode(text=alt.Text("label:N"))
    )
    subtitle = (
        f"names of the {n_labels} best-connected of {k} classes; hover a node for the others"
        if n_labels < k
        else ""
    )
    return alt.layer(rule, dots, labels).properties(
        width=400, height=380, title=alt.Title(title, subtitle=subtitle or alt.Undefined)
    )


def _graph_frames(
    edges: pl.DataFrame,
    positions: np.ndarray,
    class_names: Sequence[str],
    clusters: np.ndarray | None,
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Nodes (name, position, cluster, label, strength), links, and how many nodes are named."""
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
    return nodes, links, n_labels


def _cluster_key(name: str) -> tuple[float, str]:
    """``"cluster 2"`` before ``"cluster 10"``."""
    return _natural(name.rsplit(" ", 1)[-1])
