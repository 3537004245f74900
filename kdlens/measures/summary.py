"""Streaming accumulators for every per-checkpoint soft-label scalar.

:class:`SoftLabelAccumulator` takes batches of logits (or the per-example arrays
of :func:`kdlens.measures.softlabels.per_example` when they are computed anyway), keeps
float64 sums and int64 counts overall and per class, and merges with another
accumulator. Memory is O(K + n_bins) whatever the number of examples.

Merging is order-free: counts are exact, and every float sum is a sum of
float64 per-batch sums, so splitting a dataset into chunks and merging them in
any order equals one pass up to float64 rounding (relative error ~1e-15 per
merge), which is what the tests check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from kdlens._internal.accumulator import Accumulator
from kdlens._internal.checks import (
    check_fraction,
    check_logits_labels,
    check_num_classes,
    check_temperature,
)
from kdlens.measures.calibration import DEFAULT_N_BINS, CalibrationAccumulator, CalibrationResult
from kdlens.measures.softlabels import DEFAULT_OEMC_DELTA, _compute_per_example

__all__ = ["SoftLabelAccumulator", "SoftLabelSummary", "MEAN_COLUMNS"]

#: Per-example columns averaged over examples. Label-free columns are averaged
#: over every example; the others over labelled examples only.
MEAN_COLUMNS = (
    "entropy",
    "entropy_normalized",
    "effective_classes",
    "target_prob",
    "dark_mass",
    "nontarget_entropy",
    "nontarget_entropy_normalized",
    "oemc",
    "correct",
    "nll",
    "margin",
)
_LABEL_FREE = frozenset({"entropy", "entropy_normalized", "effective_classes"})
#: Columns also summed per class (over examples of that labelled class).
_PER_CLASS = ("correct", "dark_mass", "target_prob", "nontarget_entropy", "entropy", "oemc")


@dataclass
class SoftLabelSummary:
    """Finalised means of one set of examples (one run x checkpoint x split)."""

    temperature: float
    oemc_delta: float
    n: int
    n_labeled: int
    means: dict[str, float]
    class_counts: np.ndarray  # (K,) int64
    class_means: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (K,), NaN if absent
    calibration: CalibrationResult | None = None

    def as_row(self) -> dict[str, Any]:
        """The scalars under the names of the analysis summary table."""
        m = self.means
        row: dict[str, Any] = {
            "n": self.n,
            "n_labeled": self.n_labeled,
            "temperature": self.temperature,
            "accuracy": m["correct"],
            "entropy": m["entropy"],
            "entropy_normalized": m["entropy_normalized"],
            "dark_mass": m["dark_mass"],
            "nontarget_entropy": m["nontarget_entropy"],
            "nontarget_entropy_normalized": m["nontarget_entropy_normalized"],
            "effective_classes": m["effective_classes"],
            "target_prob": m["target_prob"],
            "margin": m["margin"],
            "oemc_share": m["oemc"],
            "oemc_delta": self.oemc_delta,
            "nll": m["nll"],
        }
        if self.calibration is not None:
            row["ece"] = self.calibration.ece
            row["ece_bins"] = self.calibration.n_bins
        return row

    def classes_frame(self, class_names: list[str] | None = None) -> pl.DataFrame:
        """Per class: count, accuracy, dark mass, target prob, non-target entropy, entropy."""
        k = self.class_counts.shape[0]
        names = class_names if class_names is not None else [str(c) for c in range(k)]
        cm = self.class_means
        return pl.DataFrame(
            {
                "class": np.arange(k, dtype=np.int64),
                "class_name": names,
                "count": self.class_counts,
                "accuracy": cm["correct"],
                "dark_mass": cm["dark_mass"],
                "target_prob": cm["target_prob"],
                "nontarget_entropy": cm["nontarget_entropy"],
                "entropy": cm["entropy"],
                "oemc_share": cm["oemc"],
            }
        ).with_columns(pl.col(pl.Float64).fill_nan(None))


class SoftLabelAccumulator(Accumulator):
    """Sums of per-example soft-label quantities; ``update`` / ``merge`` / ``finalize``.

    Parameters
    ----------
    num_classes : K.
    temperature : T of every soft-label quantity (correct / nll / margin /
        calibration stay at T = 1, see :mod:`kdlens.measures.softlabels`).
    oemc_delta : the dark-mass threshold of the OEMC share.
    n_bins : confidence bins of the calibration histogram.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        temperature: float = 1.0,
        oemc_delta: float = DEFAULT_OEMC_DELTA,
        n_bins: int = DEFAULT_N_BINS,
    ) -> None:
        k = check_num_classes(num_classes)
        self.num_classes = k
        self.temperature = check_temperature(temperature)
        self.oemc_delta = check_fraction(oemc_delta, name="oemc_delta")
        self.n = 0
        self.n_labeled = 0
        self.sums = {c: 0.0 for c in MEAN_COLUMNS}
        self.class_counts = np.zeros(k, np.int64)
        self.class_sums = {c: np.zeros(k) for c in _PER_CLASS}
        self.calibration = CalibrationAccumulator(n_bins=n_bins)

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "temperature": self.temperature,
            "oemc_delta": self.oemc_delta,
            "n_bins": self.calibration.n_bins,
        }

    def update(self, logits: Any, labels: Any) -> SoftLabelAccumulator:
        """Add a batch: logits (n, K), labels (n,) with -1 = missing (counted in
        ``n - n_labeled``; label-dependent means are over labelled rows)."""
        z, y = check_logits_labels(logits, labels, num_classes=self.num_classes, allow_missing=True)
        cols = _compute_per_example(z, y, self.temperature, self.oemc_delta)
        return self.update_arrays(cols, y)

    def update_arrays(
        self, cols: Mapping[str, np.ndarray], labels: np.ndarray
    ) -> SoftLabelAccumulator:
        """Add a batch from its per-example columns (computed at this temperature and delta)."""
        y = labels
        labeled = y >= 0
        n_lab = int(labeled.sum())
        all_labeled = n_lab == y.shape[0]
        for c in MEAN_COLUMNS:
            v = cols[c]
            if c in _LABEL_FREE or all_labeled:
                self.sums[c] += float(np.sum(v, dtype=np.float64))
            else:
                self.sums[c] += float(np.sum(v[labeled], dtype=np.float64))
        yl = y if all_labeled else y[labeled]
        k = self.num_classes
        self.class_counts += np.bincount(yl, minlength=k)
        for c in _PER_CLASS:
            v = cols[c] if all_labeled else cols[c][labeled]
            self.class_sums[c] += np.bincount(yl, weights=v.astype(np.float64), minlength=k)
        if all_labeled:
            self.calibration.update_arrays(cols["confidence"], cols["correct"], cols["nll"])
        else:
            self.calibration.update_arrays(
                cols["confidence"][labeled], cols["correct"][labeled], cols["nll"][labeled]
            )
        self.n += int(y.shape[0])
        self.n_labeled += n_lab
        return self

    def _merge(self, other: SoftLabelAccumulator) -> None:
        """Add another accumulator's sums (same K, temperature, delta and bins)."""
        self.n += other.n
        self.n_labeled += other.n_labeled
        for c in MEAN_COLUMNS:
            self.sums[c] += other.sums[c]
        self.class_counts += other.class_counts
        for c in _PER_CLASS:
            self.class_sums[c] += other.class_sums[c]
        self.calibration.merge(other.calibration)

    def finalize(self) -> SoftLabelSummary:
        """Means overall and per class (NaN where there is no example)."""
        means = {}
        for c in MEAN_COLUMNS:
            denom = self.n if c in _LABEL_FREE else self.n_labeled
            means[c] = self.sums[c] / denom if denom else float("nan")
        with np.errstate(invalid="ignore", divide="ignore"):
            class_means = {c: self.class_sums[c] / self.class_counts for c in _PER_CLASS}
        return SoftLabelSummary(
            temperature=self.temperature,
            oemc_delta=self.oemc_delta,
            n=self.n,
            n_labeled=self.n_labeled,
            means=means,
            class_counts=self.class_counts.copy(),
            class_means=class_means,
            calibration=self.calibration.finalize(),
        )
