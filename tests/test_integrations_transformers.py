"""kdlens.integrations.transformers.LogitsCallback with the real transformers Trainer and
a randomly initialised 2-layer BERT (nothing downloaded): the example's store validates
and ranks, ids come from the id column, the logits are the saved weights' logits, a
resumed training writes only what is missing, and ``on="evaluate"`` takes the trainer's
own eval set."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import kdlens
from kdlens.cli import app
from kdlens.errors import InputError

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertForSequenceClassification,
    Trainer,
    TrainerState,
    TrainingArguments,
)

from kdlens.integrations.transformers import LogitsCallback  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "dump_transformers.py"


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLE), run_name="kdlens_example")


@pytest.fixture()
def keep_threads() -> Any:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_example_store_validates_ranks_and_resumes(
    example: dict[str, Any], tmp_path: Path, keep_threads: None
) -> None:
    out = tmp_path / "store"
    first = example["train"](str(out), epochs=2)
    names = [p.name for p in first.written]
    assert names == [
        "ep001-step000024.val.parquet",
        "ep001-step000024.train.parquet",
        "ep002-step000048.val.parquet",
        "ep002-step000048.train.parquet",
    ]
    stamps = {p: p.stat().st_mtime_ns for p in first.written}
    again = example["train"](str(out), epochs=3, resume=True)  # from checkpoint-48
    assert [p.name for p in again.written] == [
        "ep003-step000072.val.parquet",
        "ep003-step000072.train.parquet",
    ]
    assert {p: p.stat().st_mtime_ns for p in first.written} == stamps

    runner = CliRunner()
    res = runner.invoke(app, ["validate", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["recommend", str(out), "-B", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert "bs16-seed0" in res.output and "ep003-step000072" in res.output

    store = kdlens.open_store(out)
    parts = store.checkpoints().sort("checkpoint", "split")
    assert parts["epoch"].to_list() == [1, 1, 2, 2, 3, 3]
    assert parts["step"].to_list() == [24, 24, 48, 48, 72, 72]
    assert set(parts["batch_size"].to_list()) == {16}
    meta = store.metadata
    assert meta["model"] == "BertForSequenceClassification" and meta["dataset"] == "keywords"
    assert meta["class_names"] == ["a", "b", "c"]

    # Ids from the `idx` column; the logits are those of the weights saved at that step.
    val = store.load("bs16-seed0", "ep003-step000072", "val")
    order = np.argsort(val.example_ids)
    assert val.example_ids[order].tolist() == list(range(10_000, 10_128))
    data = example["Keywords"](128, seed=2)
    assert val.labels[order].tolist() == data.labels.tolist()
    model = BertForSequenceClassification.from_pretrained(f"{out}-ckpt/checkpoint-72")
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=data.ids, attention_mask=torch.ones_like(data.ids)).logits
    np.testing.assert_allclose(val.logits[order], expected.numpy(), rtol=1e-4, atol=1e-4)
    # A re-run at a step already in the store writes nothing.
    args = TrainingArguments(
        output_dir=str(tmp_path / "x"),
        per_device_train_batch_size=16,
        seed=0,
        report_to=[],
        use_cpu=True,
    )
    rerun = LogitsCallback(out, eval_dataset=data, train_dataset=data)
    assert rerun.dump(args, TrainerState(epoch=3.0, global_step=72), model=model) == []


def test_on_evaluate_takes_the_trainers_eval_set_and_positions_as_ids(
    example: dict[str, Any], tmp_path: Path
) -> None:
    model = example["BertForSequenceClassification"](example["BertConfig"](
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
    ))  # fmt: skip
    args = TrainingArguments(
        output_dir=str(tmp_path / "ckpt"),
        max_steps=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        gradient_accumulation_steps=2,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=7,
        disable_tqdm=True,
    )
    dump = LogitsCallback(tmp_path / "store", on="evaluate")
    keywords = example["Keywords"]
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=keywords(32, seed=1),
        eval_dataset=keywords(20, seed=2),
        callbacks=[dump],
    )
    trainer.train()
    # 8 per device x 2 accumulated: the run is named after the effective batch of 16.
    assert [p.relative_to(tmp_path / "store").as_posix() for p in dump.written] == [
        "bs16-seed7/ep001-step000001.val.parquet",
        "bs16-seed7/ep001-step000002.val.parquet",
    ]
    batch = kdlens.open_store(tmp_path / "store").load("bs16-seed7", "ep001-step000002", "val")
    assert sorted(batch.example_ids.tolist()) == list(range(20))
    assert batch.logits.shape == (20, 3)


def test_bad_arguments_say_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="`on` must be"):
        LogitsCallback(tmp_path, on="epoch")
    dump = LogitsCallback(tmp_path)
    args = TrainingArguments(output_dir=str(tmp_path / "c"), report_to=[], use_cpu=True)
    state = type("State", (), {"epoch": 1.0, "global_step": 3})()
    model = torch.nn.Linear(2, 2)
    with pytest.raises(InputError, match="pass `eval_dataset=`"):
        dump.dump(args, state, model=model)  # type: ignore[arg-type]
