"""``LogitsCallback`` for the Hugging Face ``transformers.Trainer``: a kdlens store written
at each checkpoint save (or evaluation) while the teacher trains.

>>> from kdlens.integrations.transformers import LogitsCallback        # doctest: +SKIP
>>> trainer = Trainer(model, args, train_dataset=train, eval_dataset=val,
...                   callbacks=[LogitsCallback("runs/bert", train_dataset=True)])

Needs the ``transformers`` extra (``pip install 'kdlens[transformers]'``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kdlens.errors import InputError
from kdlens.integrations.common import (
    StoreTarget,
    dump_split,
    effective_batch_size,
    epoch_in_progress,
    to_device,
)

__all__ = ["LogitsCallback"]

_EVENTS = ("save", "evaluate")


class LogitsCallback(TrainerCallback):
    """Dump eval-set (and optionally train-set) logits at each save and/or evaluation.

    Parameters
    ----------
    root : the store directory.
    eval_dataset : the examples dumped as split ``eval_split``; default the dataset of
        the trainer's evaluation loader (once it has evaluated).
    train_dataset : a dataset dumped as split ``train``, or True for the trainer's
        training set (read in order, unshuffled); default none.
    on : when to dump: ``"save"`` (after each checkpoint save), ``"evaluate"``, or both.
    run : the run name; default ``bs<B>-seed<seed>`` from the ``TrainingArguments``.
    eval_split : the split name of the eval set (default ``val``).
    label_column : the batch key of the labels (default ``labels``).
    id_column : an item key holding integer example ids; default the dataset index.
    collate_fn : how items become a batch; default the trainer's data collator.
    num_classes, class_names : K (default from the model's output) and class names.
    dataset, model : names recorded in the metadata (default the classes' names).
    checkpoint_name : format of the checkpoint name, with ``epoch`` and ``step``.

    Recorded with every row: the global step, the epoch under way (1-based) and the
    effective training batch size (per-device batch x processes x gradient accumulation,
    from the ``TrainingArguments``). Files that exist are skipped (a resumed training, or a
    save right after an evaluation of the same step, writes nothing twice).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        eval_dataset: Any = None,
        train_dataset: Any = None,
        on: str | Sequence[str] = "save",
        run: str | None = None,
        eval_split: str = "val",
        label_column: str = "labels",
        id_column: str | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        dataset: str | None = None,
        model: str | None = None,
        checkpoint_name: str = "ep{epoch:03d}-step{step:06d}",
    ) -> None:
        self.on = (on,) if isinstance(on, str) else tuple(on)
        if not self.on or any(e not in _EVENTS for e in self.on):
            raise InputError(f"`on` must be 'save', 'evaluate' or both, got {on!r}")
        self.root, self.run = Path(root), run
        self.eval_dataset, self.train_dataset, self.eval_split = (
            eval_dataset,
            train_dataset,
            eval_split,
        )
        self.label_column, self.id_column, self.collate_fn = label_column, id_column, collate_fn
        self.num_classes, self.class_names = num_classes, class_names
        self.dataset_name, self.model_name = dataset, model
        self.checkpoint_name = checkpoint_name
        self.written: list[Path] = []  # the files this process wrote (rank 0)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if "save" in self.on:
            self.dump(args, state, **kw)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if "evaluate" in self.on:
            self.dump(args, state, **kw)

    def dump(
        self, args: TrainingArguments, state: TrainerState, *, model: Any = None, **kw: Any
    ) -> list[Path]:
        """Write the logits of ``model`` as it is now (missing files only)."""
        if model is None:
            raise InputError("the trainer passed no model to the callback")
        epoch, step = epoch_in_progress(state.epoch or 0.0), int(state.global_step)
        name = self.checkpoint_name.format(epoch=epoch, step=step)
        sets = self._datasets(kw)
        target = self._target(args, model, sets)
        todo = target.missing(name, list(sets))
        if not todo:
            return []
        loader = kw.get("eval_dataloader") or kw.get("train_dataloader")
        collate = self.collate_fn or getattr(loader, "collate_fn", None)
        if collate is None:
            collate = transformers.default_data_collator
        forward = self._forward(model)
        was_training = model.training
        model.eval()
        written = []
        try:
            for split in todo:
                path = dump_split(
                    target,
                    sets[split],
                    forward,
                    checkpoint=name,
                    split=split,
                    epoch=epoch,
                    step=step,
                    batch_size=args.per_device_eval_batch_size,
                    collate_fn=_SplitIds(collate, self.id_column),
                    num_workers=args.dataloader_num_workers,
                    model_name=type(model).__name__,
                )
                if path is not None:
                    written.append(path)
        finally:
            model.train(was_training)
        self.written += written
        return written

    def _datasets(self, kw: dict[str, Any]) -> dict[str, Any]:
        evals = self.eval_dataset
        if evals is None:
            evals = getattr(kw.get("eval_dataloader"), "dataset", None)
        if evals is None:
            raise InputError(
                "no eval set: pass `eval_dataset=` (the trainer has not evaluated yet)"
            )
        sets = {self.eval_split: evals}
        train = self.train_dataset
        if train is True:
            train = getattr(kw.get("train_dataloader"), "dataset", None)
            if train is None:
                raise InputError("`train_dataset=True`, but the trainer has no training set")
        if train is not None and train is not False:
            sets["train"] = train
        return sets

    def _target(self, args: TrainingArguments, model: Any, sets: dict[str, Any]) -> StoreTarget:
        bs = effective_batch_size(
            args.train_batch_size, args.world_size, args.gradient_accumulation_steps
        )
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        return StoreTarget(
            self.root,
            run=self.run or f"bs{bs}-seed{args.seed}",
            num_classes=self.num_classes or num_labels,
            class_names=self.class_names,
            batch_size=bs,
            dataset=self.dataset_name or type(sets[self.eval_split]).__name__,
            model=self.model_name or type(model).__name__,
            config={
                "trainer": f"transformers {transformers.__version__}",
                "per_device_train_batch_size": args.per_device_train_batch_size,
                "processes": args.world_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "learning_rate": args.learning_rate,
                "seed": args.seed,
            },
        )

    def _forward(self, model: Any) -> Callable[[Any], tuple[Any, Any, Any]]:
        label_column = self.label_column
        device = next(model.parameters()).device
        accepted = set(inspect.signature(model.forward).parameters)

        def forward(batch: tuple[Any, Any]) -> tuple[Any, Any, Any]:
            inputs, ids = batch
            inputs = dict(inputs)
            labels = inputs.pop(label_column, None)
            inputs = {k: v for k, v in inputs.items() if k in accepted}
            return model(**to_device(inputs, device)), labels, ids

        return forward


class _SplitIds:
    """Collate items with their ids taken out first (``collate`` never sees the id
    column). A class, not a closure, so that spawned loader workers can pickle it."""

    def __init__(self, collate: Callable[[list[Any]], Any], id_column: str | None) -> None:
        self.collate, self.id_column = collate, id_column

    def __call__(self, items: list[Any]) -> tuple[Any, Any]:
        key = self.id_column
        if key is None:
            return self.collate(items), None
        try:
            ids = [int(item[key]) for item in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"`id_column` {key!r}: an item has no integer id ({exc})") from exc
        rest = [{k: v for k, v in item.items() if k != key} for item in items]
        return self.collate(rest), torch.as_tensor(ids)
