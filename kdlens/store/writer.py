"""Writing the store: one run x checkpoint per Parquet file, moved into place atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdlens._internal.atomic import commit_temp, new_temp
from kdlens._internal.checks import check_class_names
from kdlens._internal.names import path_component
from kdlens._version import __version__
from kdlens.errors import InputError, StoreError
from kdlens.store.format import FORMAT_VERSION, METADATA_KEY, arrow_schema, default_batch_rows
from kdlens.store.fs import StorePath, store_path

__all__ = ["CheckpointWriter", "write_logits"]


class CheckpointWriter:
    """Write one run x checkpoint (any number of splits) to one Parquet file.

    Rows go to ``<path>.tmp-*`` and the file is renamed into place on
    :meth:`close`, so a crash or Ctrl-C never leaves a half-written store file.
    ``path`` may be a URL (``s3://bucket/store/run/ck.parquet``): the file is written
    locally and uploaded on :meth:`close` (see :mod:`kdlens._internal.atomic`).
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
        # Names become paths downstream (controls, distill, dump): a store kdlens writes
        # holds only names every kdlens command can turn into a file name.
        path_component(run, field="run")
        path_component(checkpoint, field="checkpoint")
        check_class_names(class_names, num_classes)
        self.path: StorePath = store_path(path)
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
        try:
            self._writer: pq.ParquetWriter | None = self._open(schema)
        except BaseException:  # no `with` block yet to discard it: never leave the file
            self._tmp.unlink(missing_ok=True)
            raise
        self.rows_written = 0

    def _open(self, schema: Any) -> pq.ParquetWriter:
        return pq.ParquetWriter(
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

    def close(self) -> StorePath:
        """Finish the file and move it into place."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
                commit_temp(self._tmp, self.path)
            except BaseException:  # an unfinished file is never left behind
                self._tmp.unlink(missing_ok=True)
                raise
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
) -> StorePath:
    """Write one split of one checkpoint in one call; see :class:`CheckpointWriter`."""
    z = _as_numpy(logits, np.float32)
    if z.ndim != 2:
        raise InputError(f"logits must be 2-D (n, K), got shape {z.shape}")
    with CheckpointWriter(
        path, run=run, checkpoint=checkpoint, num_classes=z.shape[1], **kwargs
    ) as w:
        w.write(z, split=split, labels=labels, example_ids=example_ids)
    return w.path


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
