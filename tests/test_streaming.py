"""Streaming soft-label accumulator: its means against the per-example columns.

The protocol tests (merge = one pass, order, chunking, shift) are in test_accumulators.py.
"""

from __future__ import annotations

import inputs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlens.errors import InputError
from kdlens.measures import softlabels as sl
from kdlens.measures.summary import MEAN_COLUMNS, SoftLabelAccumulator


def _assert_same(a, b):
    assert (a.n, a.n_labeled) == (b.n, b.n_labeled)
    for c in MEAN_COLUMNS:
        assert a.means[c] == pytest.approx(b.means[c], rel=1e-12, abs=1e-15, nan_ok=True), c
    np.testing.assert_array_equal(a.class_counts, b.class_counts)
    for c, v in a.class_means.items():
        np.testing.assert_allclose(v, b.class_means[c], rtol=1e-12, atol=1e-15, err_msg=c)
    assert a.calibration.ece == pytest.approx(b.calibration.ece, rel=1e-12, abs=1e-15, nan_ok=True)
    np.testing.assert_array_equal(a.calibration.table["count"], b.calibration.table["count"])


def test_means_match_per_example_columns():
    z, y = inputs.random_teacher(n=500, k=7)
    s = SoftLabelAccumulator(7, temperature=2.0, oemc_delta=0.1).update(z, y).finalize()
    df = sl.per_example(z, y, temperature=2.0, oemc_delta=0.1)
    for c in MEAN_COLUMNS:
        assert s.means[c] == pytest.approx(float(df[c].cast(float).mean()), rel=1e-12), c
    row = s.as_row()
    assert row["accuracy"] == pytest.approx(np.mean(np.argmax(z, 1) == y))
    assert row["oemc_delta"] == 0.1 and row["temperature"] == 2.0 and row["ece_bins"] == 15
    per_class = s.classes_frame()
    for c in range(7):
        m = y == c
        assert per_class["dark_mass"][c] == pytest.approx(df["dark_mass"].to_numpy()[m].mean())
        assert per_class["count"][c] == m.sum()


def test_missing_labels_only_affect_label_dependent_means():
    z, y = inputs.random_teacher(n=100, k=4)
    y2 = y.copy()
    y2[:30] = -1
    s = SoftLabelAccumulator(4).update(z, y2).finalize()
    assert s.n == 100 and s.n_labeled == 70
    assert s.means["entropy"] == pytest.approx(np.mean(sl.entropy(z)))
    assert s.means["dark_mass"] == pytest.approx(np.mean(sl.dark_mass(z[30:], y[30:])))


def test_absent_class_means_are_nan():
    z, y = inputs.random_teacher(n=90, k=4)
    keep = y != 2
    s = SoftLabelAccumulator(4).update(z[keep], y[keep]).finalize()
    assert s.class_counts[2] == 0 and np.isnan(s.class_means["dark_mass"][2])
    assert s.classes_frame()["dark_mass"][2] is None


def test_update_refuses_other_k():
    # Merge refusals, order, chunking and shift invariance: tests/test_accumulators.py.
    with pytest.raises(InputError, match="columns"):
        SoftLabelAccumulator(4).update(np.zeros((2, 5)), np.zeros(2, int))


def _checkpoint_scalars(z, y, t):
    """Every per-checkpoint scalar the analysis reports from the accumulators."""
    from kdlens.measures.similarity import SimilarityAccumulator

    s = SoftLabelAccumulator(z.shape[1], temperature=t).update(z, y).finalize()
    sim = SimilarityAccumulator(z.shape[1], temperature=t).update(z, y).finalize(warn_absent=False)
    out = {k: v for k, v in s.as_row().items() if isinstance(v, float)}
    out["si"] = sim.similarity_information
    out["ii"] = sim.instance_information
    return out


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 120),
    k=st.integers(2, 8),
    t=st.sampled_from([0.5, 1.0, 3.0]),
)
def test_checkpoint_scalars_ignore_class_names(seed, n, k, t):
    # Example order and logit shifts: tests/test_accumulators.py, for every accumulator.
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, k)) * 3).astype(np.float64)
    y = rng.integers(0, k, n)
    base = _checkpoint_scalars(z, y, t)
    pi = rng.permutation(k)
    other = _checkpoint_scalars(z[:, pi], np.argsort(pi)[y], t)
    for name, v in base.items():
        assert other[name] == pytest.approx(v, rel=1e-9, abs=1e-12, nan_ok=True), name
