"""The logits store: Parquet files of raw teacher logits, one row per example.

A *store* is one Parquet file, a directory of them (``kdlens dump`` writes one
file per run x checkpoint) or a glob. Each row is one (run, checkpoint, split,
example); ``logits`` is a fixed-size list of K float32. The format is documented
in ``data_schema/README.md``.

Reading is lazy: opening a store reads only Parquet footers; a *part* (one run,
checkpoint and split) is located by row-group statistics and read one bounded
row batch at a time, so reading one checkpoint never touches another.
"""

from __future__ import annotations

import glob as _glob
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from kdlens._internal.atomic import commit_temp, new_temp
from kdlens._version import __version__
from kdlens.errors import InputError, StoreError

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "CheckpointWriter",
    "LogitsStore",
    "Part",
    "arrow_schema",
    "open_store",
    "write_logits",
]

FORMAT_VERSION = "1.0"
METADATA_KEY = b"kdlens"
#: Rows per row group and per read batch when the caller does not say.
#: Bounded in elements so that K = 1000 does not multiply memory by 10.
_TARGET_ELEMENTS = 1 << 23  # 8M float32 = 32 MiB per batch of logits

REQUIRED_COLUMNS = ("run", "checkpoint", "split", "example_id", "label", "logits")
OPTIONAL_COLUMNS = ("epoch", "step", "batch_size")


def arrow_schema(num_classes: int) -> pa.Schema:
    """The Arrow schema of a store with ``num_classes`` logits per row."""
    return pa.schema(
        [
            pa.field("run", pa.string(), nullable=False),
            pa.field("checkpoint", pa.string(), nullable=False),
            pa.field("epoch", pa.int32()),
            pa.field("step", pa.int64()),
            pa.field("batch_size", pa.int32()),
            pa.field("split", pa.string(), nullable=False),
            pa.field("example_id", pa.int64(), nullable=False),
            pa.field("label", pa.int32()),
            pa.field("logits", pa.list_(pa.float32(), num_classes), nullable=False),
        ]
    )


