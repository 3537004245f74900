"""Chart axes: a (nearly) constant column gets a readable, padded domain."""

from __future__ import annotations

import json

import polars as pl

from kdlens.report.charts.common import value_scale


def test_constant_column_gets_a_padded_domain() -> None:
    v = 0.6231
    scale = value_scale(pl.Series([v, v + 3e-17, v - 2e-17])).to_dict()
    lo, hi = scale["domain"]
    assert lo < v < hi and hi - lo >= 0.02  # round ticks, not seventeen digits


def test_varied_column_keeps_the_data_domain() -> None:
    scale = value_scale(pl.Series([0.1, 0.5, float("nan")])).to_dict()
    assert "domain" not in scale and scale["zero"] is False


def test_empty_column() -> None:
    assert "domain" not in value_scale(pl.Series([float("nan")])).to_dict()


def test_class_distance_equals_the_pairwise_definition() -> None:
    # 1 - correlation of the log rows over the columns other than the pair: the vectorised
    # form must equal the definition computed pair by pair.
    import math

    import numpy as np

    from kdlens.report.charts.similarity import _symmetric, class_distance

    rng = np.random.default_rng(3)
    for k in (3, 4, 9):
        S = rng.dirichlet(np.ones(k), size=k)
        np.fill_diagonal(S, 0.0)
        S[0, 1] = 0.0
        L = np.log(np.maximum(_symmetric(S), 1e-12))
        want = np.zeros((k, k))
        for a in range(k):
            for b in range(a + 1, k):
                m = np.ones(k, bool)
                m[[a, b]] = False
                x, y = L[a, m] - L[a, m].mean(), L[b, m] - L[b, m].mean()
                den = math.sqrt(float(x @ x) * float(y @ y))
                want[a, b] = want[b, a] = 1.0 - (float(x @ y) / den if den > 0 else 0.0)
        np.testing.assert_allclose(class_distance(S), want, atol=1e-9)


def test_large_k_heatmap_is_block_averaged_within_the_cell_budget() -> None:
    import numpy as np

    from kdlens.report.data import _MAX_SIMILARITY_CELLS
    from kdlens.report.sections import _block_heatmap, _n_blocks

    k = 300  # 90,000 cells: over the budget
    rng = np.random.default_rng(0)
    S = rng.dirichlet(np.ones(k), size=k)
    np.fill_diagonal(S, 0.0)
    order = rng.permutation(k)
    m = _n_blocks(k)
    assert m is not None and m * m <= _MAX_SIMILARITY_CELLS
    values = _block_heatmap(S, order, [f"c{i}" for i in range(k)], "r / ep1").to_dict()
    rows = json.loads(next(iter(values["datasets"].values())))  # one JSON text
    assert len(rows) == m * m
    # Every block is the mean of its cells: the block means, weighted by block sizes,
    # add up to the whole matrix.
    sizes = np.bincount((np.arange(k) * m) // k, minlength=m)
    w = np.array([r["weight"] for r in rows]).reshape(m, m)
    assert np.isclose((w * np.outer(sizes, sizes)).sum(), S.sum())
    assert _n_blocks(100) is None  # 10,000 cells: drawn as they are
