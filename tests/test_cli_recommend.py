"""`kdlens recommend` through typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from inputs import balanced_labels
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.store.writer import CheckpointWriter, write_logits

K = 10
runner = CliRunner()


def _store(tmp_path, cells):
    y = balanced_labels(100, K, 0)
    rng = np.random.default_rng(0)
    for bs, ep, gap_t, gap_v in cells:
        z = rng.normal(0, 1, (100, K))
        z[np.arange(100), y] += gap_v
        zt = z.copy()
        zt[np.arange(100), y] += gap_t - gap_v
        with CheckpointWriter(
            tmp_path / f"bs{bs}-ep{ep}.parquet",
            run=f"bs{bs}",
            checkpoint=f"ep{ep}",
            num_classes=K,
            epoch=ep,
            batch_size=bs,
        ) as w:
            w.write(zt.astype(np.float32), split="train", labels=y, example_ids=np.arange(100))
            w.write(z.astype(np.float32), split="val", labels=y, example_ids=np.arange(100, 200))
    return tmp_path


CELLS = [(16, 1, 2.0, 2.0), (16, 4, 12.0, 4.0), (64, 1, 1.5, 1.5), (64, 4, 3.0, 3.0)]


def test_json_shape(tmp_path):
    res = runner.invoke(
        app, ["recommend", str(_store(tmp_path, CELLS)), "--json", "--bootstrap", "20"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    # The original keys stay (probability_best keeps its name); the rest of the text output
    # is there too.
    assert {"recommended", "ranking", "probability_best", "bootstrap"} <= set(out)
    assert {"reason", "notes", "advice", "probability_best_definition", "pick_rule"} <= set(out)
    assert out["bootstrap"] == {"replicates": 20, "buckets": 1024, "seed": 0}
    assert {"run", "checkpoint", "batch_size", "epoch", "score"} <= set(out["recommended"])
    assert len(out["ranking"]) == 4 and out["ranking"][0]["rank"] == 1
    assert out["ranking"][0]["run"] == out["recommended"]["run"]
    assert sum(out["probability_best"].values()) == pytest.approx(1.0)
    assert set(out["probability_best"]) == {f"bs{b}/ep{e}" for b, e, *_ in CELLS}


def test_top_and_table_render(tmp_path):
    res = runner.invoke(app, ["recommend", str(_store(tmp_path, CELLS)), "--top", "2", "-B", "10"])
    assert res.exit_code == 0, res.output
    for text in ("ranking", "recommended:", "sweet-spot map", "Pareto front"):
        assert text in res.output
    res = runner.invoke(app, ["recommend", str(tmp_path), "--json", "--top", "2", "-B", "0"])
    assert len(json.loads(res.stdout)["ranking"]) == 2


def test_one_checkpoint_exits_1(tmp_path):
    y = balanced_labels(30, K, 0)
    write_logits(
        tmp_path / "a.parquet",
        np.zeros((30, K), np.float32),
        split="val",
        run="r",
        checkpoint="c",
        labels=y,
    )
    res = runner.invoke(app, ["recommend", str(tmp_path / "a.parquet")])
    assert res.exit_code == 1
    assert "only one checkpoint" in res.output
    # Nothing was read: no bootstrap ran, and no footer explains a score or P(best).
    assert "bootstrap = 0" in res.output and "score = " not in res.output
    assert "was not computed" not in res.output
    res = runner.invoke(app, ["recommend", str(tmp_path / "a.parquet"), "--json"])
    assert res.exit_code == 1 and json.loads(res.stdout)["recommended"] is None


def test_missing_store_is_one_line_error(tmp_path):
    res = runner.invoke(app, ["recommend", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "no such file" in res.output and "Traceback" not in res.output


def test_bad_temperature(tmp_path):
    res = runner.invoke(app, ["recommend", str(_store(tmp_path, CELLS)), "--temperature", "0"])
    assert res.exit_code == 2 and "temperature" in res.output


def test_help_mentions_every_option():
    res = runner.invoke(app, ["recommend", "--help"])
    assert res.exit_code == 0
    for opt in ("--json", "--top", "--temperature", "--bootstrap", "--seed"):
        assert opt in res.output


def test_sweet_spot_map_fits_80_columns_without_cutting_scores(monkeypatch):
    """The README's grid (3 batch sizes x 7 epochs) at 80 columns: every score readable."""
    import polars as pl

    from kdlens.cli._app import console
    from kdlens.cli.recommend_cmd import _render_map

    epochs = [1, 2, 4, 8, 16, 32, 60]
    rows = [
        {
            "row_axis": "batch_size",
            "column_axis": "epoch",
            "row": b,
            "column": e,
            "score": -0.0890 - 0.1 * i - 0.01 * j,
            "missing": False,
            "recommended": (i, j) == (0, 5),
        }
        for i, b in enumerate([16, 64, 256])
        for j, e in enumerate(epochs)
    ]
    # The shared console's own width setting (None: follow the terminal) comes back after.
    monkeypatch.setattr(console, "_width", 80)
    with console.capture() as cap:
        _render_map(pl.DataFrame(rows))
    text = cap.get()
    assert "…" not in text
    for r in rows:
        assert f"{r['score']:.3f}" in text
