"""kdlens.recommend.rank: ranking, bootstrap, edge-of-grid advice, bad input; validation metrics."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from inputs import balanced_labels, one_hot_teacher
from scipy import stats
from scipy.special import log_softmax, logsumexp

from kdlens._internal.hashing import poisson_weights
from kdlens.errors import InputError, StoreError
from kdlens.measures.calibration import TemperatureFitAccumulator
from kdlens.measures.softlabels import _compute_per_example
from kdlens.recommend.bootstrap import (
    N_BUCKETS,
    BootstrapExtra,
    bucket_of,
    refit_replicates,
    replicate_weights,
)
from kdlens.recommend.rank import checkpoint_signals, recommend, score_checkpoints
from kdlens.recommend.score import _collapse
from kdlens.recommend.students import evaluate_scores, kendall, regret, spearman, student_table
from kdlens.store.format import Batch
from kdlens.store.writer import CheckpointWriter, write_logits

K = 10


def _teacher(n: int, y: np.ndarray, *, gap: float, acc: float, seed: int) -> np.ndarray:
    """Noise logits plus a bump of ``gap`` on the label (prob ``acc``) or a random class."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.0, (n, K))
    pred = np.where(rng.random(n) < acc, y, rng.integers(0, K, n))
    z[np.arange(n), pred] += gap
    return z.astype(np.float32)


def _grid_store(tmp_path, cells, *, n=300, splits=("train", "val"), skip=()):
    """One file per cell; ``cells`` maps (batch_size, epoch) -> (train_gap, val_gap, val_acc)."""
    y_t = balanced_labels(n, K, 1)
    y_v = balanced_labels(n, K, 2)
    for i, ((bs, ep), (gap_t, gap_v, acc)) in enumerate(sorted(cells.items())):
        if (bs, ep) in skip:
            continue
        with CheckpointWriter(
            tmp_path / f"bs{bs}-ep{ep}.parquet",
            run=f"bs{bs}",
            checkpoint=f"ep{ep}",
            num_classes=K,
            epoch=ep,
            batch_size=bs,
        ) as w:
            if "train" in splits:
                w.write(
                    _teacher(n, y_t, gap=gap_t, acc=1.0, seed=10 + i),
                    split="train",
                    labels=y_t,
                    example_ids=np.arange(n),
                )
            if "val" in splits:
                w.write(
                    _teacher(n, y_v, gap=gap_v, acc=acc, seed=100 + i),
                    split="val",
                    labels=y_v,
                    example_ids=np.arange(10_000, 10_000 + n),
                )
    return tmp_path


# A sweet spot: bs64/ep4 is nearly as accurate as the most accurate (bs16/ep8) but its
# transfer split has not collapsed; the most accurate one is one-hot on its training set.
SWEET = {
    (16, 2): (3.0, 3.0, 0.70),
    (16, 8): (14.0, 4.0, 0.93),
    (64, 2): (2.5, 2.5, 0.65),
    (64, 4): (3.5, 3.5, 0.92),
    (256, 2): (2.0, 2.0, 0.55),
    (256, 4): (2.5, 2.5, 0.75),
}


def _summary(rows, temperature=4.0):
    """A synthetic ``analyze`` summary: rows of (run, ck, bs, ep, acc_val, dm_val, dm_train)."""
    out = []
    for run, ck, bs, ep, acc, dm_v, dm_t in rows:
        base = {
            "run": run,
            "checkpoint": ck,
            "epoch": ep,
            "step": None,
            "batch_size": bs,
            "n": 100,
            "temperature": temperature,
            "nll": 1 - acc,
            "entropy": dm_v,
            "oemc_share": 0.5,
            "similarity_information": 0.1,
            "fitted_temperature": 1.0,
        }
        out.append({**base, "split": "val", "accuracy": acc, "dark_mass": dm_v})
        out.append({**base, "split": "train", "accuracy": 1.0, "dark_mass": dm_t})
    return pl.DataFrame(out)


# --------------------------------------------------------------------------- score


