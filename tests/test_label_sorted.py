"""Large-K batches are sorted by label inside the pass (class sums as one run per class,
no K x K scatter): the sorted path gives the unsorted path's results, row for row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inputs import random_teacher

import kdlens.analysis.kernel as kernel
from kdlens.analysis.engine import analyze
from kdlens.measures.similarity import similarity_accumulator
from kdlens.measures.similarity.spread import _unique_inverse
from kdlens.store.writer import CheckpointWriter

K = 300  # slices of 2^18 / 300 = 873 rows: below the sort threshold


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(3, 12), seed=st.integers(0, 2**16))
def test_similarity_sums_of_sorted_rows_equal_any_order(n: int, k: int, seed: int) -> None:
    z, y = random_teacher(n, k, seed=seed)
    order = np.argsort(y, kind="stable")
    a = similarity_accumulator(k).update(z, y).finalize(warn_absent=False)
    b = similarity_accumulator(k).update(z[order], y[order]).finalize(warn_absent=False)
    np.testing.assert_allclose(b.matrix, a.matrix, rtol=1e-12, atol=1e-15)
    assert b.similarity_information == pytest.approx(a.similarity_information, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(0, 9), min_size=1, max_size=50), sort=st.booleans())
def test_unique_inverse_is_numpys(labels: list[int], sort: bool) -> None:
    y = np.array(sorted(labels) if sort else labels, dtype=np.int64)
    got, want = _unique_inverse(y), np.unique(y, return_inverse=True)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def _store(path: Path) -> Path:
    for ep in (1, 2):
        with CheckpointWriter(
            path / f"ep{ep}.parquet", run="r", checkpoint=f"ep{ep}", num_classes=K, epoch=ep
        ) as w:
            for i, split in enumerate(("train", "val")):
                z, y = random_teacher(2_000, K, seed=10 * ep + i, scale=2.0 + ep)
                w.write(z, split=split, labels=y, example_ids=np.arange(2_000) + 10_000 * i)
    return path


def test_the_pass_sorts_large_k_batches_without_changing_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path / "store")
    calls: list[bool] = []
    real = kernel._label_order

    def spy(y: np.ndarray, step: int) -> np.ndarray | None:
        order = real(y, step)
        calls.append(order is not None)
        return order

    monkeypatch.setattr(kernel, "_label_order", spy)
    sorted_ = analyze(store, per_example_path=tmp_path / "sorted.parquet")
    assert calls and all(calls)  # every batch took the sorted path
    monkeypatch.setattr(kernel, "_SORT_BELOW_ROWS", 0)
    calls.clear()
    plain = analyze(store, per_example_path=tmp_path / "plain.parquet")
    assert calls and not any(calls)
    for name in ("summary", "classes", "similarity"):
        a, b = getattr(plain, name), getattr(sorted_, name)
        assert a.columns == b.columns and a.height == b.height
        for c in a.columns:
            if a[c].dtype.is_float():
                np.testing.assert_allclose(b[c].to_numpy(), a[c].to_numpy(), rtol=1e-9, atol=1e-12)
            else:
                assert a[c].equals(b[c]), (name, c)
    # Per-example rows come back in the store's order, with the same values.
    ea, eb = (
        pl.read_parquet(tmp_path / "plain.parquet"),
        pl.read_parquet(tmp_path / "sorted.parquet"),
    )
    assert ea["example_id"].equals(eb["example_id"])
    for c in ea.columns:
        if ea[c].dtype.is_float():
            np.testing.assert_allclose(eb[c].to_numpy(), ea[c].to_numpy(), rtol=1e-12, atol=1e-15)
        else:
            assert ea[c].equals(eb[c]), c