def default_batch_rows(num_classes: int) -> int:
    return max(1024, _TARGET_ELEMENTS // max(num_classes, 1))


# --------------------------------------------------------------------------- writing


class CheckpointWriter:
    """Write one run x checkpoint (any number of splits) to one Parquet file.

    Rows go to ``<path>.tmp-*`` and the file is renamed into place on
    :meth:`close`, so a crash or Ctrl-C never leaves a half-written store file.
    Use as a context manager; an exception inside the block discards the file.

    >>> with CheckpointWriter("ck.parquet", run="bs64-seed0", checkpoint="ep8",
    ...                       num_classes=10, epoch=8) as w:          # doctest: +SKIP
    ...     w.write(logits, split="test", labels=y, example_ids=ids)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        run: str,
        checkpoint: str,
        num_classes: int,
        epoch: int | None = None,
        step: int | None = None,
        batch_size: int | None = None,
        class_names: Sequence[str] | None = None,
        dataset: str | None = None,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        if not run or not checkpoint:
            raise InputError("run and checkpoint must be non-empty strings")
        if int(num_classes) < 2:
            raise InputError(f"num_classes must be at least 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise InputError(
                f"class_names has {len(class_names)} names but num_classes is {num_classes}"
            )
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise InputError(f"{self.path}: already exists (pass `overwrite=True`)")
        self.num_classes = int(num_classes)
        self.run, self.checkpoint = str(run), str(checkpoint)
        self.epoch, self.step, self.batch_size = epoch, step, batch_size
        meta = {
            "format_version": FORMAT_VERSION,
            "num_classes": self.num_classes,
            "class_names": list(class_names) if class_names is not None else None,
            "dataset": dataset,
            "model": model,
            "producer": "kdlens",
            "producer_version": __version__,
            "config": config or {},
        }
        schema = arrow_schema(self.num_classes).with_metadata(
            {METADATA_KEY: json.dumps(meta, sort_keys=True, default=str).encode()}
        )
        self._tmp = new_temp(self.path)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self._tmp,
            schema,
            compression="snappy",
            use_dictionary=["run", "checkpoint", "split"],
            write_statistics=[
                "run",
                "checkpoint",
                "split",
                "epoch",
                "step",
                "batch_size",
                "example_id",
                "label",
            ],
        )
        self.rows_written = 0

    def write(
        self,
        logits: Any,
        *,
        split: str,
        example_ids: Any = None,
        labels: Any = None,
    ) -> None:
        """Append rows of one split. ``logits`` is (n, K) (numpy or torch)."""
        if self._writer is None:
            raise StoreError(f"{self.path}: writer is closed")
        z = _as_numpy(logits, np.float32)
        if z.ndim != 2 or z.shape[1] != self.num_classes:
            raise InputError(f"logits must have shape (n, {self.num_classes}), got {z.shape}")
        n = z.shape[0]
        if example_ids is None:
            ids = np.arange(self.rows_written, self.rows_written + n, dtype=np.int64)
        else:
            ids = _as_numpy(example_ids, np.int64).reshape(-1)
            if ids.shape[0] != n:
                raise InputError(f"example_ids has {ids.shape[0]} rows but logits has {n}")
        lab: pa.Array
        if labels is None:
            lab = pa.nulls(n, pa.int32())
        else:
            y = _as_numpy(labels, np.int64).reshape(-1)
            if y.shape[0] != n:
                raise InputError(f"labels has {y.shape[0]} rows but logits has {n}")
            bad = (y < 0) | (y >= self.num_classes)
            if bad.any():
                raise InputError(
                    f"labels must lie in [0, {self.num_classes}), found {int(y[bad][0])}"
                )
            lab = pa.array(y.astype(np.int32))
        flat = pa.array(np.ascontiguousarray(z).reshape(-1), pa.float32())
        table = pa.Table.from_arrays(
            [
                _const(self.run, n, pa.string()),
                _const(self.checkpoint, n, pa.string()),
                _const(self.epoch, n, pa.int32()),
                _const(self.step, n, pa.int64()),
                _const(self.batch_size, n, pa.int32()),
                _const(split, n, pa.string()),
                pa.array(ids),
                lab,
                pa.FixedSizeListArray.from_arrays(flat, self.num_classes),
            ],
            schema=self._writer.schema,
        )
        self._writer.write_table(table, row_group_size=default_batch_rows(self.num_classes))
        self.rows_written += n

    def close(self) -> Path:
        """Finish the file and move it into place."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            commit_temp(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_logits(
    path: str | os.PathLike[str],
    logits: Any,
    *,
    split: str,
    run: str,
    checkpoint: str,
    labels: Any = None,
    example_ids: Any = None,
    **kwargs: Any,
) -> Path:
    """Write one split of one checkpoint in one call; see :class:`CheckpointWriter`."""
    z = _as_numpy(logits, np.float32)
    if z.ndim != 2:
        raise InputError(f"logits must be 2-D (n, K), got shape {z.shape}")
    with CheckpointWriter(
        path, run=run, checkpoint=checkpoint, num_classes=z.shape[1], **kwargs
    ) as w:
        w.write(z, split=split, labels=labels, example_ids=example_ids)
    return Path(path)


def _const(value: Any, n: int, type_: pa.DataType) -> pa.Array:
    if value is None:
        return pa.nulls(n, type_)
    return pa.repeat(pa.scalar(value, type_), n)  # type: ignore[attr-defined]


def _as_numpy(x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; torch itself is never imported here
        x = (
            x.detach().to("cpu").float().numpy()
            if dtype == np.float32
            else x.detach().cpu().numpy()
        )
    return np.asarray(x, dtype=dtype)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Part:
    """One (run, checkpoint, split) of a store and where its rows live."""

    run: str
    checkpoint: str
    split: str
    epoch: int | None
    step: int | None
    batch_size: int | None
    num_rows: int
    file: Path
    row_groups: tuple[int, ...]
    #: True when a row group also holds other parts and rows must be filtered.
    mixed: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.run, self.checkpoint)


