"""Per-example soft-label quantities: science.md invariants, references, edge cases."""

from __future__ import annotations

from collections.abc import Callable

import inputs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, softmax
from scipy.stats import entropy as sp_entropy
from sklearn.metrics import log_loss

from kdlens.errors import InputError
from kdlens.measures import softlabels as sl

# Registry of per-example metrics: name -> f(logits, labels, T) -> (n,) array.
# Invariance tests loop over it instead of repeating one test per metric.
PER_EXAMPLE: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "entropy": lambda z, y, t: sl.entropy(z, temperature=t),
    "entropy_normalized": lambda z, y, t: sl.entropy(z, temperature=t, normalized=True),
    "effective_classes": lambda z, y, t: sl.effective_classes(z, temperature=t),
    "target_prob": lambda z, y, t: sl.target_prob(z, y, temperature=t),
    "dark_mass": lambda z, y, t: sl.dark_mass(z, y, temperature=t),
    "log_dark_mass": lambda z, y, t: sl.log_dark_mass(z, y, temperature=t),
    "nontarget_entropy": lambda z, y, t: sl.nontarget_entropy(z, y, temperature=t),
    "nontarget_entropy_normalized": lambda z, y, t: sl.nontarget_entropy(
        z, y, temperature=t, normalized=True
    ),
    "nckd_weight": lambda z, y, t: sl.nckd_weight(z, y, temperature=t),
    "tckd_target": lambda z, y, t: sl.tckd_weight(z, y, temperature=t)[:, 0],
    "correct": lambda z, y, t: sl.correct(z, y).astype(float),
    "nll": lambda z, y, t: sl.nll(z, y),
    "margin": lambda z, y, t: sl.margin(z, y),
    "oemc": lambda z, y, t: sl.oemc(z, y, temperature=t).astype(float),
}
# Sorted per-example values are invariant under class renaming (a set of numbers).
ROWWISE_SORTED: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "probs": lambda z, y, t: np.sort(sl.probs(z, temperature=t), axis=1),
    "nontarget_probs": lambda z, y, t: np.sort(sl.nontarget_probs(z, y, temperature=t), axis=1),
}
ALL = {**PER_EXAMPLE, **ROWWISE_SORTED}

cases = st.tuples(
    st.integers(0, 2**31 - 1),  # seed
    st.integers(1, 40),  # n
    st.integers(2, 12),  # K
    st.sampled_from([0.5, 1.0, 2.0, 4.0]),  # T
    st.sampled_from([0.5, 3.0, 20.0]),  # logit scale
)


def _draw(case):
    seed, n, k, t, scale = case
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, k)) * scale).astype(np.float32)
    y = rng.integers(0, k, n)
    return rng, z, y, t


@settings(max_examples=40, deadline=None)
@given(cases)
def test_permuting_examples_permutes_every_metric(case):
    rng, z, y, t = _draw(case)
    perm = rng.permutation(z.shape[0])
    for name, f in ALL.items():
        np.testing.assert_allclose(
            f(z[perm], y[perm], t), f(z, y, t)[perm], rtol=1e-12, atol=1e-12, err_msg=name
        )


@settings(max_examples=40, deadline=None)
@given(cases)
def test_renaming_classes_consistently_changes_nothing(case):
    rng, z, y, t = _draw(case)
    k = z.shape[1]
    pi = rng.permutation(k)  # new class j is old class pi[j]
    inv = np.argsort(pi)
    z2, y2 = z[:, pi], inv[y]
    for name, f in ALL.items():
        np.testing.assert_allclose(f(z2, y2, t), f(z, y, t), rtol=1e-9, atol=1e-12, err_msg=name)


@settings(max_examples=40, deadline=None)
@given(cases, st.floats(-50, 50))
def test_adding_a_constant_to_an_examples_logits_changes_nothing(case, shift):
    rng, z, y, t = _draw(case)
    # Exactly representable shifts so float32 storage adds no rounding of its own.
    c = np.round(rng.uniform(-1, 1, size=(z.shape[0], 1)) * shift).astype(np.float32)
    z64 = z.astype(np.float64)
    for name, f in ALL.items():
        np.testing.assert_allclose(
            f(z64 + c, y, t), f(z64, y, t), rtol=1e-7, atol=1e-9, err_msg=name
        )


@pytest.mark.parametrize("t", [0.5, 1.0])
def test_one_hot_teacher_has_no_dark_mass(t):
    z, y = inputs.one_hot_teacher(n=200, k=10)
    assert np.all(sl.dark_mass(z, y, temperature=t) == 0.0)
    assert sl.oemc_share(z, y, temperature=t) == 0.0
    np.testing.assert_array_equal(sl.effective_classes(z, temperature=t), 1.0)
    np.testing.assert_array_equal(sl.target_prob(z, y, temperature=t), 1.0)
    # q is still defined (uniform over the equal non-target logits), never NaN.
    np.testing.assert_allclose(sl.nontarget_entropy(z, y, temperature=t), np.log(9), rtol=1e-12)