def test_score_matches_definition():
    sig = {
        "nll_fit_heldout": np.array([0.3, 0.4]),
        "dark_mass_heldout": np.array([0.2, 0.3]),
        "dark_mass_transfer": np.array([0.02, 0.6]),
        "nll_fit_transfer": np.array([0.01, 0.01]),
    }
    s = score_checkpoints(sig, collapse_weight=0.05)
    assert s[0] == pytest.approx(-(0.3 + 0.05 * math.log(0.2 / 0.02)))
    # Transfer dark mass above held-out: no reward, no penalty.
    assert s[1] == pytest.approx(-0.4)
    # No held-out split: the transfer fallback, penalised below the OEMC threshold only.
    nan = np.array([np.nan, np.nan])
    f = score_checkpoints(
        {**sig, "nll_fit_heldout": nan, "dark_mass_heldout": nan}, collapse_weight=0.05
    )
    assert f[0] == pytest.approx(-(0.01 + 0.05 * math.log(0.05 / 0.02))) and f[1] == pytest.approx(
        -0.01
    )


def test_collapse_one_hot_is_large_not_nan():
    c = _collapse(np.array([0.3, np.nan]), np.array([0.0, 0.1]))
    assert c[0] > 100 and np.isnan(c[1])


def test_summary_ranking_known_answer():
    # ck "late" is most accurate but collapsed 5 nats on its transfer set; "mid" wins.
    rows = [
        ("r", "early", 64, 1, 0.80, 0.5, 0.5),
        ("r", "mid", 64, 4, 0.90, 0.3, 0.25),
        ("r", "late", 64, 16, 0.92, 0.2, 0.2 * math.exp(-5)),
    ]
    rec = recommend(_summary(rows), n_bootstrap=0, collapse_weight=0.02)
    assert rec.recommended is not None and rec.recommended["checkpoint"] == "mid"
    assert rec.ranking["checkpoint"].to_list() == ["mid", "late", "early"]
    assert rec.ranking["rank"].to_list() == [1, 2, 3]
    # With w = 0 the score is held-out accuracy and the late checkpoint wins.
    rec0 = recommend(_summary(rows), n_bootstrap=0, collapse_weight=0.0)
    assert rec0.recommended is not None and rec0.recommended["checkpoint"] == "late"
    assert "no bootstrap" in rec.reason.lower() or any("bootstrap" in n for n in rec.notes)


def test_summary_at_another_temperature_drops_the_collapse_term():
    rows = [
        ("r", "mid", 64, 4, 0.90, 0.3, 0.25),
        ("r", "late", 64, 16, 0.92, 0.2, 0.2 * math.exp(-5)),
    ]
    rec = recommend(_summary(rows, temperature=1.0), n_bootstrap=0, collapse_weight=0.02)
    assert rec.recommended is not None and rec.recommended["checkpoint"] == "late"
    assert any("collapse term is left out" in n for n in rec.notes)


def test_store_ranking_finds_sweet_spot(tmp_path):
    rec = recommend(_grid_store(tmp_path, SWEET), n_bootstrap=50, seed=0)
    assert rec.recommended is not None
    assert (rec.recommended["run"], rec.recommended["checkpoint"]) == ("bs64", "ep4")
    top_acc = rec.ranking.sort("accuracy_heldout", descending=True).row(0, named=True)
    assert (top_acc["run"], top_acc["checkpoint"]) == ("bs16", "ep8")
    assert rec.basis == "held-out + transfer"
    # Pareto front: nothing on it is dominated in (accuracy, SI).
    front = rec.pareto
    for r in front.iter_rows(named=True):
        dom = rec.ranking.filter(
            (pl.col("accuracy_heldout") >= r["accuracy_heldout"])
            & (pl.col("similarity_information_transfer") >= r["similarity_information_transfer"])
            & (
                (pl.col("accuracy_heldout") > r["accuracy_heldout"])
                | (pl.col("similarity_information_transfer") > r["similarity_information_transfer"])
            )
        )
        assert dom.height == 0