@dataclass
class Batch:
    """A bounded slice of one part: plain arrays, labels ``-1`` where missing."""

    logits: np.ndarray  # (n, K) float32
    labels: np.ndarray  # (n,) int32, -1 = unlabeled
    example_ids: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return int(self.logits.shape[0])


@dataclass
class _FileInfo:
    path: Path
    num_classes: int
    metadata: dict[str, Any]
    parts: list[Part] = field(default_factory=list)


class LogitsStore:
    """A lazily read set of Parquet logits files. Use :func:`open_store`."""

    def __init__(self, files: list[_FileInfo], source: str) -> None:
        self.source = source
        self._files = files
        ks = {f.num_classes for f in files}
        if len(ks) != 1:
            detail = ", ".join(f"{f.path.name}: K={f.num_classes}" for f in files[:4])
            raise StoreError(f"{source}: files disagree on the number of classes ({detail})")
        self.num_classes: int = ks.pop()
        self.parts: list[Part] = [p for f in files for p in f.parts]

    # -- metadata
    @property
    def files(self) -> list[Path]:
        return [f.path for f in self._files]

    @property
    def metadata(self) -> dict[str, Any]:
        """File metadata of the first file (dataset, model, class names, ...)."""
        return dict(self._files[0].metadata)

    def file_metadata(self, path: Path) -> dict[str, Any]:
        for f in self._files:
            if f.path == path:
                return dict(f.metadata)
        raise KeyError(path)

    @property
    def class_names(self) -> list[str] | None:
        names = self._files[0].metadata.get("class_names")
        return list(names) if names else None

    def checkpoint_metadata(self, run: str, checkpoint: str) -> dict[str, Any]:
        return self.file_metadata(self.find(run, checkpoint)[0].file)

    def checkpoints(self) -> pl.DataFrame:
        """One row per (run, checkpoint, split) with its row count and file."""
        rows = [
            {
                "run": p.run,
                "checkpoint": p.checkpoint,
                "epoch": p.epoch,
                "step": p.step,
                "batch_size": p.batch_size,
                "split": p.split,
                "n": p.num_rows,
                "file": str(p.file),
            }
            for p in self.parts
        ]
        schema = {
            "run": pl.Utf8,
            "checkpoint": pl.Utf8,
            "epoch": pl.Int32,
            "step": pl.Int64,
            "batch_size": pl.Int32,
            "split": pl.Utf8,
            "n": pl.Int64,
            "file": pl.Utf8,
        }
        return pl.DataFrame(rows, schema=schema)

    def keys(self) -> list[tuple[str, str]]:
        """The distinct (run, checkpoint) pairs, ordered by run, epoch, step, name."""
        seen: dict[tuple[str, str], Part] = {}
        for p in self.parts:
            seen.setdefault(p.key, p)
        return sorted(seen, key=lambda k: (k[0], _num(seen[k].epoch), _num(seen[k].step), k[1]))

    def splits(self) -> list[str]:
        return sorted({p.split for p in self.parts})

    def find(self, run: str, checkpoint: str, split: str | None = None) -> list[Part]:
        found = [
            p
            for p in self.parts
            if p.run == run and p.checkpoint == checkpoint and (split is None or p.split == split)
        ]
        if not found:
            what = f"run={run!r} checkpoint={checkpoint!r}" + (f" split={split!r}" if split else "")
            raise StoreError(f"{self.source}: no rows for {what}")
        return found

    # -- data
    def iter_batches(
        self,
        run: str,
        checkpoint: str,
        split: str,
        *,
        batch_rows: int | None = None,
    ) -> Iterator[Batch]:
        """Yield the rows of one part in batches of at most ``batch_rows`` rows."""
        rows = batch_rows or default_batch_rows(self.num_classes)
        k = self.num_classes
        for part in self.find(run, checkpoint, split):
            pf = pq.ParquetFile(part.file)
            cols = ["example_id", "label", "logits"] + (
                ["run", "checkpoint", "split"] if part.mixed else []
            )
            md = pf.metadata
            for g in part.row_groups:
                # Whole row groups decode fastest (columns in parallel); kdlens writes them
                # bounded, so only a foreign file's oversized group falls back to streaming.
                if md.row_group(g).num_rows <= 2 * rows:
                    chunks = pf.read_row_group(g, columns=cols).to_batches(max_chunksize=rows)
                else:
                    chunks = pf.iter_batches(batch_size=rows, row_groups=[g], columns=cols)
                for rb in chunks:
                    if part.mixed:
                        rb = _filter_part(rb, part)
                    if rb.num_rows:
                        yield _to_batch(rb, k, part.file)

    def prefetch_batches(
        self,
        run: str,
        checkpoint: str,
        split: str,
        *,
        batch_rows: int | None = None,
    ) -> Iterator[Batch]:
        """:meth:`iter_batches`, reading the next batch in a background thread.

        Parquet decoding and numpy both release the GIL, so reading overlaps the
        caller's computation; at most two batches are in memory at once.
        """
        return _prefetch(self.iter_batches(run, checkpoint, split, batch_rows=batch_rows))

    def load(self, run: str, checkpoint: str, split: str) -> Batch:
        """All rows of one part as arrays (use :meth:`iter_batches` for large parts)."""
        batches = list(self.iter_batches(run, checkpoint, split))
        if not batches:
            k = self.num_classes
            return Batch(np.empty((0, k), np.float32), np.empty(0, np.int32), np.empty(0, np.int64))
        return Batch(
            np.concatenate([b.logits for b in batches]),
            np.concatenate([b.labels for b in batches]),
            np.concatenate([b.example_ids for b in batches]),
        )

    def __repr__(self) -> str:
        return (
            f"LogitsStore({self.source!r}, K={self.num_classes}, "
            f"checkpoints={len(self.keys())}, parts={len(self.parts)})"
        )


