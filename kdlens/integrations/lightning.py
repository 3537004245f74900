"""``LogitsCallback`` for PyTorch Lightning: a kdlens store written while the teacher trains.

>>> from kdlens.integrations.lightning import LogitsCallback             # doctest: +SKIP
>>> dump = LogitsCallback("runs/mine", epochs=[1, 2, 4, 8, 16])         # doctest: +SKIP
>>> trainer = L.Trainer(max_epochs=16, callbacks=[dump])                # doctest: +SKIP
>>> trainer.fit(model, datamodule=dm)                                      # doctest: +SKIP

Needs the ``lightning`` extra (``pip install 'kdlens[lightning]'``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerStatus

from kdlens.errors import InputError
from kdlens.integrations.common import (
    StoreTarget,
    dump_split,
    effective_batch_size,
    to_device,
)

__all__ = ["LogitsCallback"]

#: The datamodule's (or trainer's) loader of each split kdlens knows.
_LOADER = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader"}


class LogitsCallback(pl.Callback):
    """Dump the logits of every split at chosen epochs, or at every checkpoint save.

    Parameters
    ----------
    root : the store directory.
    run : the run name; default ``bs<B>-seed<S>`` (B the effective training batch size,
        S the seed of ``seed_everything``; ``bs<B>`` without one).
    dataloaders : ``{"train": loader, "val": loader, ...}``; default: the datamodule's
        (else the trainer's) loaders of ``splits``. Each is re-read in order, unshuffled
        (its dataset, ``collate_fn`` and batch size), so ids are dataset positions.
    splits : the splits taken from the datamodule or trainer; default train and val, those
        of the two that it has.
    epochs : dump at the end of these (1-based) epochs; None (default): at every
        checkpoint save (``on_save_checkpoint``: the logits of exactly the saved weights).
    num_classes, class_names : K (default: from the model's output) and class names.
    batch_size : the training batch size recorded; default per-device batch x devices x
        gradient accumulation.
    eval_batch_size : the batch size of the dump's forward passes (default the loader's).
    dataset, model : names recorded in the metadata (default the class names).
    forward : ``forward(module, batch) -> (logits, labels)`` or ``-> logits``, batch on the
        module's device; default: ``(x, y)`` or ``(x, y, example_id)`` batches, ``module(x)``.
    checkpoint_name : format of the checkpoint name, with ``epoch`` and ``step``.

    Files that exist are skipped, so a restarted ``Trainer.fit(ckpt_path=...)`` (or a
    re-run) writes only what is missing. Under DDP every rank computes its shard and rank
    0 writes (see :mod:`kdlens.integrations.common`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        run: str | None = None,
        dataloaders: Mapping[str, Any] | None = None,
        splits: Sequence[str] | None = None,
        epochs: Iterable[int] | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        dataset: str | None = None,
        model: str | None = None,
        forward: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        checkpoint_name: str = "ep{epoch:03d}-step{step:06d}",
    ) -> None:
        self.root = Path(root)
        self.run, self.dataloaders = run, dict(dataloaders) if dataloaders else None
        self.splits = tuple(self.dataloaders or splits or ()) or None
        self.epochs = None if epochs is None else {int(e) for e in epochs}
        self.num_classes, self.class_names = num_classes, class_names
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.dataset_name, self.model_name = dataset, model
        self.forward, self.checkpoint_name = forward, checkpoint_name
        self.written: list[Path] = []  # the files this process wrote (rank 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.epochs is not None and trainer.current_epoch + 1 in self.epochs:
            self.dump(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.epochs is None:
            self.dump(trainer, pl_module)

    def dump(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Path]:
        """Write every split's logits for the module as it is now (missing files only)."""
        # Inside fit, current_epoch is the 0-based epoch under way; once fit has finished
        # (a save after it), it counts the epochs done.
        running = trainer.state.status == TrainerStatus.RUNNING
        epoch, step = trainer.current_epoch + int(running), trainer.global_step
        name = self.checkpoint_name.format(epoch=epoch, step=step)
        target = self._target(trainer, pl_module)
        splits = self.splits or _available(trainer)
        if not splits:
            raise InputError("nothing to dump: the trainer has no train or val DataLoader")
        todo = target.missing(name, splits)
        if not todo:
            return []
        loaders = self._loaders(trainer, todo)
        forward = self._forward(trainer, pl_module)
        was_training = pl_module.training
        pl_module.eval()
        written = []
        try:
            for split in todo:
                loader = loaders[split]
                path = dump_split(
                    target,
                    loader.dataset,
                    forward,
                    checkpoint=name,
                    split=split,
                    epoch=epoch,
                    step=step,
                    batch_size=self.eval_batch_size or loader.batch_size or 1,
                    collate_fn=loader.collate_fn,
                    num_workers=getattr(loader, "num_workers", 0),
                    model_name=type(pl_module).__name__,
                )
                if path is not None:
                    written.append(path)
        finally:
            pl_module.train(was_training)
        self.written += written
        return written

    def _target(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> StoreTarget:
        per_device = _train_batch_size(trainer)
        bs = self.batch_size or (
            effective_batch_size(per_device, trainer.world_size, trainer.accumulate_grad_batches)
            if per_device
            else None
        )
        seed = os.environ.get("PL_GLOBAL_SEED")
        run = self.run or (f"bs{bs}" if bs else "run") + (f"-seed{seed}" if seed else "")
        dm = getattr(trainer, "datamodule", None)
        return StoreTarget(
            self.root,
            run=run,
            num_classes=self.num_classes,
            class_names=self.class_names,
            batch_size=bs,
            dataset=self.dataset_name or (type(dm).__name__ if dm is not None else None),
            model=self.model_name or type(pl_module).__name__,
            config={
                "trainer": f"lightning {pl.__version__}",
                "per_device_batch_size": per_device,
                "devices": trainer.world_size,
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                "precision": str(trainer.precision),
                "seed": seed,
            },
        )

    def _loaders(self, trainer: pl.Trainer, splits: list[str]) -> dict[str, Any]:
        if self.dataloaders is not None:
            return {s: self.dataloaders[s] for s in splits}
        dm = getattr(trainer, "datamodule", None)
        out = {}
        for split in splits:
            if split not in _LOADER:
                raise InputError(f"`splits`: {split!r} is not one of {sorted(_LOADER)}")
            if dm is not None:
                loader = getattr(dm, _LOADER[split])()
            else:
                attr = "train_dataloader" if split == "train" else f"{split}_dataloaders"
                loader = getattr(trainer, attr)
            loader = _first(loader)
            if loader is None or not hasattr(loader, "dataset"):
                raise InputError(
                    f"split {split!r}: the trainer has no {split} DataLoader; pass "
                    "`dataloaders={...}` or other `splits`"
                )
            out[split] = loader
        return out

    def _forward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        user = self.forward
        context = trainer.precision_plugin.forward_context

        def forward(batch: Any) -> tuple[Any, Any, Any]:
            batch = to_device(batch, pl_module.device)
            with context():
                if user is not None:
                    out = user(pl_module, batch)
                    z, y = out if isinstance(out, tuple) else (out, None)
                    return z, y, None
                return _default_forward(pl_module, batch)

        return forward


def _default_forward(module: torch.nn.Module, batch: Any) -> tuple[Any, Any, Any]:
    if isinstance(batch, torch.Tensor):
        return module(batch), None, None
    if isinstance(batch, (list, tuple)) and len(batch) in (2, 3):
        return module(batch[0]), batch[1], batch[2] if len(batch) == 3 else None
    raise InputError(
        f"a {type(batch).__name__} batch is not (x, y) or (x, y, example_id): pass "
        "`forward=lambda module, batch: (logits, labels)`"
    )


def _train_batch_size(trainer: pl.Trainer) -> int | None:
    """The per-device training batch size, when the trainer's loader says it."""
    size = getattr(_first(trainer.train_dataloader), "batch_size", None)
    if size is None:
        size = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    return int(size) if isinstance(size, int) else None


def _first(loaders: Any) -> Any:
    """The first of several loaders (a list or a dict of them, as Lightning allows)."""
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders


def _available(trainer: pl.Trainer) -> list[str]:
    """The default splits: train and val, those of the two the datamodule (else the
    trainer) has."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    dm = getattr(trainer, "datamodule", None)
    if dm is not None:
        return [s for s in ("train", "val") if is_overridden(_LOADER[s], dm)]
    found = {"train": trainer.train_dataloader, "val": trainer.val_dataloaders}
    return [s for s, loader in found.items() if _first(loader) is not None]
