"""Class similarity: definitions, invariants, streaming, graph, clusters, export."""

from __future__ import annotations

import json
import math
import warnings
import xml.etree.ElementTree as ET

import inputs
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import softmax
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from kdlens.errors import InputError
from kdlens.measures.similarity import (
    SimilarityAccumulator,
    cluster_classes,
    instance_information,
    reference_agreement,
    similarity_estimate,
    similarity_from_probs,
    similarity_graph,
    similarity_information,
    similarity_matrix,
    superclass_recovery,
    write_graph,
)

TEACHERS = sorted(inputs.NAMED_TEACHERS)


def _result(z, y, t=1.0):
    return SimilarityAccumulator(z.shape[1], temperature=t).update(z, y).finalize()


def _reference_S(z, y, t):
    """Independent loop: q by scipy softmax over the other classes, class means."""
    k = z.shape[1]
    S = np.zeros((k, k))
    for c in range(k):
        rows = z[y == c].astype(np.float64)
        others = [j for j in range(k) if j != c]
        q = softmax(rows[:, others] / t, axis=1)
        S[c, others] = q.mean(axis=0)
    return S


@pytest.mark.parametrize("name", TEACHERS)
@pytest.mark.parametrize("t", [0.5, 1.0, 4.0])
def test_matrix_matches_reference_loop(name, t):
    z, y = inputs.NAMED_TEACHERS[name]()
    S = similarity_matrix(z, y, temperature=t)
    np.testing.assert_allclose(S, _reference_S(z, y, t), atol=1e-12)
    np.testing.assert_allclose(S.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.diag(S) == 0)


@pytest.mark.parametrize("name", TEACHERS)
@pytest.mark.parametrize("t", [0.5, 1.0, 3.0])
def test_identity_si_plus_ii(name, t):
    """mean KL(q||U) = SI_c + II_c, with II computed directly (not via the identity)."""
    z, y = inputs.NAMED_TEACHERS[name]()
    res = _result(z, y, t)
    direct = instance_information(z, y, temperature=t, per_class=True)
    np.testing.assert_allclose(res.ii_per_class, direct, atol=1e-9)
    # mean KL(q_x || U) per class, from scratch
    k = z.shape[1]
    for c in range(k):
        others = [j for j in range(k) if j != c]
        q = softmax(z[y == c][:, others].astype(np.float64) / t, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(q > 0, q * np.log(q * (k - 1)), 0.0).sum(axis=1).mean()
        assert kl == pytest.approx(res.si_per_class[c] + direct[c], abs=1e-9)
    assert res.similarity_information + res.instance_information == pytest.approx(
        np.mean(res.kl_uniform_per_class), abs=1e-9
    )


@pytest.mark.parametrize("name", ["label_smoothing", "one_hot"])
def test_uniform_nontarget_teacher_has_no_information(name):
    z, y = inputs.NAMED_TEACHERS[name]()
    res = _result(z, y)
    assert res.similarity_information == 0.0
    assert res.instance_information == 0.0
    assert instance_information(z, y) == pytest.approx(0.0, abs=1e-12)


def test_structured_teacher_has_similarity_information():
    z, y, _ = inputs.superclass_teacher()
    res = _result(z, y)
    assert res.similarity_information > 1.0  # log(11) - log(2) ≈ 1.70 for 3 per superclass
    assert res.similarity_information == pytest.approx(math.log(11 / 2), abs=0.05)


@settings(max_examples=15, deadline=None)
@given(
    n_super=st.integers(2, 5),
    per_super=st.integers(2, 4),
    seed=st.integers(0, 10_000),
    t=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_superclass_teacher_clusters_recover_superclasses(n_super, per_super, seed, t):
    z, y, sup = inputs.superclass_teacher(
        n_per_class=10, n_super=n_super, per_super=per_super, seed=seed
    )
    res = _result(z, y, t)
    for S in (res.matrix, res.estimate):
        rec = superclass_recovery(S, sup)
        assert rec["ari"] == 1.0
        assert rec["nmi"] == pytest.approx(1.0)
        assert rec["n_clusters"] == n_super


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(TEACHERS))
def test_invariant_to_class_renaming(seed, name):
    # Example order and logit shifts: tests/test_accumulators.py, for every accumulator.
    z, y = inputs.NAMED_TEACHERS[name](seed=seed % 7)
    k = z.shape[1]
    rng = np.random.default_rng(seed)
    base = _result(z, y)
    # rename: new class perm[c] is old class c
    perm = rng.permutation(k)
    inv = np.argsort(perm)
    z2 = z[:, inv]
    y2 = perm[y]
    renamed = _result(z2, y2)
    np.testing.assert_allclose(renamed.matrix, base.matrix[np.ix_(inv, inv)], atol=1e-12)
    assert renamed.similarity_information == pytest.approx(base.similarity_information, abs=1e-12)
    assert renamed.instance_information == pytest.approx(base.instance_information, abs=1e-10)


def test_absent_classes_are_nan_and_warn():
    z, y = inputs.random_teacher(n=400, k=6)
    keep = y != 4
    with pytest.warns(UserWarning, match="1 of 6 classes"):
        res = _result(z[keep], y[keep])
    assert np.isnan(res.matrix[4]).all()
    assert np.isnan(res.si_per_class[4]) and np.isnan(res.ii_per_class[4])
    assert res.similarity_information == pytest.approx(np.nanmean(res.si_per_class))
    assert np.isfinite(res.similarity_information)
    labels = cluster_classes(res.estimate, n_clusters=2)
    assert labels[4] == -1 and (labels[np.arange(6) != 4] >= 0).all()
    edges = similarity_graph(res.matrix, top_k=2)
    assert not ((edges["source"] == 4) | (edges["target"] == 4)).any()


def test_unlabelled_rows_are_skipped_and_counted_by_the_accumulator_only():
    z, y = inputs.random_teacher(n=300, k=5)
    y2 = y.copy()
    y2[::3] = -1
    res = SimilarityAccumulator(5).update(z, y2).finalize()
    assert res.n_unlabeled == 100 and res.counts.sum() == 200
    np.testing.assert_allclose(res.matrix, similarity_matrix(z[y2 >= 0], y[y2 >= 0]), atol=1e-14)
    # The bare-array function cannot report a count, so it refuses missing labels.
    with pytest.raises(InputError, match="missing"):
        similarity_matrix(z, y2)


def test_two_classes_is_defined_as_zero():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 2)).astype(np.float32)
    y = np.arange(50) % 2
    res = _result(z, y)
    assert res.similarity_information == 0.0 and res.instance_information == 0.0
    np.testing.assert_array_equal(res.matrix, [[0.0, 1.0], [1.0, 0.0]])
    assert instance_information(z, y) == 0.0


