"""What the report shows, gathered in one place: the analysis and recommendation tables,
and (when a store is at hand) a reliability table and entropy histograms of a few
checkpoints. :class:`ReportData` is what the sections and the page are built from.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kdlens._internal.defaults import (
    HELDOUT_SPLITS,
    N_BOOTSTRAP,
    N_PERMUTATIONS,
    TRANSFER_SPLIT,
)
from kdlens.errors import InputError, KdlensError
from kdlens.report.charts import (
    teacher_label,
)
from kdlens.store.reader import LogitsStore, open_store

__all__ = ["ANALYSIS_TABLES", "ReportData", "collect_report_data"]

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
