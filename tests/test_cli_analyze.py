"""`kdlens analyze` and `kdlens controls` through typer's CliRunner."""

from __future__ import annotations

import json

import inputs
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.store.reader import open_store
from kdlens.store.writer import CheckpointWriter, write_logits

runner = CliRunner()


@pytest.fixture()
def store(tmp_path):
    z, y = inputs.random_teacher(n=300, k=6)
    path = tmp_path / "store" / "a.parquet"
    with CheckpointWriter(path, run="bs64", checkpoint="ep4", num_classes=6, epoch=4) as w:
        w.write(z, split="train", labels=y)
        w.write(z[:100], split="val", labels=y[:100], example_ids=np.arange(100) + 5000)
    return path


def test_analyze_writes_tables_and_prints_a_table(store, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(
        app, ["analyze", str(store), "-o", str(out), "--permutations", "20", "--per-example"]
    )
    assert r.exit_code == 0, r.output
    assert "bs64" in r.output and "SI" in r.output
    for name in ("summary", "classes", "similarity", "edges", "examples"):
        assert (out / f"{name}.parquet").is_file(), name
    assert pl.read_parquet(out / "summary.parquet").height == 2


def test_analyze_json_is_the_only_stdout(store, tmp_path):
    r = runner.invoke(
        app,
        [
            "analyze",
            str(store),
            "-o",
            str(tmp_path / "o"),
            "--json",
            "--temperature",
            "2",
            "--split",
            "val",
            "--permutations",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert set(doc) == {"temperature", "rows"} and doc["temperature"] == 2.0
    assert len(doc["rows"]) == 1
    row = doc["rows"][0]
    assert row["split"] == "val" and row["temperature"] == 2.0 and row["n"] == 100
    assert row["structure_p_value"] is None  # NaN becomes null, JSON stays valid


def test_analyze_nan_logits_fail_with_count_and_first_id(tmp_path):
    z, y = inputs.random_teacher(n=50, k=4)
    z[[7, 9, 30], 1] = np.nan
    write_logits(
        tmp_path / "bad.parquet",
        z,
        split="train",
        run="r",
        checkpoint="c",
        labels=y,
        example_ids=np.arange(50) + 100,
    )
    r = runner.invoke(app, ["analyze", str(tmp_path / "bad.parquet"), "-o", str(tmp_path / "o")])
    assert r.exit_code != 0
    assert "3 rows hold NaN/Inf logits (first example_id 107)" in r.stderr
    assert "Traceback" not in r.output
    r = runner.invoke(
        app,
        [
            "analyze",
            str(tmp_path / "bad.parquet"),
            "-o",
            str(tmp_path / "o"),
            "--drop-nonfinite",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output


def test_analyze_bad_inputs(tmp_path, store):
    r = runner.invoke(app, ["analyze", str(tmp_path / "nothing")])
    assert r.exit_code != 0 and "no such file" in r.stderr
    r = runner.invoke(app, ["analyze", str(store), "--temperature", "0", "-o", str(tmp_path)])
    assert r.exit_code != 0 and "temperature" in r.stderr
    (tmp_path / "h.csv").write_text("class,superclass\n0,a\n")
    r = runner.invoke(
        app,
        ["analyze", str(store), "--hierarchy", str(tmp_path / "h.csv"), "-o", str(tmp_path / "o")],
    )
    assert r.exit_code != 0 and "h.csv" in r.stderr


def test_controls_command(store, tmp_path):
    out = tmp_path / "ctl"
    r = runner.invoke(
        app,
        [
            "controls",
            str(store),
            "--kind",
            "permuted",
            "-o",
            str(out),
            "--seed",
            "2",
            "--temperature",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    st = open_store(out)
    assert st.keys() == [("bs64+permuted", "ep4")]
    assert st.metadata["config"]["temperature"] == 3.0
    r = runner.invoke(app, ["controls", str(store), "--kind", "permuted", "-o", str(out)])
    assert r.exit_code != 0 and "already exists" in r.stderr
    r = runner.invoke(app, ["controls", str(store), "--kind", "nope", "-o", str(out)])
    assert r.exit_code != 0 and "kind must be one of" in r.stderr


@pytest.mark.parametrize("command", ["analyze", "controls"])
def test_every_option_has_help(command):
    cmd = typer_command(command)
    assert cmd.help
    for p in cmd.params:
        assert getattr(p, "help", None), f"{command} {p.name} lacks help"


def typer_command(name: str):
    import typer.main

    group = typer.main.get_command(app)
    return group.commands[name]  # type: ignore[attr-defined]