def test_store_signals_match_direct_computation(tmp_path):
    z, y = (
        _teacher(200, balanced_labels(200, K, 3), gap=4.0, acc=0.8, seed=0),
        balanced_labels(200, K, 3),
    )
    with CheckpointWriter(
        tmp_path / "a.parquet", run="r", checkpoint="c1", num_classes=K, epoch=1
    ) as w:
        w.write(z, split="val", labels=y)
        w.write(z, split="train", labels=y)
    write_logits(
        tmp_path / "b.parquet", z * 2, split="val", run="r", checkpoint="c2", labels=y, epoch=2
    )
    rec = recommend(tmp_path, temperature=2.0, n_bootstrap=0)
    row = rec.ranking.filter(pl.col("checkpoint") == "c1").row(0, named=True)
    zz = z.astype(np.float64)
    ls = log_softmax(zz / 2.0, axis=1)
    off = ls.copy()
    off[np.arange(200), y] = -np.inf
    assert row["dark_mass_transfer"] == pytest.approx(
        np.exp(logsumexp(off, axis=1)).mean(), rel=1e-9
    )
    assert row["accuracy_heldout"] == pytest.approx((zz.argmax(1) == y).mean())
    assert row["nll_heldout"] == pytest.approx(-log_softmax(zz, axis=1)[np.arange(200), y].mean())
    assert row["nll_fit_heldout"] <= row["nll_heldout"] + 1e-12
    assert row["temperature"] == 2.0


# --------------------------------------------------------------------------- bootstrap


def test_probability_best_sums_to_one_and_is_reproducible(tmp_path):
    src = _grid_store(tmp_path, SWEET, n=120)
    a = recommend(src, n_bootstrap=40, seed=3)
    b = recommend(src, n_bootstrap=40, seed=3)
    assert sum(a.probability_best.values()) == pytest.approx(1.0)
    assert a.ranking["probability_best"].sum() == pytest.approx(1.0)
    c = recommend(src, n_bootstrap=40, seed=4)
    assert c.ranking["score_low"].to_list() != a.ranking["score_low"].to_list()
    assert a.probability_best == b.probability_best
    assert a.ranking["probability_best"].to_list() == b.ranking["probability_best"].to_list()
    lo, hi = a.ranking["rank_low"].to_numpy(), a.ranking["rank_high"].to_numpy()
    assert (lo <= hi).all()


def test_indistinguishable_top_is_said_plainly(tmp_path):
    # Two identical teachers (same logits): neither can be told apart.
    z = _teacher(200, balanced_labels(200, K, 0), gap=3.0, acc=0.8, seed=0)
    y = balanced_labels(200, K, 0)
    for ep in (1, 2):
        with CheckpointWriter(
            tmp_path / f"e{ep}.parquet",
            run="r",
            checkpoint=f"ep{ep}",
            num_classes=K,
            epoch=ep,
            batch_size=32,
        ) as w:
            w.write(z, split="val", labels=y)
            w.write(z, split="train", labels=y)
    rec = recommend(tmp_path, n_bootstrap=30)
    assert rec.distinguishable is False
    assert "cannot be told apart" in rec.reason
    assert rec.probability_best["r/ep1"] == pytest.approx(0.5)


def test_poisson_weights_deterministic_by_id():
    ids = np.arange(5000, dtype=np.int64)
    w = poisson_weights(ids, 20, seed=1)
    assert w.shape == (20, 5000)
    assert w.mean() == pytest.approx(1.0, abs=0.03) and w.var() == pytest.approx(1.0, abs=0.06)
    perm = np.random.default_rng(0).permutation(5000)
    np.testing.assert_array_equal(poisson_weights(ids[perm], 20, seed=1), w[:, perm])
    assert not np.array_equal(poisson_weights(ids, 20, seed=2), w)


def _bootstrap_of(z, y, ids, splits):
    """A BootstrapExtra fed ``z`` in the given row chunks."""
    acc = BootstrapExtra(2.0)
    for part in np.array_split(np.arange(len(y)), splits):
        sub = BootstrapExtra(2.0)
        cols = _compute_per_example(z[part], y[part], 2.0, 0.05)
        sub.update(Batch(z[part], y[part].astype(np.int32), ids[part]), cols)
        acc.merge(sub)
    return acc


