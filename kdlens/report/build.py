"""The self-contained HTML report: which checkpoint to distill from, and why.

:func:`build_report` turns a logits store or an analysis directory into one HTML
file that opens offline: Vega, Vega-Lite and vega-embed are inlined from the
bundle shipped inside ``vl-convert-python`` (never fetched from a CDN), and every
chart's data is inlined as JSON. The page states the temperature, the confidence
bins and the OEMC threshold it was computed with.

Pipeline: :func:`collect_report_data` gathers the tables (analysis summary,
similarity, edges, the recommendation, and, when a store is at hand, a
reliability table and per-example entropy histograms of a few checkpoints, both
streamed batch by batch); :func:`report_charts` builds the altair charts;
:func:`render_report` writes the page; :func:`export_charts` writes PNG/SVG.
"""

from __future__ import annotations

import datetime as _dt
import functools
import html
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import polars as pl

from kdlens._internal.atomic import write_bytes_atomic
from kdlens._internal.defaults import (
    ALPHA,
    HELDOUT_SPLITS,
    N_BOOTSTRAP,
    N_PERMUTATIONS,
    TRANSFER_SPLIT,
)
from kdlens._version import __version__
from kdlens.errors import InputError, KdlensError
from kdlens.report.charts import (
    ChartUnavailable,
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
from kdlens.store.parquet import LogitsStore, open_store

__all__ = [
    "ANALYSIS_TABLES",
    "ReportData",
    "build_report",
    "collect_report_data",
    "export_charts",
    "render_report",
    "report_charts",
]

#: Tables an analysis directory must hold (written by ``AnalysisResult.write``).
ANALYSIS_TABLES = ("summary", "classes", "similarity", "edges")
#: Tables used when present (older analyses lack them).
OPTIONAL_TABLES = ("calibration",)
#: Significance level of the structure-test verdicts, and the effect size below
#: which a significant structure is called weak (SI / log(K − 1)).
WEAK_EFFECT = 0.05
#: Checkpoints x K^2 cells above which the similarity selector offers fewer checkpoints.
_MAX_SIMILARITY_CELLS = 60_000
_ENTROPY_BINS = 25
_MAX_DETAIL_TEACHERS = 4
#: How to give the report its logits store, for CLI and Python users alike.
_STORE_HINT = (
    "pass it with kdlens report ANALYSIS_DIR --store STORE (store= in kdlens.build_report)"
)

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class ReportData:
    """Everything the report shows, as plain frames.

    ``summary`` is required; every other table is optional and its chart says
    what is missing when absent.
    """

    summary: pl.DataFrame
    num_classes: int
    class_names: list[str]
    class_names_known: bool
    temperature: float
    source: str
    similarity: pl.DataFrame | None = None
    edges: pl.DataFrame | None = None
    classes: pl.DataFrame | None = None
    recommendation: Any = None
    students: pl.DataFrame | None = None
    reliability: pl.DataFrame | None = None
    entropy_hist: pl.DataFrame | None = None
    detail_teachers: list[tuple[str, str]] = field(default_factory=list)
    n_bins: int | None = None
    oemc_delta: float | None = None
    dataset: str | None = None
    model: str | None = None
    focus: tuple[str, str] | None = None
    notes: list[str] = field(default_factory=list)
    title: str = "kdlens report"
    has_store: bool = False

    @property
    def splits(self) -> list[str]:
        return sorted(set(self.summary["split"].to_list()))

    @property
    def heldout_split(self) -> str | None:
        return next((s for s in HELDOUT_SPLITS if s in self.splits), None)

    @property
    def transfer_split(self) -> str | None:
        return TRANSFER_SPLIT if TRANSFER_SPLIT in self.splits else None

    @property
    def teachers(self) -> list[tuple[str, str]]:
        cols = [c for c in ("run", "epoch", "step", "checkpoint") if c in self.summary.columns]
        keys = (
            self.summary.sort(cols, nulls_last=True)
            .select("run", "checkpoint")
            .unique(maintain_order=True)
        )
        return [(r, c) for r, c in keys.iter_rows()]


# --------------------------------------------------------------------------- collecting


def collect_report_data(
    source: Any,
    *,
    temperature: float = 1.0,
    store: Any = None,
    recommendation: Any = None,
    students: Any = None,
    checkpoint: str | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    title: str | None = None,
    progress: Progress = _quiet,
) -> ReportData:
    """Gather the report's tables from a store, an analysis directory or an analysis result.

    Parameters
    ----------
    source
        A logits store (path, directory, glob or :class:`~kdlens.store.parquet.LogitsStore`:
        analysed here), an analysis directory (``summary.parquet``, ``classes.parquet``,
        ``similarity.parquet``, ``edges.parquet``) or an object with ``.summary``
        (an ``AnalysisResult``).
    temperature
        T of the soft labels when the store is analysed here; an analysis keeps its own.
    store
        The logits store behind an analysis, for the reliability diagram and the
        per-example entropy distributions (optional; a store ``source`` is used itself).
    recommendation
        A :class:`kdlens.recommend.rank.Recommendation`; computed here when ``None``.
    students
        Validation-experiment results: a frame or Parquet/CSV file with ``run``,
        ``checkpoint`` and ``student_accuracy`` (one row per student seed or per checkpoint).
    checkpoint
        ``"run/checkpoint"`` (or a checkpoint name) whose classes are shown; default
        the recommended one.
    """
    t = float(temperature)
    if not isinstance(source, (str, os.PathLike, LogitsStore)) and store is not None:
        label_hint: str | None = f"analysis of {store}"
    else:
        label_hint = None
    if not (math.isfinite(t) and t > 0):
        raise InputError(f"temperature must be a positive number, got {temperature!r}")
    st: LogitsStore | None = None
    label = label_hint or _label_of(source)
    analysis_dir = _analysis_dir(source)
    if analysis_dir is not None:
        progress(f"reading analysis {analysis_dir}")
        tables = _read_analysis_dir(analysis_dir)
        meta = _read_meta(analysis_dir)
        if store is None and meta.get("store"):
            cand = Path(str(meta["store"]))
            if cand.exists():
                store = cand
    elif hasattr(source, "summary"):
        tables = {name: getattr(source, name, None) for name in ANALYSIS_TABLES + OPTIONAL_TABLES}
        meta = {}
    else:
        st = open_store(source)
        progress(f"analysing {st.source} at T={t:g}")
        analysis = _analyze(st, t)
        tables = {name: getattr(analysis, name, None) for name in ANALYSIS_TABLES + OPTIONAL_TABLES}
        meta = {}
    if store is not None and st is None:
        st = open_store(store)
    summary = tables["summary"]
    if not isinstance(summary, pl.DataFrame) or summary.height == 0:
        raise InputError(f"{label}: the analysis summary is empty")
    for c in ("run", "checkpoint", "split"):
        if c not in summary.columns:
            raise InputError(
                f"{label}: summary lacks column {c!r}; expected the output of kdlens analyze"
            )
    if "temperature" in summary.columns and summary["temperature"].null_count() < summary.height:
        t = float(summary["temperature"].drop_nulls()[0])

    notes: list[str] = []
    k, names, known, dataset, model = _classes_info(st, tables, meta)
    if not known:
        notes.append(
            "class names are not recorded in the input: classes are shown by index "
            "(record them with --classes NAMES.txt on kdlens import, or class_names= of "
            "kdlens.CheckpointWriter)"
        )
    if recommendation is None:
        recommendation = _recommend(
            st,
            summary,
            n_bootstrap,
            notes,
            progress,
        )
    data = ReportData(
        summary=summary,
        num_classes=k,
        class_names=names,
        class_names_known=known,
        temperature=t,
        source=label,
        similarity=_frame_or_none(tables.get("similarity")),
        edges=_frame_or_none(tables.get("edges")),
        classes=_frame_or_none(tables.get("classes")),
        recommendation=recommendation,
        students=_read_students(students),
        n_bins=_first(summary, "ece_bins", int),
        oemc_delta=_first(summary, "oemc_delta", float),
        dataset=dataset,
        model=model,
        notes=notes,
        title=title or "kdlens report" + (f": {dataset}" if dataset else ""),
    )
    data.focus = _choose_focus(data, checkpoint)
    data.detail_teachers = _detail_teachers(data)
    data.has_store = st is not None
    if st is not None:
        progress(
            "reliability and entropy distributions of "
            + ", ".join(teacher_label(*k_) for k_ in data.detail_teachers)
        )
        data.reliability, data.entropy_hist, bins = _store_details(
            st,
            data.detail_teachers,
            heldout=data.heldout_split,
            transfer=data.transfer_split or data.heldout_split,
            temperature=t,
            n_bins=data.n_bins,
        )
        data.n_bins = data.n_bins or bins
    else:
        data.reliability = _calibration_rows(
            _frame_or_none(tables.get("calibration")), data.detail_teachers, data.heldout_split
        )
        data.notes.append(
            "no logits store was given: the per-example entropy distributions"
            + ("" if data.reliability is not None else " and the reliability diagram")
            + " need one: "
            + _STORE_HINT
        )
    return data


def _calibration_rows(
    cal: pl.DataFrame | None, teachers: Sequence[tuple[str, str]], split: str | None
) -> pl.DataFrame | None:
    """The analysis's reliability table restricted to the detail teachers' held-out split."""
    need = {"run", "checkpoint", "split", "confidence", "accuracy", "count"}
    if cal is None or split is None or not need <= set(cal.columns) or not teachers:
        return None
    keys = pl.DataFrame(
        {"run": [k[0] for k in teachers], "checkpoint": [k[1] for k in teachers]},
        schema={"run": cal.schema["run"], "checkpoint": cal.schema["checkpoint"]},
    )
    rows = cal.filter(pl.col("split") == split).join(keys, on=["run", "checkpoint"], how="semi")
    if rows.height == 0:
        return None
    order = {teacher_label(*k): i for i, k in enumerate(teachers)}
    rows = rows.with_columns(
        (pl.col("run").cast(pl.Utf8) + " / " + pl.col("checkpoint").cast(pl.Utf8)).alias("teacher")
    )
    return rows.sort(
        pl.col("teacher").replace_strict(order, default=len(order)),
        "bin" if "bin" in rows.columns else "confidence",
    )


def _label_of(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, LogitsStore):
        return source.source
    return str(getattr(source, "source", type(source).__name__))


def _analysis_dir(source: Any) -> Path | None:
    if not isinstance(source, (str, os.PathLike)):
        return None
    p = Path(source)
    if p.is_dir() and any((p / f"{n}.parquet").is_file() for n in ANALYSIS_TABLES):
        return p
    return None


def _read_analysis_dir(path: Path) -> dict[str, pl.DataFrame | None]:
    out: dict[str, pl.DataFrame | None] = {}
    for name in ANALYSIS_TABLES + OPTIONAL_TABLES:
        f = path / f"{name}.parquet"
        if not f.is_file() and name in OPTIONAL_TABLES:
            out[name] = None
            continue
        if not f.is_file():
            raise InputError(
                f"{path}: analysis directory lacks {f.name}; "
                f"rerun `kdlens analyze STORE -o {path}` "
                "to write all of " + ", ".join(f"{n}.parquet" for n in ANALYSIS_TABLES)
            )
        try:
            out[name] = pl.read_parquet(f)
        except Exception as exc:  # polars raises several types for a bad file
            raise InputError(
                f"{f}: not a readable Parquet table ({str(exc).splitlines()[0]})"
            ) from None
    return out


def _read_meta(path: Path) -> dict[str, Any]:
    for name in ("analysis.json", "metadata.json", "meta.json"):
        f = path / name
        if f.is_file():
            try:
                meta = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            return meta if isinstance(meta, dict) else {}
    return {}


def _frame_or_none(x: Any) -> pl.DataFrame | None:
    return x if isinstance(x, pl.DataFrame) and x.height > 0 else None


def _first(df: pl.DataFrame, col: str, typ: Callable[[Any], Any]) -> Any:
    if col not in df.columns or df[col].null_count() == df.height:
        return None
    return typ(df[col].drop_nulls()[0])


def _analyze(st: LogitsStore, temperature: float) -> Any:
    try:
        from kdlens.analysis.engine import analyze  # type: ignore[attr-defined]
    except ImportError:
        raise InputError(
            "kdlens.analysis.engine.analyze is not available in this installation; "
            "pass an analysis directory instead"
        ) from None
    return analyze(st, temperature=temperature, n_permutations=N_PERMUTATIONS)


def _recommend(
    st: LogitsStore | None,
    summary: pl.DataFrame,
    n_bootstrap: int,
    notes: list[str],
    progress: Progress,
) -> Any:
    try:
        from kdlens.recommend.rank import recommend  # type: ignore[attr-defined]
    except ImportError:
        notes.append("kdlens.recommend.rank is not available: no ranking is shown")
        return None
    progress("ranking checkpoints")
    try:
        # The ranking score has its own, validated temperature (recommend's default);
        # the analysis temperature only sets the soft-label charts.
        if st is not None:  # the exact score; a summary at another T drops the collapse term
            return recommend(st, n_bootstrap=max(0, int(n_bootstrap)))
        return recommend(summary, n_bootstrap=0)
    except KdlensError as exc:
        notes.append(f"no recommendation: {exc}")
        return None


def _classes_info(
    st: LogitsStore | None, tables: dict[str, Any], meta: dict[str, Any]
) -> tuple[int, list[str], bool, str | None, str | None]:
    k: int | None = None
    names: list[str] | None = None
    dataset = model = None
    if st is not None:
        k, names = st.num_classes, st.class_names
        dataset, model = st.metadata.get("dataset"), st.metadata.get("model")
    names = names or meta.get("class_names")
    dataset = dataset or meta.get("dataset")
    model = model or meta.get("model")
    summary = tables["summary"]
    if k is None:
        k = _first(summary, "num_classes", int) or meta.get("num_classes")
    classes = tables.get("classes")
    if names is None and isinstance(classes, pl.DataFrame):
        name_col = next((c for c in ("class_name", "name") if c in classes.columns), None)
        idx_col = next((c for c in ("class", "class_index", "label") if c in classes.columns), None)
        if name_col and idx_col:
            pairs = dict(classes.select(idx_col, name_col).unique().iter_rows())
            if k is None:
                k = int(max(pairs)) + 1
            if all(i in pairs for i in range(k)):
                names = [str(pairs[i]) for i in range(k)]
                if names == [str(i) for i in range(k)]:  # the analysis's stand-in for "unknown"
                    names = None
    if k is None:
        sim = tables.get("similarity")
        if isinstance(sim, pl.DataFrame) and sim.height and sim["source"].dtype.is_integer():
            k = int(max(sim["source"].to_numpy().max(), sim["target"].to_numpy().max())) + 1
        else:
            k = 0
    if names is not None and len(names) != k:
        names = None
    known = names is not None
    return int(k), list(names) if names else [str(i) for i in range(int(k))], known, dataset, model


def _read_students(students: Any) -> pl.DataFrame | None:
    if students is None:
        return None
    if isinstance(students, (str, os.PathLike)):
        p = Path(students)
        if not p.is_file():
            raise InputError(f"{p}: no such validation file")
        df = pl.read_csv(p) if p.suffix.lower() == ".csv" else pl.read_parquet(p)
    elif isinstance(students, pl.DataFrame):
        df = students
    else:
        raise InputError(f"students must be a frame or a file path, got {type(students).__name__}")
    col = next(
        (
            c
            for c in ("student_accuracy", "mean_student_accuracy", "student_acc")
            if c in df.columns
        ),
        None,
    )
    if col is None or not {"run", "checkpoint"} <= set(df.columns):
        raise InputError(
            "validation results need columns run, checkpoint and student_accuracy; got "
            + ", ".join(df.columns)
        )
    return df.select("run", "checkpoint", pl.col(col).cast(pl.Float64).alias("student_accuracy"))


def _rec_key(rec: Any) -> tuple[str, str] | None:
    best = getattr(rec, "recommended", None)
    if isinstance(best, dict) and "run" in best and "checkpoint" in best:
        return str(best["run"]), str(best["checkpoint"])
    return None


def _choose_focus(data: ReportData, checkpoint: str | None) -> tuple[str, str] | None:
    teachers = data.teachers
    if not teachers:
        return None
    if checkpoint:
        hits = [k for k in teachers if f"{k[0]}/{k[1]}" == checkpoint or k[1] == checkpoint]
        if not hits:
            shown = ", ".join(f"{r}/{c}" for r, c in teachers[:5])
            raise InputError(f"checkpoint {checkpoint!r} is not in the input (e.g. {shown})")
        return hits[0]
    rec = _rec_key(data.recommendation)
    return rec if rec in teachers else teachers[-1]


def _detail_teachers(data: ReportData) -> list[tuple[str, str]]:
    """A few checkpoints to compare in detail: first, picked and last of its run, most accurate."""
    if data.focus is None:
        return []
    run = data.focus[0]
    same = [k for k in data.teachers if k[0] == run]
    picks = [same[0], data.focus, same[-1]]
    held = data.heldout_split
    if held and "accuracy" in data.summary.columns:
        h = data.summary.filter(pl.col("split") == held).sort(
            "accuracy", descending=True, nulls_last=True
        )
        if h.height:
            picks.append((h["run"][0], h["checkpoint"][0]))
    return list(dict.fromkeys(picks))[:_MAX_DETAIL_TEACHERS]


def _store_details(
    st: LogitsStore,
    teachers: Sequence[tuple[str, str]],
    *,
    heldout: str | None,
    transfer: str | None,
    temperature: float,
    n_bins: int | None,
) -> tuple[pl.DataFrame | None, pl.DataFrame | None, int]:
    """Reliability table (held-out split, T = 1) and entropy histograms (transfer split, at T)."""
    from kdlens.measures.calibration import DEFAULT_N_BINS, CalibrationAccumulator
    from kdlens.measures.softlabels import per_example

    bins = int(n_bins or DEFAULT_N_BINS)
    rel: list[pl.DataFrame] = []
    hist: list[pl.DataFrame] = []
    edges = np.linspace(0.0, 1.0, _ENTROPY_BINS + 1)
    quantities = {
        "entropy_normalized": "entropy H(p) / log K",
        "nontarget_entropy_normalized": "non-target entropy H(q) / log(K−1)",
    }
    splits = set(st.splits())
    for run, ck in teachers:
        name = teacher_label(run, ck)
        if heldout and heldout in splits and st.find(run, ck) and _has(st, run, ck, heldout):
            acc = CalibrationAccumulator(n_bins=bins, temperature=1.0)
            for b in st.iter_batches(run, ck, heldout):
                keep = b.labels >= 0
                if keep.any():
                    acc.update(b.logits[keep], b.labels[keep])
            if acc.n:
                rel.append(acc.finalize().table.with_columns(pl.lit(name).alias("teacher")))
        if transfer and _has(st, run, ck, transfer):
            counts = {q: np.zeros(_ENTROPY_BINS, np.int64) for q in quantities}
            n = 0
            for b in st.iter_batches(run, ck, transfer):
                keep = b.labels >= 0
                if not keep.any():
                    continue
                pe = per_example(b.logits[keep], b.labels[keep], temperature=temperature)
                for q in quantities:
                    v = pe[q].to_numpy()
                    v = v[np.isfinite(v)]
                    idx = np.clip((v * _ENTROPY_BINS).astype(np.int64), 0, _ENTROPY_BINS - 1)
                    counts[q] += np.bincount(idx, minlength=_ENTROPY_BINS)
                n += int(keep.sum())
            if n:
                for q, title in quantities.items():
                    hist.append(
                        pl.DataFrame(
                            {
                                "teacher": [name] * _ENTROPY_BINS,
                                "quantity": [title] * _ENTROPY_BINS,
                                "lower": edges[:-1],
                                "upper": edges[1:],
                                "share": counts[q] / n,
                            }
                        )
                    )
    return (pl.concat(rel) if rel else None, pl.concat(hist) if hist else None, bins)


def _has(st: LogitsStore, run: str, ck: str, split: str) -> bool:
    return any(p.run == run and p.checkpoint == ck and p.split == split for p in st.parts)


# --------------------------------------------------------------------------- charts


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
    rec = data.recommendation
    sections: list[Section] = []

    def add(key: str, title: str, caption: str, build: Callable[[], Any]) -> None:
        try:
            sections.append(Section(key, title, caption, chart=build()))
        except ChartUnavailable as exc:
            sections.append(Section(key, title, caption, unavailable=str(exc)))

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

    sim_split, S, order, clusters = _focus_matrix(data)
    focus = teacher_label(*data.focus) if data.focus else "—"

    def heat() -> Any:
        if S is None or data.similarity is None:
            raise ChartUnavailable("the input has no similarity table for this checkpoint")
        teachers = _similarity_teachers(data, sim_split)
        sim = _sim_long(data, sim_split, teachers)
        return similarity_heatmap(
            sim,
            order=[int(i) for i in order],
            class_names=data.class_names,
            teachers=[teacher_label(*k) for k in teachers],
            default=focus,
        )

    add(
        "similarity",
        "Class similarity matrix",
        f"S[c, j]: mean non-target probability of class j on examples of class c, at T = "
        f"{data.temperature:g}, {sim_split or '—'} split. Classes ordered by cluster "
        f"(of {focus}); pick another checkpoint with the selector.",
        heat,
    )

    def graph() -> Any:
        if S is None:
            raise ChartUnavailable("the input has no similarity table for this checkpoint")
        edges = _focus_edges(data, sim_split, S)
        return similarity_graph_chart(
            edges, class_layout(S), class_names=data.class_names, clusters=clusters, title=focus
        )

    add(
        "graph",
        "Class-similarity graph",
        "Symmetrised S, sparsified to each class's strongest neighbours; positions by classical "
        "MDS of the class distance (deterministic), colours by cluster.",
        graph,
    )

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
    return sections


def _group_word(summary: pl.DataFrame) -> str:
    has_bs = "batch_size" in summary.columns and summary["batch_size"].null_count() < summary.height
    return "batch size" if has_bs else "run"


def _focus_matrix(
    data: ReportData,
) -> tuple[str | None, np.ndarray | None, np.ndarray, np.ndarray | None]:
    k = data.num_classes
    if data.similarity is None or data.focus is None or k < 2:
        return None, None, np.arange(k), None
    sim = data.similarity
    splits = set(sim["split"].to_list()) if "split" in sim.columns else {None}
    split = next((s for s in (data.transfer_split, *HELDOUT_SPLITS) if s in splits), None)
    if split is None:
        split = sorted(s for s in splits if s is not None)[0] if splits - {None} else None
    part = _sim_rows(sim, data.focus, split)
    if part.height == 0:
        return split, None, np.arange(k), None
    S = np.zeros((k, k))
    s, t = _class_index(part["source"], data), _class_index(part["target"], data)
    S[s, t] = part["weight"].cast(pl.Float64).to_numpy()
    np.fill_diagonal(S, 0.0)
    clusters = _clusters(data, S)
    return split, S, class_order(S, clusters), clusters


def _sim_rows(sim: pl.DataFrame, key: tuple[str, str], split: str | None) -> pl.DataFrame:
    f = (pl.col("run") == key[0]) & (pl.col("checkpoint") == key[1])
    if split is not None and "split" in sim.columns:
        f = f & (pl.col("split") == split)
    return sim.filter(f)


def _class_index(col: pl.Series, data: ReportData) -> np.ndarray:
    if col.dtype.is_integer():
        return col.to_numpy().astype(np.int64)
    pos = {n: i for i, n in enumerate(data.class_names)}
    try:
        return np.array([pos[str(v)] for v in col.to_list()], dtype=np.int64)
    except KeyError as exc:
        raise InputError(
            f"similarity table names class {exc.args[0]!r}, which is not a known class"
        ) from None


def _clusters(data: ReportData, S: np.ndarray) -> np.ndarray | None:
    k = S.shape[0]
    if k < 4:
        return None
    try:
        from kdlens.measures.similarity import cluster_classes

        return np.asarray(cluster_classes(S, n_clusters=max(2, min(k - 1, round(math.sqrt(k))))))
    except (ImportError, KdlensError):
        return None


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


# --------------------------------------------------------------------------- HTML


@functools.lru_cache(maxsize=2)
def _vega_bundle(vl_version: str | None) -> str:
    try:
        import vl_convert as vlc
    except ImportError:
        raise InputError(
            "the report inlines Vega from vl-convert-python, which is not installed "
            "(pip install vl-convert-python)"
        ) from None
    js = vlc.javascript_bundle(vl_version=vl_version)  # type: ignore[call-arg]
    # "</script" inside a script element would end it early; "<\/" means the same in JS.
    return js.replace("</script", "<\\/script")


def _vl_version() -> str | None:
    try:
        import vl_convert as vlc
    except ImportError:
        return None
    want = alt.SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]  # "6.4.1" -> "6.4"
    return want if want in vlc.get_vegalite_versions() else None


