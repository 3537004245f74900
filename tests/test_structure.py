"""The structure test: calibration under the null, power, exact vs analytic."""

from __future__ import annotations

import math

import inputs
import numpy as np
import pytest

from kdlens.errors import InputError
from kdlens.hypotheses.structure import (
    StructureTestResult,
    structure_test,
    structure_test_from_result,
)
from kdlens.measures.similarity import SimilarityAccumulator


def _null_data(seed, n=300, k=8):
    return inputs.noisy_label_smoothing_teacher(n=n, k=k, seed=seed, noise=0.7)


@pytest.mark.parametrize("method,sims", [("analytic", 200), ("exact", 200)])
def test_calibrated_under_the_null(method, sims):
    """At alpha = 0.05 the test rejects a structureless teacher in at most 8% of runs."""
    pvals = np.array(
        [
            structure_test(*_null_data(s), n_permutations=200, seed=1000 + s, method=method).p_value
            for s in range(sims)
        ]
    )
    assert (pvals <= 0.05).mean() <= 0.08
    # and the p-values are not degenerate (a test that never rejects would pass above)
    assert 0.3 < pvals.mean() < 0.7


@pytest.mark.parametrize("method", ["analytic", "exact"])
def test_structured_teacher_rejects(method):
    z, y, _ = inputs.superclass_teacher(n_per_class=20)
    r = structure_test(z, y, n_permutations=200, method=method)
    assert r.p_value < 0.01
    assert r.p_value == pytest.approx(1 / 201)
    assert r.method == method
    assert r.effect_size == r.statistic > 0
    assert r.normalized_effect == pytest.approx(r.statistic / math.log(11))


def test_weak_structure_is_detected_with_enough_data():
    # random_teacher has no class-consistent structure either; add a small shared bump
    z, y = inputs.random_teacher(n=2000, k=10, seed=4, scale=1.0)
    z = z.copy()
    z[:, 0] += 0.3  # every class leans a little towards class 0
    assert structure_test(z, y, n_permutations=200).p_value < 0.01


def test_analytic_agrees_with_exact():
    z, y = inputs.noisy_label_smoothing_teacher(n=2000, k=12, seed=7, noise=1.0)
    z = z.copy()
    z[:, 1] += 0.05 * (y % 3)  # a faint structure so p lands mid-range or below
    ex = structure_test(z, y, n_permutations=400, seed=1, method="exact")
    an = structure_test(z, y, n_permutations=400, seed=1, method="analytic")
    assert ex.statistic == an.statistic
    assert an.null_mean == pytest.approx(ex.null_mean, rel=0.03)
    assert an.null_std == pytest.approx(ex.null_std, rel=0.15)
    assert abs(an.p_value - ex.p_value) < 0.1


def test_from_result_equals_array_analytic():
    z, y = inputs.random_teacher(n=800, k=10, seed=2)
    res = SimilarityAccumulator(10, temperature=2.0).update(z, y).finalize()
    a = structure_test_from_result(res, n_permutations=300, seed=5)
    b = structure_test(z, y, temperature=2.0, n_permutations=300, seed=5, method="analytic")
    assert a.method == "analytic" and a.temperature == 2.0
    assert a.statistic == pytest.approx(b.statistic, rel=1e-10)
    assert a.null_mean == pytest.approx(b.null_mean, rel=1e-9)
    assert a.p_value == b.p_value


def test_label_smoothing_teacher_p_is_one():
    z, y = inputs.label_smoothing_teacher()
    for method in ("exact", "analytic"):
        r = structure_test(z, y, n_permutations=50, method=method)
        assert r.statistic == 0.0 and r.p_value == 1.0


def test_two_classes_is_degenerate():
    z = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    r = structure_test(z, np.arange(40) % 2, n_permutations=10)
    assert r.method == "degenerate" and r.p_value == 1.0 and r.normalized_effect == 0.0


def test_auto_picks_by_size_and_is_deterministic():
    z, y = inputs.noisy_label_smoothing_teacher(n=300, k=8)
    r1 = structure_test(z, y, n_permutations=100, seed=3)
    r2 = structure_test(z, y, n_permutations=100, seed=3)
    assert r1 == r2 and r1.method == "exact"
    rng = np.random.default_rng(0)
    big_y = rng.integers(0, 50, 20_000)
    big_z = rng.normal(size=(20_000, 50)).astype(np.float32)
    assert structure_test(big_z, big_y, n_permutations=100).method == "analytic"
    assert isinstance(r1, StructureTestResult) and set(r1.to_dict()) >= {"p_value", "method"}