def test_bootstrap_merge_equals_one_pass_and_ignores_order():
    y = balanced_labels(300, K, 0)
    z = _teacher(300, y, gap=3.0, acc=0.7, seed=1)
    ids = np.arange(300)
    w = replicate_weights(8, seed=0)
    one = _bootstrap_of(z, y, ids, 1).replicates(w)
    merged = _bootstrap_of(z, y, ids, 3).replicates(w)
    perm = np.random.default_rng(0).permutation(300)
    shuffled = _bootstrap_of(z[perm], y[perm], ids[perm], 2).replicates(w)
    assert set(one) == {"accuracy", "nll", "entropy", "dark_mass", "oemc_share"}
    for k in one:
        np.testing.assert_allclose(merged[k], one[k], rtol=1e-12)
        np.testing.assert_allclose(shuffled[k], one[k], rtol=1e-12)
    # All-ones weights give back the plain means.
    ones = _bootstrap_of(z, y, ids, 1).replicates(np.ones((1, N_BUCKETS)))
    cols = _compute_per_example(z, y, 2.0, 0.05)
    assert ones["dark_mass"][0] == pytest.approx(cols["dark_mass"].mean(), rel=1e-12)
    assert ones["accuracy"][0] == pytest.approx(cols["correct"].mean(), rel=1e-12)


def test_buckets_and_weights_keyed_by_id_and_seed():
    ids = np.arange(100_000, dtype=np.int64)
    b = bucket_of(ids)
    assert b.min() >= 0 and b.max() < N_BUCKETS
    counts = np.bincount(b, minlength=N_BUCKETS)
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()
    np.testing.assert_array_equal(bucket_of(ids[::-1]), b[::-1])
    w = replicate_weights(50, seed=1)
    assert w.shape == (50, N_BUCKETS) and w.mean() == pytest.approx(1.0, abs=0.02)
    np.testing.assert_array_equal(replicate_weights(50, seed=1), w)
    assert not np.array_equal(replicate_weights(50, seed=2), w)


def test_refitted_replicates_match_a_weighted_refit():
    from scipy.optimize import minimize_scalar

    y = balanced_labels(2000, K, 0)
    z = _teacher(2000, y, gap=6.0, acc=0.8, seed=2)
    ids = np.arange(2000)
    tf = TemperatureFitAccumulator(K)
    tf.update(z, y, ids)
    t = tf.finalize()
    rep = refit_replicates(tf, t, np.ones((1, N_BUCKETS)), (0.05, 20.0))
    assert rep[0] == pytest.approx(tf.nll_at(t), abs=1e-8)
    w = replicate_weights(5, seed=0)
    reps = refit_replicates(tf, t, w, (0.05, 20.0))
    zz = z.astype(np.float64)
    for r in range(5):
        we = w[r, bucket_of(ids)]

        def nll(u, we=we):
            ls = log_softmax(zz / np.exp(u), axis=1)[np.arange(2000), y]
            return -(we * ls).sum() / we.sum()

        exact = minimize_scalar(nll, bounds=(-3, 3), method="bounded", options={"xatol": 1e-8})
        # One Newton step: within ~1e-6 nats of the exact refit (far below score gaps).
        assert reps[r] == pytest.approx(exact.fun, abs=1e-5)
    assert reps.std() > 0


def test_one_hot_teacher_has_no_dark_mass_and_no_oemc(tmp_path):
    z, y = one_hot_teacher(100, K)
    for ep in (1, 2):
        write_logits(
            tmp_path / f"{ep}.parquet", z, split="val", run="r", checkpoint=f"c{ep}", labels=y
        )
    sig, _, _ = checkpoint_signals(tmp_path, temperature=1.0)
    assert (sig["dark_mass_heldout"] == 0.0).all() and (sig["accuracy_heldout"] == 1.0).all()