def _spec(chart: Any) -> dict[str, Any]:
    spec = chart.to_dict(validate=True)
    spec.setdefault("config", {}).setdefault(
        "font", "system-ui, -apple-system, 'Segoe UI', sans-serif"
    )
    return spec


def render_report(data: ReportData, sections: list[Section] | None = None) -> str:
    """The report as one HTML string (scripts and data inlined)."""
    sections = report_charts(data) if sections is None else sections
    specs: dict[str, Any] = {}
    body: list[str] = []
    by_key = {s.key: s for s in sections}

    def slot(key: str) -> str:
        s = by_key.get(key)
        if s is None:
            return ""
        out = [
            f'<section class="card" id="sec-{key}"><h2>{_e(s.title)}</h2>',
            f'<p class="caption">{_e(s.caption)}</p>',
        ]
        if s.chart is not None:
            cid = f"chart-{key}"
            specs[cid] = _spec(s.chart)
            out.append(f'<div class="chart" id="{cid}" data-chart="{key}"></div>')
        else:
            out.append(f'<p class="unavailable">Not shown: {_e(s.unavailable or "")}.</p>')
        out.append("</section>")
        return "".join(out)

    body.append(_header_html(data))
    body.append(_recommendation_html(data))
    body.append(slot("sweet_spot"))
    body.append(slot("trajectories"))
    body.append('<div class="row">' + slot("pareto") + _ranking_html(data) + "</div>")
    body.append('<div class="row">' + slot("similarity") + slot("graph") + "</div>")
    body.append('<div class="row">' + slot("reliability") + slot("entropy") + "</div>")
    body.append(_hypothesis_html(data))
    body.append(_methods_html(data))
    specs_json = json.dumps(specs, allow_nan=False).replace("</", "<\\/")
    bundle = _vega_bundle(_vl_version())
    return _PAGE.format(
        title=_e(data.title),
        css=_CSS,
        body="\n".join(b for b in body if b),
        bundle=bundle,
        specs=specs_json,
        embed=_EMBED_JS,
    )


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _header_html(data: ReportData) -> str:
    n_teachers = len(data.teachers)
    facts = [
        ("source", data.source),
        ("dataset", data.dataset or "—"),
        ("model", data.model or "—"),
        (
            "classes",
            f"K = {data.num_classes}"
            + ("" if data.class_names_known else " (names unknown: indices)"),
        ),
        ("checkpoints", f"{n_teachers} (run × checkpoint)"),
        ("splits", ", ".join(data.splits)),
        ("temperature", f"T = {data.temperature:g} for soft-label measures; calibration at T = 1"),
        ("confidence bins", f"{data.n_bins or 15} equal-width bins on [0, 1]"),
        (
            "OEMC threshold",
            f"dark mass ≥ δ = {data.oemc_delta if data.oemc_delta is not None else 0.05:g}",
        ),
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<header><h1>{_e(data.title)}</h1>"
        '<p class="sub">Which teacher checkpoint to distill from, '
        f"and why. kdlens {_e(__version__)}, {stamp}.</p>"
        f'<table class="facts">{rows}</table></header>'
    )


