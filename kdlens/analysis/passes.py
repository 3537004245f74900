"""The one pass engine: every part of a store is read once per command, whoever needs it.

A command describes what it needs from each part (run x checkpoint x split) as a
:class:`PartPlan`: the temperatures at which it wants the soft-label measures (and
whether it wants the class-similarity sums there), whether it wants the temperature-fit
sample, and any extra accumulators of its own (a bootstrap, reference probabilities,
histograms) by name. Plans of several commands for the same part merge
(:func:`merge_plans`), so ``kdlens report`` feeds analyze's, recommend's and its own
accumulators from one read of each part.

What each batch feeds is :mod:`kdlens.analysis.kernel`'s (one log-softmax pass per
requested temperature, shared by every measure at it). The parts are split into tasks of row
groups (:mod:`kdlens.analysis.tasks`) that an engine runs (:mod:`kdlens.analysis.executors`:
this process, a process pool, or Dask). In a task, batches come from the store's
prefetch thread and are dealt to two accumulator slots in turn; slots merge in slot
order and the tasks' partials in the plan's order, so results depend neither on timing
nor on the engine. This process streams every task's batches from one reader to a
thread per slot (:mod:`kdlens.analysis.stream`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from kdlens._internal.progress import as_progress
from kdlens._internal.resources import check_memory, reuse_freed_memory
from kdlens.analysis.executors import EngineSpec, current_engine, engine_spec, running
from kdlens.analysis.kernel import _MeasureSet, _PartAccumulators
from kdlens.analysis.stream import SLOTS, stream_tasks
from kdlens.analysis.tasks import CheckOptions, Task, add_stats, check_batches, plan_tasks, refuse
from kdlens.measures.calibration import TemperatureFitAccumulator
from kdlens.store.format import Batch, Part
from kdlens.store.reader import LogitsStore, part_batches, prefetch

if TYPE_CHECKING:
    from kdlens.measures.similarity.spread import PartLevels

__all__ = [
    "CheckOptions",
    "Extra",
    "PartPlan",
    "PartResult",
    "merge_plans",
    "run_pass",
    "run_task",
]

#: Accumulator slots of a task: batch i goes to slot i mod 2, the slots merge in order.
#: This process runs each slot on a thread of its own (numpy and Parquet decoding release
#: the GIL: :mod:`kdlens.analysis.stream`); a worker process of a pool or a cluster runs
#: both slots in one thread. The slots, not the threads, fix the result.
_WORKERS = SLOTS


class Extra(Protocol):
    """An accumulator a command adds to the pass: ``update`` / ``merge``.

    ``temperature`` is the T of the per-example columns it receives (``None``: it is
    given the columns of the first temperature of the part, and uses the batch only).
    """

    @property
    def temperature(self) -> float | None: ...

    def update(self, batch: Batch, cols: dict[str, np.ndarray]) -> None: ...

    def merge(self, other: Any) -> Any: ...


@dataclass
class PartPlan:
    """What the pass accumulates over one part."""

    part: Part
    #: T -> whether the similarity sums are wanted at that T.
    temperatures: dict[float, bool] = field(default_factory=dict)
    fit: bool = False
    #: name -> factory of a fresh :class:`Extra` (one per worker).
    extras: dict[str, Callable[[], Extra]] = field(default_factory=dict)
    #: the temperatures whose similarity feeds a structure test (it needs the entry
    #: histograms; elsewhere they are not kept).
    null_at: set[float] = field(default_factory=set)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.part.run, self.part.checkpoint, self.part.split)


def merge_plans(*groups: Sequence[PartPlan]) -> list[PartPlan]:
    """One plan per part, in first-seen order: the union of every group's needs."""
    out: dict[tuple[str, str, str], PartPlan] = {}
    for group in groups:
        for p in group:
            m = out.setdefault(p.key, PartPlan(p.part))
            for t, sim in p.temperatures.items():
                m.temperatures[t] = m.temperatures.get(t, False) or sim
            m.fit = m.fit or p.fit
            m.null_at |= p.null_at
            for name, make in p.extras.items():
                if name in m.extras:
                    raise ValueError(f"two consumers add an extra named {name!r}")
                m.extras[name] = make
    return list(out.values())


@dataclass
class PartResult:
    """The merged accumulators of one part after the pass."""

    plan: PartPlan
    sets: dict[float, _MeasureSet]
    tfit: TemperatureFitAccumulator | None
    extras: dict[str, Any]
    stats: dict[str, int]

    @property
    def part(self) -> Part:
        return self.plan.part


#: Writes one batch's per-example rows: (part, batch, columns per temperature).
RowSink = Callable[[Part, Batch, dict[float, dict[str, np.ndarray]]], None]


