"""What the Lightning and Hugging Face callbacks share: where a dump goes, what already
exists (resume), and the one distributed dump loop.

Distributed design: **every rank computes its shard, rank 0 gathers and writes.** Each
rank runs the model over every ``world``-th example (positions ``rank, rank + world,
...``, padded to equal length by wrapping around, as ``DistributedSampler`` does), so all
ranks run the same number of equal-sized batches; after each batch the logits, labels,
example ids and positions are all-gathered (gloo and NCCL both support ``all_gather``),
and rank 0 keeps the rows whose position is inside the dataset (the padding is dropped)
and appends them to one atomic :class:`~kdlens.store.writer.CheckpointWriter`. One file
per checkpoint x split, as in a single-process run; no merge step, no shard files.
Whether a file exists is decided on rank 0 and broadcast, so all ranks skip together.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdlens.errors import InputError
from kdlens.harness.writer import LogitsWriter, checked_logits, store_file

__all__ = ["StoreTarget", "dump_split", "effective_batch_size", "to_device"]

#: ``forward(batch) -> (logits, labels or None, example ids or None)``.
Forward = Callable[[Any], tuple[Any, Any, Any]]


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def effective_batch_size(per_device: int, world: int, accumulate: int) -> int:
    """The batch one optimiser step sees: per-device batch x processes x accumulation."""
    return int(per_device) * max(1, int(world)) * max(1, int(accumulate))


def epoch_in_progress(epochs_done: float) -> int:
    """The 1-based epoch under way or just finished (1.0 -> 1, 1.5 -> 2)."""
    return max(1, math.ceil(epochs_done - 1e-9))


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested dicts, lists, tuples) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class StoreTarget:
    """One run of a store: its name, what is recorded with it, and which files exist.

    The :class:`LogitsWriter` is made on the first write, once K is known from the
    model's output (``num_classes`` may be left out).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        run: str,
        num_classes: int | None,
        class_names: Sequence[str] | None,
        batch_size: int | None,
        dataset: str | None,
        model: str | None,
        config: dict[str, Any],
    ) -> None:
        self.root, self.run, self.num_classes = Path(root), run, num_classes
        self._kw: dict[str, Any] = dict(
            class_names=class_names,
            batch_size=batch_size,
            dataset=dataset,
            model=model,
            config=config,
        )
        self._writer: LogitsWriter | None = None

    def writer(self, num_classes: int) -> LogitsWriter:
        if self._writer is None:
            self._writer = LogitsWriter(
                self.root, run=self.run, num_classes=num_classes, **self._kw
            )
        return self._writer

    def missing(self, checkpoint: str, splits: Sequence[str]) -> list[str]:
        """The splits of ``checkpoint`` not in the store yet, as rank 0 sees them."""
        rank, world = dist_info()
        todo = [s for s in splits if not store_file(self.root, self.run, checkpoint, s).exists()]
        if world > 1:
            box: list[Any] = [todo if rank == 0 else None]
            torch.distributed.broadcast_object_list(box, src=0)
            todo = box[0]
        return todo


def dump_split(
    target: StoreTarget,
    dataset: Any,
    forward: Forward,
    *,
    checkpoint: str,
    split: str,
    epoch: int | None,
    step: int | None,
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    num_workers: int = 0,
    model_name: str | None = None,
) -> Path | None:
    """Run ``forward`` over ``dataset`` (in order, this rank's shard) and write the split.

    Example ids are the dataset positions unless ``forward`` returns ids. ``num_workers``:
    loader worker processes, as the training loader has. Returns the file written on rank
    0, None on the other ranks.
    """
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise InputError(
            f"split {split!r}: kdlens dumps a map-style dataset (with __len__ and "
            f"__getitem__), got {type(dataset).__name__}"
        )
    rank, world = dist_info()
    n = len(dataset)
    if n == 0:
        raise InputError(f"split {split!r}: the dataset is empty")
    positions = list(range(rank, -(-n // world) * world, world))
    loader: DataLoader[Any] = DataLoader(
        _Indexed(dataset),
        batch_size=batch_size,
        sampler=[p % n for p in positions],
        collate_fn=_WithIndex(collate_fn),
        num_workers=num_workers,
    )
    out = None
    try:
        with torch.inference_mode():
            for i, (index, batch) in enumerate(loader):
                z, y, ids = forward(batch)
                z = checked_logits(z, target.num_classes, checkpoint, i)
                pos = torch.as_tensor(positions[i * batch_size : i * batch_size + len(index)])
                rows = _gather(z, y, index if ids is None else ids, pos, world)
                if rank == 0:
                    if out is None:
                        w = target.writer(rows[0].shape[1])
                        out = w.open(checkpoint, split, epoch=epoch, step=step, model=model_name)
                    zz, yy, ii, pp = rows
                    keep = (pp < n).numpy()
                    labels = None if bool((yy < 0).all()) else yy.numpy()[keep]
                    out.write(zz[keep], split=split, labels=labels, example_ids=ii.numpy()[keep])
    except BaseException:
        if out is not None:
            out.abort()
        raise
    return None if out is None else Path(out.close())


class _Indexed(Dataset[tuple[int, Any]]):
    """A map-style dataset whose items carry their index (the default example id)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.dataset[i]


class _WithIndex:
    """Collate ``(index, item)`` pairs: the indices as a tensor, the items as ``inner`` does.
    A class, not a closure, so that loader workers started by spawning can pickle it."""

    def __init__(self, inner: Callable[[list[Any]], Any] | None) -> None:
        from torch.utils.data import default_collate

        self.inner = inner or default_collate

    def __call__(self, items: list[tuple[int, Any]]) -> tuple[torch.Tensor, Any]:
        return torch.as_tensor([i for i, _ in items]), self.inner([x for _, x in items])


def _gather(
    z: torch.Tensor, y: Any, ids: Any, pos: torch.Tensor, world: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, labels (-1: none), ids and positions of this batch from every rank, on CPU."""
    n = z.shape[0]
    yy = torch.full((n,), -1, dtype=torch.long) if y is None else torch.as_tensor(y).reshape(-1)
    parts = [z, yy.long(), torch.as_tensor(ids).reshape(-1).long(), pos.long()]
    if world == 1:
        return tuple(p.cpu() for p in parts)  # type: ignore[return-value]
    # NCCL gathers device tensors, gloo CPU ones: gather where the logits are.
    parts = [p.to(z.device) for p in parts]
    out = []
    for p in parts:
        bucket = [torch.empty_like(p) for _ in range(world)]
        torch.distributed.all_gather(bucket, p)
        out.append(torch.cat(bucket).cpu())
    return out[0], out[1], out[2], out[3]
