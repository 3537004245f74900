"""The bounded large-K similarity (kdlens.measures.similarity.sparse): exact where it keeps
every entry, within its stated error otherwise, and what analyze uses above the dense K."""

from __future__ import annotations

from pathlib import Path

import inputs
import numpy as np
import pytest

import kdlens._internal.defaults as defaults
from kdlens import write_logits
from kdlens.analysis.engine import analyze
from kdlens.analysis.tables import _long_similarity
from kdlens.measures.calibration import _compute_fit_temperature, _fit_temperature_blocks
from kdlens.measures.similarity import (
    SimilarityAccumulator,
    SparseSimilarityAccumulator,
    similarity_graph,
)


def _both(z, y, top):
    k = z.shape[1]
    dense = SimilarityAccumulator(k).update(z, y).finalize(warn_absent=False)
    half = len(y) // 2
    sp = SparseSimilarityAccumulator(k, top=top).update(z[:half], y[:half])
    sp.merge(SparseSimilarityAccumulator(k, top=top).update(z[half:], y[half:]))
    return dense, sp.finalize()


def test_keeping_every_entry_equals_the_dense_path():
    z, y = inputs.random_teacher(n=400, k=12, seed=1, scale=2.0)
    z, y = np.asarray(z, np.float64).copy(), np.asarray(y)
    z[np.arange(len(y)), (y + 1) % 12] += 2.0
    keep = y != 11  # an absent class
    z, y = z[keep], y[keep]
    dense, sp = _both(z, y, z.shape[1] - 1)
    np.testing.assert_allclose(sp.si_per_class, dense.si_per_class, atol=1e-12)
    np.testing.assert_allclose(sp.ii_per_class, dense.ii_per_class, atol=1e-12)
    assert sp.similarity_information == pytest.approx(dense.similarity_information, abs=1e-12)
    g_dense = similarity_graph(dense.estimate, top_k=3)
    g_sparse = sp.graph(3)
    assert g_sparse.select("source", "target").rows() == g_dense.select("source", "target").rows()
    np.testing.assert_allclose(g_sparse["weight"].to_numpy(), g_dense["weight"].to_numpy())
    long = _long_similarity(np.asarray(dense.matrix), 1.0)
    src, tgt, w = sp.top_entries(z.shape[1] - 1)
    assert src.tolist() == long["source"].to_list() and tgt.tolist() == long["target"].to_list()
    np.testing.assert_allclose(w, long["weight"].to_numpy(), atol=1e-15)


@pytest.mark.parametrize(("scale", "bound"), [(3.0, 0.01), (1.0, 0.08)])
def test_stated_error_of_the_top_entries(scale: float, bound: float):
    """The module's statement, on a peaked (scale 3) and a flat (scale 1) random teacher
    with 20 examples per class and 1/4 of the entries kept: SI within 1 % / 8 %."""
    z, y = inputs.random_teacher(n=4000, k=200, seed=3, scale=scale)
    z = np.asarray(z).copy()
    y = np.asarray(y)
    z[np.arange(len(y)), (y + 1) % 200] += 3.0  # a structure: class c leans to c + 1
    dense, sp = _both(z, y, 50)
    rel = abs(sp.similarity_information - dense.similarity_information)
    assert rel / dense.similarity_information < bound
    # what stays exact: the per-class KL to uniform, so SI_c + II_c
    np.testing.assert_allclose(
        sp.si_per_class + sp.ii_per_class, dense.si_per_class + dense.ii_per_class, atol=1e-9
    )
    np.testing.assert_allclose(sp.q_sqsum_per_class, dense.q_sqsum_per_class, rtol=1e-12)
    # and the structure test's input: the same null from either path
    np.testing.assert_allclose(sp.entry_hist_per_class, dense.entry_hist_per_class, rtol=1e-12)


def test_analyze_takes_the_bounded_path_above_the_dense_k(tmp_path: Path, monkeypatch):
    z, y = inputs.random_teacher(n=1500, k=30, seed=5, scale=2.0)
    write_logits(tmp_path / "a.parquet", z, split="train", run="r", checkpoint="c", labels=y)
    dense = analyze(tmp_path, n_permutations=100)
    monkeypatch.setattr(defaults, "SIMILARITY_DENSE_MAX_K", 10)
    monkeypatch.setattr(defaults, "SIMILARITY_SPARSE_TOP", 29)  # every entry: exact
    sp = analyze(tmp_path, n_permutations=100)
    assert dense.summary["similarity_method"][0] == "dense"
    assert sp.summary["similarity_method"][0] == "sparse top-29 per example"
    for col in ("similarity_information", "instance_information", "structure_p_value"):
        assert sp.summary[col][0] == pytest.approx(dense.summary[col][0], abs=1e-12)
    assert sorted(sp.edges.select("source", "target").rows()) == sorted(
        dense.edges.select("source", "target").rows()
    )
    assert sp.similarity.height == dense.similarity.height


def test_blocked_temperature_fit_equals_the_whole_fit():
    z, y = inputs.random_teacher(n=500, k=40, seed=2, scale=4.0)
    z = np.asarray(z, np.float32)
    whole = _compute_fit_temperature(z, np.asarray(y), (0.05, 20.0))
    blocks = _fit_temperature_blocks(z, np.asarray(y), (0.05, 20.0))
    assert blocks == pytest.approx(whole, rel=1e-4)


def test_memory_guard_lets_the_bounded_path_through():
    from kdlens._internal import resources

    resources.check_memory(21_841, 2)  # ImageNet-21k: sparse, no K x K state
    assert defaults.SIMILARITY_DENSE_MAX_K < 21_841 <= resources.SPARSE_MAX_K


def test_capped_class_sums_keep_every_rows_mass(monkeypatch):
    """Past the per-class cap the smallest sums move to the spread rest: memory is bounded
    and each row of S still sums to 1 (what the cap's stated error rests on)."""
    import kdlens.measures.similarity.sparse as sp

    monkeypatch.setattr(sp, "SPARSE_ENTRIES", 0)
    monkeypatch.setattr(sp, "_COALESCE", 50)
    z, y = inputs.random_teacher(n=2000, k=100, seed=6, scale=2.0)
    acc = sp.SparseSimilarityAccumulator(100, top=5)
    for a in range(0, 2000, 100):
        acc.update(z[a : a + 100], y[a : a + 100])
    res = acc.finalize()
    assert np.diff(res.sums.indptr).max() <= sp.CLASS_COLUMNS * 5
    n = res.counts
    row_mass = np.asarray(res.sums.sum(axis=1)).ravel() / n + res.background * 99
    np.testing.assert_allclose(row_mass, 1.0, atol=1e-9)
