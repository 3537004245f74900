"""Check a logits store and report every problem found, without stopping at the first.

``validate`` never raises on a bad store: unreadable files, K that differs between
files, NaN/Inf logits, labels outside [0, K), duplicate example ids, ids that differ
between checkpoints of one run, and class-name counts that do not match K are all
collected in a :class:`ValidationReport`. The CLI maps the report to exit codes:
0 valid, 1 problems found, 2 unreadable.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kdlens.errors import KdlensError
from kdlens.store.format import FORMAT_VERSION, FileInfo
from kdlens.store.reader import LogitsStore
from kdlens.store.scan import resolve_files, scan_source_file

__all__ = ["PartReport", "ValidationReport", "validate"]


@dataclass
class PartReport:
    run: str
    checkpoint: str
    split: str
    epoch: int | None
    rows: int
    nan: int = 0
    inf: int = 0
    first_nonfinite_id: int | None = None
    labeled: int = 0
    label_min: int | None = None
    label_max: int | None = None
    labels_out_of_range: int = 0
    duplicate_ids: int = 0


@dataclass
class ValidationReport:
    """Everything ``kdlens validate`` prints; ``problems`` empty means valid."""

    source: str
    files: int = 0
    format_versions: list[str] = field(default_factory=list)
    num_classes: int | None = None
    class_names: list[str] | None = None
    runs: list[str] = field(default_factory=list)
    checkpoints: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    parts: list[PartReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unreadable

    @property
    def exit_code(self) -> int:
        if self.unreadable and self.files == 0:
            return 2
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["exit_code"] = self.exit_code
        return d


def validate(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | LogitsStore,
    *,
    batch_rows: int | None = None,
) -> ValidationReport:
    """Read a whole store once, in bounded batches, and report its problems.

    Parameters
    ----------
    source : path, directory, glob, list of them, or an open store.
    batch_rows : rows per read batch (default: bounded by K).
    """
    report = ValidationReport(source=str(source))
    infos = _scan_all(source, report)
    if not infos:
        if not report.unreadable:
            report.unreadable.append(f"{source}: no files")
        return report
    report.files = len(infos)
    report.format_versions = sorted(
        {str(i.metadata.get("format_version", "missing")) for i in infos}
    )
    for v in report.format_versions:
        if v != FORMAT_VERSION:
            report.problems.append(f"format version {v!r} (this kdlens reads {FORMAT_VERSION!r})")

    ks = Counter(i.num_classes for i in infos)
    k = ks.most_common(1)[0][0]
    report.num_classes = k
    if len(ks) > 1:
        odd = [f"{i.path.name} (K={i.num_classes})" for i in infos if i.num_classes != k]
        report.problems.append(f"inconsistent K: most files have K={k} but {', '.join(odd[:5])}")
    good = [i for i in infos if i.num_classes == k]
    names = {tuple(i.metadata["class_names"]) for i in good if i.metadata.get("class_names")}
    if names:
        first = list(sorted(names)[0])
        report.class_names = first
        if len(names) > 1:
            report.problems.append("class names differ between files")
        for n in names:
            if len(n) != k:
                report.problems.append(f"{len(n)} class names for K={k} classes")
                break

    store = LogitsStore(good, str(source))
    report.runs = sorted({p.run for p in store.parts})
    report.checkpoints = len(store.keys())
    if not store.parts:
        report.problems.append("the store holds no rows")
    id_digest: dict[tuple[str, str], tuple[str, str]] = {}
    for part in store.parts:
        pr = PartReport(part.run, part.checkpoint, part.split, part.epoch, part.num_rows)
        ids_seen: list[np.ndarray] = []
        try:
            _scan_part(store, part, pr, ids_seen, k, batch_rows)
        except Exception as exc:  # corrupt pages surface only when read
            report.unreadable.append(
                f"{part.file}: data unreadable ({str(exc).splitlines()[0][:200]})"
            )
            continue
        ids = np.sort(np.concatenate(ids_seen)) if ids_seen else np.empty(0, np.int64)
        pr.duplicate_ids = int(ids.size - np.unique(ids).size)
        report.parts.append(pr)
        report.splits[part.split] = report.splits.get(part.split, 0) + pr.rows
        where = f"{part.run}/{part.checkpoint}/{part.split}"
        if pr.nan or pr.inf:
            report.problems.append(
                f"{where}: {pr.nan} NaN and {pr.inf} Inf logits "
                f"(first at example_id {pr.first_nonfinite_id})"
            )
        if pr.labels_out_of_range:
            report.problems.append(f"{where}: {pr.labels_out_of_range} labels outside [0, {k})")
        if pr.duplicate_ids:
            report.problems.append(f"{where}: {pr.duplicate_ids} duplicate example ids")
        digest = hashlib.sha1(np.unique(ids).tobytes()).hexdigest()
        ref = id_digest.setdefault((part.run, part.split), (digest, part.checkpoint))
        if ref[0] != digest:
            report.problems.append(
                f"{where}: example ids differ from checkpoint {ref[1]!r} of the same run"
            )
    return report


def _scan_part(
    store: LogitsStore,
    part: Any,
    pr: PartReport,
    ids_seen: list[np.ndarray],
    k: int,
    batch_rows: int | None,
) -> None:
    rows = store.iter_batches(
        part.run, part.checkpoint, part.split, batch_rows=batch_rows, check_labels=False
    )
    for b in rows:
        nan_rows = np.isnan(b.logits).any(axis=1)
        inf_rows = np.isinf(b.logits).any(axis=1)
        pr.nan += int(np.isnan(b.logits).sum())
        pr.inf += int(np.isinf(b.logits).sum())
        bad = nan_rows | inf_rows
        if pr.first_nonfinite_id is None and bad.any():
            pr.first_nonfinite_id = int(b.example_ids[bad][0])
        lab = b.labels[b.labels >= 0]
        if lab.size:
            pr.labeled += int(lab.size)
            lo, hi = int(lab.min()), int(lab.max())
            pr.label_min = lo if pr.label_min is None else min(pr.label_min, lo)
            pr.label_max = hi if pr.label_max is None else max(pr.label_max, hi)
            pr.labels_out_of_range += int((lab >= k).sum())
        # Negative stored labels would read as "missing": count them as out of range.
        pr.labels_out_of_range += int((b.labels < -1).sum())
        ids_seen.append(b.example_ids)


def _scan_all(source: Any, report: ValidationReport) -> list[FileInfo]:
    if isinstance(source, LogitsStore):
        return list(source._files)
    try:
        paths = resolve_files(source)
    except KdlensError as exc:
        report.unreadable.append(str(exc))
        return []
    infos = []
    for p in paths:
        try:
            infos.append(scan_source_file(p, source))
        except KdlensError as exc:
            report.unreadable.append(str(exc))
    return infos
