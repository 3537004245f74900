"""The report's sections: which charts, in which order, with which captions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from kdlens._internal.defaults import (
    HELDOUT_SPLITS,
)
from kdlens.errors import InputError, KdlensError
from kdlens.report.charts import (
    ChartUnavailable,
    class_distance,
    class_layout,
    class_order,
    entropy_chart,
    pareto_chart,
    reliability_chart,
    similarity_graph_chart,
    similarity_heatmap,
    sweet_spot_chart,
    teacher_label,
    trajectory_chart,
)
from kdlens.report.data import (
    _ENTROPY_BINS,
    _MAX_SIMILARITY_CELLS,
    _STORE_HINT,
    ReportData,
)

__all__ = ["Section", "report_charts"]


@dataclass
class Section:
    """One chart slot: a chart, or the reason it is absent."""

    key: str
    title: str
    caption: str
    chart: Any = None
    unavailable: str | None = None


def report_charts(data: ReportData) -> list[Section]:
    """Build every chart of the report; absent ones carry the reason instead."""
    sections: list[Section] = []

    def add(key: str, title: str, caption: str, build: Callable[[], Any]) -> None:
        try:
            sections.append(Section(key, title, caption, chart=build()))
        except ChartUnavailable as exc:
            sections.append(Section(key, title, caption, unavailable=str(exc)))

    _grid_sections(data, add)
    _similarity_sections(data, add)
    _calibration_sections(data, add)
    return sections


#: Adds one section: (key, title, caption, a builder that may raise ChartUnavailable).
_Add = Callable[[str, str, str, Callable[[], Any]], None]


def _grid_sections(data: ReportData, add: _Add) -> None:
    """The sweet-spot map, the trajectories and the Pareto front."""
    rec = data.recommendation

    def sweet() -> Any:
        if rec is None or getattr(rec, "sweet_spot", None) is None:
            raise ChartUnavailable("no recommendation was computed, so there is no score map")
        return sweet_spot_chart(rec.sweet_spot, students=data.students)

    add(
        "sweet_spot",
        "Sweet spot: batch size × epoch",
        "kdlens's score per cell of the teacher grid (best checkpoint per cell). "
        + (getattr(rec, "score_definition", "") or ""),
        sweet,
    )
    add(
        "trajectories",
        "Trajectories over training",
        f"Per {_group_word(data.summary)}. "
        f"Accuracy on the held-out split ({data.heldout_split or 'none'}); "
        f"soft-label metrics at T = {data.temperature:g} on the transfer split "
        f"({data.transfer_split or 'none'}, solid) and the held-out split (dashed): a teacher "
        "that memorises its training examples keeps held-out accuracy but loses dark mass and "
        "similarity information on the transfer split.",
        lambda: trajectory_chart(
            data.summary, heldout_split=data.heldout_split, transfer_split=data.transfer_split
        ),
    )

    def pareto() -> Any:
        if rec is None:
            raise ChartUnavailable("no recommendation was computed, so there is no ranking")
        return pareto_chart(rec.ranking, getattr(rec, "pareto", None))

    add(
        "pareto",
        "Pareto front",
        "Checkpoints no other beats on both held-out accuracy and transfer-split similarity "
        "information (dashed line); the recommended checkpoint is ringed.",
        pareto,
    )


#: Why the class-similarity charts are absent with two classes.
_K2 = "K = 2: the non-target distribution has one class, so there is no class similarity to show"


def _similarity_sections(data: ReportData, add: _Add) -> None:
    """The heatmap and the class graph of the focus checkpoint."""
    sim_split, S, order, clusters, distance = _focus_matrix(data)
    focus = teacher_label(*data.focus) if data.focus else "—"

    def heat() -> Any:
        if data.num_classes == 2:
            raise ChartUnavailable(_K2)
        if S is None or data.similarity is None:
            raise ChartUnavailable("the input has no similarity table for this checkpoint")
        if data.num_classes**2 > _MAX_SIMILARITY_CELLS:
            return _block_heatmap(S, order, data.class_names, focus)
        teachers = _similarity_teachers(data, sim_split)
        sim = _sim_long(data, sim_split, teachers)
        return similarity_heatmap(
            sim,
            order=[int(i) for i in order],
            class_names=data.class_names,
            teachers=[teacher_label(*k) for k in teachers],
            default=focus,
        )

    blocks = _n_blocks(data.num_classes)
    how = (
        f"Classes ordered by cluster (of {focus}); pick another checkpoint with the selector."
        if blocks is None
        else f"K = {data.num_classes:,} is too many cells to draw: the matrix of {focus}, in "
        f"cluster order, averaged over {blocks} x {blocks} blocks of consecutive classes."
    )
    add(
        "similarity",
        "Class similarity matrix",
        f"S[c, j]: mean non-target probability of class j on examples of class c, at T = "
        f"{data.temperature:g}, {sim_split or '—'} split. {how}",
        heat,
    )

    def graph() -> Any:
        if data.num_classes == 2:
            raise ChartUnavailable(_K2)
        if S is None:
            raise ChartUnavailable("the input has no similarity table for this checkpoint")
        edges = _focus_edges(data, sim_split, S)
        return similarity_graph_chart(
            edges,
            class_layout(S, distance=distance),
            class_names=data.class_names,
            clusters=clusters,
            title=focus,
        )

    add(
        "graph",
        "Class-similarity graph",
        "Symmetrised S, sparsified to each class's strongest neighbours; positions by classical "
        "MDS of the class distance (deterministic), colours by cluster.",
        graph,
    )


def _calibration_sections(data: ReportData, add: _Add) -> None:
    """The reliability diagram and the entropy distributions (both need the store)."""

    def reliability() -> Any:
        if data.reliability is None:
            if data.has_store:
                raise ChartUnavailable("the store has no labelled held-out split (val or test)")
            raise ChartUnavailable("needs the logits store: " + _STORE_HINT)
        return reliability_chart(data.reliability, n_bins=data.n_bins or 15)

    add(
        "reliability",
        "Reliability diagram",
        f"Held-out split ({data.heldout_split or 'none'}) at T = 1; "
        f"{data.n_bins or 15} equal-width "
        "confidence bins; dot size = examples in the bin.",
        reliability,
    )

    def entropy() -> Any:
        if data.entropy_hist is None:
            if data.has_store:
                raise ChartUnavailable("the store has no labelled split to histogram")
            raise ChartUnavailable("needs the logits store: " + _STORE_HINT)
        return entropy_chart(
            data.entropy_hist, split=data.transfer_split or data.heldout_split or ""
        )

    add(
        "entropy",
        "Per-example entropy distributions",
        f"At T = {data.temperature:g}, {_ENTROPY_BINS} bins on [0, 1]. Mass piling up at 0 is "
        "one-example-one-class (OEOC) learning: nothing beyond the label to distill.",
        entropy,
    )


def _group_word(summary: pl.DataFrame) -> str:
    has_bs = "batch_size" in summary.columns and summary["batch_size"].null_count() < summary.height
    return "batch size" if has_bs else "run"


def _focus_matrix(
    data: ReportData,
) -> tuple[str | None, np.ndarray | None, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The focus checkpoint's split, S, class order, clusters and class distance (computed
    once for the order and the graph's layout)."""
    k = data.num_classes
    if data.similarity is None or data.focus is None or k < 2:
        return None, None, np.arange(k), None, None
    sim = data.similarity
    splits = set(sim["split"].unique().to_list()) if "split" in sim.columns else {None}
    split = next((s for s in (data.transfer_split, *HELDOUT_SPLITS) if s in splits), None)
    if split is None:
        split = sorted(s for s in splits if s is not None)[0] if splits - {None} else None
    part = _sim_rows(sim, data.focus, split)
    if part.height == 0:
        return split, None, np.arange(k), None, None
    S = np.zeros((k, k))
    s, t = _class_index(part["source"], data), _class_index(part["target"], data)
    S[s, t] = part["weight"].cast(pl.Float64).to_numpy()
    np.fill_diagonal(S, 0.0)
    clusters = _clusters(data, S)
    distance = class_distance(S) if k >= 3 else None
    return split, S, class_order(S, clusters, distance=distance), clusters, distance