@pytest.mark.parametrize("analysis_t", [1.0, 4.0])
def test_recommend_and_analyze_agree_exactly(tmp_path, analysis_t):
    """Both take the fitted temperature and the NLL after the fit from one definition."""
    from kdlens.analysis.engine import analyze

    src = _grid_store(tmp_path, SWEET, n=3000)
    summ = analyze(src, temperature=analysis_t, n_permutations=0).summary
    sig, _, _ = checkpoint_signals(src, temperature=4.0)
    for r in sig.iter_rows(named=True):
        rows = summ.filter((pl.col("run") == r["run"]) & (pl.col("checkpoint") == r["checkpoint"]))
        val = rows.filter(pl.col("split") == "val").row(0, named=True)
        train = rows.filter(pl.col("split") == "train").row(0, named=True)
        assert r["fitted_temperature"] == pytest.approx(val["fitted_temperature"], rel=1e-12)
        assert r["nll_fit_heldout"] == pytest.approx(val["nll_fitted"], rel=1e-12)
        assert r["nll_heldout"] == pytest.approx(val["nll"], rel=1e-12)
        assert r["accuracy_heldout"] == val["accuracy"]
        if analysis_t == 4.0:  # the soft-label signals are at T: equal at the same T
            assert r["entropy_heldout"] == pytest.approx(val["entropy"], rel=1e-12)
            assert r["dark_mass_heldout"] == pytest.approx(val["dark_mass"], rel=1e-12)
            assert r["dark_mass_transfer"] == pytest.approx(train["dark_mass"], rel=1e-12)
            assert r["oemc_share_transfer"] == pytest.approx(train["oemc_share"], rel=1e-12)
            assert r["similarity_information_transfer"] == pytest.approx(
                train["similarity_information"], rel=1e-12
            )


# --------------------------------------------------------------------------- advice and grid


def test_edge_advice_largest_batch_last_epoch():
    rows = [
        ("bs16", "ep1", 16, 1, 0.7, 0.4, 0.4),
        ("bs16", "ep2", 16, 2, 0.75, 0.4, 0.4),
        ("bs64", "ep1", 64, 1, 0.8, 0.4, 0.4),
        ("bs64", "ep2", 64, 2, 0.9, 0.4, 0.4),
    ]
    rec = recommend(_summary(rows), n_bootstrap=0)
    text = " ".join(rec.advice)
    assert "largest" in text and "128" in text and "train longer" in text


def test_edge_advice_smallest_batch_first_epoch():
    rows = [
        ("bs16", "ep1", 16, 1, 0.95, 0.4, 0.4),
        ("bs16", "ep2", 16, 2, 0.75, 0.4, 0.4),
        ("bs64", "ep1", 64, 1, 0.8, 0.4, 0.4),
        ("bs64", "ep2", 64, 2, 0.7, 0.4, 0.4),
    ]
    text = " ".join(recommend(_summary(rows), n_bootstrap=0).advice)
    assert "smallest" in text and "earlier checkpoints" in text


def test_interior_best_gives_no_edge_advice():
    rows = [
        (f"bs{b}", f"ep{e}", b, e, 0.9 if (b, e) == (64, 2) else 0.7, 0.4, 0.4)
        for b in (16, 64, 256)
        for e in (1, 2, 3)
    ]
    assert recommend(_summary(rows), n_bootstrap=0).advice == []


def test_missing_cells_show_as_gaps(tmp_path):
    rec = recommend(_grid_store(tmp_path, SWEET, n=60), n_bootstrap=0)
    sweet = rec.sweet_spot
    assert sweet.height == 3 * 3  # batch sizes {16,64,256} x epochs {2,4,8}
    gaps = sweet.filter(pl.col("missing"))
    assert sorted(zip(gaps["row"], gaps["column"], strict=False)) == [(16, 4), (64, 8), (256, 8)]
    assert any("missing cell" in n for n in rec.notes)
    assert sweet.filter(pl.col("recommended")).height == 1


