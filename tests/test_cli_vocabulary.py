"""One CLI vocabulary, --quiet/--json everywhere, text that is never eaten as markup."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import inputs
import numpy as np
import polars as pl
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.store.writer import CheckpointWriter

runner = CliRunner()

#: One concept, one spelling: parameter name -> the option strings every command uses.
VOCABULARY = {
    "n_bootstrap": {"--bootstrap", "-B"},
    "temperature": {"--temperature", "-T"},
    "quiet": {"--quiet", "-q"},
    "as_json": {"--json"},
    "seed": {"--seed"},
    "overwrite": {"--overwrite"},
    "checkpoint": {"--checkpoint"},
    "run": {"--run"},
    "split": {"--split"},
    "dataset": {"--dataset"},
    "model": {"--model"},
    "hierarchy": {"--hierarchy"},
    "engine": {"--engine"},
    "workers": {"--workers"},
    "scheduler": {"--scheduler"},
}
#: A repeatable option's parameter is the plural of the concept.
#: (dump's --checkpoints is another concept: the epochs to checkpoint.)
PLURALS = {("analyze", "splits"): "split", ("import", "checkpoints"): "checkpoint"}
#: Parameter names that mean "where results are written": always -o/--out.
OUTPUTS = {"out", "output"}
#: Commands that print only a path: no --json needed.
PRINT_A_PATH = {"report", "demo"}


def _commands() -> dict:
    return dict(get_command(app).commands)  # type: ignore[attr-defined]


def test_same_concept_same_flag_in_every_command() -> None:
    wrong = []
    for name, cmd in _commands().items():
        for p in cmd.params:
            if getattr(p, "param_type_name", "") != "option":
                continue
            opts = set(p.opts) | set(p.secondary_opts)
            pname = PLURALS.get((name, p.name), p.name)
            want = {"-o", "--out"} if pname in OUTPUTS else VOCABULARY.get(pname)
            if want is not None and opts != want:
                wrong.append(f"{name} {p.name}: {sorted(opts)} != {sorted(want)}")
            for concept, flags in VOCABULARY.items():  # a flag is never another concept's
                if pname != concept and opts & flags:
                    wrong.append(f"{name} {p.name} uses {sorted(opts & flags)} of {concept}")
    assert wrong == []


def test_every_command_has_quiet_and_json_where_it_prints_results() -> None:
    missing = []
    for name, cmd in _commands().items():
        names = {p.name for p in cmd.params}
        if "quiet" not in names:
            missing.append(f"{name} --quiet")
        if name not in PRINT_A_PATH and "as_json" not in names:
            missing.append(f"{name} --json")
    assert missing == []


def test_help_shows_no_type_placeholder_for_flags() -> None:
    for name in _commands():
        res = runner.invoke(app, [name, "--help"])
        assert res.exit_code == 0 and "<bool>" not in res.output, name


def test_the_vocabulary_is_documented() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    for flags in VOCABULARY.values():
        for f in flags:
            assert f"`{f}`" in text, f


# Item 3: user text is never read as rich markup.


def test_missing_torch_message_keeps_its_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    res = runner.invoke(app, ["dump", "-o", "x"])
    assert res.exit_code == 2
    assert "pip install 'kdlens[torch]'" in res.output


def _npz(path: Path, n: int = 40, k: int = 4) -> Path:
    z, y = inputs.random_teacher(n=n, k=k)
    np.savez(path, logits=z, labels=y)
    return path


def test_paths_with_brackets_are_printed_verbatim(tmp_path: Path) -> None:
    src = _npz(tmp_path / "a.npz")
    out = tmp_path / "store[bold]x[v2]"
    res = runner.invoke(app, ["import", str(src), "-o", str(out), "--kind", "logits"])
    assert res.exit_code == 0, res.output
    assert "store[bold]x[v2]" in res.output.replace("\n", "")
    res = runner.invoke(app, ["validate", str(tmp_path / "none[v2]" / "[bold]")])
    assert res.exit_code != 0
    assert "none[v2]/[bold]" in res.output.replace("\n", "")


# Item 8: narrow terminals say what they left out; hierarchy/reference results are shown.


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    z, y = inputs.random_teacher(n=300, k=6)
    path = tmp_path / "store" / "a.parquet"
    with CheckpointWriter(path, run="bs64-seed0", checkpoint="ep4", num_classes=6, epoch=4) as w:
        w.write(z, split="train", labels=y)
        w.write(z[:100], split="val", labels=y[:100], example_ids=np.arange(100) + 5000)
    return path


def test_analyze_at_80_columns_says_which_columns_it_left_out(store: Path, tmp_path: Path) -> None:
    hier = tmp_path / "h.csv"
    hier.write_text("class,superclass\n" + "".join(f"{c},{c // 3}\n" for c in range(6)))
    ref = tmp_path / "ref.npy"
    np.save(ref, np.random.default_rng(0).dirichlet(np.ones(6), size=5100))
    args = ["analyze", str(store), "-o", str(tmp_path / "o"), "--permutations", "10"]
    args += ["--hierarchy", str(hier), "--reference-probs", str(ref)]
    res = runner.invoke(app, args, env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if not ln.startswith("wrote ")]  # a path
    assert max(len(line) for line in lines) <= 80, res.output
    assert "…" not in res.output  # no cell cut short
    assert "left out for width (80 columns)" in res.output and "--json" in res.output
    assert "ARI" in res.output and "ref rho" in res.output  # asked for: shown
    wide = runner.invoke(app, args, env={"COLUMNS": "200"}, terminal_width=200)
    assert "left out" not in wide.output and "OEMC" in wide.output


def test_dump_summary_states_one_labelled_figure() -> None:
    from rich.console import Console

    from kdlens.cli import _render, harness_cmd

    df = pl.DataFrame(
        {
            "run": ["bs16-seed0"],
            "status": ["trained"],
            "checkpoints": [3],
            "final_val_acc": [0.9],
            "train_seconds": [10.0],
            "dump_seconds": [0.009],
            "dump_overhead": [0.0009],
            "dump_worker_seconds": [38.854],
        }
    )
    cap = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    saved, _render.console = _render.console, cap
    try:
        harness_cmd._show_dump(df, "runs/x", quiet=False, as_json=False)
    finally:
        _render.console = saved
        cap.file.close()
    text = cap.export_text()
    assert "0.09 %" in text and "dump cost" in text
    assert "388.54" not in text  # the writer thread's work is seconds, not a second percentage
    assert "dump cost: 0.09 % of training time" in text and text.count("0.09 %") == 2


# Item 10: import records epoch and batch size, adds a split, says a labels shape.


def test_import_records_epoch_and_batch_size_and_adds_a_split(tmp_path: Path) -> None:
    from kdlens.store.reader import open_store

    tr, va = _npz(tmp_path / "train.npz", n=40), _npz(tmp_path / "val.npz", n=20)
    out = tmp_path / "s"
    base = ["import", "--kind", "logits", "-o", str(out), "--checkpoint", "ep8"]
    res = runner.invoke(app, [*base, str(tr), "--split", "train", "--epoch", "8"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*base, str(va), "--split", "val", "--batch-size", "64", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["checkpoints"][0]["split"] == "val"
    frame = pl.read_parquet(out / "imported" / "ep8.parquet")
    assert sorted(frame["split"].unique().to_list()) == ["train", "val"]
    assert frame.height == 60 and set(frame["epoch"].to_list()) == {8}
    assert set(frame["batch_size"].to_list()) == {64}
    assert open_store(out).num_classes == 4
    again = runner.invoke(app, [*base, str(va), "--split", "val"])
    assert again.exit_code == 2 and "holds split 'val'" in again.output
    assert "--overwrite" in again.output


def test_a_two_dimensional_labels_file_is_named_by_its_shape(tmp_path: Path) -> None:
    src = tmp_path / "a.npy"
    np.save(src, np.zeros((10, 4), dtype=np.float32))
    lab = tmp_path / "y.npy"
    np.save(lab, np.eye(4)[np.arange(10) % 4])
    args = ["import", str(src), "-o", str(tmp_path / "s"), "--kind", "logits"]
    res = runner.invoke(app, [*args, "--labels", str(lab)])
    assert res.exit_code == 2
    assert "shape (10, 4)" in res.output and "40 labels" not in res.output


def test_the_probe_says_the_given_and_the_expected_input_shape() -> None:
    torch = pytest.importorskip("torch")
    from kdlens.errors import InputError
    from kdlens.harness.models import probe_model

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with pytest.raises(InputError) as err:
        probe_model(net, "mine:net", (1, 8, 8), 10)
    msg = str(err.value)
    assert "(1, 8, 8)" in msg and "784" in msg and "\n" not in msg


def test_trajectory_legend_draws_the_splits_as_line_styles() -> None:
    from kdlens.report.charts.grid import trajectory_chart

    rows = []
    for ep in (1, 2, 4):
        for split in ("train", "val"):
            rows.append(
                {
                    "run": "bs16-seed0",
                    "checkpoint": f"ep{ep}",
                    "split": split,
                    "epoch": ep,
                    "batch_size": 16,
                    "accuracy": 0.5 + ep / 10,
                    "nll": 1.0 / ep,
                    "dark_mass": 0.1 * ep,
                    "similarity_information": 0.2,
                    "mean_entropy": 0.3,
                    "ece": 0.05,
                }
            )
    spec = trajectory_chart(
        pl.DataFrame(rows), heldout_split="val", transfer_split="train"
    ).to_dict()
    layers = spec["spec"]["layer"]
    dash = layers[0]["encoding"]["strokeDash"]
    assert dash["legend"]["symbolType"] == "stroke"
    # Without a stroke colour of their own the samples are drawn blank (seen in the report).
    assert dash["legend"].get("symbolStrokeColor")
    points = [ly for ly in layers if "shape" in ly.get("encoding", {})]
    assert points and points[0]["encoding"]["shape"]["field"] == "split"
    # A filled point layer on the same channel merges into the legend and blanks its strokes.
    assert "strokeDash" not in points[0]["encoding"]
