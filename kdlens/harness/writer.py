"""``kdlens.LogitsWriter``: dump logits from your own training loop in three lines.

>>> writer = kdlens.LogitsWriter("runs/mine", run="bs128-seed0", num_classes=10)  # doctest: +SKIP
>>> for epoch in range(1, 31):                                                    # doctest: +SKIP
...     train_one_epoch(model)
...     if epoch in (1, 2, 4, 8, 16, 30):
...         writer.dump(model, test_loader, checkpoint=f"ep{epoch:03d}", epoch=epoch, split="test")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlens._internal.checks import check_class_names
from kdlens._internal.names import path_component
from kdlens.errors import InputError
from kdlens.harness.runtime import autocast
from kdlens.store.writer import CheckpointWriter

__all__ = ["LogitsWriter", "checked_logits", "store_file"]


def store_file(root: str | os.PathLike[str], run: str, checkpoint: str, split: str) -> Path:
    """Where one run x checkpoint x split lives in a store written by :class:`LogitsWriter`."""
    ck = path_component(checkpoint, field="checkpoint")
    name = f"{ck}.{path_component(split, field='split')}.parquet"
    return Path(root) / path_component(run, field="run") / name


def checked_logits(z: Any, num_classes: int | None, checkpoint: str, i: int) -> torch.Tensor:
    """A model output as float32 ``(batch, K)`` logits; :class:`InputError` when it is
    not logits of ``num_classes`` (any K when None) or holds NaN/Inf.

    Accepts a tensor, or what Hugging Face models return (an object or dict with ``logits``).
    """
    if not isinstance(z, torch.Tensor):
        z = z.get("logits") if isinstance(z, dict) else getattr(z, "logits", z)
    k = num_classes if num_classes is not None else "K"
    ok = isinstance(z, torch.Tensor) and z.ndim == 2
    if not ok or (num_classes is not None and z.shape[1] != num_classes):
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise InputError(f"model output must be (batch, {k}) logits, got {shape}")
    zf = z.float()
    if not bool(torch.isfinite(zf).all()):
        # Analyses refuse non-finite logits; say so while the run is at hand.
        raise InputError(
            f"checkpoint {checkpoint!r}: the model produced NaN/Inf logits in "
            f"loader batch {i}; nothing was written"
        )
    return zf


class LogitsWriter:
    """Write logits of a model over a data loader into a kdlens store.

    Each :meth:`dump` call writes one file, ``<root>/<run>/<checkpoint>.<split>.parquet``,
    atomically. The loader must yield ``(x, y)`` or ``(x, y, example_id)`` batches in a
    fixed order (no shuffling) so that example ids are stable across checkpoints;
    without ids, the position in the loader is the id.

    Parameters
    ----------
    root : directory of the store.
    run : run name, e.g. ``"bs128-seed0"``.
    num_classes : K, the number of logits per example.
    class_names : optional K names.
    batch_size : the teacher's training batch size, recorded in every row.
    dataset, model, config : recorded in the file metadata.
    overwrite : replace files that already exist (default: refuse).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        run: str,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        batch_size: int | None = None,
        dataset: str | None = None,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        path_component(run, field="run")
        check_class_names(class_names, num_classes)
        self.root = Path(root)
        self.run = run
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.batch_size = batch_size
        self.dataset, self.model, self.config = dataset, model, dict(config or {})
        self.overwrite = overwrite

    def path(self, checkpoint: str, split: str) -> Path:
        return store_file(self.root, self.run, checkpoint, split)

    def open(
        self,
        checkpoint: str,
        split: str,
        *,
        epoch: int | None = None,
        step: int | None = None,
        model: str | None = None,
    ) -> CheckpointWriter:
        """The atomic writer of one checkpoint x split file, for callers that compute
        the logits themselves (the trainer callbacks of :mod:`kdlens.integrations`)."""
        return CheckpointWriter(
            self.path(checkpoint, split),
            run=self.run,
            checkpoint=checkpoint,
            num_classes=self.num_classes,
            epoch=epoch,
            step=step,
            batch_size=self.batch_size,
            class_names=self.class_names,
            dataset=self.dataset,
            model=self.model or model,
            config=self.config,
            overwrite=self.overwrite,
        )

    def dump(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        *,
        checkpoint: str,
        split: str = "test",
        epoch: int | None = None,
        step: int | None = None,
    ) -> Path:
        """Run ``model`` over ``loader`` (eval mode, inference_mode) and write its logits.

        The model's train/eval mode is restored afterwards. Returns the file written.
        """
        if not checkpoint or "/" in checkpoint:
            raise InputError(
                f"checkpoint must be a non-empty name without slashes, got {checkpoint!r}"
            )
        sampler = getattr(loader, "sampler", None)
        if sampler is not None and type(sampler).__name__ == "RandomSampler":
            raise InputError(
                "the loader shuffles (RandomSampler): example ids would change between "
                "checkpoints; use shuffle=False for dumps"
            )
        path = self.path(checkpoint, split)
        if path.exists() and not self.overwrite:
            raise InputError(f"{path}: already exists (pass overwrite=True)")
        try:
            param = next(model.parameters())
            device = param.device
        except StopIteration:
            device = torch.device("cpu")
        was_training = model.training
        model.eval()
        seen = 0
        try:
            with (
                self.open(
                    checkpoint, split, epoch=epoch, step=step, model=type(model).__name__
                ) as w,
                torch.inference_mode(),
                autocast(device),
            ):
                for i, batch in enumerate(loader):
                    zf, yy, ids = self._logits_of(model, batch, i, seen, device, checkpoint)
                    n = zf.shape[0]
                    w.write(zf, split=split, labels=yy, example_ids=ids)
                    seen += n
                if seen == 0:
                    raise InputError(f"checkpoint {checkpoint!r}: the loader yielded no examples")
        finally:
            model.train(was_training)
        return path

    def _logits_of(
        self,
        model: nn.Module,
        batch: Any,
        i: int,
        seen: int,
        device: torch.device,
        checkpoint: str,
    ) -> tuple[torch.Tensor, Any, np.ndarray]:
        """One loader batch's float logits, labels and example ids, checked."""
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise InputError(
                f"loader batch {i} must be (x, y) or (x, y, example_id), got {type(batch).__name__}"
            )
        x, y = batch[0], batch[1]
        x = x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x
        zf = checked_logits(model(x), self.num_classes, checkpoint, i)
        n = zf.shape[0]
        ids = (
            np.asarray(batch[2].cpu() if isinstance(batch[2], torch.Tensor) else batch[2])
            if len(batch) == 3
            else np.arange(seen, seen + n)
        )
        yy = y.cpu() if isinstance(y, torch.Tensor) else np.asarray(y)
        return zf, yy, ids
