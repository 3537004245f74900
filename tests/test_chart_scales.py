"""Chart axes: a (nearly) constant column gets a readable, padded domain."""

from __future__ import annotations

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
