"""Benchmark: what the structure test's analytic null costs (histogram in the pass, moments).

A script, not a test. Two measurements, each against a baseline in the same process:

- ``update_nontarget``: :class:`~kdlens.measures.similarity.SimilarityAccumulator`'s
  per-batch work with and without the per-class entry histogram
  (:mod:`kdlens.measures.similarity.spread`), on peaked normal logits ``3·N(0, 1)``, the
  same 65,536-row batch fed with shifted labels (so classes see new rows);
- the null: :func:`kdlens.hypotheses.structure._compute_analytic_null` at K classes of 50
  examples and B = 1,000 draws.

    nice -n 10 python tests/benchmarks/bench_structure_null.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.special import xlogy

import kdlens.measures.similarity.spread as spread
from kdlens.hypotheses.structure import _compute_analytic_null
from kdlens.measures.similarity import SimilarityAccumulator
from kdlens.measures.similarity.matrix import _nontarget_logq


def _update(n_total: int, k: int, batch: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    batch = min(batch, n_total)
    y = rng.integers(0, k, batch)
    z = (3 * rng.standard_normal((batch, k))).astype(np.float32)
    q = np.exp(_nontarget_logq(z, y, 1.0))
    h = -xlogy(q, q).sum(1)
    real = spread.EntryHistogram.add
    times = []
    for add in (lambda self, *a: None, real):
        spread.EntryHistogram.add = add  # type: ignore[method-assign]
        best = float("inf")
        for _ in range(2):
            acc = SimilarityAccumulator(k)
            t = time.perf_counter()
            for i in range(n_total // batch):
                acc.update_nontarget(q, h, (y + i) % k)
            best = min(best, time.perf_counter() - t)
        times.append(best)
    spread.EntryHistogram.add = real  # type: ignore[method-assign]
    return times[0], times[1]


def _null(k: int) -> float:
    rng = np.random.default_rng(0)
    z = 3.0 * rng.standard_normal((50, k))
    q = np.exp(z - z.max(1, keepdims=True))
    q[:, 0] = 0.0
    q /= q.sum(1, keepdims=True)
    one = spread.empty_histogram(k)
    spread.add_entries(one, q, np.zeros(50, np.int64))
    hist = np.broadcast_to(one[:1], (k, *one.shape[1:]))
    t = time.perf_counter()
    _compute_analytic_null(np.full(k, 50), hist, k, 1000, rng)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=65_536)
    a = p.parse_args()
    for n, k in ((1_048_576, 100), (196_608, 1_000), (49_152, 1_000)):
        without, with_ = _update(n, k, a.batch)
        print(
            f"update_nontarget {n:,} x {k:,}: {without:.2f} s without the histogram, "
            f"{with_:.2f} s with ({with_ / without:.1f}x; +{(with_ - without) / (n * k) * 1e9:.1f} "
            "ns per entry)"
        )
    for k in (100, 1_000):
        print(f"analytic null, K = {k:,}, 50 per class, B = 1,000: {_null(k):.2f} s")


if __name__ == "__main__":
    main()