def _recommendation_html(data: ReportData) -> str:
    rec = data.recommendation
    notes = list(data.notes)
    if rec is None:
        inner = "<p>No recommendation was computed.</p>"
    else:
        best = getattr(rec, "recommended", None)
        notes += list(getattr(rec, "notes", []) or [])
        if best is None:
            inner = f"<p>No recommendation: {_e(getattr(rec, 'reason', ''))}</p>"
        else:
            key = teacher_label(best.get("run"), best.get("checkpoint"))
            bits = [
                f"batch size {best['batch_size']}" if best.get("batch_size") is not None else "",
                f"epoch {best['epoch']}" if best.get("epoch") is not None else "",
            ]
            where = ", ".join(b for b in bits if b)
            p = best.get("probability_best")
            inner = (
                f'<p class="pick">Distill from <b>{_e(key)}</b>'
                + (f" ({_e(where)})" if where else "")
                + (f", P(best) = {p:.2f}" if isinstance(p, float) and math.isfinite(p) else "")
                + "</p>"
                + f"<p>{_e(getattr(rec, 'reason', ''))}</p>"
                + f'<p class="caption">Ranked at T = {getattr(rec, "temperature", float("nan")):g} '
                + "(the distillation temperature the score was validated at; the soft-label "
                + "charts below use the analysis temperature). "
                + f"{_e(getattr(rec, 'score_definition', '') or '')}</p>"
            )
            advice = list(getattr(rec, "advice", []) or [])
            if advice:
                inner += "<ul>" + "".join(f"<li>{_e(a)}</li>" for a in advice) + "</ul>"
    if notes:
        inner += (
            '<div class="notes"><b>Notes</b><ul>'
            + "".join(f"<li>{_e(n)}</li>" for n in dict.fromkeys(notes))
            + "</ul></div>"
        )
    return f'<section class="card rec"><h2>Recommendation</h2>{inner}</section>'


