"""Dump teacher logits from a Hugging Face transformers Trainer with kdlens's LogitsCallback.

A randomly initialised 2-layer BERT (built from a ``BertConfig``: nothing is downloaded)
learns a made-up 3-class task on pre-tokenised ids, a few seconds on a CPU:

    python examples/dump_transformers.py runs/bert
    torchrun --nproc_per_node 2 examples/dump_transformers.py runs/bert-ddp   # 2 CPU processes
    kdlens validate runs/bert
    kdlens recommend runs/bert

The callback writes the eval-set (split ``val``) and train-set logits after every
checkpoint save (here one per epoch), with the global step, the epoch and the training
batch size of the ``TrainingArguments``. Example ids come from the items' ``idx`` key
(``id_column``); without one they are the dataset positions. The Trainer's own
checkpoints go to ``<out>-ckpt/``.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from kdlens.integrations.transformers import LogitsCallback

VOCAB, LENGTH, CLASSES = 64, 16, 3


class Keywords(Dataset):
    """Random token ids; the label is which of three keyword tokens was planted (four
    times), then 20 % of the labels flipped, so that the teacher has something to over-fit."""

    def __init__(self, n: int, seed: int, first_id: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(CLASSES + 1, VOCAB, (n, LENGTH), generator=g)
        self.labels = torch.randint(0, CLASSES, (n,), generator=g)
        where = torch.randint(1, LENGTH, (n, 4), generator=g)
        self.ids[torch.arange(n)[:, None], where] = (self.labels + 1)[
            :, None
        ]  # tokens 1..3 are the keywords
        flip = torch.rand(n, generator=g) < 0.2
        self.labels[flip] = torch.randint(0, CLASSES, (int(flip.sum()),), generator=g)
        self.first_id = first_id

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": self.labels[i],
            "idx": self.first_id + i,  # a stable example id, kept out of the model's inputs
        }


def train(out: str, *, epochs: int = 3, resume: bool = False) -> LogitsCallback:
    """Train for ``epochs`` epochs (``resume``: from the last checkpoint); return the callback."""
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a model this small trains fastest on one CPU thread
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        num_labels=CLASSES,
    )
    model = BertForSequenceClassification(config)
    train_set, val_set = Keywords(384, seed=1), Keywords(128, seed=2, first_id=10_000)
    args = TrainingArguments(
        output_dir=f"{out}-ckpt",
        num_train_epochs=epochs,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=128,
        learning_rate=3e-3,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    dump = LogitsCallback(
        out, train_dataset=True, id_column="idx", class_names=["a", "b", "c"], dataset="keywords"
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=val_set, callbacks=[dump]
    )
    trainer.train(resume_from_checkpoint=True if resume else None)
    return dump


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="runs/bert")
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args(argv)
    for path in train(a.out, epochs=a.epochs).written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