def _sim_rows(sim: pl.DataFrame, key: tuple[str, str], split: str | None) -> pl.DataFrame:
    f = (pl.col("run") == key[0]) & (pl.col("checkpoint") == key[1])
    if split is not None and "split" in sim.columns:
        f = f & (pl.col("split") == split)
    return sim.filter(f)


def _class_index(col: pl.Series, data: ReportData) -> np.ndarray:
    if col.dtype.is_integer():
        return col.to_numpy().astype(np.int64)
    pos = {n: i for i, n in enumerate(data.class_names)}
    # Mapped in polars: a Python loop over K^2 names costs seconds at K = 1,000.
    names = col.cast(pl.Utf8)
    idx = names.replace_strict(pos, default=None, return_dtype=pl.Int64)
    if idx.null_count():
        bad = names.filter(idx.is_null())[0]
        raise InputError(f"similarity table names class {bad!r}, which is not a known class")
    return idx.to_numpy()


def _clusters(data: ReportData, S: np.ndarray) -> np.ndarray | None:
    k = S.shape[0]
    if k < 4:
        return None
    try:
        from kdlens.measures.similarity import cluster_classes

        return np.asarray(cluster_classes(S, n_clusters=max(2, min(k - 1, round(math.sqrt(k))))))
    except (ImportError, KdlensError):
        return None