def _ranking_html(data: ReportData, top: int = 10) -> str:
    rec = data.recommendation
    ranking = getattr(rec, "ranking", None)
    if not isinstance(ranking, pl.DataFrame) or ranking.height == 0:
        return ""
    t = getattr(data.recommendation, "temperature", None) if data.recommendation else None
    at = f", T={t:g}" if isinstance(t, float) else ""
    cols = [
        ("rank", "rank", "d"),
        ("run", "run", ""),
        ("checkpoint", "checkpoint", ""),
        ("score", "score", ".4f"),
        ("probability_best", "P(best)", ".2f"),
        ("accuracy_heldout", "held-out acc.", ".2%"),
        ("dark_mass_transfer", f"dark mass (train{at})", ".4f"),
        ("similarity_information_transfer", f"SI (train{at})", ".4f"),
    ]
    cols = [c for c in cols if c[0] in ranking.columns]
    head = "".join(f"<th>{_e(t)}</th>" for _, t, _ in cols)
    rows = []
    for r in ranking.head(top).iter_rows(named=True):
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{_e(_fmt(r[c], f) if f and f != 'd' else _fmt(r[c]))}</td>"
                for c, _, f in cols
            )
            + "</tr>"
        )
    return (
        f'<section class="card" id="sec-ranking"><h2>Ranking (top {min(top, ranking.height)} of '
        f'{ranking.height})</h2><div class="scroll"><table class="data">'
        f"<thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _hypothesis_html(data: ReportData) -> str:
    s = data.summary
    title = "Distillation or regularization? The structure test"
    intro = (
        "H0: the non-target mass has no class-consistent structure (label smoothing plus noise). "
        "Statistic: similarity information SI; null: each example's K−1 non-target probabilities "
        f"permuted at random. Verdict at α = {ALPHA:g} per checkpoint; "
        "a significant structure with "
        f"SI / log(K−1) < {WEAK_EFFECT:g} is called weak "
        "(with many examples any real teacher rejects "
        "H0, so read the effect size)."
    )
    if "structure_p_value" not in s.columns or s["structure_p_value"].null_count() == s.height:
        return (
            f'<section class="card" id="sec-hypothesis"><h2>{title}</h2>'
            f'<p class="caption">{_e(intro)}</p>'
            '<p class="unavailable">Not shown: the analysis has no structure test '
            "(column structure_p_value).</p></section>"
        )
    df = s.filter(pl.col("structure_p_value").is_not_null())
    eff_col = next(
        (c for c in ("similarity_information_normalized", "structure_effect") if c in df.columns),
        None,
    )
    rows = []
    for r in df.iter_rows(named=True):
        p = float(r["structure_p_value"])
        eff = r.get(eff_col) if eff_col else None
        if p >= ALPHA:
            verdict, cls = "no structure detected: regularization effect only", "v-reg"
        elif eff is not None and math.isfinite(float(eff)) and float(eff) < WEAK_EFFECT:
            verdict, cls = "structure significant but weak", "v-weak"
        else:
            verdict, cls = "class-similarity structure: knowledge to distill", "v-kd"
        rows.append(
            f"<tr><td>{_e(teacher_label(r['run'], r['checkpoint']))}</td><td>{_e(r['split'])}</td>"
            f"<td>{_e(_fmt(r.get('similarity_information')))}</td><td>{_e(_fmt(eff))}</td>"
            f"<td>{_e(_fmt(p, '.4g'))}</td><td class='{cls}'>{_e(verdict)}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("checkpoint", "split", "SI (nats)", "effect SI / log(K−1)", "p-value", "verdict")
    )
    return (
        f'<section class="card" id="sec-hypothesis"><h2>{title}</h2>'
        f'<p class="caption">{_e(intro)}</p>'
        f'<div class="scroll tall"><table class="data"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _methods_html(data: ReportData) -> str:
    items = [
        f"p = softmax(z / T) with T = {data.temperature:g}; natural logs (nats).",
        "dark mass = 1 − p_y, computed as exp(LSE(z≠y/T) − LSE(z/T)) (exact when p_y ≈ 1).",
        "non-target distribution q = softmax(z≠y / T) over the K−1 other classes; its entropy is "
        "normalised by log(K−1).",
        "S[c, j] = mean of q(j) over examples of class c; "
        "SI = mean over classes of KL(S[c] ‖ uniform).",
        f"OEMC share = share of examples with dark mass ≥ δ "
        f"(δ = {data.oemc_delta if data.oemc_delta is not None else 0.05:g}).",
        f"Calibration: {data.n_bins or 15} equal-width confidence bins, T = 1.",
    ]
    if data.recommendation is not None and getattr(data.recommendation, "score_definition", None):
        items.append(f"Score: {data.recommendation.score_definition}.")
    return (
        '<section class="card"><h2>Definitions</h2><ul>'
        + "".join(f"<li>{_e(i)}</li>" for i in items)
        + "</ul></section>"
    )


_CSS = """
:root { --fg:#1d2330; --muted:#5b6577; --line:#e2e6ee; --accent:#e4572e; }
* { box-sizing: border-box; }
body { margin:0; background:#f5f6f9; color:var(--fg);
  font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; }
main { max-width:1240px; margin:0 auto; padding:20px 24px 48px; }
header h1 { margin:0 0 2px; font-size:26px; }
.sub { color:var(--muted); margin:0 0 12px; }
.facts { border-collapse:collapse; font-size:13px; }
.facts th { text-align:left; color:var(--muted); font-weight:600; padding:1px 14px 1px 0; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px 18px;
  margin:14px 0; overflow-x:auto; }
.card h2 { margin:0 0 4px; font-size:18px; }
.caption { color:var(--muted); margin:0 0 10px; font-size:13.5px; max-width:980px; }
.row { display:flex; flex-wrap:wrap; gap:14px; align-items:flex-start; }
.row > .card { flex:1 1 460px; margin:0; min-width:0; }
.row { margin:14px 0; }
.rec { border-left:5px solid var(--accent); }
.pick { font-size:17px; margin:4px 0; }
.notes { color:var(--muted); font-size:13px; }
.unavailable { color:#8a5a00; background:#fff7e0; padding:8px 10px; border-radius:6px; }
table.data { border-collapse:collapse; font-size:13px; width:100%; }
table.data th, table.data td { border-bottom:1px solid var(--line); padding:3px 8px;
  text-align:left;
  white-space:nowrap; }
table.data th { position:sticky; top:0; background:#fff; }
.scroll { overflow:auto; }
.scroll.tall { max-height:420px; }
.v-kd { color:#1b7f3b; font-weight:600; } .v-weak { color:#8a5a00; }
.v-reg { color:#b3261e; font-weight:600; }
.chart-error { color:#b3261e; }
"""

_EMBED_JS = """
(function () {
  var specs = JSON.parse(document.getElementById("kdlens-specs").textContent);
  var status = { rendered: [], failed: [] };
  window.kdlensStatus = status;
  var opts = { renderer: "svg",
    actions: { export: true, source: false, compiled: false, editor: false } };
  var jobs = Object.keys(specs).map(function (id) {
    return vegaEmbed("#" + id, specs[id], opts).then(
      function () { status.rendered.push(id); },
      function (err) {
        status.failed.push(id);
        var el = document.getElementById(id);
        el.className += " chart-error";
        el.textContent = "This chart failed to render: " + err;
        console.error("kdlens chart " + id + ": " + err);
      });
  });
  Promise.all(jobs).then(function () {
    document.body.setAttribute("data-kdlens-rendered", String(status.rendered.length));
    document.body.setAttribute("data-kdlens-failed", String(status.failed.length));
    document.body.setAttribute("data-kdlens-done", "1");
    document.dispatchEvent(new Event("kdlens-rendered"));
  });
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
<script>{bundle}</script>
</head>
<body>
<main>
{body}
</main>
<script type="application/json" id="kdlens-specs">{specs}</script>
<script>{embed}</script>
</body>
</html>
"""


# --------------------------------------------------------------------------- output


def export_charts(
    sections: Sequence[Section],
    out_dir: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("png", "svg"),
    scale: float = 2.0,
) -> list[Path]:
    """Write each available chart as ``<key>.png`` / ``<key>.svg`` (vl-convert-python).

    Selectors are static in these files: the default checkpoint is shown.
    """
    try:
        import vl_convert as vlc
    except ImportError:
        raise InputError(
            "static export needs vl-convert-python (pip install vl-convert-python)"
        ) from None
    bad = [f for f in formats if f not in ("png", "svg")]
    if bad:
        raise InputError(f"formats must be png and/or svg, got {bad}")
    out = Path(out_dir)
    written: list[Path] = []
    version = _vl_version()
    for s in sections:
        if s.chart is None:
            continue
        spec = _spec(s.chart)
        for fmt in formats:
            path = out / f"{s.key}.{fmt}"
            if fmt == "png":
                data = vlc.vegalite_to_png(spec, vl_version=version, scale=scale)
            else:
                data = vlc.vegalite_to_svg(spec, vl_version=version).encode()
            write_bytes_atomic(path, data)
            written.append(path)
    return written


def build_report(
    source: Any,
    out: str | os.PathLike[str],
    *,
    temperature: float = 1.0,
    store: Any = None,
    recommendation: Any = None,
    students: Any = None,
    checkpoint: str | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    png_dir: str | os.PathLike[str] | None = None,
    title: str | None = None,
    progress: Progress = _quiet,
) -> Path:
    """Write the self-contained HTML report of a store or an analysis; return its path.

    Parameters are those of :func:`collect_report_data`, plus ``out`` (the HTML
    file, written atomically) and ``png_dir`` (also write every chart there as PNG
    and SVG). Analyse/recommend commands that already hold their results pass the
    ``AnalysisResult`` as ``source`` and the ``Recommendation`` as ``recommendation``.
    """
    out_path = Path(out)
    if out_path.is_dir():
        raise InputError(f"{out_path}: is a directory; give the path of the HTML file to write")
    data = collect_report_data(
        source,
        temperature=temperature,
        store=store,
        recommendation=recommendation,
        students=students,
        checkpoint=checkpoint,
        n_bootstrap=n_bootstrap,
        title=title,
        progress=progress,
    )
    progress("building charts")
    sections = report_charts(data)
    page = render_report(data, sections)
    write_bytes_atomic(out_path, page.encode("utf-8"))
    if png_dir is not None:
        progress(f"exporting charts to {png_dir}")
        export_charts(sections, png_dir)
    return out_path
