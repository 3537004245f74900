"""analyze() end to end on small stores written with write_logits / CheckpointWriter."""

from __future__ import annotations

import warnings

import inputs
import numpy as np
import polars as pl
import pytest
from scipy.special import softmax
from scipy.stats import entropy as sp_entropy

from kdlens.analysis.engine import analyze
from kdlens.errors import InputError, StoreError
from kdlens.measures import softlabels as sl
from kdlens.measures.similarity import read_hierarchy
from kdlens.store.writer import CheckpointWriter, write_logits

K = 12


@pytest.fixture(scope="module")
def teacher():
    z, y, sup = inputs.superclass_teacher(n_per_class=30, seed=0, noise=1.0)
    return z, y, sup


@pytest.fixture()
def store(tmp_path, teacher):
    z, y, _ = teacher
    zv, yv = inputs.random_teacher(n=240, k=K, seed=5)
    root = tmp_path / "store"
    for ep, scale in ((1, 0.5), (2, 1.0)):
        with CheckpointWriter(
            root / f"ep{ep}.parquet",
            run="bs32",
            checkpoint=f"ep{ep}",
            num_classes=K,
            epoch=ep,
            step=100 * ep,
            batch_size=32,
            class_names=[f"c{i}" for i in range(K)],
        ) as w:
            w.write(z * scale, split="train", labels=y, example_ids=np.arange(len(y)))
            w.write(zv * scale, split="val", labels=yv, example_ids=10_000 + np.arange(240))
    return root


def test_summary_has_one_row_per_part_and_every_scalar(store):
    res = analyze(store, n_permutations=50)
    s = res.summary
    assert s.height == 4
    assert s.select("run", "checkpoint", "split").rows() == [
        ("bs32", "ep1", "train"),
        ("bs32", "ep1", "val"),
        ("bs32", "ep2", "train"),
        ("bs32", "ep2", "val"),
    ]
    for col in (
        "epoch",
        "step",
        "batch_size",
        "n",
        "temperature",
        "accuracy",
        "nll",
        "ece",
        "ece_bins",
        "entropy",
        "entropy_normalized",
        "dark_mass",
        "nontarget_entropy",
        "nontarget_entropy_normalized",
        "effective_classes",
        "target_prob",
        "margin",
        "oemc_share",
        "oemc_delta",
        "similarity_information",
        "similarity_information_normalized",
        "instance_information",
        "structure_p_value",
        "structure_effect",
        "fitted_temperature",
    ):
        assert col in s.columns, col
    assert s["epoch"].to_list() == [1, 1, 2, 2] and s["batch_size"].to_list() == [32] * 4
    # fitted on val, reported for both splits of a checkpoint
    assert s["fitted_temperature_split"].to_list() == ["val"] * 4
    assert s["fitted_temperature"][0] == s["fitted_temperature"][1]


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_values_match_direct_computation(store, teacher, t):
    z, y, _ = teacher
    res = analyze(store, temperature=t, splits=["train"], n_permutations=0, batch_rows=97)
    row = res.summary.filter(pl.col("checkpoint") == "ep2").row(0, named=True)
    p = softmax(z.astype(float) / t, axis=1)
    assert row["temperature"] == t and row["n"] == len(y)
    assert row["accuracy"] == pytest.approx(np.mean(z.argmax(1) == y))
    assert row["entropy"] == pytest.approx(np.mean(sp_entropy(p, axis=1)), rel=1e-9)
    assert row["dark_mass"] == pytest.approx(np.mean(sl.dark_mass(z, y, temperature=t)), rel=1e-9)
    assert row["oemc_share"] == pytest.approx(sl.oemc_share(z, y, temperature=t))
    assert row["nll"] == pytest.approx(np.mean(sl.nll(z, y)), rel=1e-9)
    # Direct SI and II from arrays: S, then KL(q_x || S[c]) per example.
    q = sl.nontarget_probs(z, y, temperature=t)
    S = np.stack([q[y == c].mean(0) for c in range(K)])
    si_c = np.array([sp_entropy(np.delete(S[c], c), np.full(K - 1, 1 / (K - 1))) for c in range(K)])
    ii_x = np.array(
        [sp_entropy(np.delete(q[i], y[i]), np.delete(S[y[i]], y[i])) for i in range(len(y))]
    )
    ii_c = np.array([ii_x[y == c].mean() for c in range(K)])
    assert row["similarity_information"] == pytest.approx(si_c.mean(), rel=1e-9)
    assert row["instance_information"] == pytest.approx(ii_c.mean(), rel=1e-7)
    # the identity: mean KL(q_x || U) = SI_c + II_c
    klu = np.log(K - 1) - sl.nontarget_entropy(z, y, temperature=t)
    cls = res.classes.filter(pl.col("checkpoint") == "ep2")
    np.testing.assert_allclose(
        cls["si"].to_numpy() + cls["ii"].to_numpy(),
        [klu[y == c].mean() for c in range(K)],
        rtol=1e-7,
    )
    assert cls["class_name"].to_list() == [f"c{i}" for i in range(K)]
    sim = res.similarity.filter(pl.col("checkpoint") == "ep2")
    assert sim.height == K * (K - 1)
    w = sim.filter((pl.col("source") == 3) & (pl.col("target") == 4))["weight"][0]
    assert w == pytest.approx(S[3, 4], rel=1e-9)


