"""Regenerate the example store in data_schema/example/ (python data_schema/make_example.py)."""

from pathlib import Path

import numpy as np

from kdlens.store.writer import CheckpointWriter

HERE = Path(__file__).parent / "example"
CLASSES = ["cat", "dog", "truck"]


def main() -> None:
    rng = np.random.default_rng(0)
    ids = {"train": np.arange(0, 12), "test": np.arange(100, 106)}
    labels = {s: (i % 3) for s, i in ids.items()}
    for epoch, sharp in ((1, 0.5), (4, 4.0)):
        path = HERE / "bs32-seed0" / f"ep{epoch:03d}.parquet"
        with CheckpointWriter(
            path,
            run="bs32-seed0",
            checkpoint=f"ep{epoch:03d}",
            num_classes=3,
            epoch=epoch,
            step=epoch * 10,
            batch_size=32,
            class_names=CLASSES,
            dataset="toy",
            model="mlp",
            config={"optimizer": "sgd", "lr": 0.1, "seed": 0, "split_seed": 0},
            overwrite=True,
        ) as w:
            for split in ("train", "test"):
                y = labels[split]
                z = rng.normal(0, 1, size=(len(y), 3))
                z[np.arange(len(y)), y] += sharp
                w.write(z, split=split, labels=y, example_ids=ids[split])


if __name__ == "__main__":
    main()