def test_bad_arguments():
    z, y = inputs.random_teacher(n=50, k=5)
    with pytest.raises(InputError, match="method"):
        structure_test(z, y, method="bootstrap")
    with pytest.raises(InputError, match="n_permutations"):
        structure_test(z, y, n_permutations=0)
    with pytest.raises(InputError, match="SimilarityResult"):
        structure_test_from_result(object())  # type: ignore[arg-type]


def _moments(z, y, b):
    """Null draws of SI: B genuine permutations and the analytic null, same data."""
    import kdlens.hypotheses.structure as st
    from kdlens.measures.similarity.matrix import _nontarget_logq

    k = z.shape[1]
    q = np.exp(_nontarget_logq(z, y, 1.0))
    q_nt = q[np.arange(k)[None, :] != y[:, None]].reshape(len(y), k - 1)
    counts = np.bincount(y, minlength=k)
    q_sqsum = np.bincount(y, weights=np.square(q_nt).sum(1), minlength=k)
    ex = st._compute_exact_null(q_nt, y, k, b, np.random.default_rng(1))
    an = st._compute_analytic_null(counts, q_sqsum, k, 2000, np.random.default_rng(2))
    return ex, an


@pytest.mark.parametrize(
    "name,data",
    [
        ("random, 60 per class", lambda: inputs.random_teacher(n=600, k=10, seed=3, scale=3.0)),
        ("random, 30 per class", lambda: inputs.random_teacher(n=300, k=10, seed=4, scale=1.0)),
        ("noisy smoothing", lambda: inputs.noisy_label_smoothing_teacher(n=600, k=20, seed=5)),
    ],
)
def test_analytic_null_within_its_stated_error_of_the_permutation_null(name, data):
    """The module docstring's statement: near-uniform to moderately peaked non-target
    distributions with >= 30 examples per class: null mean within 0.6 permutation-null sd,
    sd within 0.95-1.05x (here with a margin for B = 300 draws: 0.8-1.2x), 95 % quantile
    within 0.5 sd."""
    z, y = data()
    ex, an = _moments(np.asarray(z), np.asarray(y), 300)
    sd = ex.std()
    assert abs(an.mean() - ex.mean()) < 0.6 * sd, name
    assert 0.8 < an.std() / sd < 1.2, name
    assert abs(np.quantile(an, 0.95) - np.quantile(ex, 0.95)) < 0.5 * sd, name


def test_analytic_class_moments_are_the_gamma_models(monkeypatch):
    """The closed forms equal Monte Carlo of the model they state (gamma entries, row
    renormalised), and their series at large alpha continue them."""
    import kdlens.hypotheses.structure as st

    m, rng = 40, np.random.default_rng(0)
    alpha = np.array([0.3, 2.0, 50.0])
    mean, var = st._class_null_moments(alpha, m)
    for a, mu, v in zip(alpha, mean, var, strict=True):
        r = rng.gamma(a, 1 / (m * a), size=(50_000, m))
        r /= r.sum(1, keepdims=True)
        si = (r * np.log(r)).sum(1) + math.log(m)
        assert mu == pytest.approx(si.mean(), rel=0.12)
        assert v == pytest.approx(si.var(), rel=0.35)
    a = np.array([1.5 * st._SERIES_ALPHA])
    series = st._class_null_moments(a, m)
    monkeypatch.setattr(st, "_SERIES_ALPHA", 1e9)
    closed = st._class_null_moments(a, m)
    assert series[0] == pytest.approx(closed[0], rel=1e-6)
    assert series[1] == pytest.approx(closed[1], rel=1e-5)
    assert [float(x[0]) for x in st._class_null_moments(np.array([np.inf]), m)] == [0.0, 0.0]


def test_analytic_null_at_imagenet_validation_shape_is_cheap():
    """K = 1,000 classes of 50: the null's cost does not depend on n (closed forms), so
    B = 1,000 draws are a few million gamma variates (the benchmark README has times)."""
    import kdlens.hypotheses.structure as st

    k = 1000
    counts = np.full(k, 50)
    q_sqsum = counts * (5.0 / (k - 1))  # peaked rows: sum_j q_j^2 = 5 / m
    null = st._compute_analytic_null(counts, q_sqsum, k, 1000, np.random.default_rng(0))
    assert null.shape == (1000,) and np.isfinite(null).all() and null.std() > 0