def test_bad_inputs_raise_input_error():
    z, y = inputs.random_teacher(n=20, k=4)
    with pytest.raises(InputError, match="same length"):
        similarity_matrix(z, y[:-1])
    with pytest.raises(InputError, match="labels must lie"):
        similarity_matrix(z, np.full(20, 4))
    with pytest.raises(InputError, match="temperature"):
        SimilarityAccumulator(4, temperature=0)
    with pytest.raises(InputError, match="K=5"):
        SimilarityAccumulator(5).update(z, y)
    with pytest.raises(InputError, match="logits"):
        similarity_from_probs(z, y)


def test_similarity_from_probs_matches_logits_definition():
    z, y = inputs.random_teacher(n=500, k=6, seed=2)
    p = softmax(z.astype(np.float64), axis=1)
    np.testing.assert_allclose(similarity_from_probs(p, y), similarity_matrix(z, y), atol=1e-10)
    mass = similarity_from_probs(p, y, weighting="mass")
    np.testing.assert_allclose(mass.sum(axis=1), 1.0)
    # every annotator on the label: no non-target information, row NaN
    one = np.eye(6)[y]
    assert np.isnan(similarity_from_probs(one, y)).all()


def test_information_from_matrix_matches_result():
    z, y = inputs.random_teacher(n=600, k=8, seed=5)
    res = _result(z, y)
    assert similarity_information(res.matrix) == pytest.approx(res.similarity_information)
    np.testing.assert_allclose(similarity_information(res.matrix, per_class=True), res.si_per_class)
    np.testing.assert_allclose(similarity_estimate(res.matrix), res.estimate)


def test_recovery_and_agreement_match_sklearn_and_scipy():
    rng = np.random.default_rng(1)
    sup = np.repeat(np.arange(4), 3)
    clusters = rng.integers(0, 4, 12)
    rec = superclass_recovery(clusters, sup)
    assert rec["ari"] == pytest.approx(adjusted_rand_score(sup, clusters))
    assert rec["nmi"] == pytest.approx(normalized_mutual_info_score(sup, clusters))
    A, B = rng.random((6, 6)), rng.random((6, 6))
    off = ~np.eye(6, dtype=bool)
    assert reference_agreement(A, B) == pytest.approx(spearmanr(A[off], B[off]).statistic)
    assert reference_agreement(A, A) == pytest.approx(1.0)
    As, Bs = (A + A.T) / 2, (B + B.T) / 2
    iu = np.triu_indices(6, 1)
    assert reference_agreement(A, B, symmetric=True) == pytest.approx(
        spearmanr(As[iu], Bs[iu]).statistic
    )


