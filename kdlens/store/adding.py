"""Adding a split to a checkpoint file that holds others (``kdlens import --split val``).

A Parquet file cannot be appended to: the checkpoint is rewritten with its old rows and
the new split, through the same atomic writer, so a failure leaves the old file as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdlens.errors import InputError
from kdlens.store.format import METADATA_KEY
from kdlens.store.fs import StorePath, open_parquet
from kdlens.store.scan import read_metadata

__all__ = ["ExistingCheckpoint", "read_existing"]


@dataclass
class ExistingCheckpoint:
    """The rows and metadata of a checkpoint file a new split is added to."""

    meta: dict[str, Any]
    epoch: int | None
    batch_size: int | None
    #: (split, logits (n, K), example ids, labels or None) per split already stored.
    splits: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]] = field(
        default_factory=list
    )

    def write_into(self, writer: Any) -> None:
        for split, z, ids, labels in self.splits:
            writer.write(z, split=split, example_ids=ids, labels=labels)


def read_existing(path: StorePath, *, split: str, num_classes: int) -> ExistingCheckpoint:
    """Read ``path`` to add ``split`` to it; refuse when the split is there or K differs."""
    table = open_parquet(path).read()
    k = table.schema.field("logits").type.list_size
    meta = read_metadata((table.schema.metadata or {}).get(METADATA_KEY), path, k)
    if k != num_classes:
        raise InputError(f"{path}: holds K={k} classes, the new split has K={num_classes}")
    splits = table.column("split").to_numpy(zero_copy_only=False)
    if split in set(splits.tolist()):
        raise InputError(
            f"{path}: already exists and holds split {split!r} "
            "(pass `overwrite=True` to replace it)"
        )
    z_all = np.asarray(table.column("logits").combine_chunks().flatten()).reshape(-1, k)
    ids_all = table.column("example_id").to_numpy()
    lab_all = table.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
    out = ExistingCheckpoint(
        meta=meta,
        epoch=table.column("epoch")[0].as_py() if table.num_rows else None,
        batch_size=table.column("batch_size")[0].as_py() if table.num_rows else None,
    )
    for name in dict.fromkeys(splits.tolist()):
        rows = np.flatnonzero(splits == name)
        sub = lab_all[rows]
        labels = None if np.isnan(sub).any() else sub.astype(np.int64)
        out.splits.append((name, z_all[rows], ids_all[rows], labels))
    return out