def run_pass(
    st: LogitsStore,
    plans: Sequence[PartPlan],
    *,
    delta: float,
    n_bins: int,
    check: CheckOptions = CheckOptions(),
    batch_rows: int | None = None,
    progress: Any = None,
    description: str = "reading",
    sink: RowSink | None = None,
    engine: EngineSpec | str | None = None,
) -> list[PartResult]:
    """Read every planned part once and return its merged accumulators, in plan order.

    ``engine`` runs the tasks (:func:`~kdlens.analysis.executors.engine_spec`; default:
    this process); the results do not depend on it. ``sink`` receives every batch's
    per-example columns in store order (one slot, in this process, then).
    """
    prog = as_progress(progress)
    # A part may span several files: count the rows of every file it lives in.
    chosen = {p.key for p in plans}
    total = sum(p.num_rows for p in st.parts if (p.run, p.checkpoint, p.split) in chosen)
    task = prog.add_task(description, total=total)
    k = st.num_classes
    spec = current_engine() if engine is None else engine_spec(engine)
    # Each slot holds a K x K similarity accumulator per temperature that wants one.
    sims = max((sum(p.temperatures.values()) for p in plans), default=0)
    check_memory(k, sims * (_WORKERS if sink is None else 1))
    reuse_freed_memory()
    if sink is not None:  # per-example rows must reach the sink in order: one slot, here
        return [
            _sink_part(st, plan, k, delta, n_bins, check, batch_rows, prog, task, sink)
            for plan in plans
        ]
    files = [st.find(p.part.run, p.part.checkpoint, p.part.split) for p in plans]
    tasks = plan_tasks(files, k)
    out: list[PartResult] = []
    with running(spec) as runner:
        env = _TaskEnv(k, delta, n_bins, check, batch_rows)
        if runner.in_process:  # one reader and a thread per slot over every task
            levels: dict[int, dict[float, PartLevels]] = collections.defaultdict(dict)
            partials = stream_tasks(
                tasks,
                lambda t: _PartAccumulators(plans[t.index], k, delta, n_bins, levels[t.index]),
                check,
                k,
                batch_rows,
                lambda n: prog.advance(task, n),
                _WORKERS,
            )
        else:
            partials = runner.map(run_task, ((t, plans[t.index], env) for t in tasks))
        by_plan = collections.Counter(t.index for t in tasks)
        for i, plan in enumerate(plans):
            part = plan.part
            prog.update(task, description=f"{part.run} {part.checkpoint} {part.split}")
            acc: _PartAccumulators | None = None
            stats: dict[str, int] = {}
            for _ in range(by_plan[i]):
                got, got_stats = next(partials)
                if not runner.in_process:
                    prog.advance(task, got_stats["rows"])
                acc = got if acc is None else acc.merge(got)
                add_stats(stats, got_stats)
            refuse(part, check, stats)
            if acc is None:  # a part without row groups
                acc = _PartAccumulators(plan, k, delta, n_bins)
            out.append(PartResult(plan, acc.sets, acc.tfit, acc.extras, stats))
    return out


@dataclass(frozen=True)
class _TaskEnv:
    """What every task of a pass shares (sent to each worker with its task)."""

    k: int
    delta: float
    n_bins: int
    check: CheckOptions
    batch_rows: int | None


def run_task(
    task: Task, plan: PartPlan, env: _TaskEnv, advance: Callable[[int], None] | None = None
) -> tuple[_PartAccumulators, dict[str, int]]:
    """One task of the plan: its rows' accumulator partials and row counts (no refusal
    is raised here; :func:`run_pass` raises it for the whole part)."""
    reuse_freed_memory()  # once per process: a worker's too
    stats: dict[str, int] = {}
    batches = prefetch(
        part_batches(task.part, env.k, row_groups=task.row_groups, batch_rows=env.batch_rows)
    )
    checked = check_batches(batches, env.check, advance or (lambda n: None), stats)
    acc = _run_workers(checked, lambda: _PartAccumulators(plan, env.k, env.delta, env.n_bins))
    return acc, stats


def _sink_part(
    st: LogitsStore,
    plan: PartPlan,
    k: int,
    delta: float,
    n_bins: int,
    check: CheckOptions,
    batch_rows: int | None,
    prog: Any,
    task: Any,
    sink: RowSink,
) -> PartResult:
    part = plan.part
    prog.update(task, description=f"{part.run} {part.checkpoint} {part.split}")
    stats: dict[str, int] = {}
    batches = st.prefetch_batches(part.run, part.checkpoint, part.split, batch_rows=batch_rows)
    acc = _PartAccumulators(plan, k, delta, n_bins)
    for b in check_batches(batches, check, lambda n: prog.advance(task, n), stats):
        sink(part, b, acc.update(b))
    refuse(part, check, stats)
    return PartResult(plan, acc.sets, acc.tfit, acc.extras, stats)


def _run_workers(
    batches: Iterator[Batch], make: Callable[[], _PartAccumulators]
) -> _PartAccumulators:
    """Deal batches to :data:`_WORKERS` slots in turn (batch i to slot i mod n) and merge
    the slots in order: what :func:`~kdlens.analysis.stream.stream_tasks` computes with a
    thread per slot, in one thread."""
    accs = [make() for _ in range(_WORKERS)]
    for i, b in enumerate(batches):
        accs[i % _WORKERS].update(b)
    for other in accs[1:]:
        accs[0].merge(other)
    return accs[0]