# --------------------------------------------------------------------------- bad input


def test_one_checkpoint_ranks_nothing(tmp_path):
    z, y = (
        _teacher(50, balanced_labels(50, K, 0), gap=3, acc=0.9, seed=0),
        balanced_labels(50, K, 0),
    )
    write_logits(tmp_path / "a.parquet", z, split="val", run="r", checkpoint="c", labels=y)
    rec = recommend(tmp_path / "a.parquet", n_bootstrap=10)
    assert rec.recommended is None and not rec.ok
    assert "only one checkpoint" in rec.reason
    assert rec.to_dict()["recommended"] is None


def test_no_heldout_split_ranks_on_what_remains(tmp_path):
    rec = recommend(_grid_store(tmp_path, SWEET, n=60, splits=("train",)), n_bootstrap=0)
    assert rec.ok and rec.basis == "transfer split only"
    assert any("no held-out split" in n and "held-out accuracy" in n for n in rec.notes)
    assert rec.ranking["accuracy_heldout"].is_nan().all()


def test_different_class_names_is_an_error(tmp_path):
    z, y = (
        _teacher(20, balanced_labels(20, K, 0), gap=3, acc=0.9, seed=0),
        balanced_labels(20, K, 0),
    )
    names = [f"c{i}" for i in range(K)]
    write_logits(
        tmp_path / "a.parquet", z, split="val", run="r", checkpoint="a", labels=y, class_names=names
    )
    write_logits(
        tmp_path / "b.parquet",
        z,
        split="val",
        run="r",
        checkpoint="b",
        labels=y,
        class_names=names[::-1],
    )
    with pytest.raises(StoreError, match="disagree on the classes"):
        recommend(tmp_path, n_bootstrap=0)


def test_different_k_is_an_error(tmp_path):
    z, y = (
        _teacher(20, balanced_labels(20, K, 0), gap=3, acc=0.9, seed=0),
        balanced_labels(20, K, 0),
    )
    write_logits(tmp_path / "a.parquet", z, split="val", run="r", checkpoint="a", labels=y)
    write_logits(
        tmp_path / "b.parquet", z[:, :5], split="val", run="r", checkpoint="b", labels=y % 5
    )
    with pytest.raises(StoreError, match="number of classes"):
        recommend(tmp_path, n_bootstrap=0)


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": 0.0},
        {"temperature": float("nan")},
        {"n_bootstrap": -1},
        {"top": 0},
        {"collapse_weight": -1.0},
    ],
)
def test_bad_options(tmp_path, kw):
    with pytest.raises(InputError):
        recommend(
            _summary([("r", "a", 1, 1, 0.5, 0.3, 0.3), ("r", "b", 1, 2, 0.6, 0.3, 0.3)]), **kw
        )


def test_top_limits_rows():
    rows = [("r", f"e{i}", 8, i, 0.5 + i / 100, 0.3, 0.3) for i in range(5)]
    rec = recommend(_summary(rows), top=2, n_bootstrap=0)
    assert rec.ranking.height == 2 and rec.sweet_spot.height == 5


# --------------------------------------------------------------------------- validation metrics

TABLE = pl.DataFrame(
    {
        "run": ["a", "a", "b", "b", "c"],
        "checkpoint": ["1", "2", "1", "2", "1"],
        "good": [0.1, 0.4, 0.2, 0.5, 0.3],
        "bad": [5.0, 4.0, 3.0, 2.0, 1.0],
        "student_accuracy_mean": [0.80, 0.83, 0.81, 0.85, 0.84],
    }
)


def test_metrics_against_scipy():
    t = TABLE["student_accuracy_mean"].to_numpy()
    for col in ("good", "bad"):
        s = TABLE[col].to_numpy()
        assert spearman(s, t) == pytest.approx(stats.spearmanr(s, t).statistic)
        assert kendall(s, t) == pytest.approx(stats.kendalltau(s, t).statistic)
    assert regret(TABLE["good"], t) == pytest.approx(0.0)
    assert regret(TABLE["bad"], t) == pytest.approx(0.85 - 0.80)
    out = evaluate_scores(TABLE, scores=["good", "bad"])
    bad = out.filter(pl.col("score") == "bad").row(0, named=True)
    assert (
        bad["regret_pp"] == pytest.approx(5.0)
        and bad["pick_run"] == "a"
        and bad["pick_checkpoint"] == "1"
    )