def test_label_smoothing_teacher_has_uniform_nontarget_distribution():
    z, y = inputs.label_smoothing_teacher(n=300, k=7)
    q = sl.nontarget_probs(z, y, temperature=2.0)
    off = np.ones_like(q, bool)
    off[np.arange(len(y)), y] = False
    np.testing.assert_allclose(q[off], 1 / 6, rtol=1e-12)
    np.testing.assert_allclose(sl.nontarget_entropy(z, y, normalized=True), 1.0, rtol=1e-12)


@pytest.mark.parametrize("name", list(inputs.NAMED_TEACHERS))
@pytest.mark.parametrize("t", [1.0, 3.0])
def test_against_scipy_references(name, t):
    z, y = inputs.NAMED_TEACHERS[name]()
    p = softmax(z.astype(np.float64) / t, axis=1)
    rows = np.arange(len(y))
    np.testing.assert_allclose(sl.probs(z, temperature=t), p, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(
        sl.entropy(z, temperature=t), sp_entropy(p, axis=1), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(sl.target_prob(z, y, temperature=t), p[rows, y], rtol=1e-12)
    q = p.copy()
    q[rows, y] = 0.0
    mass = q.sum(axis=1)
    ok = mass > 1e-200  # where the reference itself has not underflowed
    np.testing.assert_allclose(sl.dark_mass(z, y, temperature=t)[ok], mass[ok], rtol=1e-9)
    qn = q[ok] / mass[ok, None]
    np.testing.assert_allclose(
        sl.nontarget_probs(z, y, temperature=t)[ok], qn, rtol=1e-9, atol=1e-300
    )
    np.testing.assert_allclose(
        sl.nontarget_entropy(z, y, temperature=t)[ok], sp_entropy(qn, axis=1), rtol=1e-9, atol=1e-12
    )


def test_nll_matches_sklearn_log_loss():
    z, y = inputs.random_teacher(n=500, k=8)
    p = softmax(z.astype(np.float64), axis=1)
    assert np.mean(sl.nll(z, y)) == pytest.approx(log_loss(y, p, labels=np.arange(8)), rel=1e-9)


def test_correct_and_margin_match_argmax():
    z, y = inputs.random_teacher(n=500, k=8)
    np.testing.assert_array_equal(sl.correct(z, y), np.argmax(z, axis=1) == y)
    zz = z.astype(np.float64)
    other = zz.copy()
    other[np.arange(len(y)), y] = -np.inf
    np.testing.assert_allclose(
        sl.margin(z, y), zz[np.arange(len(y)), y] - other.max(1), rtol=1e-12, atol=1e-12
    )


def test_dark_mass_exact_when_target_prob_rounds_to_one():
    k = 5
    z = np.zeros((3, k))
    z[:, 0] = [40.0, 80.0, 700.0]
    y = np.zeros(3, np.int64)
    expected_log = -z[:, 0] + np.log(k - 1) - np.log1p((k - 1) * np.exp(-z[:, 0]))
    np.testing.assert_allclose(sl.log_dark_mass(z, y), expected_log, rtol=1e-12)
    # 1 - p_y by subtraction would be exactly 0 here.
    assert np.all(sl.dark_mass(z[:2], y[:2]) > 0)
    assert 1.0 - sl.target_prob(z, y)[1] == 0.0
    np.testing.assert_allclose(sl.nontarget_probs(z, y)[:, 1:], 0.25, rtol=1e-12)
    np.testing.assert_allclose(sl.tckd_weight(z, y).sum(axis=1), 1.0, rtol=1e-12)


def test_nontarget_log_probs_shape_and_target_column():
    z, y = inputs.random_teacher(n=50, k=6)
    lq = sl.nontarget_log_probs(z, y, temperature=2.0)
    assert lq.shape == (50, 6)
    assert np.all(np.isneginf(lq[np.arange(50), y]))
    np.testing.assert_allclose(np.exp(lq).sum(axis=1), 1.0, rtol=1e-12)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(lq, np.log(sl.nontarget_probs(z, y, temperature=2.0)))


def test_two_classes_are_degenerate_not_errors():
    z, y = inputs.random_teacher(n=40, k=2)
    np.testing.assert_array_equal(sl.nontarget_entropy(z, y), 0.0)
    np.testing.assert_array_equal(sl.nontarget_entropy(z, y, normalized=True), 0.0)
    q = sl.nontarget_probs(z, y)
    np.testing.assert_allclose(q[np.arange(40), 1 - y], 1.0, rtol=1e-15)
    df = sl.per_example(z, y)
    assert df.height == 40 and not df["nontarget_entropy_normalized"].is_nan().any()


def test_oemc_threshold():
    # dark masses 0.01, 0.05 (boundary counts as OEMC), 0.5
    d = np.array([0.01, 0.05, 0.5])
    z = np.log(np.stack([1 - d, d], axis=1))
    y = np.zeros(3, np.int64)
    np.testing.assert_array_equal(sl.oemc(z, y, delta=0.05), [False, True, True])
    assert sl.oemc_share(z, y, delta=0.05) == pytest.approx(2 / 3)
    assert sl.oemc_share(z, y, delta=0.6) == 0.0


@pytest.mark.parametrize("t", [1.0, 2.5])
def test_per_example_agrees_with_the_single_functions(t):
    z, y = inputs.random_teacher(n=300, k=9)
    df = sl.per_example(z, y, temperature=t, example_ids=np.arange(300) + 7)
    assert df["example_id"][0] == 7 and df["temperature"][0] == t
    for name in (
        "entropy",
        "entropy_normalized",
        "effective_classes",
        "target_prob",
        "dark_mass",
        "log_dark_mass",
        "nontarget_entropy",
        "nontarget_entropy_normalized",
        "nll",
        "margin",
    ):
        np.testing.assert_allclose(
            df[name].to_numpy(), PER_EXAMPLE[name](z, y, t), rtol=1e-10, atol=1e-12, err_msg=name
        )
    np.testing.assert_array_equal(df["correct"].to_numpy(), sl.correct(z, y))
    np.testing.assert_array_equal(df["oemc"].to_numpy(), sl.oemc(z, y, temperature=t))
    np.testing.assert_allclose(
        df["confidence"].to_numpy(), softmax(z.astype(float), 1).max(1), rtol=1e-12
    )


def test_per_example_missing_labels_are_nan():
    z, y = inputs.random_teacher(n=20, k=5)
    y = y.copy()
    y[:5] = -1
    df = sl.per_example(z, y)
    assert df["dark_mass"][:5].is_nan().all() and not df["dark_mass"][5:].is_nan().any()
    assert not df["entropy"].is_nan().any()
    np.testing.assert_allclose(df["entropy"].to_numpy(), sl.entropy(z), rtol=1e-12)


def test_log_probs_matches_scipy():
    z, _ = inputs.random_teacher(n=30, k=4)
    np.testing.assert_allclose(
        sl.log_probs(z, temperature=0.7), log_softmax(z.astype(float) / 0.7, axis=1), rtol=1e-12
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sl.entropy(np.array([[0.0, np.nan]])), "NaN/Inf"),
        (lambda: sl.entropy(np.zeros(3)), "2-D"),
        (lambda: sl.dark_mass(np.zeros((2, 3)), np.array([0, 3])), "found 3"),
        (lambda: sl.dark_mass(np.zeros((2, 3)), np.array([0])), "same length"),
        (lambda: sl.entropy(np.zeros((2, 3)), temperature=0.0), "temperature"),
        (lambda: sl.oemc(np.zeros((2, 3)), np.array([0, 1]), delta=2.0), "delta"),
    ],
)
def test_bad_input_raises_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()


