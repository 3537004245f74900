"""The optional per-example Parquet file of ``analyze(per_example_path=...)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdlens._internal.atomic import commit_temp, new_temp
from kdlens.store.format import Part

__all__ = ["ExamplesWriter"]


class ExamplesWriter:
    """Streams per-example rows to ``path`` through a tmp file renamed on close."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tmp = new_temp(self.path)
        self._w: pq.ParquetWriter | None = None

    def write(
        self,
        part: Part,
        ids: np.ndarray,
        y: np.ndarray,
        temperature: float,
        cols: dict[str, np.ndarray],
    ) -> None:
        n = ids.shape[0]
        arrays: dict[str, Any] = {
            "run": pa.repeat(pa.scalar(part.run), n),  # type: ignore[attr-defined]
            "checkpoint": pa.repeat(pa.scalar(part.checkpoint), n),  # type: ignore[attr-defined]
            "split": pa.repeat(pa.scalar(part.split), n),  # type: ignore[attr-defined]
            "example_id": pa.array(ids, pa.int64()),
            "label": pa.array(y.astype(np.int32), pa.int32()),
            "temperature": pa.repeat(pa.scalar(temperature), n),  # type: ignore[attr-defined]
        }
        for name, v in cols.items():
            arrays[name] = pa.array(v.astype(np.int32) if v.dtype.kind in "iu" else v)
        table = pa.table(arrays)
        if self._w is None:
            self._w = pq.ParquetWriter(self.tmp, table.schema, compression="snappy")
        self._w.write_table(table)

    def close(self) -> Path:
        if self._w is None:  # nothing written: still leave a valid (empty) file
            pq.write_table(pa.table({"example_id": pa.array([], pa.int64())}), self.tmp)
        else:
            self._w.close()
        commit_temp(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._w is not None:
            self._w.close()
        self.tmp.unlink(missing_ok=True)
