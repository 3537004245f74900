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
    from kdlens.measures.similarity.spread import add_entries, empty_histogram

    k = z.shape[1]
    q = np.exp(_nontarget_logq(z, y, 1.0))
    q_nt = q[np.arange(k)[None, :] != y[:, None]].reshape(len(y), k - 1)
    counts = np.bincount(y, minlength=k)
    hist = empty_histogram(k)
    add_entries(hist, q, y)
    ex = st._compute_exact_null(q_nt, y, k, b, np.random.default_rng(1))
    an = st._compute_analytic_null(counts, hist, k, 2000, np.random.default_rng(2))
    return ex, an


@pytest.mark.parametrize(
    "name,data,b",
    [
        ("60 per class", lambda: inputs.random_teacher(n=600, k=10, seed=3, scale=3.0), 300),
        ("30 per class", lambda: inputs.random_teacher(n=300, k=10, seed=4, scale=1.0), 300),
        ("noisy smoothing", lambda: inputs.noisy_label_smoothing_teacher(n=600, k=20, seed=5), 300),
        # The cases the earlier gamma null missed by -3.3 and +0.6 sd (sd 1.6x).
        ("very peaked", lambda: inputs.random_teacher(n=900, k=30, seed=7, scale=6.0), 300),
        ("10 per class", lambda: inputs.random_teacher(n=500, k=50, seed=8, scale=3.0), 150),
    ],
)
def test_analytic_null_within_its_stated_error_of_the_permutation_null(name, data, b):
    """The module docstring's statement: null mean within 0.6 permutation-null sd, sd within
    0.9-1.15x (here with a margin for B <= 300 draws: 0.8-1.25x), 95 % quantile within
    0.6 sd."""
    z, y = data()
    ex, an = _moments(np.asarray(z), np.asarray(y), b)
    sd = ex.std()
    assert abs(an.mean() - ex.mean()) < 0.6 * sd, name
    assert 0.8 < an.std() / sd < 1.25, name
    assert abs(np.quantile(an, 0.95) - np.quantile(ex, 0.95)) < 0.6 * sd, name


def test_analytic_class_moments_special_cases():
    """A uniform class has SI_c = 0 exactly; a class of one example has no variance and
    its SI_c is that example's KL(q ‖ U); a pair's variance is the Monte Carlo one."""
    from kdlens.hypotheses.structure_null import class_null_moments
    from kdlens.measures.similarity.spread import add_entries, empty_histogram

    m, rng = 20, np.random.default_rng(0)
    q = np.zeros((4, m + 1))
    q[0, 1:] = 1 / m  # class 0: uniform
    q[1, 1:] = rng.dirichlet(np.full(m, 0.3))  # class 1: one example
    q[2:, 1:] = rng.dirichlet(np.full(m, 0.5), size=2)  # class 2: two examples
    y = np.array([0, 1, 2, 2])
    hist = empty_histogram(m + 1)
    add_entries(hist, q, y)
    mean, var = class_null_moments(hist[:3], np.array([1, 1, 2]), m)
    assert mean[0] == 0.0 and var[0] == 0.0 and var[1] == 0.0
    row = q[1, 1:]
    # The histogram's bins pool entries (two atoms per bin): ~1 % of the KL.
    assert mean[1] == pytest.approx(float((row * np.log(row * m)).sum()), rel=0.02)
    perm = np.argsort(rng.random((20_000, 2, m)), axis=2)
    rows = np.take_along_axis(np.broadcast_to(q[2:, 1:], (20_000, 2, m)), perm, axis=2).mean(1)
    si = (rows * np.log(rows * m)).sum(1)
    assert mean[2] == pytest.approx(si.mean(), rel=0.05)
    assert var[2] == pytest.approx(si.var(), rel=0.3)