def _label_rule_calls():
    """Every public function that takes labels, as f(logits, labels)."""
    from kdlens.hypotheses.compare import compare_students
    from kdlens.hypotheses.controls import control_log_probs
    from kdlens.hypotheses.structure import structure_test
    from kdlens.measures.calibration import fit_temperature, nll_loss
    from kdlens.measures.similarity import instance_information, similarity_matrix

    return {
        "dark_mass": sl.dark_mass,
        "nll": sl.nll,
        "nll_loss": nll_loss,
        "fit_temperature": fit_temperature,
        "similarity_matrix": similarity_matrix,
        "instance_information": instance_information,
        "control_log_probs": lambda z, y: control_log_probs(z, y, kind="ls"),
        "structure_test": lambda z, y: structure_test(z, y, n_permutations=5).p_value,
        "compare_students": lambda z, y: compare_students(z, z, labels=y).accuracy_a,
    }


@pytest.mark.parametrize("name", sorted(_label_rule_calls()))
def test_one_label_rule_everywhere(name):
    f = _label_rule_calls()[name]
    z, y = inputs.random_teacher(n=40, k=4)
    # Integral floats are the same labels.
    np.testing.assert_array_equal(np.asarray(f(z, y.astype(float))), np.asarray(f(z, y)))
    bad = y.astype(float)
    bad[5] = 1.5
    with pytest.raises(InputError, match=r"labels must be integers, found 1\.5 at index 5"):
        f(z, bad)
    out = y.copy()
    out[7] = 4
    if name != "compare_students":  # predictions carry no K: any class index is a label
        with pytest.raises(InputError, match=r"labels must lie in \[0, 4\).*found 4 at index 7"):
            f(z, out)
    missing = y.copy()
    missing[3] = -1
    if name == "structure_test":  # documents that it skips, and counts, unlabelled rows
        from kdlens.hypotheses.structure import structure_test

        assert structure_test(z, missing, n_permutations=5).n_unlabeled == 1
    else:
        with pytest.raises(InputError, match="-1 \\(missing\\), found at index 3"):
            f(z, missing)


