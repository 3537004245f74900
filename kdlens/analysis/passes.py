"""The one pass engine: every part of a store is read once per command, whoever needs it.

A command describes what it needs from each part (run x checkpoint x split) as a
:class:`PartPlan`: the temperatures at which it wants the soft-label measures (and
whether it wants the class-similarity sums there), whether it wants the temperature-fit
sample, and any extra accumulators of its own (a bootstrap, reference probabilities,
histograms) by name. Plans of several commands for the same part merge
(:func:`merge_plans`), so ``kdlens report`` feeds analyze's, recommend's and its own
accumulators from one read of each part.

Per batch, each requested temperature gets one log-softmax pass
(:func:`kdlens.measures.softlabels._per_example_core`) whose per-example columns feed the
:class:`~kdlens.measures.summary.SoftLabelAccumulator`, the extras that asked for that
temperature, and last the :class:`~kdlens.measures.similarity.SimilarityAccumulator`
(which reuses the pass's buffers in place). The parts are split into tasks of row
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
from kdlens.analysis.stream import SLOTS, stream_tasks
from kdlens.analysis.tasks import CheckOptions, Task, add_stats, check_batches, plan_tasks, refuse
from kdlens.measures.calibration import TemperatureFitAccumulator
from kdlens.measures.core import _cores_for, _shared_targets
from kdlens.measures.softlabels import _Core, _per_example_core, _Target
from kdlens.measures.summary import SoftLabelAccumulator
from kdlens.store.format import Batch, Part
from kdlens.store.reader import LogitsStore, part_batches, prefetch

if TYPE_CHECKING:
    from kdlens.measures.similarity.classsums import ClassIndex
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
#: Logits per slice of a batch in the per-example kernel (2 MiB per float64 temporary).
_SLICE_ELEMENTS = 1 << 18
#: Batches whose slices have fewer rows than this are sorted by label (:func:`_label_order`).
_SORT_BELOW_ROWS = 1024


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


class _MeasureSet:
    """The soft-label (and optionally similarity) accumulators at one temperature."""

    def __init__(
        self,
        k: int,
        t: float,
        sim: bool,
        delta: float,
        n_bins: int,
        entries: bool,
        levels: dict[float, PartLevels] | None = None,
    ) -> None:
        from kdlens.measures.similarity import similarity_accumulator

        self.soft = SoftLabelAccumulator(k, temperature=t, oemc_delta=delta, n_bins=n_bins)
        self.sim = similarity_accumulator(k, temperature=t, entries=entries) if sim else None
        hist = getattr(self.sim, "entry_hist", None)
        if levels is not None and hist is not None and hist.levels > 1:
            from kdlens.measures.similarity.spread import PartLevels

            # dict.setdefault is atomic: the part's slot threads share one count.
            hist.shared = levels.setdefault(t, PartLevels(k, hist.levels))

    def merge(self, other: _MeasureSet) -> None:
        self.soft.merge(other.soft)
        if self.sim is not None and other.sim is not None:
            self.sim.merge(other.sim)


class _PartAccumulators:
    """Everything one worker accumulates over the batches of a part."""

    def __init__(
        self,
        plan: PartPlan,
        k: int,
        delta: float,
        n_bins: int,
        levels: dict[float, PartLevels] | None = None,
    ) -> None:
        """``levels``: per temperature, the entry-histogram counts that every accumulator
        of this part in this process shares (:class:`.spread.PartLevels`)."""
        self.delta = delta
        self.sets = {
            t: _MeasureSet(k, t, sim, delta, n_bins, t in plan.null_at, levels)
            for t, sim in plan.temperatures.items()
        }
        self.tfit = TemperatureFitAccumulator(k) if plan.fit else None
        self.extras = {name: make() for name, make in plan.extras.items()}
        self.k = k
        #: Whether any temperature sums similarity (then each slice's labels are indexed
        #: once, for all of them).
        self.similarity = any(ms.sim is not None for ms in self.sets.values())

    def update(self, b: Batch) -> dict[float, dict[str, np.ndarray]]:
        """Add one batch; returns its per-example columns per temperature."""
        z, y = b.logits, b.labels.astype(np.int64)
        out = self._columns(z, y)
        for i, (t, ms) in enumerate(self.sets.items()):
            ms.soft.update_arrays(out[t], y)
            for ex in self.extras.values():
                if ex.temperature == t or (ex.temperature is None and i == 0):
                    ex.update(b, out[t])
        if not self.sets:
            for ex in self.extras.values():
                ex.update(b, {})
        if self.tfit is not None:
            self.tfit.update(z, y, b.example_ids)
        return out

    def _columns(self, z: np.ndarray, y: np.ndarray) -> dict[float, dict[str, np.ndarray]]:
        """The per-example columns of a batch at every temperature, and its similarity sums.

        The (n, K) float64 work runs on slices of about :data:`_SLICE_ELEMENTS` logits:
        its half-dozen temporaries then stay in the processor's cache and are reused by
        the allocator, where whole-batch temporaries (tens of MB each) are fresh pages
        for every operation. The columns are joined per batch, so the accumulators above
        see the batch as one.
        """
        if not self.sets:
            return {}
        step = max(1, _SLICE_ELEMENTS // max(z.shape[1], 1))
        order = _label_order(y, step)
        if order is not None:
            z, y = z[order], y[order]
        parts: dict[float, list[dict[str, np.ndarray]]] = {t: [] for t in self.sets}
        for lo in range(0, z.shape[0], step):
            zs, ys = z[lo : lo + step], y[lo : lo + step]
            # The same at every T > 0: once per slice, while the slice is in cache (over
            # the whole batch it was the pass's first read of the batch from memory).
            ps = np.argmax(zs, axis=1)
            # T = 1 beside an integer T (analysis and ranking in one report) shares one
            # exponential pass; formed before the similarity sums consume ``core.e`` in place.
            shared = _cores_for(zs, list(self.sets))
            # Their targets share a row maximum and a row sum (bit-identical or last-bit).
            targets = _shared_targets(shared, ys)
            index = _class_index(ys, self.k) if self.similarity else None
            for t, ms in self.sets.items():
                cols, core, tg, _ = _per_example_core(
                    zs, ys, t, self.delta, shared.pop(t, None), ps, targets.pop(t, None)
                )
                parts[t].append(cols)
                if ms.sim is not None:
                    _add_similarity(ms.sim, zs, ys, core, tg, index)
                del core, tg
        if z.shape[0] <= step:
            out = {t: p[0] for t, p in parts.items()}
        else:
            out = {
                t: {c: np.concatenate([p[c] for p in ps]) for c in ps[0]} for t, ps in parts.items()
            }
        if order is None:
            return out
        back = np.empty_like(order)
        back[order] = np.arange(order.size)
        return {t: {c: v[back] for c, v in cols.items()} for t, cols in out.items()}

    def merge(self, other: _PartAccumulators) -> _PartAccumulators:
        for t, ms in self.sets.items():
            ms.merge(other.sets[t])
        if self.tfit is not None and other.tfit is not None:
            self.tfit.merge(other.tfit)
        for name, ex in self.extras.items():
            ex.merge(other.extras[name])
        return self


def _label_order(y: np.ndarray, step: int) -> np.ndarray | None:
    """The batch's rows sorted by label, where slices are short enough (large K) that a
    slice holds most classes once: the similarity's class sums are then one sequential
    run per class instead of a scatter into K x K rows (more than half of a K = 1,000
    slice's time). None where the sort does not pay, or a label is missing."""
    if step > _SORT_BELOW_ROWS or y.size < 2 or int(y.min()) < 0:
        return None
    return np.argsort(y, kind="stable")


def _add_similarity(
    acc: Any,
    z: np.ndarray,
    y: np.ndarray,
    core: _Core,
    tg: _Target,
    index: ClassIndex | None = None,
) -> None:
    """Add one batch to the similarity accumulator from the soft-label pass's
    intermediates, so the log-softmax is computed once per batch, not twice. ``index``:
    the labels' :class:`ClassIndex`, shared by the accumulators of every temperature."""
    if acc.temperature != core.temperature:
        acc.update(z, y)
        return
    # The soft-label columns are computed already: core.e and core.x are reused in place.
    q = tg.nontarget_probs(core, y, inplace=True)
    acc.update_nontarget(q, tg.nt_entropy, y, index)


def _class_index(y: np.ndarray, k: int) -> ClassIndex:
    # Imported here: the similarity modules (scipy.sparse) load only for passes that use them.
    from kdlens.measures.similarity.classsums import ClassIndex

    return ClassIndex(y, k)


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
