"""Dump teacher logits from a PyTorch Lightning Trainer with kdlens's LogitsCallback.

A small MLP on scikit-learn's digits (no download), a few seconds on a CPU:

    python examples/dump_lightning.py runs/lightning             # one process
    python examples/dump_lightning.py runs/lightning-ddp --devices 2   # DDP, 2 CPU processes (gloo)
    kdlens validate runs/lightning
    kdlens recommend runs/lightning

The callback writes the train and val logits at every checkpoint Lightning saves
(here one per epoch), into ``<out>/<run>/<checkpoint>.<split>.parquet``. Re-running, or
resuming with ``Trainer.fit(ckpt_path=...)``, skips the checkpoints already in the store.
Lightning's own checkpoints go to ``<out>-ckpt/``.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdlens.integrations.lightning import LogitsCallback


class Digits(pl.LightningDataModule):
    """scikit-learn's 8x8 digits as 64 features, a stratified 70/30 train/val split."""

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        d = load_digits()
        x = torch.tensor(d.data / 16.0, dtype=torch.float32)
        y = torch.tensor(d.target)
        tr, va = train_test_split(range(len(y)), test_size=0.3, random_state=0, stratify=d.target)
        self.train_set = TensorDataset(x[tr], y[tr])
        self.val_set = TensorDataset(x[va], y[va])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


class MLP(pl.LightningModule):
    def __init__(self, hidden: int = 64, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: list[torch.Tensor], _: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def train(
    out: str,
    *,
    epochs: int = 3,
    devices: int = 1,
    strategy: str = "ddp",
    ckpt_path: str | None = None,
) -> LogitsCallback:
    """Train (or resume from ``ckpt_path``) for ``epochs`` epochs; return the callback.

    ``strategy`` applies to ``devices > 1``: ``ddp`` starts each process as a new
    interpreter, ``ddp_fork`` forks this one (quicker; the tests use it)."""
    pl.seed_everything(0, verbose=False)
    torch.set_num_threads(1)  # a model this small trains fastest on one CPU thread
    dump = LogitsCallback(out, class_names=[str(c) for c in range(10)], dataset="digits")
    saves = pl.callbacks.ModelCheckpoint(
        dirpath=f"{out}-ckpt", save_top_k=-1, every_n_epochs=1, save_last=True
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=devices,
        strategy=strategy if devices > 1 else "auto",
        callbacks=[saves, dump],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(MLP(), datamodule=Digits(), ckpt_path=ckpt_path)
    return dump


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="runs/lightning")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--devices", type=int, default=1)
    a = p.parse_args(argv)
    dump = train(a.out, epochs=a.epochs, devices=a.devices)
    for path in dump.written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
