"""The logits store: one Parquet row per (run, checkpoint, split, example).

- :mod:`kdlens.store.format`: the columns, schema, metadata key and the data model (Part, Batch).
- :mod:`kdlens.store.writer`: the atomic writer (``CheckpointWriter``, ``write_logits``).
- :mod:`kdlens.store.scan`: resolving a source to files and indexing parts from footers.
- :mod:`kdlens.store.reader`: the lazy reader (``open_store``, ``LogitsStore``).
- :mod:`kdlens.store.validate`: ``kdlens validate``.
- :mod:`kdlens.store.importing`: ``kdlens import`` of arrays written elsewhere.
- :mod:`kdlens.store.fs`: stores at URLs (``s3://``, ``gs://``, ``file://``).
"""

from kdlens.store.arrays import read_array_file
from kdlens.store.format import FORMAT_VERSION, Batch, Part, arrow_schema
from kdlens.store.importing import ImportedCheckpoint, import_files
from kdlens.store.reader import LogitsStore, open_store
from kdlens.store.validate import PartReport, ValidationReport, validate
from kdlens.store.writer import CheckpointWriter, write_logits

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
