"""Dump teacher logits from your own PyTorch training loop with kdlens.LogitsWriter.

Runs on scikit-learn's digits in a few seconds on a CPU:

    python examples/own_training_loop.py runs/mine
    kdlens validate runs/mine

The three kdlens lines are marked. The loader used for dumping must not shuffle
(the example ids must be the same at every checkpoint); here it yields
(x, y, example_id) so ids are the dataset's row numbers.
"""

from __future__ import annotations

import sys

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdlens


def main(out: str = "runs/mine") -> None:
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    ids = torch.arange(len(y))
    tr, te = train_test_split(ids.numpy(), test_size=0.3, random_state=0, stratify=y.numpy())
    train = DataLoader(TensorDataset(x[tr], y[tr]), batch_size=128, shuffle=True)
    test = DataLoader(TensorDataset(x[te], y[te], ids[te]), batch_size=512)  # no shuffling

    torch.set_num_threads(1)  # a model this small trains fastest on one CPU thread
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # kdlens (1/3): where to write, and what the run is called.
    writer = kdlens.LogitsWriter(
        out,
        run="bs128-seed0",
        num_classes=10,
        class_names=[str(c) for c in range(10)],
        batch_size=128,
        dataset="digits",
        overwrite=True,
    )
    for epoch in range(1, 31):
        model.train()
        for xb, yb in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        if epoch in (1, 2, 4, 8, 16, 30):
            # kdlens (2/3): one call per checkpoint and split; eval mode is restored after.
            path = writer.dump(model, test, checkpoint=f"ep{epoch:03d}", epoch=epoch, split="test")
            print(f"epoch {epoch:2d}: wrote {path}")
    # kdlens (3/3): open it like any other store.
    store = kdlens.open_store(out)
    print(store)


if __name__ == "__main__":
    main(*sys.argv[1:2])
