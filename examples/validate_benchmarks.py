"""The real-size benchmarks of ``examples/validate_recommend.py`` (issue 11, part 4).

Four datasets x three variants, each sized for about an hour on a 2-core CPU:

- ``mnist10k``: full MNIST, transfer 10,000 and val 5,000 of the 60,000 train rows, test the
  10,000 test rows; MLP 256-128 teacher, MLP 24 student;
- ``mnist60k``: full MNIST, transfer 55,000 + val 5,000 (all 60,000 train rows), test 10,000;
  MLP 256-128 teacher, MLP 24 student;
- ``emnist``: EMNIST-letters (26 classes), transfer 20,000 / val 5,000 / test 5,200 of the
  20,800; MLP 256-128 teacher, MLP 32 student;
- ``cifar10``: CIFAR-10 (JPEG copies), transfer 5,000 / val 2,000 / test 2,000 of the 10,000;
  SmallCNN width 16 teacher, SmallCNN width 4 student.

Variants: ``clean`` (true labels), ``noisy`` (20 % of the transfer labels flipped, the teacher
trains on them) and ``gap`` (true labels, a capacity gap: a convnet teacher of width 16 and an
MLP student of 8 hidden units; on CIFAR-10 a width-2 convnet student). ``cifar10`` has a fourth,
``noisy-long``: ``noisy``'s data, teacher and student, the teachers trained three times as long
(60 epochs, checkpoints 5/10/20/30/45/60, batch sizes 32 and 128). ``cifar10`` has a fifth,
``noisy-seeds``: ``noisy`` with every batch size trained from two seeds (0 and 1).

**``cifar10-noisy-long``, declared 2026-12-02 before it was run** (held out, nothing tuned on it):
``cifar10-noisy`` is the one benchmark where distillation beat plain students, but its teachers
were still improving at their last epoch, so the ensemble selection kept one checkpoint. The
hypothesis under test: with a schedule long enough for the teachers to fit the flipped labels,
intermediate checkpoints and their mixture become better teachers than the last one, and the
recommended mixture's students beat the best single checkpoint's. Everything else is fixed.

**``cifar10-noisy-seeds``, declared 2026-12-03 before it was run** (held out, nothing tuned on
it; run with ``--seeds 0,1,2,3,4,5,6,7``, fixed before any result): ``cifar10-noisy`` (the one
benchmark where distillation beats plain students beyond the seed noise with 8 student seeds,
+2.11 pp) with the grid's seeds ``(0, 1)`` instead of ``(0,)``: 24 checkpoints instead of 12.
Reruns of one benchmark in other sessions moved "mixture - best single" by 0.3-0.6 pp (the
teachers differed), so a second teacher seed both measures that variation and gives the
selection independently trained runs to combine. Hypotheses under test, in this order: (1) the
seed-0 runs reproduce ``cifar10-noisy``'s teachers bit for bit on the machine that dumped both;
(2) distillation still beats plain students beyond the seed noise; (3) the selection keeps
checkpoints of both seeds, and the recommended mixture's students beat the best single
checkpoint's of the whole two-seed sweep (seed-bootstrap interval excluding 0). The students
of the best checkpoint of each teacher seed are reported as the teacher-seed variation.

**Fit set, declared before any of these was run:** :data:`FIT_SET` (``mnist10k-noisy``). Any
setting chosen from these benchmarks (the ensemble's combination rule, its size, T) may be chosen
there only; every other benchmark is held out and is reported with the settings fixed.

``--smoke`` shrinks a benchmark to seconds (a few dozen examples per class, two epochs, tiny
students) so the test suite can run the whole pipeline; its numbers mean nothing.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from kdlens.harness.distill import StudentConfig
from kdlens.harness.train import DumpConfig

REPO = Path(__file__).resolve().parents[1]
EXTERNAL = Path(os.environ.get("KDLENS_EXTERNAL", REPO.parent / "shared" / "external"))
HERE = Path(__file__).resolve()

BENCHMARKS = ("mnist10k", "mnist60k", "emnist", "cifar10")
VARIANTS = ("clean", "noisy", "gap", "noisy-long", "noisy-seeds")
#: The one benchmark on which settings may be tuned; all others are held out.
FIT_SET = ("mnist10k-noisy",)
NOISE = {"clean": 0.0, "noisy": 0.2, "gap": 0.0, "noisy-long": 0.2, "noisy-seeds": 0.2}
CLASSES = {"mnist10k": 10, "mnist60k": 10, "emnist": 26, "cifar10": 10}


def cnn16(num_classes: int, input_shape: tuple[int, ...] = (1, 28, 28)) -> torch.nn.Module:
    """The harness's SmallCNN at width 16 (16/32/64 channels): the convnet teacher."""
    from kdlens.harness.models import SmallCNN

    return SmallCNN(input_shape[0], num_classes, width=16)


