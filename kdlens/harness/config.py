"""The teacher grid's configuration: :class:`DumpConfig`, learning-rate scaling and schedule.

Everything that decides a run's logits is a field of :class:`DumpConfig`; its
:meth:`~DumpConfig.run_config` is what a rerun must match to resume a run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from kdlens.errors import InputError

__all__ = ["BASE_BATCH_SIZE", "DumpConfig", "checkpoint_id", "effective_lr", "scheduled_lr"]

BASE_BATCH_SIZE = 128


@dataclass
class DumpConfig:
    """Everything that decides a teacher grid's logits (recorded in every store file).

    ``lr`` is the learning rate at the base batch size of 128; ``lr_scaling`` says
    how it changes with the batch size (``linear``: lr * bs/128, ``sqrt``:
    lr * sqrt(bs/128), ``none``). ``checkpoints`` are epochs (default: powers of
    two and the last epoch).
    """

    dataset: str = "digits"
    model: str = "mlp"
    hidden: tuple[int, ...] = (256, 128)
    shortcut: str = "A"
    batch_sizes: tuple[int, ...] = (16, 64, 256)
    seeds: tuple[int, ...] = (0,)
    epochs: int = 60
    checkpoints: tuple[int, ...] | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    lr_scaling: str = "linear"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    #: None = on for convnets and user models, off for ``mlp`` (shifts hurt an MLP).
    augment: bool | None = None
    split_seed: int = 0
    train_size: float | int | None = None
    val_size: float | int | None = 0.2
    test_size: float | int | None = None
    label_noise: float = 0.0
    device: str = "auto"
    #: Train the runs in parallel, one process per device (``cpu,cpu``, ``cuda:0,cuda:1``,
    #: ``auto``: every CUDA device, else the CPU once); None: one after another on ``device``.
    devices: str | None = None
    dump_batch_size: int = 2048
    #: CPU threads for torch; None = 1 for models under 1M parameters, else torch's default.
    num_threads: int | None = None

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.batch_sizes = tuple(int(b) for b in self.batch_sizes)
        self.seeds = tuple(int(s) for s in self.seeds)
        if self.checkpoints is None:
            pts = {2**i for i in range(32) if 2**i < self.epochs} | {self.epochs}
            self.checkpoints = tuple(sorted(pts))
        self.checkpoints = tuple(sorted({int(c) for c in self.checkpoints}))
        if self.augment is None:
            self.augment = self.model != "mlp"

    def validate(self) -> None:
        if self.epochs < 1:
            raise InputError(f"`epochs` must be at least 1, got {self.epochs}")
        assert self.checkpoints is not None
        bad = [c for c in self.checkpoints if c < 1 or c > self.epochs]
        if bad:
            raise InputError(
                f"`checkpoints` {','.join(map(str, bad))}: outside epochs 1..{self.epochs} "
                "(`epochs`)"
            )
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InputError(
                "`batch_sizes` must be positive integers, got "
                + ",".join(map(str, self.batch_sizes))
            )
        if not self.seeds:
            raise InputError("`seeds` must name at least one seed")
        for name, value, allowed in (
            ("optimizer", self.optimizer, ("sgd", "adamw")),
            ("lr_scaling", self.lr_scaling, ("linear", "sqrt", "none")),
            ("schedule", self.schedule, ("cosine", "step", "constant")),
            ("shortcut", self.shortcut, ("A", "B")),
        ):
            if value not in allowed:
                raise InputError(f"`{name}` must be one of {', '.join(allowed)}, got {value!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise InputError(f"`label_smoothing` must lie in [0, 1), got {self.label_smoothing}")
        if self.lr is not None and self.lr <= 0:
            raise InputError(f"`lr` must be positive, got {self.lr}")

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 0.1 if self.optimizer == "sgd" else 1e-3

    def run_config(self, batch_size: int, seed: int) -> dict[str, Any]:
        """The configuration of one run: what must match for a rerun to resume it."""
        d = asdict(self)
        for k in ("batch_sizes", "seeds", "device", "devices", "dump_batch_size", "num_threads"):
            d.pop(k)
        d.update(
            batch_size=batch_size,
            seed=seed,
            lr=self.base_lr,
            base_batch_size=BASE_BATCH_SIZE,
            effective_lr=effective_lr(self.base_lr, batch_size, self.lr_scaling),
        )
        return json.loads(json.dumps(d))  # tuples -> lists, as the manifest stores them


def effective_lr(base_lr: float, batch_size: int, scaling: str) -> float:
    """The learning rate used at ``batch_size`` given ``base_lr`` at batch size 128."""
    r = batch_size / BASE_BATCH_SIZE
    return base_lr * (r if scaling == "linear" else math.sqrt(r) if scaling == "sqrt" else 1.0)


def checkpoint_id(epoch: int) -> str:
    return f"ep{epoch:03d}"


def scheduled_lr(schedule: str, lr0: float, step: int, total_steps: int) -> float:
    """The learning rate at ``step`` of ``total_steps`` under ``schedule``, starting at ``lr0``."""
    if schedule == "cosine":
        return lr0 * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    if schedule == "step":
        milestones = (int(0.5 * total_steps), int(0.75 * total_steps))
        return lr0 * 0.1 ** sum(step >= m for m in milestones)
    return lr0
