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
(which reuses the pass's buffers in place). Batches come from the store's prefetch
thread and are dealt to two workers in turn; their accumulators merge in worker order,
so results do not depend on timing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kdlens._internal.progress import as_progress
from kdlens._internal.resources import check_memory, reuse_freed_memory
from kdlens.errors import InputError
from kdlens.measures.calibration import TemperatureFitAccumulator
from kdlens.measures.core import _cores_for
from kdlens.measures.registry import label_needers
from kdlens.measures.softlabels import _Core, _per_example_core, _Target
from kdlens.measures.summary import SoftLabelAccumulator
from kdlens.store.format import Batch, Part
from kdlens.store.reader import LogitsStore

__all__ = ["CheckOptions", "Extra", "PartPlan", "PartResult", "merge_plans", "run_pass"]

#: Threads that analyse the batches of one part. numpy and Parquet decoding release
#: the GIL, so two workers (this project's machines have two cores) roughly halve
#: the compute; their accumulators merge exactly.
_WORKERS = 2
#: Logits per slice of a batch in the per-example kernel (2 MiB per float64 temporary).
_SLICE_ELEMENTS = 1 << 18


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
            for name, make in p.extras.items():
                if name in m.extras:
                    raise ValueError(f"two consumers add an extra named {name!r}")
                m.extras[name] = make
    return list(out.values())


@dataclass(frozen=True)
class CheckOptions:
    """How rows with NaN/Inf logits or without a label are treated."""

    drop_nonfinite: bool = False
    use_predicted_labels: bool = False
    #: Drop unlabelled rows silently (counted in ``stats["unlabeled"]``); recommend's rule.
    skip_unlabeled: bool = False


class _MeasureSet:
    """The soft-label (and optionally similarity) accumulators at one temperature."""

    def __init__(self, k: int, t: float, sim: bool, delta: float, n_bins: int) -> None:
        from kdlens.measures.similarity import similarity_accumulator

        self.soft = SoftLabelAccumulator(k, temperature=t, oemc_delta=delta, n_bins=n_bins)
        self.sim = similarity_accumulator(k, temperature=t) if sim else None

    def merge(self, other: _MeasureSet) -> None:
        self.soft.merge(other.soft)
        if self.sim is not None and other.sim is not None:
            self.sim.merge(other.sim)


class _PartAccumulators:
    """Everything one worker accumulates over the batches of a part."""

    def __init__(self, plan: PartPlan, k: int, delta: float, n_bins: int) -> None:
        self.delta = delta
        self.sets = {
            t: _MeasureSet(k, t, sim, delta, n_bins) for t, sim in plan.temperatures.items()
        }
        self.tfit = TemperatureFitAccumulator(k) if plan.fit else None
        self.extras = {name: make() for name, make in plan.extras.items()}

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
        prediction = np.argmax(z, axis=1)  # the same at every T > 0: once per batch
        step = max(1, _SLICE_ELEMENTS // max(z.shape[1], 1))
        parts: dict[float, list[dict[str, np.ndarray]]] = {t: [] for t in self.sets}
        for lo in range(0, z.shape[0], step):
            zs, ys, ps = z[lo : lo + step], y[lo : lo + step], prediction[lo : lo + step]
            # T = 1 beside an integer T (analysis and ranking in one report) shares one
            # exponential pass; formed before the similarity sums consume ``core.e`` in place.
            shared = _cores_for(zs, list(self.sets))
            for t, ms in self.sets.items():
                cols, core, tg, _ = _per_example_core(
                    zs, ys, t, self.delta, shared.pop(t, None), ps
                )
                parts[t].append(cols)
                if ms.sim is not None:
                    _add_similarity(ms.sim, zs, ys, core, tg)
                del core, tg
        if z.shape[0] <= step:
            return {t: p[0] for t, p in parts.items()}
        return {
            t: {c: np.concatenate([p[c] for p in ps]) for c in ps[0]} for t, ps in parts.items()
        }

    def merge(self, other: _PartAccumulators) -> _PartAccumulators:
        for t, ms in self.sets.items():
            ms.merge(other.sets[t])
        if self.tfit is not None and other.tfit is not None:
            self.tfit.merge(other.tfit)
        for name, ex in self.extras.items():
            ex.merge(other.extras[name])
        return self


def _add_similarity(acc: Any, z: np.ndarray, y: np.ndarray, core: _Core, tg: _Target) -> None:
    """Add one batch to the similarity accumulator from the soft-label pass's
    intermediates, so the log-softmax is computed once per batch, not twice."""
    if acc.temperature != core.temperature:
        acc.update(z, y)
        return
    # The soft-label columns are computed already: core.e and core.x are reused in place.
    q = tg.nontarget_probs(core, y, inplace=True)
    acc.update_nontarget(q, tg.nt_entropy, y)


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
) -> list[PartResult]:
    """Read every planned part once and return its merged accumulators, in plan order.

    ``sink`` receives every batch's per-example columns in store order (one worker then).
    """
    prog = as_progress(progress)
    # A part may span several files: count the rows of every file it lives in.
    chosen = {p.key for p in plans}
    total = sum(p.num_rows for p in st.parts if (p.run, p.checkpoint, p.split) in chosen)
    task = prog.add_task(description, total=total)
    k = st.num_classes
    # Each worker holds a K x K similarity accumulator per temperature that wants one.
    sims = max((sum(p.temperatures.values()) for p in plans), default=0)
    check_memory(k, sims * (_WORKERS if sink is None else 1))
    reuse_freed_memory()
    return _run_plans(st, plans, k, delta, n_bins, check, batch_rows, prog, task, sink)


def _run_plans(
    st: LogitsStore,
    plans: Sequence[PartPlan],
    k: int,
    delta: float,
    n_bins: int,
    check: CheckOptions,
    batch_rows: int | None,
    prog: Any,
    task: Any,
    sink: RowSink | None,
) -> list[PartResult]:
    out: list[PartResult] = []
    for plan in plans:
        part = plan.part
        prog.update(task, description=f"{part.run} {part.checkpoint} {part.split}")
        stats: dict[str, int] = {}
        batches = _iter_checked(st, part, check, batch_rows, lambda n: prog.advance(task, n), stats)

        def make(plan: PartPlan = plan) -> _PartAccumulators:
            return _PartAccumulators(plan, k, delta, n_bins)

        if sink is None:
            acc = _run_workers(batches, make, _WORKERS)
        else:  # per-example rows must reach the sink in order: one worker
            acc = make()
            for b in batches:
                sink(part, b, acc.update(b))
        out.append(PartResult(plan, acc.sets, acc.tfit, acc.extras, stats))
    return out


def _where(part: Part) -> str:
    return f"run {part.run!r} checkpoint {part.checkpoint!r} split {part.split!r}"


def _iter_checked(
    st: LogitsStore,
    part: Part,
    check: CheckOptions,
    batch_rows: int | None,
    advance: Callable[[int], None],
    stats: dict[str, int],
) -> Iterator[Batch]:
    """Yield validated batches; on a refusal, count through the rest of the part and raise."""
    bad_rows = unlabeled = rows = 0
    first_bad: int | None = None
    failing = False
    for b in st.prefetch_batches(part.run, part.checkpoint, part.split, batch_rows=batch_rows):
        advance(len(b))
        rows += len(b)
        finite = _finite_rows(b.logits)
        nbad = int(finite.size - np.count_nonzero(finite))
        if nbad:
            if first_bad is None:
                first_bad = int(b.example_ids[np.argmin(finite)])
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
    if bad_rows and not check.drop_nonfinite:
        raise InputError(
            f"{_where(part)}: {bad_rows} rows hold NaN/Inf logits (first example_id "
            f"{first_bad}); pass `drop_nonfinite=True` to skip them"
        )
    if unlabeled and not (check.use_predicted_labels or check.skip_unlabeled):
        raise InputError(
            f"{_where(part)}: {unlabeled} of {rows} rows have no label; "
            f"{', '.join(label_needers())} need labels (pass `use_predicted_labels=True` "
            "to use the teacher's top-1 prediction instead)"
        )


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


def _run_workers(
    batches: Iterator[Batch], make: Callable[[], _PartAccumulators], workers: int
) -> _PartAccumulators:
    """Deal batches to ``workers`` threads in turn (batch i to worker i mod n) and merge
    their accumulators in worker order, so the result does not depend on timing."""
    accs = [make() for _ in range(workers)]
    if workers == 1:
        for b in batches:
            accs[0].update(b)
        return accs[0]
    inboxes: list[queue.Queue[Batch | None]] = [queue.Queue(maxsize=1) for _ in accs]
    errors: list[BaseException] = []

    def work(acc: _PartAccumulators, inbox: queue.Queue[Batch | None]) -> None:
        while (b := inbox.get()) is not None:
            if not errors:  # after a failure, drain without work so the dealer never blocks
                try:
                    acc.update(b)
                except BaseException as exc:
                    errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(a, q), name="kdlens-pass", daemon=True)
        for a, q in zip(accs, inboxes, strict=True)
    ]
    for t in threads:
        t.start()
    try:
        for i, b in enumerate(batches):
            if errors:
                break
            inboxes[i % workers].put(b)
    finally:
        for q in inboxes:
            q.put(None)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    for other in accs[1:]:
        accs[0].merge(other)
    return accs[0]