def _n_blocks(k: int) -> int | None:
    """Blocks per side of the heatmap when K x K cells exceed the budget, else None."""
    m = int(math.isqrt(_MAX_SIMILARITY_CELLS))
    return m if k * k > _MAX_SIMILARITY_CELLS else None


def _block_heatmap(S: np.ndarray, order: np.ndarray, names: Sequence[str], focus: str) -> Any:
    """The focus checkpoint's matrix averaged over blocks of consecutive classes (in display
    order), so that a large K draws at most the cell budget."""
    k = S.shape[0]
    m = _n_blocks(k) or k
    group = (np.arange(k) * m) // k  # block of each display position
    ordered = np.nan_to_num(S[np.ix_(order, order)])
    sums = np.zeros((m, m))
    np.add.at(sums, (group[:, None], group[None, :]), ordered)
    sizes = np.bincount(group, minlength=m).astype(float)
    mean = sums / np.outer(sizes, sizes)
    first = np.searchsorted(group, np.arange(m))
    last = np.r_[first[1:], k] - 1
    labels = [
        f"{names[order[a]]} … {names[order[b]]} ({b - a + 1})"
        for a, b in zip(first, last, strict=True)
    ]
    src, dst = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    long = pl.DataFrame(
        {
            "teacher": [focus] * (m * m),
            "source": src.ravel(),
            "target": dst.ravel(),
            "weight": mean.ravel(),
        }
    )
    return similarity_heatmap(
        long, order=list(range(m)), class_names=labels, teachers=[focus], default=focus
    )


def _similarity_teachers(data: ReportData, split: str | None) -> list[tuple[str, str]]:
    """The focus first, then as many others as the size budget allows (evenly spread)."""
    sim = data.similarity
    assert sim is not None  # checked by the caller
    present = set(_sim_rows_keys(sim, split))
    keys = [k for k in data.teachers if k in present]
    budget = max(1, _MAX_SIMILARITY_CELLS // max(data.num_classes**2, 1))
    if len(keys) > budget:
        idx = np.unique(np.linspace(0, len(keys) - 1, budget).round().astype(int))
        keys = [keys[i] for i in idx]
    focus = data.focus
    return [focus] + [k for k in keys if k != focus] if focus else keys


def _sim_rows_keys(sim: pl.DataFrame, split: str | None) -> list[tuple[str, str]]:
    if split is not None and "split" in sim.columns:
        sim = sim.filter(pl.col("split") == split)
    return [tuple(r) for r in sim.select("run", "checkpoint").unique().iter_rows()]  # type: ignore[misc]


def _sim_long(data: ReportData, split: str | None, teachers: list[tuple[str, str]]) -> pl.DataFrame:
    sim = data.similarity
    assert sim is not None
    if split is not None and "split" in sim.columns:
        sim = sim.filter(pl.col("split") == split)
    keys = pl.DataFrame(
        {"run": [k[0] for k in teachers], "checkpoint": [k[1] for k in teachers]},
        schema={"run": sim.schema["run"], "checkpoint": sim.schema["checkpoint"]},
    )
    sim = sim.join(keys, on=["run", "checkpoint"], how="semi")
    return sim.select(
        (pl.col("run").cast(pl.Utf8) + " / " + pl.col("checkpoint").cast(pl.Utf8)).alias("teacher"),
        pl.Series("source", _class_index(sim["source"], data)),
        pl.Series("target", _class_index(sim["target"], data)),
        pl.col("weight").cast(pl.Float64),
    ).filter(pl.col("source") != pl.col("target"))


def _focus_edges(data: ReportData, split: str | None, S: np.ndarray) -> pl.DataFrame:
    if (
        data.edges is not None
        and data.focus is not None
        and {"source", "target", "weight"} <= set(data.edges.columns)
    ):
        e = data.edges
        if {"run", "checkpoint"} <= set(e.columns):
            e = _sim_rows(e, data.focus, split)
        if e.height:
            return pl.DataFrame(
                {
                    "source": _class_index(e["source"], data),
                    "target": _class_index(e["target"], data),
                    "weight": e["weight"].cast(pl.Float64).to_numpy(),
                }
            )
    from kdlens.measures.similarity import similarity_graph

    return similarity_graph(S, top_k=3)