def cnn4(num_classes: int, input_shape: tuple[int, ...] = (3, 32, 32)) -> torch.nn.Module:
    """SmallCNN at width 4 (4/8/16 channels): the CIFAR-10 student."""
    from kdlens.harness.models import SmallCNN

    return SmallCNN(input_shape[0], num_classes, width=4)


def cnn2(num_classes: int, input_shape: tuple[int, ...] = (3, 32, 32)) -> torch.nn.Module:
    """SmallCNN at width 2: the CIFAR-10 capacity-gap student."""
    from kdlens.harness.models import SmallCNN

    return SmallCNN(input_shape[0], num_classes, width=2)


def _dataset(name: str) -> str:
    if name.startswith("mnist"):
        return f"idx:{EXTERNAL / 'mnist'}"
    if name == "emnist":
        return f"emnist-letters:{EXTERNAL / 'emnist_letters'}"
    return f"cifar10-jpeg:{EXTERNAL / 'cifar10_jpeg'}"


def _mlp_grid(name: str, variant: str) -> DumpConfig:
    sizes = {
        "mnist10k": (10_000, 5_000, None, 32, (1, 2, 4, 8, 16, 32)),
        "mnist60k": (None, 5_000, None, 16, (1, 2, 4, 8, 16)),
        "emnist": (20_000, 5_000, 5_200, 32, (1, 2, 4, 8, 16, 32)),
    }
    train, val, test, epochs, checkpoints = sizes[name]
    return DumpConfig(
        dataset=_dataset(name),
        model="mlp",
        hidden=(256, 128),
        batch_sizes=(16, 64, 256),
        seeds=(0,),
        epochs=epochs,
        checkpoints=checkpoints,
        augment=False,
        label_noise=NOISE[variant],
        train_size=train,
        val_size=val,
        test_size=test,
        device="cpu",
    )


def _cnn_grid(name: str, variant: str) -> DumpConfig:
    sizes = {  # convnet teachers cost ~1.8-2.5 ms per image and epoch on one busy core
        "mnist10k": (10_000, 5_000, None, (16, 64, 256), 16, (1, 2, 4, 8, 16)),
        "mnist60k": (None, 5_000, None, (64, 256), 5, (1, 2, 3, 5)),
        "emnist": (20_000, 5_000, 5_200, (16, 64, 256), 8, (1, 2, 4, 8)),
        "cifar10": (5_000, 2_000, 2_000, (32, 128, 512), 20, (2, 5, 10, 20)),
    }
    train, val, test, batch_sizes, epochs, checkpoints = sizes[name]
    if variant == "noisy-long":  # three times the schedule; see the module docstring
        batch_sizes, epochs, checkpoints = (32, 128), 60, (5, 10, 20, 30, 45, 60)
    seeds = (0, 1) if variant == "noisy-seeds" else (0,)  # see the module docstring
    return DumpConfig(
        dataset=_dataset(name),
        model=f"{HERE}:cnn16",
        lr=0.2,
        lr_scaling="sqrt",
        batch_sizes=batch_sizes,
        seeds=seeds,
        epochs=epochs,
        checkpoints=checkpoints,
        augment=False,
        label_noise=NOISE[variant],
        train_size=train,
        val_size=val,
        test_size=test,
        device="cpu",
    )


def real_size(name: str, variant: str) -> tuple[DumpConfig, StudentConfig]:
    """The teacher grid and the student of benchmark ``name`` in ``variant``."""
    if name not in BENCHMARKS or variant not in VARIANTS:
        raise SystemExit(f"unknown benchmark {name!r} / variant {variant!r}")
    if variant in ("noisy-long", "noisy-seeds") and name != "cifar10":
        raise SystemExit(f"variant {variant!r} is defined for cifar10 only, not {name!r}")
    if name == "cifar10":
        student = "cnn2" if variant == "gap" else "cnn4"
        sc = StudentConfig(model=f"{HERE}:{student}", epochs=10, lr=3e-3, batch_size=128)
        return _cnn_grid(name, variant), sc
    if variant == "gap":
        return _cnn_grid(name, variant), StudentConfig(model="mlp", hidden=(8,), epochs=200)
    hidden = (32,) if name == "emnist" else (24,)
    return _mlp_grid(name, variant), StudentConfig(model="mlp", hidden=hidden, epochs=200)


def smoke(name: str, cfg: DumpConfig, sc: StudentConfig) -> tuple[DumpConfig, StudentConfig]:
    """The same pipeline at toy size (seconds): it checks that the script runs, nothing more."""
    k = CLASSES[name]
    cfg = dataclasses.replace(
        cfg,
        train_size=12 * k,
        val_size=6 * k,
        test_size=4 * k,
        batch_sizes=(32, 64),
        epochs=2,
        checkpoints=(1, 2),
        hidden=(32,),
    )
    return cfg, dataclasses.replace(sc, epochs=5)


def role(label: str) -> str:
    return "fit" if label in FIT_SET else "held-out"
