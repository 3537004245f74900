"""What the report shows, gathered in one place: the analysis and recommendation tables,
and (when a store is at hand) a reliability table and entropy histograms of a few
checkpoints. :class:`ReportData` is what the sections and the page are built from.

A store is read once (:mod:`kdlens.report.gather`): one pass feeds the analysis (when
the source is a store), the ranking and the report's own histograms.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from kdlens._internal.defaults import HELDOUT_SPLITS, N_BINS, N_BOOTSTRAP, TRANSFER_SPLIT
from kdlens.analysis.executors import engine_spec, using
from kdlens.errors import InputError, KdlensError
from kdlens.report.details import (
    ENTROPY_BINS,
    calibration_rows,
    detail_teachers,
    entropy_frames,
)
from kdlens.report.sources import (
    ANALYSIS_TABLES,
    OPTIONAL_TABLES,
    analysis_dir,
    choose_focus,
    classes_info,
    first_value,
    frame_or_none,
    label_of,
    read_analysis_dir,
    read_meta,
    read_students,
)
from kdlens.store.reader import LogitsStore, open_store

__all__ = ["ANALYSIS_TABLES", "ReportData", "collect_report_data"]

#: Checkpoints x K^2 cells above which the similarity selector offers fewer checkpoints.
_MAX_SIMILARITY_CELLS = 60_000
_ENTROPY_BINS = ENTROPY_BINS
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
    #: The ensemble teacher (``ensemble=True`` with a store), else None.
    ensemble: Any = None
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
    ensemble: bool = False,
    engine: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
) -> ReportData:
    """Gather the report's tables from a store, an analysis directory or an analysis result.

    Parameters
    ----------
    source
        A logits store (path, directory, glob or :class:`~kdlens.store.reader.LogitsStore`:
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
    ensemble
        Also select an ensemble teacher (:func:`kdlens.recommend.ensemble.select_ensemble`,
        defaults) on the same pass; needs a store.
    engine, workers, scheduler
        Where the pass runs (:func:`~kdlens.analysis.executors.engine_spec`); the report
        is the same whichever runs it.

    Every part of the store is read once, whatever the source (:mod:`kdlens.report.gather`).
    """
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise InputError(f"temperature must be a positive number, got {temperature!r}")
    spec = engine_spec(engine, workers, scheduler)
    if not isinstance(source, (str, os.PathLike, LogitsStore)) and store is not None:
        label = f"analysis of {store}"
    else:
        label = label_of(source)
    st: LogitsStore | None = None
    tables: dict[str, Any] | None = None
    meta: dict[str, Any] = {}
    adir = analysis_dir(source)
    if adir is not None:
        progress(f"reading analysis {adir}")
        tables, meta = read_analysis_dir(adir), read_meta(adir)
        if store is None and meta.get("store") and Path(str(meta["store"])).exists():
            store = Path(str(meta["store"]))
    elif hasattr(source, "summary"):
        tables = {name: getattr(source, name, None) for name in ANALYSIS_TABLES + OPTIONAL_TABLES}
    else:
        st = open_store(source)
    if store is not None and st is None:
        st = open_store(store)
    if tables is not None:
        t = _check_summary(tables, label, t)
    pass_notes: list[str] = []
    gathered = None
    if st is not None:
        with using(spec):
            gathered = _one_pass(
                st, tables, t, recommendation is None, n_bootstrap, pass_notes, progress, ensemble
            )
        if tables is None:
            assert gathered.analysis is not None
            tables = {
                n: getattr(gathered.analysis, n, None) for n in ANALYSIS_TABLES + OPTIONAL_TABLES
            }
            t = _check_summary(tables, label, t)
        if recommendation is None:
            recommendation = gathered.recommendation
    elif recommendation is None and tables is not None:
        recommendation = _recommend_summary(tables["summary"], pass_notes, progress)
    if ensemble and st is None:
        pass_notes.append("no ensemble: selecting one needs the logits store (pass `store`)")
    assert tables is not None
    return _assemble(
        tables,
        meta,
        st,
        gathered,
        t,
        label,
        recommendation,
        students,
        checkpoint,
        title,
        pass_notes,
    )


def _check_summary(tables: dict[str, Any], label: str, t: float) -> float:
    """Refuse an unusable summary; return the temperature it was computed at."""
    summary = tables["summary"]
    if not isinstance(summary, pl.DataFrame) or summary.height == 0:
        raise InputError(f"{label}: the analysis summary is empty")
    for c in ("run", "checkpoint", "split"):
        if c not in summary.columns:
            raise InputError(
                f"{label}: summary lacks column {c!r}; expected the output of kdlens analyze"
            )
    if "temperature" in summary.columns and summary["temperature"].null_count() < summary.height:
        return float(summary["temperature"].drop_nulls()[0])
    return t


def _one_pass(
    st: LogitsStore,
    tables: dict[str, Any] | None,
    t: float,
    rank: bool,
    n_bootstrap: int,
    notes: list[str],
    progress: Progress,
    ensemble: bool = False,
) -> Any:
    """One read of the store for whatever the report still lacks."""
    from kdlens.report.gather import gather

    splits = set(tables["summary"]["split"].to_list()) if tables else set(st.splits())
    heldout = next((s for s in HELDOUT_SPLITS if s in splits), None)
    transfer = TRANSFER_SPLIT if TRANSFER_SPLIT in splits else heldout
    what = (
        (["analysing at T=" + f"{t:g}"] if tables is None else [])
        + (["ranking checkpoints"] if rank else [])
        + (["selecting an ensemble"] if ensemble else [])
    )
    what.append("reliability and entropy distributions")
    progress(f"reading {st.source} once: " + ", ".join(what))
    return gather(
        st,
        analyze_at=t if tables is None else None,
        details_at=t,
        heldout=heldout,
        transfer=transfer,
        rank=rank,
        n_bootstrap=max(0, int(n_bootstrap)),
        n_bins=first_value(tables["summary"], "ece_bins", int) if tables else None,
        notes=notes,
        ensemble=ensemble,
    )


def _recommend_summary(summary: pl.DataFrame, notes: list[str], progress: Progress) -> Any:
    """The ranking from an analysis summary alone (no store: no bootstrap)."""
    from kdlens.recommend.rank import recommend

    progress("ranking checkpoints")
    try:
        return recommend(summary, n_bootstrap=0)
    except KdlensError as exc:
        notes.append(f"no recommendation: {exc}")
        return None


def _assemble(
    tables: dict[str, Any],
    meta: dict[str, Any],
    st: LogitsStore | None,
    gathered: Any,
    t: float,
    label: str,
    recommendation: Any,
    students: Any,
    checkpoint: str | None,
    title: str | None,
    pass_notes: list[str],
) -> ReportData:
    summary = tables["summary"]
    notes: list[str] = []
    k, names, known, dataset, model = classes_info(st, tables, meta)
    if not known:
        notes.append(
            "class names are not recorded in the input: classes are shown by index "
            "(record them with --classes NAMES.txt on kdlens import, or class_names= of "
            "kdlens.LogitsWriter)"
        )
    notes.extend(pass_notes)
    data = ReportData(
        summary=summary,
        num_classes=k,
        class_names=names,
        class_names_known=known,
        temperature=t,
        source=label,
        similarity=frame_or_none(tables.get("similarity")),
        edges=frame_or_none(tables.get("edges")),
        classes=frame_or_none(tables.get("classes")),
        recommendation=recommendation,
        students=read_students(students),
        n_bins=first_value(summary, "ece_bins", int),
        oemc_delta=first_value(summary, "oemc_delta", float),
        dataset=dataset,
        model=model,
        notes=notes,
        title=title or "kdlens report" + (f": {dataset}" if dataset else ""),
    )
    data.focus = choose_focus(data, checkpoint)
    data.detail_teachers = detail_teachers(data)
    data.has_store = st is not None
    data.ensemble = getattr(gathered, "ensemble", None)
    cal = frame_or_none(tables.get("calibration"))
    if gathered is not None and gathered.calibration is not None:
        cal = gathered.calibration
    data.reliability = calibration_rows(cal, data.detail_teachers, data.heldout_split)
    if gathered is not None:
        data.entropy_hist = entropy_frames(gathered.hists, data.detail_teachers)
        data.n_bins = data.n_bins or N_BINS  # the bins the pass used
    else:
        data.notes.append(
            "no logits store was given: the per-example entropy distributions"
            + ("" if data.reliability is not None else " and the reliability diagram")
            + " need one: "
            + _STORE_HINT
        )
    return data
