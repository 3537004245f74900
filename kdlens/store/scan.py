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

from kdlens._internal.atomic import local_path, remote_url
from kdlens.errors import StoreError
from kdlens.store.format import METADATA_KEY, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, FileInfo, Part
from kdlens.store.fs import StorePath, Url, open_parquet, resolve_url

__all__ = ["read_metadata", "resolve_files", "scan_file", "scan_source_file"]


def resolve_files(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[StorePath]:
    """The Parquet files behind a file, directory, glob or list of them (paths or URLs)."""
    if isinstance(source, (list, tuple)):
        out: list[StorePath] = []
        for s in source:
            out.extend(resolve_files(s))
        return out
    url = remote_url(source)
    if url is not None:
        return list(resolve_url(Url(url)))
    s = str(source)
    p = local_path(s)
    if p != Path(s):  # a file:// URL: its path is what is globbed and named
        s = str(p)
    if p.is_dir():
        # Dot-files and dot-directories are not part of a store (a stage being built is one).
        files: list[StorePath] = sorted(
            q
            for q in p.rglob("*.parquet")
            if not any(c.startswith(".") for c in q.relative_to(p).parts)
        )
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


def scan_source_file(path: StorePath, source: Any) -> FileInfo:
    """:func:`scan_file` of one of ``source``'s files; when ``source`` is a local directory
    its error also says that every .parquet below it is read as logits (the usual cause: a
    folder that holds other tables too, such as an analysis beside its store)."""
    try:
        return scan_file(path)
    except StoreError as exc:
        if not isinstance(source, (str, os.PathLike)) or not local_path(source).is_dir():
            raise
        raise StoreError(
            f"{exc}; every .parquet file under the directory {source} is read as a logits "
            "file: point at the folder that holds only the store"
        ) from None


def scan_file(path: StorePath) -> FileInfo:
    """Check one file's schema and metadata and index its parts; :class:`StoreError` if bad."""
    try:
        pf = open_parquet(path)
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
    meta = read_metadata((schema.metadata or {}).get(METADATA_KEY), path, k)
    info = FileInfo(path, k, meta)
    info.parts = _index_parts(pf, path)
    return info


#: The fields of ``data_schema/metadata.schema.json``: name -> (accepted types, required).
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "format_version": ((str,), True),
    "num_classes": ((int,), True),
    "class_names": ((list, type(None)), False),
    "dataset": ((str, type(None)), False),
    "model": ((str, type(None)), False),
    "producer": ((str,), True),
    "producer_version": ((str,), True),
    "config": ((dict,), False),
}
_TYPE_WORDS = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def read_metadata(raw: bytes | None, path: StorePath, num_classes: int) -> dict[str, Any]:
    """The file metadata (key ``kdlens``) checked against ``metadata.schema.json``.

    A file without the key (written by another tool) reads as ``{}``. Anything else
    that deviates from the schema is a :class:`StoreError` naming the file and the
    field: not JSON, nested too deep for the parser, not an object, a required field
    missing, a field of the wrong type, ``num_classes`` below 2 or not the length of the
    ``logits`` column, ``class_names`` holding something other than strings. The
    format version's value and the number of class names are left to ``validate``,
    which reports them as problems of a readable store.
    """
    if raw is None:
        return {}
    where = f"{path}: file metadata 'kdlens'"
    try:
        meta = json.loads(raw)
    except RecursionError:
        raise StoreError(f"{where} is nested too deeply to read") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise StoreError(f"{where} is not valid JSON") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{where} is not a JSON object (got {type(meta).__name__})")
    for name, (types, required) in _FIELDS.items():
        if name not in meta:
            if required:
                raise StoreError(f"{where} lacks the required field {name!r}")
            continue
        v = meta[name]
        if isinstance(v, bool) or not isinstance(v, types):  # bool is an int to Python
            want = " or ".join(_TYPE_WORDS.get(t, "null") for t in types)
            raise StoreError(f"{where}: field {name!r} must be {want}, got {_show(v)}")
    if meta["num_classes"] != num_classes:
        raise StoreError(
            f"{where}: field 'num_classes' says K={meta['num_classes']} but column 'logits' "
            f"has {num_classes} values"
        )
    names = meta.get("class_names")
    if names is not None and not all(isinstance(c, str) for c in names):
        raise StoreError(f"{where}: field 'class_names' must hold strings only")
    return meta


def _show(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _index_parts(pf: pq.ParquetFile, path: StorePath) -> list[Part]:
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
