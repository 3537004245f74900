"""The report's own accumulators on the pass, and which checkpoints it shows in detail.

Per-example entropy histograms are accumulated on every transfer part during the one
pass (a few bincounts per batch), because which checkpoints are shown in detail depends
on the recommendation, known only after the pass. The reliability table is the
analysis's calibration table (T = 1), restricted to the detail checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from kdlens.report.labels import teacher_label
from kdlens.store.format import Batch

__all__ = ["EntropyHistExtra", "calibration_rows", "detail_teachers", "entropy_frames"]

ENTROPY_BINS = 25
MAX_DETAIL_TEACHERS = 4
#: Per-example columns shown as distributions, and their titles.
QUANTITIES = {
    "entropy_normalized": "entropy H(p) / log K",
    "nontarget_entropy_normalized": "non-target entropy H(q) / log(K−1)",
}


class EntropyHistExtra:
    """Pass extra: histograms of the normalised entropies of one part's labelled rows at T."""

    def __init__(self, temperature: float) -> None:
        self.temperature = float(temperature)
        self.counts = {q: np.zeros(ENTROPY_BINS, np.int64) for q in QUANTITIES}
        self.n = 0

    def update(self, batch: Batch, cols: dict[str, np.ndarray]) -> None:
        keep = batch.labels >= 0
        all_kept = bool(keep.all())
        for q in QUANTITIES:
            v = cols[q] if all_kept else cols[q][keep]
            v = v[np.isfinite(v)]
            idx = np.clip((v * ENTROPY_BINS).astype(np.int64), 0, ENTROPY_BINS - 1)
            self.counts[q] += np.bincount(idx, minlength=ENTROPY_BINS)
        self.n += int(np.count_nonzero(keep))

    def merge(self, other: EntropyHistExtra) -> EntropyHistExtra:
        for q in QUANTITIES:
            self.counts[q] += other.counts[q]
        self.n += other.n
        return self


def entropy_frames(
    hists: dict[tuple[str, str], EntropyHistExtra], teachers: Sequence[tuple[str, str]]
) -> pl.DataFrame | None:
    """The detail teachers' histograms as one long frame (share of examples per bin)."""
    edges = np.linspace(0.0, 1.0, ENTROPY_BINS + 1)
    out = []
    for key in teachers:
        h = hists.get(key)
        if h is None or not h.n:
            continue
        for q, title in QUANTITIES.items():
            out.append(
                pl.DataFrame(
                    {
                        "teacher": [teacher_label(*key)] * ENTROPY_BINS,
                        "quantity": [title] * ENTROPY_BINS,
                        "lower": edges[:-1],
                        "upper": edges[1:],
                        "share": h.counts[q] / h.n,
                    }
                )
            )
    return pl.concat(out) if out else None


def calibration_rows(
    cal: pl.DataFrame | None, teachers: Sequence[tuple[str, str]], split: str | None
) -> pl.DataFrame | None:
    """The analysis's reliability table restricted to the detail teachers' held-out split."""
    need = {"run", "checkpoint", "split", "confidence", "accuracy", "count"}
    if cal is None or split is None or not need <= set(cal.columns) or not teachers:
        return None
    keys = pl.DataFrame(
        {"run": [k[0] for k in teachers], "checkpoint": [k[1] for k in teachers]},
        schema={"run": cal.schema["run"], "checkpoint": cal.schema["checkpoint"]},
    )
    rows = cal.filter(pl.col("split") == split).join(keys, on=["run", "checkpoint"], how="semi")
    if rows.height == 0:
        return None
    order = {teacher_label(*k): i for i, k in enumerate(teachers)}
    rows = rows.with_columns(
        (pl.col("run").cast(pl.Utf8) + " / " + pl.col("checkpoint").cast(pl.Utf8)).alias("teacher")
    )
    return rows.sort(
        pl.col("teacher").replace_strict(order, default=len(order)),
        "bin" if "bin" in rows.columns else "confidence",
    )


def detail_teachers(data: Any) -> list[tuple[str, str]]:
    """A few checkpoints to compare in detail: first, picked and last of its run, most accurate."""
    if data.focus is None:
        return []
    run = data.focus[0]
    same = [k for k in data.teachers if k[0] == run]
    picks = [same[0], data.focus, same[-1]]
    held = data.heldout_split
    if held and "accuracy" in data.summary.columns:
        h = data.summary.filter(pl.col("split") == held).sort(
            "accuracy", descending=True, nulls_last=True
        )
        if h.height:
            picks.append((h["run"][0], h["checkpoint"][0]))
    return list(dict.fromkeys(picks))[:MAX_DETAIL_TEACHERS]