@pytest.mark.parametrize("temperature", [2.0, 3.0, 4.0, 1.5, 20.0])
def test_nll_and_confidence_stay_at_t1_whatever_the_soft_label_temperature(
    temperature: float,
) -> None:
    # The T = 1 normaliser is derived from the tempered core (e ** T for integer T):
    # it must equal scipy's log-softmax at T = 1, for large logits too.
    rng = np.random.default_rng(7)
    z = rng.standard_normal((300, 40)) * np.array([[1.0], [30.0], [300.0]]).repeat(100, 0)
    y = rng.integers(0, 40, 300)
    cols = sl.per_example(z, y, temperature=temperature)
    ref = log_softmax(z, axis=1)
    np.testing.assert_allclose(cols["nll"], -ref[np.arange(300), y], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cols["confidence"], np.exp(ref).max(axis=1), rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.sampled_from([0.1, 3.0, 40.0, 400.0]),
    t=st.sampled_from([2, 3, 4, 8]),
)
def test_t1_core_derived_from_integer_t_matches_a_direct_pass(seed, scale, t):
    # The report's one pass measures T = 1 (analysis) and T = 4 (ranking); the T = 1
    # core is derived from the T = 4 one by squaring and must equal a direct pass.
    from kdlens.measures.core import _Core, _cores_for

    z, y = inputs.random_teacher(200, 7, seed=seed, scale=scale)
    derived = _cores_for(z, [1.0, float(t)])[1.0]
    direct = _Core(z, 1.0)
    np.testing.assert_allclose(derived.x, direct.x, rtol=1e-15, atol=1e-12 * scale)
    normal = direct.e > 1e-300  # below, both are subnormal or 0: compared absolutely
    # exp's relative error grows with |x| (the rounding of x / T, scaled back by T).
    np.testing.assert_allclose(derived.e[normal], direct.e[normal], rtol=1e-12)
    np.testing.assert_allclose(derived.e[~normal], direct.e[~normal], atol=1e-300)
    got, *_ = sl._per_example_core(z, y, 1.0, 0.01, derived)
    want, *_ = sl._per_example_core(z, y, 1.0, 0.01)
    for name, col in want.items():
        np.testing.assert_allclose(got[name], col, rtol=1e-12, atol=1e-12, err_msg=name)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.sampled_from([0.1, 3.0, 40.0, 400.0]),
    t=st.sampled_from([2, 3, 4, 7]),
)
def test_derived_t1_runner_up_from_the_base_target_is_bit_identical(seed, scale, t):
    # The pass forms both targets first (_shared_targets): the derived T = 1 target takes
    # its runner-up as a power of the base's instead of a second row maximum (same bits),
    # and the base's T = 1 normaliser is the T = 1 target's (last bits only).
    from kdlens.measures.core import _cores_for, _shared_targets

    z, y = inputs.random_teacher(300, 9, seed=seed, scale=scale)
    shared = _cores_for(z, [1.0, float(t)])
    targets = _shared_targets(shared, y)
    assert shared[1.0].base is shared[float(t)] and shared[float(t)].runner is not None
    got1, _, tg_got, _ = sl._per_example_core(z, y, 1.0, 0.01, shared[1.0], None, targets[1.0])
    got_t, *_ = sl._per_example_core(z, y, float(t), 0.01, shared[float(t)], None, targets[t])
    alone = _cores_for(z, [1.0, float(t)])
    alone[1.0].base = None  # the row maximum of the derived e itself
    want1, _, tg_want, _ = sl._per_example_core(z, y, 1.0, 0.01, alone[1.0])
    want_t, *_ = sl._per_example_core(z, y, float(t), 0.01, alone[float(t)])
    np.testing.assert_array_equal(tg_got.x_runner, tg_want.x_runner)
    for name, col in want1.items():
        np.testing.assert_array_equal(got1[name], col, err_msg=name)
    for name, col in want_t.items():
        np.testing.assert_allclose(got_t[name], col, rtol=1e-13, atol=1e-13, err_msg=name)
