"""The pass's per-batch kernel: what one accumulator slot computes from each batch of a part.

:class:`_PartAccumulators` holds, for one part, the soft-label (and similarity) measures
at every temperature its :class:`~kdlens.analysis.passes.PartPlan` asks for, the
temperature-fit sample and the plan's extras; :mod:`kdlens.analysis.passes` runs it over
the part's batches and merges the slots. Per batch, each temperature gets one
log-softmax pass (:func:`kdlens.measures.softlabels._per_example_core`) on slices that
stay in cache, whose per-example columns feed the
:class:`~kdlens.measures.summary.SoftLabelAccumulator`, the extras that asked for that
temperature and last the similarity accumulator (which reuses the pass's buffers in place).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kdlens.measures.calibration import TemperatureFitAccumulator
from kdlens.measures.core import _cores_for, _shared_targets
from kdlens.measures.softlabels import _Core, _per_example_core, _Target
from kdlens.measures.summary import SoftLabelAccumulator
from kdlens.store.format import Batch

if TYPE_CHECKING:
    from kdlens.analysis.passes import PartPlan
    from kdlens.measures.similarity.classsums import ClassIndex
    from kdlens.measures.similarity.spread import PartLevels

#: Logits per slice of a batch in the per-example kernel (2 MiB per float64 temporary).
_SLICE_ELEMENTS = 1 << 18
#: Batches whose slices have fewer rows than this are sorted by label (:func:`_label_order`).
_SORT_BELOW_ROWS = 1024


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
