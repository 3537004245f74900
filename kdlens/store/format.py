"""The logits store: Parquet files of raw teacher logits, one row per example.

A *store* is one Parquet file, a directory of them (``kdlens dump`` writes one
file per run x checkpoint) or a glob, on local disk or at a URL (:mod:`.fs`). Each
row is one (run, checkpoint, split, example); ``logits`` is a fixed-size list of K
float32. The format is documented in ``data_schema/README.md``.

Reading is lazy: opening a store reads only Parquet footers; a *part* (one run,
checkpoint and split) is located by row-group statistics and read one bounded
row batch at a time, so reading one checkpoint never touches another.

This module holds the format itself: the columns, the Arrow schema, the file
metadata key, the row-batch size, and the data model the reader hands out
(:class:`Part`, :class:`Batch`). :mod:`.writer` writes it, :mod:`.scan` indexes
files from their footers and :mod:`.reader` reads them lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from kdlens.store.fs import StorePath

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "Batch",
    "FileInfo",
    "Part",
    "arrow_schema",
    "default_batch_rows",
    "read_batch_rows",
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


#: Above this K a read batch holds a quarter of the elements (at least one row): each
#: analysis worker keeps several float64 copies of a batch beside its K x K sums, and at
#: K = 21,841 a 1,024-row group is 22 M values (179 MB per float64 copy).
_LARGE_K = 2048


def read_batch_rows(num_classes: int) -> int:
    """Rows per read batch when the caller does not say (see :data:`_LARGE_K`)."""
    k = max(num_classes, 1)
    return default_batch_rows(k) if k <= _LARGE_K else max(1, (_TARGET_ELEMENTS // 4) // k)


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
    file: StorePath
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
class FileInfo:
    """One Parquet file of a store as its footer describes it, with the parts it holds."""

    path: StorePath
    num_classes: int
    metadata: dict[str, Any]
    parts: list[Part] = field(default_factory=list)