def test_graph_top_k_and_threshold():
    z, y, sup = inputs.superclass_teacher(n_per_class=20, n_super=3, per_super=4)
    S = similarity_matrix(z, y)
    edges = similarity_graph(S, top_k=3)
    assert edges.columns == ["source", "target", "weight"]
    assert (edges["source"] < edges["target"]).all()
    # 3 superclasses of 4: the 3 within-superclass neighbours of each class, 6 edges each
    assert edges.height == 3 * 6
    assert (sup[edges["source"].to_numpy()] == sup[edges["target"].to_numpy()]).all()
    W = (S + S.T) / 2
    np.testing.assert_allclose(
        edges["weight"].to_numpy(), W[edges["source"].to_numpy(), edges["target"].to_numpy()]
    )
    thr = similarity_graph(S, top_k=None, threshold=0.2)
    assert (thr["weight"] >= 0.2).all()
    assert thr.height == int((np.triu(W, 1) >= 0.2).sum())
    with pytest.raises(InputError):
        similarity_graph(S, top_k=None)


@pytest.mark.parametrize("suffix", [".graphml", ".json", ".parquet"])
def test_write_graph_formats(tmp_path, suffix):
    z, y, sup = inputs.superclass_teacher(n_per_class=10)
    res = _result(z, y)
    edges = similarity_graph(res.estimate, top_k=2)
    names = [f"c{i}" for i in range(12)]
    clusters = cluster_classes(res.estimate, n_clusters=4)
    out = write_graph(
        edges,
        tmp_path / f"g{suffix}",
        class_names=names,
        clusters=clusters,
        superclasses=sup,
        temperature=1.0,
    )
    assert out.exists() and not list(tmp_path.glob(".*tmp"))
    if suffix == ".graphml":
        root = ET.parse(out).getroot()
        ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
        assert len(root.findall(".//g:node", ns)) == 12
        assert len(root.findall(".//g:edge", ns)) == edges.height
    elif suffix == ".json":
        doc = json.loads(out.read_text())
        assert len(doc["nodes"]) == 12 and len(doc["links"]) == edges.height
        assert doc["nodes"][3]["name"] == "c3"
    else:
        back = pl.read_parquet(out)
        assert back.height == edges.height and back["temperature"][0] == 1.0
    with pytest.raises(InputError, match="graphml"):
        write_graph(edges, tmp_path / "g.txt")


def test_no_warning_when_all_classes_present():
    z, y = inputs.random_teacher()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _result(z, y)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 40),
    seed=st.integers(0, 2**32 - 1),
    decimals=st.sampled_from([1, 2, None]),
    data=st.data(),
)
def test_average_linkage_labels_equal_scikit_learns(
    n: int, seed: int, decimals: int | None, data: st.DataObject
) -> None:
    """cluster_classes builds scikit-learn's average-linkage labels itself (importing
    sklearn.cluster costs more than a report's charts): the same labels, bit for bit,
    ties (rounded matrices) included."""
    from sklearn.cluster import AgglomerativeClustering

    from kdlens.measures.similarity.graph import _average_linkage_labels

    nc = data.draw(st.integers(1, n))
    a = np.random.default_rng(seed).random((n, n))
    if decimals is not None:
        a = np.round(a, decimals)
    d = (a + a.T).max() - (a + a.T) / 2
    np.fill_diagonal(d, 0.0)
    ref = AgglomerativeClustering(n_clusters=nc, metric="precomputed", linkage="average")
    np.testing.assert_array_equal(_average_linkage_labels(d, nc), ref.fit_predict(d))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60), k=st.integers(2, 12))
def test_class_sums_agree_between_the_product_and_the_blocked_path(seed, n, k):
    # Small batches at small K take the sparse product; large K the sorted sub-blocks.
    # Both must give the same class sums (to rounding), whichever classes are present.
    from kdlens.measures.similarity import classsums

    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)).astype(np.float32)
    y = rng.integers(0, max(1, k // 2), size=n)  # some classes absent
    product = SimilarityAccumulator(k).update(z, y)
    old = classsums._PRODUCT_VALUES
    classsums._PRODUCT_VALUES = 1  # every batch takes the blocked path, one row per block
    try:
        blocked = SimilarityAccumulator(k).update(z, y)
    finally:
        classsums._PRODUCT_VALUES = old
    np.testing.assert_array_equal(product.counts, blocked.counts)
    np.testing.assert_allclose(product.q_sum, blocked.q_sum, rtol=1e-12, atol=1e-15)
