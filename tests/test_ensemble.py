"""kdlens.recommend.ensemble and kdlens.store.mixture: greedy selection, rules, the writer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inputs import balanced_labels
from scipy.special import log_softmax, logsumexp, softmax

from kdlens.errors import InputError, StoreError
from kdlens.measures.calibration import fit_temperature, nll_loss
from kdlens.recommend.ensemble import recommend_with_ensemble, select_ensemble
from kdlens.recommend.ensemble_select import greedy_select
from kdlens.recommend.rank import recommend
from kdlens.store.mixture import combine, member_array, write_ensemble
from kdlens.store.reader import open_store
from kdlens.store.validate import validate
from kdlens.store.writer import CheckpointWriter

K = 5
SPLITS = ("train", "val", "test")


def _logits(rng: np.random.Generator, y: np.ndarray, acc: float, gap: float) -> np.ndarray:
    n = y.size
    z = rng.normal(0.0, 1.5, (n, K))
    pred = np.where(rng.random(n) < acc, y, rng.integers(0, K, n))
    z[np.arange(n), pred] += gap
    return z.astype(np.float32)


def make_store(root, *, c=5, n=300, splits=SPLITS, seed=0, same=None, accs=None):
    """``c`` checkpoints of noisy teachers; ``same``: every checkpoint's logits are copies of
    checkpoint 0's but the last (a much worse one)."""
    rng = np.random.default_rng(seed)
    ys = {s: balanced_labels(n, K, i) for i, s in enumerate(splits)}
    base = {s: _logits(rng, ys[s], 0.8, 3.0) for s in splits}
    for j in range(c):
        with CheckpointWriter(
            root / f"ck{j}.parquet", run=f"r{j % 2}", checkpoint=f"ck{j}", num_classes=K, epoch=j
        ) as w:
            for i, s in enumerate(splits):
                if same and j < c - 1:
                    z = base[s]
                elif same:
                    z = _logits(rng, ys[s], 0.3, 1.0)
                else:
                    z = _logits(rng, ys[s], (accs or {}).get(j, 0.6), 2.5)
                w.write(z, split=s, labels=ys[s], example_ids=np.arange(i * 10_000, i * 10_000 + n))
    return root


def _sub(tmp_path, name):
    (tmp_path / name).mkdir()
    return tmp_path / name


def _brute_greedy(arrays, y, steps, rule):
    """Greedy by recomputing every candidate mixture from scratch (the reference)."""
    picks, nlls = [], []
    for _ in range(steps):
        scores = []
        for j in range(arrays.shape[0]):
            counts = np.bincount(np.array([*picks, j]), minlength=arrays.shape[0])
            sel = np.flatnonzero(counts)
            mix = combine(arrays[sel], counts[sel], rule)
            t = fit_temperature(mix, y)
            scores.append(nll_loss(mix, y, temperature=t))
        picks.append(int(np.argmin(scores)))
        nlls.append(min(scores))
    return picks, nlls


@pytest.mark.parametrize("rule", ["mean_prob", "mean_prob_t", "mean_logit"])
def test_greedy_matches_brute_force(rule):
    rng = np.random.default_rng(3)
    y = balanced_labels(150, K, 0)
    z = np.stack([_logits(rng, y, a, 2.0) for a in (0.5, 0.6, 0.7, 0.55)])
    arrays = np.stack([member_array(zj, rule, 4.0) for zj in z])
    g = greedy_select(arrays, y, max_members=5, rule=rule)
    picks, nlls = _brute_greedy(arrays, y, 5, rule)
    assert g.picks == picks
    np.testing.assert_allclose(g.nll, nlls, rtol=1e-4)
    assert g.chosen == int(np.argmin(np.round(nlls, 6))) + 1


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    c=st.integers(2, 5),
    m=st.integers(1, 7),
    rule=st.sampled_from(["mean_prob", "mean_prob_t", "mean_logit"]),
)
def test_greedy_invariants(seed, c, m, rule):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, 80)
    arrays = np.stack([member_array(_logits(rng, y, 0.6, 2.0), rule, 4.0) for _ in range(c)])
    g = greedy_select(arrays, y, max_members=m, rule=rule)
    counts = g.counts(c)
    assert len(g.picks) == m and 1 <= g.chosen <= m
    assert counts.sum() == g.chosen
    w = counts[counts > 0] / counts.sum()
    assert math.isclose(w.sum(), 1.0)
    # The kept mixture is never worse than the best single checkpoint on the selection data.
    singles = [nll_loss(a, y, temperature=fit_temperature(a, y)) for a in arrays]
    assert g.nll[g.chosen - 1] <= min(singles) + 1e-6
    assert g.nll[0] == pytest.approx(min(singles), rel=1e-6)
    if m > c:  # more steps than candidates: some candidate is picked again (replacement)
        assert len(set(g.picks)) < len(g.picks)


def test_select_ensemble_result(tmp_path):
    ens = select_ensemble(make_store(tmp_path), max_members=6, n_bootstrap=50)
    assert ens.ok and ens.selection_split == "val"
    assert math.isclose(sum(ens.weights), 1.0)
    assert len(ens.members) == len(set(ens.members)) == len(ens.weights) == len(ens.counts)
    assert ens.path.height == 6 and ens.path["kept"].sum() == 1
    assert ens.path["inference_multiplier"].to_list() == ens.path["distinct"].to_list()
    kept = ens.path.filter("kept").row(0, named=True)
    assert kept["distinct"] == ens.n_members
    assert set(ens.comparison["split"]) == {"val", "test"}
    val = ens.comparison.filter(split="val", measure="nll_fit").row(0, named=True)
    assert val["mixture"] <= val["single"] + 1e-9
    assert val["low"] <= val["difference"] <= val["high"]
    assert ens.best_single == tuple(ens.path["added"][0].split("/"))
    assert "test" in ens.statement
    # This store's mixture is better beyond noise: the statement still says that is a claim
    # about the teacher, not about its students.
    assert "lowers the NLL" in ens.statement and "not a measured gain for students" in ens.statement
    d = ens.to_dict()
    assert d["inference_multiplier"] == ens.n_members
    assert {"members", "weights", "path", "comparison", "statement", "rule"} <= set(d)


