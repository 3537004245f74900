"""Reading the store lazily: :func:`open_store` and :class:`LogitsStore`.

A *part* (one run, checkpoint and split) is located by row-group statistics and
read one bounded row batch at a time, so reading one checkpoint never touches another.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa

from kdlens.errors import StoreError
from kdlens.store.format import Batch, FileInfo, Part, read_batch_rows
from kdlens.store.fs import StorePath, open_parquet
from kdlens.store.scan import resolve_files, scan_source_file

__all__ = ["LogitsStore", "open_store", "part_batches", "prefetch"]


class LogitsStore:
    """A lazily read set of Parquet logits files. Use :func:`open_store`."""

    def __init__(self, files: list[FileInfo], source: str) -> None:
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
    def files(self) -> list[StorePath]:
        return [f.path for f in self._files]

    @property
    def metadata(self) -> dict[str, Any]:
        """File metadata of the first file (dataset, model, class names, ...)."""
        return dict(self._files[0].metadata)

    def file_metadata(self, path: StorePath) -> dict[str, Any]:
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
        check_labels: bool = True,
    ) -> Iterator[Batch]:
        """Yield the rows of one part in batches of at most ``batch_rows`` rows.

        A stored label outside [0, K) is a :class:`StoreError` naming the file, the part
        and the first such example id (every measure indexes by the label);
        ``check_labels=False`` hands them out as they are (``validate`` counts them).
        """
        rows = batch_rows or read_batch_rows(self.num_classes)
        for part in self.find(run, checkpoint, split):
            yield from part_batches(
                part, self.num_classes, batch_rows=rows, check_labels=check_labels
            )

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


def part_batches(
    part: Part,
    k: int,
    *,
    row_groups: Sequence[int] | None = None,
    batch_rows: int | None = None,
    check_labels: bool = True,
) -> Iterator[Batch]:
    """The rows of one file's part (only ``row_groups`` of it when given), in batches.

    A batch never spans two row groups, so reading a part's row groups in ranges yields
    the batches reading it whole does: what lets the task plan of
    :mod:`kdlens.analysis.tasks` split a part without changing any result.
    """
    rows = batch_rows or read_batch_rows(k)
    groups = part.row_groups if row_groups is None else tuple(row_groups)
    try:
        yield from _part_batches(part, k, groups, rows, check_labels)
    except (OSError, pa.ArrowException) as exc:
        # A corrupt page surfaces only when read; pyarrow raises it as an OSError
        # without errno. That is bad input naming the file (exit 2), not the
        # operating system refusing (an OSError with an errno: exit 3).
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise StoreError(f"{part.file}: data unreadable ({reason})") from exc


def _part_batches(
    part: Part, k: int, groups: Sequence[int], rows: int, check_labels: bool
) -> Iterator[Batch]:
    pf = open_parquet(part.file)
    cols = ["example_id", "label", "logits"] + (
        ["run", "checkpoint", "split"] if part.mixed else []
    )
    md = pf.metadata
    for g in groups:
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
                b = _to_batch(rb, k, part.file)
                if check_labels:
                    _check_labels(b, k, part)
                yield b


_T = TypeVar("_T")


def prefetch(it: Iterator[_T]) -> Iterator[_T]:
    """``it``, its next batch read in a background thread (at most two in memory)."""
    return _prefetch(it)


def _prefetch(it: Iterator[_T]) -> Iterator[_T]:
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


def _to_batch(rb: pa.RecordBatch, k: int, path: StorePath) -> Batch:
    col = rb.column("logits")
    if col.null_count:
        raise StoreError(f"{path}: column 'logits' has {col.null_count} null rows")
    # flatten() honours slice offsets; the reshape is then a zero-copy view.
    logits = _numpy(col.flatten()).reshape(-1, k)
    label = rb.column("label")
    if label.null_count:  # (fill_null imports pandas too: only where there are nulls)
        label = label.fill_null(-1)
    labels = _numpy(label).astype(np.int32, copy=False)
    ids = _numpy(rb.column("example_id"))
    return Batch(logits, labels, ids)


def _numpy(arr: pa.Array) -> np.ndarray:
    """A numeric Arrow array without nulls as a numpy view of its buffer.

    ``Array.to_numpy`` imports pandas on first use when it is installed (0.35 s of every
    command's start on the project's machine, on the reader thread, holding the GIL);
    other types and arrays with nulls take that path still.
    """
    t = arr.type
    if arr.null_count or not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return arr.to_numpy(zero_copy_only=False)
    dtype = np.dtype(t.to_pandas_dtype())  # (a numpy type; pandas is not imported)
    return np.frombuffer(
        arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize
    )


def _check_labels(b: Batch, k: int, part: Part) -> None:
    bad = (b.labels >= k) | (b.labels < -1)  # -1 is a missing label
    if bad.any():
        i = int(np.argmax(bad))
        raise StoreError(
            f"{part.file}: run {part.run!r} checkpoint {part.checkpoint!r} split {part.split!r}: "
            f"label {int(b.labels[i])} of example_id {int(b.example_ids[i])} is outside "
            f"[0, {k}) ({int(bad.sum())} such rows in this batch)"
        )


def _filter_part(rb: pa.RecordBatch, part: Part) -> pa.RecordBatch:
    import pyarrow.compute as pc

    mask = pc.and_(
        pc.and_(
            pc.equal(rb.column("run"), part.run), pc.equal(rb.column("checkpoint"), part.checkpoint)
        ),
        pc.equal(rb.column("split"), part.split),
    )
    return rb.filter(mask)


def open_store(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> LogitsStore:
    """Open a store: a Parquet file, a directory of them, a glob, or a list; each a local
    path or a URL (``s3://bucket/store``, ``gs://...``, ``file://...``; see
    :mod:`kdlens.store.fs` for credentials).

    Only footers are read. Raises :class:`StoreError` naming the file and the
    problem when a file is not Parquet, is truncated, lacks a column or has a
    wrong type.
    """
    if isinstance(source, LogitsStore):
        return source
    files = [scan_source_file(p, source) for p in resolve_files(source)]
    label = str(source) if not isinstance(source, (list, tuple)) else ", ".join(map(str, source))
    store = LogitsStore(files, label)
    if not store.parts:
        raise StoreError(f"{label}: the store holds no rows")
    return store
