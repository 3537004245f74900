"""The pass's task plan: every planned part split into tasks of whole row groups.

A task is one file's part (run x checkpoint x split) and a range of its row groups,
holding at most about :data:`~kdlens._internal.defaults.TASK_ELEMENTS` logits. Each
task returns the accumulator partials of its rows; the partials of a part merge in the
plan's order (a left fold), and within a task the batches are dealt to the same fixed
number of accumulator slots whoever runs it. So a result depends on the store and the
plan only, never on the engine, the number of workers or their timing: the local
engine, a process pool and a Dask cluster give bit-identical tables.

The plan uses the row counts of the footers only: planning reads no data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from kdlens._internal.defaults import TASK_ELEMENTS
from kdlens.errors import InputError
from kdlens.measures.registry import label_needers
from kdlens.store.format import Batch, Part

__all__ = ["CheckOptions", "Task", "check_batches", "plan_tasks", "refuse"]


@dataclass(frozen=True)
class Task:
    """Row groups ``row_groups`` of ``part`` (one file), for the plan entry ``index``."""

    index: int
    part: Part
    row_groups: tuple[int, ...]


def plan_tasks(
    parts: Sequence[Sequence[Part]], num_classes: int, max_elements: int | None = None
) -> list[Task]:
    """The tasks of every plan entry, in order: entry ``i`` reads ``parts[i]`` (the files
    holding one run x checkpoint x split), each split into ranges of consecutive row
    groups of at most ``max_elements`` logits (default :data:`TASK_ELEMENTS`; one row
    group at least)."""
    if max_elements is None:
        max_elements = TASK_ELEMENTS
    if max_elements < 1:
        raise ValueError(f"max_elements must be >= 1, got {max_elements}")
    tasks: list[Task] = []
    for index, files in enumerate(parts):
        for part in files:
            groups = part.row_groups
            if not groups:
                continue
            # The footer gives the part's rows; its row groups are of nearly equal size
            # (kdlens writes them bounded), so the mean bounds a range well enough.
            per_group = math.ceil(part.num_rows / len(groups)) * max(num_classes, 1)
            step = max(1, max_elements // max(per_group, 1))
            # An even number of row groups (one batch each, as kdlens writes them) splits
            # evenly between a task's two accumulator slots.
            step -= step % 2 if step > 1 else 0
            for i in range(0, len(groups), step):
                tasks.append(Task(index, part, tuple(groups[i : i + step])))
    return tasks


@dataclass(frozen=True)
class CheckOptions:
    """How rows with NaN/Inf logits or without a label are treated."""

    drop_nonfinite: bool = False
    use_predicted_labels: bool = False
    #: Drop unlabelled rows silently (counted in ``stats["unlabeled"]``); recommend's rule.
    skip_unlabeled: bool = False


def _where(part: Part) -> str:
    return f"run {part.run!r} checkpoint {part.checkpoint!r} split {part.split!r}"


def check_batches(
    batches: Iterator[Batch],
    check: CheckOptions,
    advance: Callable[[int], None],
    stats: dict[str, int],
) -> Iterator[Batch]:
    """Yield validated batches; after a refusal, count through the rest (no more yielded).

    ``stats`` gets the rows, NaN/Inf rows and unlabelled rows seen, and ``first_bad``
    (the example id of the first NaN/Inf row); :func:`refuse` turns them into the error.
    """
    bad_rows = unlabeled = rows = 0
    failing = False
    for b in batches:
        advance(len(b))
        rows += len(b)
        finite = _finite_rows(b.logits)
        nbad = int(finite.size - np.count_nonzero(finite))
        if nbad:
            if "first_bad" not in stats:
                stats["first_bad"] = int(b.example_ids[np.argmin(finite)])
            bad_rows += nbad
            if check.drop_nonfinite:
                b = Batch(b.logits[finite], b.labels[finite], b.example_ids[finite])
            else:
                failing = True
        missing = b.labels < 0
        nmiss = int(np.count_nonzero(missing))
        if nmiss:
            unlabeled += nmiss
            if check.skip_unlabeled:
                keep = ~missing
                b = Batch(b.logits[keep], b.labels[keep], b.example_ids[keep])
            elif check.use_predicted_labels:
                labels = b.labels.copy()
                labels[missing] = np.argmax(b.logits[missing], axis=1)
                b = Batch(b.logits, labels, b.example_ids)
            else:
                failing = True
        if failing or len(b) == 0:
            continue
        yield b
    stats.update(rows=rows, nonfinite=bad_rows, unlabeled=unlabeled)


def refuse(part: Part, check: CheckOptions, stats: dict[str, int]) -> None:
    """Raise the refusal of a part's NaN/Inf or unlabelled rows, as ``check`` says."""
    bad_rows, unlabeled = stats.get("nonfinite", 0), stats.get("unlabeled", 0)
    if bad_rows and not check.drop_nonfinite:
        raise InputError(
            f"{_where(part)}: {bad_rows} rows hold NaN/Inf logits (first example_id "
            f"{stats.get('first_bad')}); pass `drop_nonfinite=True` to skip them"
        )
    if unlabeled and not (check.use_predicted_labels or check.skip_unlabeled):
        raise InputError(
            f"{_where(part)}: {unlabeled} of {stats.get('rows', 0)} rows have no label; "
            f"{', '.join(label_needers())} need labels (pass `use_predicted_labels=True` "
            "to use the teacher's top-1 prediction instead)"
        )


def add_stats(into: dict[str, int], got: dict[str, int]) -> None:
    for key, v in got.items():
        if key == "first_bad":  # the first in the plan's order
            into.setdefault(key, v)
        else:
            into[key] = into.get(key, 0) + v


def _finite_rows(z: np.ndarray) -> np.ndarray:
    """Which rows hold only finite values, (n,) bool.

    A row sum is NaN or infinite whenever the row holds a NaN or an infinity, and a finite
    row's sum overflows only at extreme magnitudes: summing (one read, no (n, K) mask)
    and checking just the rows whose sum is not finite gives the exact answer.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(z.sum(axis=1))
    if not finite.all():
        odd = np.flatnonzero(~finite)
        finite[odd] = np.isfinite(z[odd]).all(axis=1)
    return finite
