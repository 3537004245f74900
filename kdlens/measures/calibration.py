"""Calibration of a teacher's predictions: NLL, ECE, reliability table, temperature fit.

Calibration is about the teacher's own predictive distribution, so NLL, ECE and the
reliability table are at T = 1 unless a ``temperature`` is passed. ECE uses
``n_bins`` equal-width confidence bins on [0, 1] (confidence = max probability; a
confidence of exactly 1 falls in the last bin); the bin count is part of every
result because ECE values with different bin counts are not comparable.

The streaming versions (:class:`CalibrationAccumulator`,
:class:`TemperatureFitAccumulator`) accumulate float64 histograms / a bounded
hash-chosen sample and merge in any order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy.optimize import minimize_scalar

from kdlens._internal.accumulator import Accumulator
from kdlens._internal.checks import (
    check_example_ids,
    check_labels,
    check_logits,
    check_logits_labels,
    check_num_classes,
    check_positive_int,
    check_temperature,
)
from kdlens._internal.defaults import N_BINS, TEMPERATURE_BOUNDS
from kdlens._internal.hashing import splitmix64
from kdlens.errors import InputError
from kdlens.measures.core import _Core, _margin_from, _Target

__all__ = [
    "DEFAULT_N_BINS",
    "CalibrationAccumulator",
    "CalibrationResult",
    "TemperatureFitAccumulator",
    "expected_calibration_error",
    "fit_temperature",
    "nll_loss",
    "reliability_table",
]

DEFAULT_N_BINS = N_BINS


def _confidence_correct_nll(
    z: np.ndarray, y: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    core = _Core(z, temperature)
    tg = _Target(core, y)
    confidence = np.exp(-core.log_s)
    correct = _margin_from(core, y, tg) > 0
    return confidence, correct, core.log_s - tg.x_y


@dataclass
class CalibrationResult:
    """Finalised calibration of one set of examples."""

    n: int
    nll: float
    ece: float
    n_bins: int
    temperature: float
    table: pl.DataFrame  # bin, lower, upper, count, confidence, accuracy


class CalibrationAccumulator(Accumulator):
    """Streaming NLL, ECE and reliability histogram (float64 sums per bin).

    ``update_arrays`` takes per-example confidence, correctness and NLL (as
    :func:`kdlens.measures.softlabels.per_example` gives them); ``update`` takes logits.
    """

    def __init__(self, *, n_bins: int = DEFAULT_N_BINS, temperature: float = 1.0) -> None:
        self.n_bins = check_positive_int(n_bins, name="n_bins")
        self.temperature = check_temperature(temperature)
        self.count = np.zeros(self.n_bins, np.int64)
        self.sum_confidence = np.zeros(self.n_bins)
        self.sum_correct = np.zeros(self.n_bins, np.int64)
        self.sum_nll = 0.0
        self.n = 0

    @property
    def settings(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "temperature": self.temperature}

    def update(self, logits: Any, labels: Any) -> CalibrationAccumulator:
        """Add a batch of logits (n, K) and labels (n,), every row labelled."""
        z, y = check_logits_labels(logits, labels)
        return self.update_arrays(*_confidence_correct_nll(z, y, self.temperature))

    def update_arrays(
        self, confidence: np.ndarray, correct: np.ndarray, nll: np.ndarray
    ) -> CalibrationAccumulator:
        b = np.minimum((confidence * self.n_bins).astype(np.int64), self.n_bins - 1)
        self.count += np.bincount(b, minlength=self.n_bins)
        self.sum_confidence += np.bincount(b, weights=confidence, minlength=self.n_bins)
        self.sum_correct += np.bincount(b, weights=correct, minlength=self.n_bins).astype(np.int64)
        self.sum_nll += float(np.sum(nll))
        self.n += int(confidence.shape[0])
        return self

    def _merge(self, other: CalibrationAccumulator) -> None:
        self.count += other.count
        self.sum_confidence += other.sum_confidence
        self.sum_correct += other.sum_correct
        self.sum_nll += other.sum_nll
        self.n += other.n

    def finalize(self) -> CalibrationResult:
        n = self.n
        edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = self.sum_confidence / self.count
            acc = self.sum_correct / self.count
        gap = np.where(self.count > 0, np.abs(acc - conf), 0.0)
        ece = float(np.sum(self.count * gap) / n) if n else float("nan")
        table = pl.DataFrame(
            {
                "bin": np.arange(self.n_bins),
                "lower": edges[:-1],
                "upper": edges[1:],
                "count": self.count,
                "confidence": conf,
                "accuracy": acc,
            }
        ).with_columns(pl.col("confidence", "accuracy").fill_nan(None))
        return CalibrationResult(
            n=n,
            nll=self.sum_nll / n if n else float("nan"),
            ece=ece,
            n_bins=self.n_bins,
            temperature=self.temperature,
            table=table,
        )


def nll_loss(logits: Any, labels: Any, *, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood ``-log p_y`` (nats; lower is better)."""
    z, y = check_logits_labels(logits, labels)
    t = check_temperature(temperature)
    return float(np.mean(_confidence_correct_nll(z, y, t)[2]))