def test_regret_ties_average_and_length_mismatch():
    assert regret([1.0, 1.0, 0.0], [0.9, 0.7, 0.8]) == pytest.approx(0.9 - 0.8)
    with pytest.raises(InputError, match="length 3 and target is length 2"):
        spearman([1, 2, 3], [1, 2])


def test_student_table():
    s = pl.DataFrame(
        {
            "run": ["a"] * 3 + ["b"] * 3,
            "checkpoint": ["1"] * 6,
            "accuracy": [0.8, 0.82, 0.84, 0.7, 0.7, 0.7],
        }
    )
    t = student_table(s).sort("run")
    assert t["student_accuracy_mean"].to_list() == pytest.approx([0.82, 0.7])
    assert t["student_accuracy_std"].to_list() == pytest.approx([0.02, 0.0])


# --------------------------------------------------------------------------- analysis sources


def test_analysis_directory_source(tmp_path):
    rows = [("r", "a", 8, 1, 0.80, 0.5, 0.5), ("r", "b", 8, 2, 0.90, 0.3, 0.3)]
    (tmp_path / "an").mkdir()
    _summary(rows).write_parquet(tmp_path / "an" / "summary.parquet")
    rec = recommend(tmp_path / "an", n_bootstrap=50)
    assert rec.ok and rec.recommended is not None and rec.recommended["checkpoint"] == "b"
    assert rec.n_bootstrap == 0 and any("no bootstrap" in n for n in rec.notes)
    assert any("no NLL after a temperature fit" in n for n in rec.notes)
    # With the fitted NLL in the summary, it is used and the note goes away.
    s = _summary(rows).with_columns(nll_fitted=pl.col("nll") / 2)
    rec2 = recommend(s, n_bootstrap=0)
    assert not any("temperature fit" in n for n in rec2.notes)
    got = rec2.ranking.sort("checkpoint")["nll_fit_heldout"].to_list()
    assert got == pytest.approx([0.1, 0.05])


def test_store_and_analyze_summary_agree(tmp_path):
    analysis = pytest.importorskip("kdlens.analysis.engine")
    if not hasattr(analysis, "analyze"):
        pytest.skip("kdlens.analysis.engine.analyze not available")
    src = _grid_store(tmp_path, SWEET, n=80)
    res = analysis.analyze(src, temperature=4.0, n_permutations=0)
    a = recommend(res.summary, n_bootstrap=0, temperature=4.0).ranking.sort("run", "checkpoint")
    b = recommend(src, n_bootstrap=0, temperature=4.0).ranking.sort("run", "checkpoint")
    for c in ("accuracy_heldout", "dark_mass_transfer", "dark_mass_heldout", "nll_heldout"):
        np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-6, err_msg=c)
    np.testing.assert_allclose(
        a["similarity_information_transfer"].to_numpy(),
        b["similarity_information_transfer"].to_numpy(),
        rtol=1e-6,
    )


@pytest.mark.parametrize("shape", [(1, 4), (2, 200), (7, 50), (40, 3)])
def test_bootstrap_ranks_equal_scipys_average_ranks(shape: tuple[int, int]) -> None:
    """The ranks of the score replicates are scipy.stats.rankdata's (average ties, -inf
    for a missing score) without importing scipy.stats."""
    from kdlens.recommend.score import _ranks_desc

    rng = np.random.default_rng(sum(shape))
    for sb in (rng.standard_normal(shape), rng.integers(0, 3, shape).astype(np.float64)):
        sb[rng.random(shape) < 0.2] = -np.inf
        np.testing.assert_array_equal(
            _ranks_desc(sb), stats.rankdata(-sb, axis=0, method="average")
        )
