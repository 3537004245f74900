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


def test_series_null_for_large_k_matches_gaussian_draws(monkeypatch) -> None:
    """The chi-square series used at large K agrees with the full Gaussian null draws."""
    import kdlens.hypotheses.structure as st

    k, n_c = 400, 300
    m = k - 1
    counts = np.full(k, n_c)
    q_sqsum = counts * (1.0 / m) * (1.0 + 0.5**2)  # entries with a 50 % coefficient of variation
    monkeypatch.setattr(st, "_QUADRATIC_WORK", 0)
    series = st._compute_analytic_null(counts, q_sqsum, k, 2000, np.random.default_rng(0))
    monkeypatch.setattr(st, "_QUADRATIC_WORK", 10**18)
    full = st._compute_analytic_null(counts, q_sqsum, k, 400, np.random.default_rng(1))
    sd = full.std()
    assert abs(series.mean() - full.mean()) < 0.25 * sd
    assert 0.85 < series.std() / sd < 1.15