def test_one_best_checkpoint_keeps_one_member(tmp_path):
    ens = select_ensemble(make_store(tmp_path, c=4, same=True), max_members=4, n_bootstrap=20)
    assert ens.n_members == 1 and ens.weights == [1.0]
    assert ens.best_single is not None and ens.members == [ens.best_single]
    assert "kept one checkpoint" in ens.statement


def test_no_val_selects_on_test_with_note(tmp_path):
    ens = select_ensemble(make_store(tmp_path, splits=("train", "test")), n_bootstrap=0)
    assert ens.selection_split == "test"
    assert any("no 'val' split" in n for n in ens.notes)
    assert math.isnan(ens.comparison["low"][0]) and "no bootstrap" in ens.statement


def test_bad_options_and_missing_split(tmp_path):
    root = make_store(tmp_path, splits=("train",))
    with pytest.raises(InputError, match="held-out split"):
        select_ensemble(root)
    root2 = make_store(_sub(tmp_path, "b"), c=2)
    with pytest.raises(InputError, match="rule"):
        select_ensemble(root2, rule="median")
    with pytest.raises(InputError, match="max_members"):
        select_ensemble(root2, max_members=0)


def test_memory_guard(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLENS_MEMORY_LIMIT", "1M")
    with pytest.raises(InputError, match="KDLENS_MEMORY_LIMIT"):
        select_ensemble(make_store(tmp_path, c=2))


def test_recommend_with_ensemble_one_pass_agrees(tmp_path):
    root = make_store(tmp_path)
    rec, ens = recommend_with_ensemble(root, n_bootstrap=30, max_members=4)
    alone = select_ensemble(root, n_bootstrap=30, max_members=4)
    plain = recommend(root, n_bootstrap=30)
    assert rec.recommended["checkpoint"] == plain.recommended["checkpoint"]
    assert ens.members == alone.members and ens.weights == alone.weights
    assert ens.comparison.equals(alone.comparison)


@pytest.mark.parametrize("rule", ["mean_prob", "mean_prob_t", "mean_logit"])
def test_write_ensemble_round_trip(tmp_path, rule):
    root = make_store(_sub(tmp_path, "s"), c=3)
    members = ["r0/ck0", ("r1", "ck1")]
    out = write_ensemble(root, members, tmp_path / "mix", weights=[3, 1], rule=rule)
    assert validate(out).ok
    mix = open_store(out)
    assert mix.keys() == [("ensemble", f"{rule.replace('_', '-')}-2")]
    assert sorted(mix.splits()) == sorted(SPLITS)
    meta = mix.checkpoint_metadata(*mix.keys()[0])["config"]["ensemble"]
    assert meta["members"] == ["r0/ck0", "r1/ck1"] and meta["weights"] == [0.75, 0.25]
    assert meta["rule"] == rule
    src = open_store(root)
    for split in SPLITS:
        b = mix.load(*mix.keys()[0], split)
        z0, z1 = (
            src.load(r, c, split).logits.astype(np.float64)
            for r, c in [("r0", "ck0"), ("r1", "ck1")]
        )
        if rule == "mean_prob":
            want = log_softmax(np.log(0.75 * softmax(z0, 1) + 0.25 * softmax(z1, 1)), axis=1)
            got = log_softmax(b.logits.astype(np.float64), axis=1)
            np.testing.assert_allclose(logsumexp(b.logits, axis=1), 0.0, atol=1e-5)
        elif rule == "mean_prob_t":
            want = 0.75 * softmax(z0 / 4, 1) + 0.25 * softmax(z1 / 4, 1)
            got = softmax(b.logits.astype(np.float64) / 4, axis=1)
        else:
            want, got = 0.75 * z0 + 0.25 * z1, b.logits
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert (b.labels == src.load("r0", "ck0", split).labels).all()


def test_write_ensemble_bad_input(tmp_path):
    root = make_store(_sub(tmp_path, "s"), c=2)
    with pytest.raises(InputError, match="'r9/ck9'"):
        write_ensemble(root, ["r0/ck0", "r9/ck9"], tmp_path / "m")
    with pytest.raises(InputError, match="RUN/CHECKPOINT"):
        write_ensemble(root, ["ck0"], tmp_path / "m")
    with pytest.raises(InputError, match="weights"):
        write_ensemble(root, ["r0/ck0", "r1/ck1"], tmp_path / "m", weights=[1.0])
    with pytest.raises(InputError, match="twice"):
        write_ensemble(root, ["r0/ck0", "r0/ck0"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_write_ensemble_mismatched_ids(tmp_path):
    y = balanced_labels(50, K, 0)
    rng = np.random.default_rng(0)
    for j in range(2):
        with CheckpointWriter(
            tmp_path / f"c{j}.parquet", run="r", checkpoint=f"c{j}", num_classes=K
        ) as w:
            w.write(
                _logits(rng, y, 0.6, 2.0), split="val", labels=y, example_ids=np.arange(j, j + 50)
            )
    with pytest.raises(StoreError, match="same example ids"):
        write_ensemble(tmp_path, ["r/c0", "r/c1"], tmp_path / "out" / "m.parquet")
    assert not list((tmp_path / "out").glob("*.parquet"))
