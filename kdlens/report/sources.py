"""Where the report's tables come from: an analysis directory or result, its metadata,
the class names, validation results, and which checkpoint the report focuses on."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from kdlens.errors import InputError
from kdlens.store.reader import LogitsStore

__all__ = [
    "ANALYSIS_TABLES",
    "OPTIONAL_TABLES",
    "analysis_dir",
    "choose_focus",
    "classes_info",
    "first_value",
    "frame_or_none",
    "label_of",
    "read_analysis_dir",
    "read_meta",
    "read_students",
]

#: Tables an analysis directory must hold (written by ``AnalysisResult.write``).
ANALYSIS_TABLES = ("summary", "classes", "similarity", "edges")
#: Tables used when present (older analyses lack them).
OPTIONAL_TABLES = ("calibration",)


def label_of(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, LogitsStore):
        return source.source
    return str(getattr(source, "source", type(source).__name__))


def analysis_dir(source: Any) -> Path | None:
    if not isinstance(source, (str, os.PathLike)):
        return None
    p = Path(source)
    if p.is_dir() and any((p / f"{n}.parquet").is_file() for n in ANALYSIS_TABLES):
        return p
    return None


def read_analysis_dir(path: Path) -> dict[str, pl.DataFrame | None]:
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


def read_meta(path: Path) -> dict[str, Any]:
    for name in ("analysis.json", "metadata.json", "meta.json"):
        f = path / name
        if f.is_file():
            try:
                meta = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            return meta if isinstance(meta, dict) else {}
    return {}


def frame_or_none(x: Any) -> pl.DataFrame | None:
    return x if isinstance(x, pl.DataFrame) and x.height > 0 else None


def first_value(df: pl.DataFrame, col: str, typ: Callable[[Any], Any]) -> Any:
    if col not in df.columns or df[col].null_count() == df.height:
        return None
    return typ(df[col].drop_nulls()[0])


def classes_info(
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
        k = first_value(summary, "num_classes", int) or meta.get("num_classes")
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


def read_students(students: Any) -> pl.DataFrame | None:
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


def rec_key(rec: Any) -> tuple[str, str] | None:
    best = getattr(rec, "recommended", None)
    if isinstance(best, dict) and "run" in best and "checkpoint" in best:
        return str(best["run"]), str(best["checkpoint"])
    return None


def choose_focus(data: Any, checkpoint: str | None) -> tuple[str, str] | None:
    teachers = data.teachers
    if not teachers:
        return None
    if checkpoint:
        hits = [k for k in teachers if f"{k[0]}/{k[1]}" == checkpoint or k[1] == checkpoint]
        if not hits:
            shown = ", ".join(f"{r}/{c}" for r, c in teachers[:5])
            raise InputError(f"checkpoint {checkpoint!r} is not in the input (e.g. {shown})")
        return hits[0]
    rec = rec_key(data.recommendation)
    return rec if rec in teachers else teachers[-1]