def test_entry_histogram_sums_and_merge():
    """Per class the histogram holds n·(K−1) entries, Σ q = n and Σ q² = the power sum,
    and batches add up to the whole."""
    from kdlens.measures.similarity.matrix import _nontarget_logq
    from kdlens.measures.similarity.spread import add_entries, empty_histogram

    z, y = inputs.random_teacher(n=300, k=7, seed=1, scale=8.0)
    q = np.exp(_nontarget_logq(np.asarray(z), y, 1.0))
    whole, parts = empty_histogram(7), empty_histogram(7)
    add_entries(whole, q, y)
    add_entries(parts, q[:100], y[:100])
    add_entries(parts, q[100:], y[100:])
    np.testing.assert_allclose(parts, whole, rtol=1e-12, atol=1e-300)
    counts = np.bincount(y, minlength=7)
    np.testing.assert_array_equal(whole[:, :, 0].sum(1), counts * 6)
    np.testing.assert_allclose(whole[:, :, 1].sum(1), counts, rtol=1e-12)
    sq = np.bincount(y, weights=(q * q).sum(1), minlength=7)
    np.testing.assert_allclose(whole[:, :, 2].sum(1), sq, rtol=1e-12)


def test_analytic_null_at_imagenet_validation_shape_is_cheap():
    """K = 1,000 classes of 50: the null's cost does not depend on n (closed forms), so
    B = 1,000 draws are a few million gamma variates (the benchmark README has times)."""
    import kdlens.hypotheses.structure as st
    from kdlens.measures.similarity.spread import add_entries, empty_histogram

    k, rng = 1000, np.random.default_rng(0)
    z = 3.0 * rng.standard_normal((50, k))  # one class's peaked rows, the same for all
    q = np.exp(z - z.max(1, keepdims=True))
    q[:, 0] = 0.0
    q /= q.sum(1, keepdims=True)
    one = empty_histogram(k)
    add_entries(one, q, np.zeros(50, np.int64))
    hist = np.broadcast_to(one[:1], (k, *one.shape[1:]))
    counts = np.full(k, 50)
    null = st._compute_analytic_null(counts, hist, k, 1000, np.random.default_rng(0))
    assert null.shape == (1000,) and np.isfinite(null).all() and null.std() > 0


@pytest.mark.parametrize("levels", [1, 3])
def test_fewer_levels_at_large_k_bound_memory_and_still_merge_exactly(levels, monkeypatch):
    """Large K gets fewer sampling levels (memory); the sample still depends only on the
    data, and classes keep at least as many rows as with every level."""
    from kdlens.measures.similarity import spread
    from kdlens.measures.similarity.matrix import _nontarget_logq

    assert spread.levels_for(10) == spread.LEVELS
    for k in (1000, 5000):
        assert k * spread.levels_for(k) * spread.N_BINS * 3 * 8 <= spread.HIST_BYTES
    assert spread.levels_for(21841) == 1  # one level is the least (2 KB per class)
    k = 6
    z, y = inputs.random_teacher(n=6000, k=k, seed=2, scale=3.0)
    q = np.exp(_nontarget_logq(np.asarray(z), y, 1.0))
    sq = np.einsum("ij,ij->i", q, q)
    monkeypatch.setattr(spread, "HIST_BYTES", k * levels * spread.N_BINS * 3 * 8)
    whole = spread.EntryHistogram(k)
    assert whole.levels == levels
    whole.add(q, y, sq)
    a, b = spread.EntryHistogram(k), spread.EntryHistogram(k)
    for lo, hi in ((0, 37), (37, 2500), (2500, 6000)):
        (a if lo < 2500 else b).add(q[lo:hi], y[lo:hi], sq[lo:hi])
    b.merge(a)
    np.testing.assert_allclose(b.pooled(), whole.pooled(), rtol=1e-12)
    every = spread.EntryHistogram(k, levels=spread.LEVELS)
    every.add(q, y, sq)
    assert (whole.pooled()[:, :, 0].sum(1) >= every.pooled()[:, :, 0].sum(1)).all()


