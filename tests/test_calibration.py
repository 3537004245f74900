"""Calibration: NLL, ECE, reliability table, temperature fit, streaming versions."""

from __future__ import annotations

import inputs
import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import log_loss

from kdlens.errors import InputError
from kdlens.measures.calibration import (
    TemperatureFitAccumulator,
    expected_calibration_error,
    fit_temperature,
    nll_loss,
    reliability_table,
)


def _ece_reference(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """An independent ECE: loop over bins with explicit edges."""
    conf = p.max(axis=1)
    acc = p.argmax(axis=1) == y
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        m = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= hi))
        if m.any():
            total += m.sum() / len(y) * abs(acc[m].mean() - conf[m].mean())
    return total


@pytest.mark.parametrize("n_bins", [1, 10, 15])
@pytest.mark.parametrize("t", [1.0, 2.0])
def test_ece_matches_reference(n_bins, t):
    z, y = inputs.random_teacher(n=700, k=6)
    p = softmax(z.astype(float) / t, axis=1)
    got = expected_calibration_error(z, y, n_bins=n_bins, temperature=t)
    assert got == pytest.approx(_ece_reference(p, y, n_bins), rel=1e-9, abs=1e-12)


def test_nll_matches_sklearn():
    z, y = inputs.random_teacher(n=400, k=7)
    ref = log_loss(y, softmax(z.astype(float), axis=1), labels=np.arange(7))
    assert nll_loss(z, y) == pytest.approx(ref, rel=1e-9)


def test_reliability_table():
    z, y = inputs.random_teacher(n=500, k=5)
    tab = reliability_table(z, y, n_bins=10)
    assert tab.columns == ["bin", "lower", "upper", "count", "confidence", "accuracy"]
    assert tab["count"].sum() == 500 and tab.height == 10
    filled = tab.filter(tab["count"] > 0)
    assert (
        (filled["confidence"] >= filled["lower"]) & (filled["confidence"] <= filled["upper"])
    ).all()
    assert tab.filter(tab["count"] == 0)["accuracy"].null_count() == (tab["count"] == 0).sum()


def test_one_hot_correct_teacher_is_perfectly_calibrated():
    z, y = inputs.one_hot_teacher(n=100, k=4)
    assert expected_calibration_error(z, y) == 0.0
    assert nll_loss(z, y) == 0.0


@pytest.mark.parametrize("t_true", [0.5, 3.0])
def test_fit_temperature_recovers_the_scale(t_true):
    rng = np.random.default_rng(1)
    n, k = 6000, 10
    base = rng.normal(0, 2.0, size=(n, k))
    y = np.array([rng.choice(k, p=p) for p in softmax(base, axis=1)])
    t = fit_temperature((base * t_true).astype(np.float32), y)
    assert t == pytest.approx(t_true, rel=0.08)


def test_fit_temperature_bad_bounds():
    z, y = inputs.random_teacher(n=20, k=3)
    with pytest.raises(InputError, match="bounds"):
        fit_temperature(z, y, bounds=(2.0, 1.0))


def test_temperature_sample_is_bounded_and_small_splits_are_used_whole():
    # Order and chunking of the sample: tests/test_accumulators.py.
    z, y = inputs.random_teacher(n=1000, k=5)
    ids = np.arange(1000) * 3
    assert TemperatureFitAccumulator(5, max_rows=300).update(z, y, ids).n == 300
    full = TemperatureFitAccumulator(5).update(z, y, ids)
    assert full.n == 1000
    assert full.finalize() == pytest.approx(fit_temperature(z, y), rel=1e-9)


@pytest.mark.parametrize("duplicates", [False, True])
def test_temperature_sample_is_the_smallest_hashes_whatever_the_batches(duplicates):
    """Batches of every size (smaller and larger than the bound, candidates kept pending
    between merges) give exactly the rows with the smallest (hash, id), in that order;
    rows sharing an id keep their order of arrival (as a stable lexsort would)."""
    from kdlens._internal.hashing import splitmix64

    z, y = inputs.random_teacher(n=3000, k=4)
    ids = np.random.default_rng(3).permutation(3000).astype(np.int64) * 5
    if duplicates:
        ids[1::2] = ids[::2]
    acc = TemperatureFitAccumulator(4, max_rows=120)
    for lo, hi in [(0, 1), (1, 8), (8, 500), (500, 530), (530, 2990), (2990, 3000)]:
        acc.update(z[lo:hi], y[lo:hi], ids[lo:hi])
    want = np.lexsort((ids, splitmix64(ids)))[:120]
    got_ids, got_z, got_y = acc.sample
    np.testing.assert_array_equal(got_ids, ids[want])
    np.testing.assert_array_equal(got_z, z[want].astype(np.float32))
    np.testing.assert_array_equal(got_y, y[want])