def _prefetch(it: Iterator[Batch]) -> Iterator[Batch]:
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    thread = threading.Thread(target=work, name="kdlens-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the consumer stopped early: let the reader thread end


def _num(x: int | None) -> float:
    return float("inf") if x is None else float(x)


def _to_batch(rb: pa.RecordBatch, k: int, path: Path) -> Batch:
    col = rb.column("logits")
    if col.null_count:
        raise StoreError(f"{path}: column 'logits' has {col.null_count} null rows")
    # flatten() honours slice offsets; the reshape is then a zero-copy view.
    values = col.flatten().to_numpy(zero_copy_only=False)
    logits = values.reshape(-1, k)
    labels = (
        rb.column("label").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    )
    ids = rb.column("example_id").to_numpy(zero_copy_only=False)
    return Batch(logits, labels, ids)


def _filter_part(rb: pa.RecordBatch, part: Part) -> pa.RecordBatch:
    import pyarrow.compute as pc

    mask = pc.and_(
        pc.and_(
            pc.equal(rb.column("run"), part.run), pc.equal(rb.column("checkpoint"), part.checkpoint)
        ),
        pc.equal(rb.column("split"), part.split),
    )
    return rb.filter(mask)


# --------------------------------------------------------------------------- opening


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


def open_store(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> LogitsStore:
    """Open a store: a Parquet file, a directory of them, a glob, or a list.

    Only footers are read. Raises :class:`StoreError` naming the file and the
    problem when a file is not Parquet, is truncated, lacks a column or has a
    wrong type.
    """
    if isinstance(source, LogitsStore):
        return source
    files = [_scan_file(p) for p in resolve_files(source)]
    label = str(source) if not isinstance(source, (list, tuple)) else ", ".join(map(str, source))
    store = LogitsStore(files, label)
    if not store.parts:
        raise StoreError(f"{label}: the store holds no rows")
    return store


def _scan_file(path: Path) -> _FileInfo:
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
    info = _FileInfo(path, k, meta)
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