def test_entry_sample_is_the_same_however_the_data_are_split():
    """Above SAMPLE_ROWS examples per class the histogram keeps a hashed sample of rows; the
    kept set depends only on the data (batches, merge order), and the null from it is the
    null from all rows to within a fraction of its sd."""
    from kdlens.hypotheses.structure_null import class_null_moments
    from kdlens.measures.similarity.matrix import _nontarget_logq
    from kdlens.measures.similarity.spread import (
        SAMPLE_ROWS,
        EntryHistogram,
        add_entries,
        empty_histogram,
    )

    k = 6
    z, y = inputs.random_teacher(n=6000, k=k, seed=2, scale=3.0)
    q = np.exp(_nontarget_logq(np.asarray(z), y, 1.0))
    sq = np.einsum("ij,ij->i", q, q)
    whole = EntryHistogram(k)
    whole.add(q, y, sq)
    a, b = EntryHistogram(k), EntryHistogram(k)
    for lo, hi in ((0, 37), (37, 2500), (2500, 2501), (2501, 6000)):
        (a if lo < 2500 else b).add(q[lo:hi], y[lo:hi], sq[lo:hi])
    b.merge(a)
    np.testing.assert_allclose(b.pooled(), whole.pooled(), rtol=1e-12)  # sums: rounding
    kept = whole.pooled()[:, :, 0].sum(1) / (k - 1)
    counts = np.bincount(y, minlength=k)
    assert (kept >= SAMPLE_ROWS).all() and (kept < 0.6 * counts).all()  # sampled, not all
    full = empty_histogram(k)
    add_entries(full, q, y)
    m_all, v_all = class_null_moments(full, counts, k - 1)
    m_kept, v_kept = class_null_moments(whole.pooled(), counts, k - 1)
    sd = math.sqrt(v_all.sum()) / k
    assert abs(m_kept.mean() - m_all.mean()) < 0.25 * sd
    assert math.sqrt(v_kept.sum() / v_all.sum()) == pytest.approx(1.0, abs=0.1)


def test_histograms_sharing_a_parts_counts_bin_fewer_rows_and_pool_the_same(monkeypatch):
    """Histograms of one part that share :class:`PartLevels` (the pass's slots and tasks)
    skip rows below the part's running base sooner: fewer entries binned, the same pooled
    sample bit for bit, whatever order the batches come in (also where a batch is binned
    in several chunks: they are cut before the rows are filtered)."""
    from kdlens.measures.similarity import spread
    from kdlens.measures.similarity.matrix import _nontarget_logq
    from kdlens.measures.similarity.spread import EntryHistogram, PartLevels

    monkeypatch.setattr(spread, "_CHUNK", 6 * 97)  # 97 rows per chunk: 16 per batch

    k = 6
    z, y = inputs.random_teacher(n=12_000, k=k, seed=3, scale=3.0)
    q = np.exp(_nontarget_logq(np.asarray(z), y, 1.0))
    sq = np.einsum("ij,ij->i", q, q)
    cuts = [(lo, lo + 1500) for lo in range(0, 12_000, 1500)]

    def run(shared: bool, order: list[int]) -> tuple[np.ndarray, float]:
        levels = PartLevels(k, EntryHistogram(k).levels) if shared else None
        hists = []
        for i in order:  # one fresh histogram per batch, as one slot of one task each
            h = EntryHistogram(k)
            h.shared = levels
            lo, hi = cuts[i]
            h.add(q[lo:hi], y[lo:hi], sq[lo:hi])
            hists.append((i, h))
        hists.sort(key=lambda ih: ih[0])  # merged in plan order, as the pass does
        first = hists[0][1]
        for _, h in hists[1:]:
            first.merge(h)
        return first.pooled(), float(first.hist[..., 0].sum())

    alone, binned_alone = run(False, list(range(8)))
    for order in (list(range(8)), list(range(8))[::-1]):
        shared, binned_shared = run(True, order)
        np.testing.assert_array_equal(shared, alone)
        assert binned_shared < 0.6 * binned_alone