def test_small_batches_give_the_same_result(store):
    a = analyze(store, n_permutations=0).summary
    b = analyze(store, n_permutations=0, batch_rows=50).summary
    for col in ("entropy", "dark_mass", "similarity_information", "instance_information", "ece"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(
        a["fitted_temperature"].to_numpy(), b["fitted_temperature"].to_numpy(), rtol=1e-6
    )


def test_hierarchy_and_reference(store, teacher, tmp_path):
    z, y, sup = teacher
    h = tmp_path / "h.csv"
    names = [f"c{i}" for i in range(K)]
    # mix names and indices
    h.write_text(
        "class,superclass\n" + "".join(f"{names[c] if c % 2 else c},s{sup[c]}\n" for c in range(K))
    )
    np.save(tmp_path / "ref.npy", softmax(z.astype(float), axis=1))
    res = analyze(
        store, splits=["train"], hierarchy=h, reference_probs=tmp_path / "ref.npy", n_permutations=0
    )
    row = res.summary.filter(pl.col("checkpoint") == "ep2").row(0, named=True)
    assert row["superclass_ari"] == pytest.approx(1.0) and row["superclass_nmi"] == pytest.approx(
        1.0
    )
    assert row["reference_kl"] == pytest.approx(0.0, abs=1e-9)
    assert row["reference_similarity_spearman"] == pytest.approx(1.0)
    row1 = res.summary.filter(pl.col("checkpoint") == "ep1").row(0, named=True)
    assert row1["reference_kl"] > 0.01
    # npz with explicit example ids
    ids = np.arange(len(y))
    perm = np.random.default_rng(0).permutation(len(y))
    np.savez(tmp_path / "ref.npz", probs=softmax(z.astype(float), 1)[perm], example_id=ids[perm])
    res2 = analyze(store, splits=["train"], reference_probs=tmp_path / "ref.npz", n_permutations=0)
    assert res2.summary["reference_kl"][1] == pytest.approx(0.0, abs=1e-9)
    assert res.edges.height > 0 and set(res.edges.columns) >= {"run", "source", "target", "weight"}


def test_bad_hierarchy_and_reference_name_the_file(store, tmp_path):
    h = tmp_path / "bad.csv"
    h.write_text("class,superclass\n0,a\n1,b\n")
    with pytest.raises(InputError, match="bad.csv.*no superclass"):
        analyze(store, hierarchy=h)
    h.write_text("class,superclass\nzebra,a\n")
    with pytest.raises(InputError, match="bad.csv:2: class 'zebra'"):
        analyze(store, hierarchy=h)
    np.save(tmp_path / "r.npy", np.full((10, K), 1 / K))
    with pytest.raises(InputError, match=r"r.npy: has 10 rows"):
        analyze(store, reference_probs=tmp_path / "r.npy")
    np.save(tmp_path / "r3.npy", np.full((10, 3), 1 / 3))
    with pytest.raises(InputError, match=r"r3.npy.*\(N, 12\)"):
        analyze(store, reference_probs=tmp_path / "r3.npy")
    with pytest.raises(InputError, match="nothere.csv: no such hierarchy file"):
        read_hierarchy(tmp_path / "nothere.csv", K, None)
    h.write_text("class,superclass\n0,a\n1,b\n0,c\n")
    with pytest.raises(InputError, match="bad.csv:4: class '0' is listed twice"):
        read_hierarchy(h, 2, None)


def test_nonfinite_logits_are_refused_with_count_and_first_id(tmp_path):
    z, y = inputs.random_teacher(n=300, k=5)
    z[17, 2] = np.nan
    z[250, 0] = np.inf
    write_logits(
        tmp_path / "s.parquet",
        z,
        split="train",
        run="r",
        checkpoint="c",
        labels=y,
        example_ids=np.arange(300) + 1000,
    )
    with pytest.raises(InputError, match=r"2 rows hold NaN/Inf logits \(first example_id 1017\)"):
        analyze(tmp_path / "s.parquet", batch_rows=100)
    res = analyze(tmp_path / "s.parquet", drop_nonfinite=True, n_permutations=0)
    assert res.summary["n"][0] == 298 and res.summary["n_nonfinite_dropped"][0] == 2


def test_missing_labels(tmp_path):
    z, y = inputs.random_teacher(n=100, k=4)
    write_logits(tmp_path / "s.parquet", z, split="train", run="r", checkpoint="c")
    with pytest.raises(InputError, match="100 of 100 rows have no label; accuracy"):
        analyze(tmp_path / "s.parquet")
    res = analyze(tmp_path / "s.parquet", use_predicted_labels=True, n_permutations=0)
    assert res.summary["accuracy"][0] == 1.0 and res.summary["n_predicted_labels"][0] == 100


def test_absent_class_warns_and_uses_present_classes(tmp_path):
    z, y = inputs.random_teacher(n=200, k=5)
    keep = y != 3
    write_logits(
        tmp_path / "s.parquet", z[keep], split="train", run="r", checkpoint="c", labels=y[keep]
    )
    with pytest.warns(UserWarning, match="1 of 5 classes have no example"):
        res = analyze(tmp_path / "s.parquet", n_permutations=20)
    assert np.isfinite(res.summary["similarity_information"][0])
    assert res.classes.filter(pl.col("class") == 3)["si"][0] is None
    assert res.similarity.filter(pl.col("source") == 3).height == 0


def test_empty_and_unknown_split(tmp_path):
    z, y = inputs.random_teacher(n=10, k=3)
    z[:] = np.nan
    write_logits(tmp_path / "s.parquet", z, split="train", run="r", checkpoint="c", labels=y)
    with pytest.raises(InputError, match="no rows to analyse"):
        analyze(tmp_path / "s.parquet", drop_nonfinite=True)
    with pytest.raises(InputError, match="split 'test' is not in the store"):
        analyze(tmp_path / "s.parquet", splits=["test"])
    with pytest.raises(StoreError):
        analyze(tmp_path / "missing")


def test_per_example_file_and_write(store, tmp_path):
    calls = []
    res = analyze(
        store,
        per_example_path=tmp_path / "out" / "examples.parquet",
        n_permutations=0,
        progress=lambda done, total, desc: calls.append((done, total)),
    )
    ex = pl.read_parquet(res.examples_path)
    assert ex.height == int(res.summary["n"].sum())
    assert {"run", "checkpoint", "split", "example_id", "entropy", "dark_mass"} <= set(ex.columns)
    assert calls and calls[-1] == (ex.height, ex.height)
    paths = res.write(tmp_path / "out")
    for name in ("summary", "classes", "similarity", "edges"):
        back = pl.read_parquet(paths[name])
        assert back.shape == getattr(res, name).shape
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_labels_smoothing_teacher_has_zero_si_and_ii(tmp_path):
    z, y = inputs.label_smoothing_teacher(n=300, k=6)
    write_logits(tmp_path / "s.parquet", z, split="train", run="r", checkpoint="c", labels=y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = analyze(tmp_path / "s.parquet", n_permutations=100).summary.row(0, named=True)
    assert row["similarity_information"] == 0.0 and row["instance_information"] == 0.0
    assert row["structure_p_value"] > 0.5


@pytest.mark.parametrize("name", list(inputs.NAMED_TEACHERS))
@pytest.mark.parametrize("t", [1.0, 2.0])
def test_fast_similarity_sums_equal_the_accumulators_own_update(name, t):
    from kdlens.analysis.kernel import _add_similarity
    from kdlens.measures.similarity import SimilarityAccumulator
    from kdlens.measures.softlabels import _per_example_core

    z, y = inputs.NAMED_TEACHERS[name]()
    k = z.shape[1]
    ref = SimilarityAccumulator(k, temperature=t).update(z, y)
    fast = SimilarityAccumulator(k, temperature=t)
    _, core, tg, _ = _per_example_core(z, y, t, 0.05)
    _add_similarity(fast, z, y, core, tg)
    for attr, value in vars(ref).items():
        if not isinstance(value, np.ndarray):
            continue
        np.testing.assert_allclose(getattr(fast, attr), value, rtol=1e-9, atol=1e-9, err_msg=attr)


def test_two_classes_are_degenerate_not_errors(tmp_path):
    z, y = inputs.random_teacher(n=100, k=2)
    write_logits(tmp_path / "s.parquet", z, split="train", run="r", checkpoint="c", labels=y)
    row = analyze(tmp_path / "s.parquet", n_permutations=10).summary.row(0, named=True)
    assert row["similarity_information"] == 0.0 and row["instance_information"] == 0.0
    assert row["nontarget_entropy_normalized"] == 0.0 and row["structure_p_value"] == 1.0


def test_nll_fitted_is_the_nll_at_the_fitted_temperature(tmp_path):
    from kdlens.measures.calibration import nll_loss

    z, y = inputs.random_teacher(n=400, k=6, scale=4.0)
    write_logits(tmp_path / "s.parquet", z, split="val", run="r", checkpoint="c", labels=y)
    row = analyze(tmp_path / "s.parquet", n_permutations=0).summary.row(0, named=True)
    t = row["fitted_temperature"]
    assert t > 1.0  # an over-confident teacher is softened
    assert row["nll_fitted"] == pytest.approx(nll_loss(z, y, temperature=t), rel=1e-9)
    assert row["nll_fitted"] < nll_loss(z, y, temperature=1.0)


def test_two_workers_match_one_and_are_deterministic(tmp_path, monkeypatch):
    import kdlens.analysis.engine as an

    z, y = inputs.random_teacher(n=3000, k=7)
    write_logits(tmp_path / "w.parquet", z, split="train", run="r", checkpoint="c", labels=y)
    kw = {"n_permutations": 50, "batch_rows": 256}
    two_a = an.analyze(tmp_path / "w.parquet", **kw).summary
    two_b = an.analyze(tmp_path / "w.parquet", **kw).summary
    assert two_a.equals(two_b)  # batch i always goes to worker i mod 2: no timing effects
    import kdlens.analysis.passes as passes

    monkeypatch.setattr(passes, "_WORKERS", 1)
    one = an.analyze(tmp_path / "w.parquet", **kw).summary
    for col in ("accuracy", "entropy", "dark_mass", "similarity_information", "ece", "nll"):
        assert two_a[col][0] == pytest.approx(one[col][0], rel=1e-12), col
