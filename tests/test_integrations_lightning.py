"""kdlens.integrations.lightning.LogitsCallback with the real Lightning: the example's
store validates and ranks, a resumed fit writes only what is missing, explicit loaders and
``forward`` work, and DDP over two CPU processes (gloo) writes every example once, with
the logits of the saved weights."""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import kdlens
from kdlens.cli import app
from kdlens.errors import InputError

pytest.importorskip("lightning")
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from kdlens.integrations.lightning import LogitsCallback, _default_forward  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "dump_lightning.py"


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLE), run_name="kdlens_example")


@pytest.fixture()
def quiet_torch(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The example sets one torch thread and a global seed: undo both after the test."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # recorded as unset: restored as unset
    monkeypatch.delenv("PL_GLOBAL_SEED")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_example_store_validates_ranks_and_resumes(
    example: dict[str, Any], tmp_path: Path, quiet_torch: None
) -> None:
    out = tmp_path / "store"
    first = example["train"](str(out), epochs=2)
    assert [p.name for p in first.written] == [
        "ep001-step000020.train.parquet",
        "ep001-step000020.val.parquet",
        "ep002-step000040.train.parquet",
        "ep002-step000040.val.parquet",
    ]
    stamps = {p: p.stat().st_mtime_ns for p in first.written}
    # A restarted fit from Lightning's last checkpoint writes the new epoch only.
    again = example["train"](str(out), epochs=3, ckpt_path=f"{out}-ckpt/last.ckpt")
    assert [p.name for p in again.written] == [
        "ep003-step000060.train.parquet",
        "ep003-step000060.val.parquet",
    ]
    assert {p: p.stat().st_mtime_ns for p in first.written} == stamps

    runner = CliRunner()
    res = runner.invoke(app, ["validate", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["recommend", str(out), "-B", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert "bs64-seed0" in res.output and "ep003-step000060" in res.output
    store = kdlens.open_store(out)
    parts = store.checkpoints().sort("checkpoint", "split")
    assert parts["epoch"].to_list() == [1, 1, 2, 2, 3, 3]
    assert parts["step"].to_list() == [20, 20, 40, 40, 60, 60]
    assert set(parts["batch_size"].to_list()) == {64}
    assert set(parts["n"].to_list()) == {1257, 540}
    meta = store.metadata
    assert meta["model"] == "MLP" and meta["dataset"] == "digits"


def test_explicit_loaders_forward_and_epochs(tmp_path: Path, example: dict[str, Any]) -> None:
    x = torch.randn(37, 64)
    y = torch.arange(37) % 10
    dicts = [{"x": x[i], "y": y[i]} for i in range(37)]
    dump = LogitsCallback(
        tmp_path,
        run="mine",
        dataloaders={"test": DataLoader(dicts, batch_size=8, num_workers=1)},  # a worker too
        epochs=[2],
        forward=lambda module, batch: (module(batch["x"]), batch["y"]),
        checkpoint_name="ep{epoch}",
    )
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        callbacks=[dump],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = example["MLP"]()
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    assert [p.name for p in dump.written] == ["ep2.test.parquet"]
    batch = kdlens.open_store(tmp_path).load("mine", "ep2", "test")
    assert batch.example_ids.tolist() == list(range(37))
    assert batch.labels.tolist() == y.tolist()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(batch.logits, expected, rtol=1e-5, atol=1e-5)


def test_default_splits_are_those_the_trainer_has(
    tmp_path: Path, example: dict[str, Any], quiet_torch: None
) -> None:
    x, y = torch.randn(21, 64), torch.arange(21) % 10
    dump = LogitsCallback(tmp_path / "store", batch_size=7)  # at every save
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[dump],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(example["MLP"](), DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True))
    assert dump.written == []  # no checkpoint saved during fit
    trainer.save_checkpoint(tmp_path / "after-fit.ckpt")  # after fit: the epoch done, 1
    # No val loader: train only; no seed_everything: the run is named by the batch alone.
    assert [p.relative_to(tmp_path / "store").as_posix() for p in dump.written] == [
        "bs7/ep001-step000006.train.parquet"
    ]
    batch = kdlens.open_store(tmp_path / "store").load("bs7", "ep001-step000006", "train")
    assert batch.example_ids.tolist() == list(range(21))  # read in order, unshuffled


def test_a_batch_that_is_not_x_y_names_the_way_out() -> None:
    with pytest.raises(InputError, match="pass `forward="):
        _default_forward(torch.nn.Identity(), {"x": torch.zeros(2, 3)})


def test_ddp_on_two_cpu_processes_writes_each_example_once(
    tmp_path: Path, example: dict[str, Any], quiet_torch: None
) -> None:
    # ddp_fork: Lightning's DDP strategy (gloo) with its processes forked from this one,
    # which has imported torch and Lightning already (two new interpreters cost ~15 s).
    # `python examples/dump_lightning.py OUT --devices 2` runs the same with `ddp`.
    out = tmp_path / "ddp"
    before = dict(os.environ)
    try:
        example["train"](str(out), epochs=1, devices=2, strategy="ddp_fork")
    finally:  # the launcher sets MASTER_PORT & co. in this process
        for key in set(os.environ) - set(before):
            del os.environ[key]
        os.environ.update(before)
    report = kdlens.validate(out)
    assert report.ok and report.checkpoints == 1, report.problems
    store = kdlens.open_store(out)
    # The effective batch: 64 per process x 2 processes; rank 0 wrote one file per split.
    assert set(store.checkpoints()["batch_size"].to_list()) == {128}
    assert store.metadata["config"]["devices"] == 2
    dm = example["Digits"]()
    dm.setup()
    module = example["MLP"].load_from_checkpoint(f"{out}-ckpt/last.ckpt")
    module.eval()
    for split, data in (("train", dm.train_set), ("val", dm.val_set)):
        batch = store.load("bs128-seed0", "ep001-step000010", split)
        order = np.argsort(batch.example_ids)
        # 1,257 train examples on 2 ranks: one padding row, dropped.
        assert batch.example_ids[order].tolist() == list(range(len(data)))
        xs, ys = data.tensors
        assert batch.labels[order].tolist() == ys.tolist()
        with torch.no_grad():
            expected = module(xs).numpy()
        np.testing.assert_allclose(batch.logits[order], expected, rtol=1e-5, atol=1e-5)