def expected_calibration_error(
    logits: Any, labels: Any, *, n_bins: int = DEFAULT_N_BINS, temperature: float = 1.0
) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (lower is better)."""
    acc = CalibrationAccumulator(n_bins=n_bins, temperature=temperature)
    return acc.update(logits, labels).finalize().ece


def reliability_table(
    logits: Any, labels: Any, *, n_bins: int = DEFAULT_N_BINS, temperature: float = 1.0
) -> pl.DataFrame:
    """Per confidence bin: lower, upper, count, mean confidence, accuracy (null when empty)."""
    acc = CalibrationAccumulator(n_bins=n_bins, temperature=temperature)
    return acc.update(logits, labels).finalize().table


#: Above this many logits in the fit's sample (2,000 rows at K > 8,000) the NLL is
#: evaluated in blocks of rows: three float64 copies of a 2,000 x 21,841 sample are 1 GB.
_FIT_BLOCK_VALUES = 1 << 24


def _compute_fit_temperature(z: np.ndarray, y: np.ndarray, bounds: tuple[float, float]) -> float:
    if z.size > _FIT_BLOCK_VALUES:
        return _fit_temperature_blocks(z, y, bounds)
    z64 = z.astype(np.float64)
    # NLL(T) = LSE(z / T) - z_y / T; with d = z - max(z) <= 0 the shift is exact for every T.
    m = z64.max(axis=1)
    d = z64 - m[:, None]
    dy = d[np.arange(d.shape[0]), y]
    buf = np.empty_like(d)

    def mean_nll(log_t: float) -> float:
        inv_t = float(np.exp(-log_t))
        np.multiply(d, inv_t, out=buf)
        np.exp(buf, out=buf)
        return float(np.mean(np.log(buf.sum(axis=1)) - dy * inv_t))

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(mean_nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def _fit_temperature_blocks(z: np.ndarray, y: np.ndarray, bounds: tuple[float, float]) -> float:
    """:func:`_compute_fit_temperature` with O(block) float64 memory (same NLL)."""
    step = max(1, (1 << 21) // max(z.shape[1], 1))
    blocks = [(a, min(a + step, z.shape[0])) for a in range(0, z.shape[0], step)]

    def mean_nll(log_t: float) -> float:
        inv_t = float(np.exp(-log_t))
        total = 0.0
        for a, b in blocks:
            d = z[a:b].astype(np.float64)
            d -= d.max(axis=1, keepdims=True)
            dy = d[np.arange(b - a), y[a:b]]
            d *= inv_t
            np.exp(d, out=d)
            total += float(np.sum(np.log(d.sum(axis=1)) - dy * inv_t))
        return total / z.shape[0]

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(mean_nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def fit_temperature(
    logits: Any, labels: Any, *, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """The temperature T minimising the mean NLL of ``softmax(logits / T)`` on held-out data.

    Bounded scalar search on ``log T`` within ``bounds``; a result at a bound
    means the optimum lies outside (e.g. a perfectly separable set drives T to 0).
    """
    z, y = check_logits_labels(logits, labels)
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0 < lo < hi:
        raise InputError(f"bounds must satisfy 0 < low < high, got {bounds}")
    if z.shape[0] == 0:
        raise InputError("fit_temperature needs at least one labelled example")
    return _compute_fit_temperature(z, y, (lo, hi))


#: Above this K the fit's sample is bounded by values, not rows: 2,000 rows of K = 21,841
#: are 175 MB per worker, several times over while merging and evaluating.
_FIT_ROWS_MAX_K = 5000


def _default_fit_rows(k: int) -> int:
    """``max(2000, 2_000_000 // K)`` rows up to K = 5,000; above, 8 M logits (384 rows at
    K = 21,841, at least 256)."""
    return max(2000, 2_000_000 // k) if k <= _FIT_ROWS_MAX_K else max(256, (1 << 23) // k)


class TemperatureFitAccumulator(Accumulator):
    """Keeps a bounded sample of labelled examples to fit a temperature on.

    The sample is the ``max_rows`` examples with the smallest hash of their
    example id, so it is the same whatever the order or chunking of the updates
    and merges (and is every example when the split is small). The default bound
    is ``max(2000, 2_000_000 // K)`` rows (8 MiB of float32 logits) up to K = 5,000 and
    8 M logits above (32 MiB: 384 rows at K = 21,841, at least 256). Rows labelled
    -1 (missing) are skipped and counted in ``n_unlabeled``.
    """

    def __init__(self, num_classes: int, *, max_rows: int | None = None) -> None:
        self.num_classes = check_num_classes(num_classes)
        self.max_rows = (
            check_positive_int(max_rows, name="max_rows")
            if max_rows
            else _default_fit_rows(self.num_classes)
        )
        self.n_unlabeled = 0
        self._prio = np.empty(0, np.uint64)
        self._ids = np.empty(0, np.int64)
        self._z = np.empty((0, self.num_classes), np.float32)
        self._y = np.empty(0, np.int64)
        # Candidates not yet merged into the sample: merging (a sort and a copy of the
        # whole sample) runs once they outnumber it, not on every batch.
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._n_pending = 0
        # The fit per bounds, cleared when the sample changes: analyze and recommend
        # finish from the same accumulator in one pass and must not fit it twice.
        self._fits: dict[tuple[float, float], float] = {}
        self._nlls: dict[float, float] = {}

    @property
    def n(self) -> int:
        self._compact()
        return int(self._ids.shape[0])

    @property
    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The retained sample: (example ids, float32 logits, labels), for re-evaluating
        the fit (bootstrap refits) without copying it."""
        self._compact()
        return self._ids, self._z, self._y

    @property
    def settings(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "max_rows": self.max_rows}

    def update(self, logits: Any, labels: Any, example_ids: Any) -> TemperatureFitAccumulator:
        """Add a batch: logits (n, K), labels (n,) with -1 = missing, example ids (n,)."""
        # Shapes and labels are checked on the whole batch (cheap); finiteness only on the
        # rows that enter the sample, so a large split is not scanned twice.
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise InputError(
                f"logits must be 2-D (n, {self.num_classes}), got shape {logits.shape}"
            )
        labels = check_labels(labels, logits.shape[0], self.num_classes, allow_missing=True)
        example_ids = check_example_ids(example_ids, logits.shape[0])
        keep = labels >= 0
        self.n_unlabeled += int(keep.size - np.count_nonzero(keep))
        ids = example_ids[keep]
        prio = splitmix64(ids)
        cut = self._cutoff(prio)
        if cut is not None:
            # Only rows that can enter the sample are copied.
            sel = prio <= cut
            if not sel.any():
                return self
            keep = np.flatnonzero(keep)[sel]
            ids, prio = ids[sel], prio[sel]
        z = check_logits(logits[keep], num_classes=self.num_classes)
        self._add(prio, ids, z.astype(np.float32, copy=False), labels[keep])
        return self

    def _cutoff(self, prio: np.ndarray) -> np.uint64 | None:
        """The largest priority of ``prio`` that can still enter the sample (None: any).

        A row is out when ``max_rows`` others rank strictly before it: those of a full
        sample (priority above its maximum), or of the batch itself.
        """
        cuts = []
        if self._ids.shape[0] >= self.max_rows:
            cuts.append(self._prio.max())
        if prio.shape[0] > self.max_rows:
            cuts.append(np.partition(prio, self.max_rows - 1)[self.max_rows - 1])
        return min(cuts) if cuts else None

    def _merge(self, other: TemperatureFitAccumulator) -> None:
        self.n_unlabeled += other.n_unlabeled
        self._add(*other._state())

    def _state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        self._compact()
        return self._prio, self._ids, self._z, self._y

    def _add(self, prio: np.ndarray, ids: np.ndarray, z: np.ndarray, y: np.ndarray) -> None:
        self._pending.append((prio, ids, z, y.astype(np.int64)))
        self._n_pending += prio.shape[0]
        self._fits, self._nlls = {}, {}
        if self._n_pending > self.max_rows:
            self._compact()

    def _compact(self) -> None:
        """Merge the pending candidates into the sample: the ``max_rows`` smallest
        (priority, id), in that order (a stable sort: the same whatever the batching)."""
        if not self._pending:
            return
        parts = [(self._prio, self._ids, self._z, self._y), *self._pending]
        self._pending, self._n_pending = [], 0
        prio, ids, y = (np.concatenate([p[i] for p in parts]) for i in (0, 1, 3))
        # splitmix64 is a bijection of the 64-bit ids: equal priorities are equal ids, so
        # a stable sort by priority is the (priority, id) order (half a lexsort's time).
        order = np.argsort(prio, kind="stable")[: self.max_rows]
        self._prio, self._ids, self._y = prio[order], ids[order], y[order]
        self._z = _gather_rows([p[2] for p in parts], order)

    def finalize(self, *, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
        """The fitted temperature, NaN when the sample holds no labelled example."""
        if self.n == 0:  # (merges the pending candidates)
            return float("nan")
        key = (float(bounds[0]), float(bounds[1]))
        if key not in self._fits:
            self._fits[key] = _compute_fit_temperature(self._z, self._y, key)
        return self._fits[key]

    def nll_at(self, temperature: float) -> float:
        """Mean NLL of the retained sample at ``temperature`` (NaN when it is empty)."""
        if self.n == 0 or not np.isfinite(temperature):
            return float("nan")
        # Cached beside the fits: analyze and recommend ask for the same NLLs in one pass.
        key = float(temperature)
        if key not in self._nlls:
            self._nlls[key] = nll_loss(self._z, self._y, temperature=temperature)
        return self._nlls[key]


def _gather_rows(blocks: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """``np.concatenate(blocks)[rows]`` without the concatenation (the blocks are the
    sample and its candidates: several times the rows kept)."""
    starts = np.cumsum([0] + [b.shape[0] for b in blocks])
    which = np.searchsorted(starts, rows, side="right") - 1
    out = np.empty((rows.size, blocks[0].shape[1]), blocks[0].dtype)
    for i, block in enumerate(blocks):
        sel = np.flatnonzero(which == i)
        if sel.size:
            out[sel] = block[rows[sel] - starts[i]]
    return out
