"""Opening files: resolving a source to Parquet files and indexing their parts from footers.

Only footers (schema, metadata, row-group statistics) are read, except for a row
group whose statistics cannot place it in one part: its key columns are read then.
"""

from __future__ import annotations

import glob as _glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from kdlens.errors import StoreError
from kdlens.store.format import METADATA_KEY, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, FileInfo, Part

__all__ = ["resolve_files", "scan_file"]


def resolve_files(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The Parquet files behind a file, directory, glob or list of them."""
    if isinstance(source, (list, tuple)):
        out: list[Path] = []
        for s in source:
            out.extend(resolve_files(s))
        return out
    s = str(source)
    p = Path(s)
    if p.is_dir():
        files = sorted(q for q in p.rglob("*.parquet") if not q.name.startswith("."))
        if not files:
            raise StoreError(f"{s}: directory holds no .parquet files")
        return files
    if p.is_file():
        return [p]
    if any(ch in s for ch in "*?["):
        files = sorted(Path(f) for f in _glob.glob(s, recursive=True) if Path(f).is_file())
        if not files:
            raise StoreError(f"{s}: glob matches no files")
        return files
    raise StoreError(f"{s}: no such file or directory")


def scan_file(path: Path) -> FileInfo:
    """Check one file's schema and metadata and index its parts; :class:`StoreError` if bad."""
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad footer
        raise StoreError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    schema = pf.schema_arrow
    for name in REQUIRED_COLUMNS:
        if name not in schema.names:
            raise StoreError(f"{path}: missing column {name!r}")
    lt = schema.field("logits").type
    if not (pa.types.is_fixed_size_list(lt) and pa.types.is_float32(lt.value_type)):
        raise StoreError(f"{path}: column 'logits' must be fixed_size_list<float32>, got {lt}")
    for name, ok in (
        ("run", pa.types.is_string),
        ("checkpoint", pa.types.is_string),
        ("split", pa.types.is_string),
        ("example_id", pa.types.is_int64),
        ("label", pa.types.is_integer),
    ):
        t = schema.field(name).type
        if not (ok(t) or (pa.types.is_dictionary(t) and ok(t.value_type))):
            raise StoreError(f"{path}: column {name!r} has type {t}, which is not allowed here")
    for name in OPTIONAL_COLUMNS:
        if name in schema.names and not pa.types.is_integer(schema.field(name).type):
            raise StoreError(
                f"{path}: column {name!r} must be an integer, got {schema.field(name).type}"
            )
    k = lt.list_size
    raw = (schema.metadata or {}).get(METADATA_KEY)
    meta: dict[str, Any] = {}
    if raw is not None:
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            raise StoreError(f"{path}: file metadata 'kdlens' is not valid JSON") from None
        mk = meta.get("num_classes")
        if mk is not None and int(mk) != k:
            raise StoreError(f"{path}: metadata says K={mk} but column 'logits' has {k} values")
    info = FileInfo(path, k, meta)
    info.parts = _index_parts(pf, path)
    return info


def _index_parts(pf: pq.ParquetFile, path: Path) -> list[Part]:
    """Map row groups to parts from their min/max statistics; scan only when mixed."""
    names = pf.schema_arrow.names
    cols = {
        n: names.index(n)
        for n in ("run", "checkpoint", "split", "epoch", "step", "batch_size")
        if n in names
    }
    acc: dict[tuple[str, str, str], dict[str, Any]] = {}
    md = pf.metadata
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        if rg.num_rows == 0:
            continue
        key_vals: list[Any] = []
        exact = True
        for n in ("run", "checkpoint", "split"):
            st = rg.column(cols[n]).statistics
            if st is None or not st.has_min_max or st.min != st.max or st.null_count:
                exact = False
                break
            key_vals.append(_decode(st.min))
        extra: dict[str, Any] = {}
        for n in ("epoch", "step", "batch_size"):
            if n in cols:
                st = rg.column(cols[n]).statistics
                extra[n] = (
                    int(st.min) if st is not None and st.has_min_max and st.min == st.max else None
                )
            else:
                extra[n] = None
        if exact:
            _add(acc, tuple(key_vals), g, rg.num_rows, extra, mixed=False)  # type: ignore[arg-type]
            continue
        # Statistics cannot place this row group: read its key columns (small) and split it.
        t = pf.read_row_group(g, columns=[n for n in cols])
        df = pl.from_arrow(t)
        assert isinstance(df, pl.DataFrame)
        for grp in (
            df.group_by(["run", "checkpoint", "split"])
            .agg(
                pl.len().alias("n"),
                *[pl.col(c).first() for c in ("epoch", "step", "batch_size") if c in cols],
            )
            .iter_rows(named=True)
        ):
            ex = {c: grp.get(c) for c in ("epoch", "step", "batch_size")}
            _add(
                acc, (grp["run"], grp["checkpoint"], grp["split"]), g, int(grp["n"]), ex, mixed=True
            )
    return [
        Part(
            k[0],
            k[1],
            k[2],
            v["epoch"],
            v["step"],
            v["batch_size"],
            v["n"],
            path,
            tuple(v["groups"]),
            v["mixed"],
        )
        for k, v in acc.items()
    ]


def _add(
    acc: dict[Any, dict[str, Any]],
    key: tuple[str, str, str],
    g: int,
    n: int,
    extra: dict[str, Any],
    *,
    mixed: bool,
) -> None:
    e = acc.setdefault(key, {"n": 0, "groups": [], "mixed": False, **extra})
    e["n"] += n
    if g not in e["groups"]:
        e["groups"].append(g)
    e["mixed"] = e["mixed"] or mixed


def _decode(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
