"""Dump teacher logits from an image folder (class sub-folders, the ImageFolder layout).

With no folder given it writes a tiny one first (3 classes x 12 PNGs of 8x8 pixels, each
class a different mean colour plus noise), so it runs anywhere in a few seconds on a CPU:

    python examples/dump_folder.py runs/folder            # a made-up folder
    python examples/dump_folder.py runs/photos photos/    # yours: photos/<class>/<image>
    kdlens validate runs/folder
    kdlens recommend runs/folder

Your folder's images must share one size, or name one to resize to in the dataset
spec (``folder:photos,64x64``). ``train/``, ``val/`` and ``test/`` sub-folders, when
present, are used as those splits. The same grid from the command line:

    kdlens dump --dataset folder:photos --model cnn --epochs 4 -o runs/photos
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import kdlens
from kdlens.harness import DumpConfig, dump


def make_folder(root: Path, per_class: int = 12, size: int = 8, seed: int = 0) -> Path:
    """Write ``per_class`` noisy PNGs of each of three colours under ``root/<colour>/``."""
    rng = np.random.default_rng(seed)
    means = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    for name, mean in means.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.normal(mean, 60, size=(size, size, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


def main(out: str = "runs/folder", folder: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(folder) if folder else make_folder(Path(tmp) / "colours")
        cfg = DumpConfig(
            dataset=f"folder:{images}",
            model="cnn",
            batch_sizes=(8, 32),
            epochs=2,
            checkpoints=(1, 2),
            device="cpu",
        )
        dump(out, cfg)
        report = kdlens.validate(out)
        print(f"{out}: {report.checkpoints} checkpoints, valid={report.ok}")
        rec = kdlens.recommend(out, n_bootstrap=0)
        print(rec.ranking.select("run", "checkpoint", "rank").head(3))


if __name__ == "__main__":
    main(*sys.argv[1:3])
