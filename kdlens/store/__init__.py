"""The logits store: one Parquet row per (run, checkpoint, split, example).

- :mod:`kdlens.store.parquet`: the format, the atomic writer and the lazy reader.
- :mod:`kdlens.store.validate`: ``kdlens validate``.
- :mod:`kdlens.store.importing`: ``kdlens import`` of arrays written elsewhere.
"""

from kdlens.store.importing import ImportedCheckpoint, import_files, read_array_file
from kdlens.store.parquet import (
    FORMAT_VERSION,
    Batch,
    CheckpointWriter,
    LogitsStore,
    Part,
    arrow_schema,
    open_store,
    write_logits,
)
from kdlens.store.validate import PartReport, ValidationReport, validate

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "CheckpointWriter",
    "ImportedCheckpoint",
    "LogitsStore",
    "Part",
    "PartReport",
    "ValidationReport",
    "arrow_schema",
    "import_files",
    "open_store",
    "read_array_file",
    "validate",
    "write_logits",
]
