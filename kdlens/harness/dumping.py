"""Writing checkpoints' logits from inside the training loop.

The store files are written on a worker thread (:class:`BackgroundWriter`), so
training continues while Parquet is encoded; on CPU with a free core the logits
themselves are computed there too, from a snapshot of the model.
"""

from __future__ import annotations

import copy
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlens.harness.data import Splits
from kdlens.harness.runtime import predict_logits
from kdlens.store.writer import CheckpointWriter

__all__ = ["BackgroundWriter", "accuracy", "dump_logits"]


class BackgroundWriter:
    """Writes store files (and, on CPU, computes dump logits) on a worker thread.

    A job is a callable returning complete arrays; on close (also after an
    exception) pending jobs are finished, so every file exists whole or not at all.
    ``busy_seconds`` is the worker's own time, reported beside the blocking time.
    """

    def __init__(self) -> None:
        self._q: queue.Queue[tuple[Path, dict[str, Any], Callable[[], list[Any]]] | None] = (
            queue.Queue()
        )
        self._error: BaseException | None = None
        self.busy_seconds = 0.0
        self._t = threading.Thread(target=self._work, daemon=True, name="kdlens-store-writer")
        self._t.start()

    def _work(self) -> None:
        # Ctrl-C (or a parallel dump's stop) is for the main thread: delivered here it
        # interrupts the file system calls of the Parquet writer (EINTR) mid-file.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        while True:
            item = self._q.get()
            if item is None:
                return
            path, kw, make_parts = item
            t0 = time.perf_counter()
            try:
                parts = make_parts()
                with CheckpointWriter(path, overwrite=True, **kw) as w:
                    for split, z, y, ids in parts:
                        w.write(z, split=split, labels=y, example_ids=ids)
            except BaseException as exc:  # surfaced on the main thread
                self._error = exc
            self.busy_seconds += time.perf_counter() - t0

    def submit(self, path: Path, kw: dict[str, Any], make_parts: Callable[[], list[Any]]) -> None:
        if self._error is not None:
            raise self._error
        self._q.put((path, kw, make_parts))

    def close(self) -> None:
        self._q.put(None)
        self._t.join()
        if self._error is not None:
            raise self._error


def accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: np.ndarray,
    device: torch.device,
    bs: int,
    channels_last: bool,
) -> float:
    """Accuracy of ``model`` on ``x``, ``y`` (NaN on an empty split)."""
    if len(y) == 0:
        return float("nan")
    z = predict_logits(model, x, device=device, batch_size=bs, channels_last=channels_last)
    return float((z.argmax(1) == y).mean())


def dump_logits(
    model: nn.Module,
    data: Splits,
    xs: dict[str, torch.Tensor],
    writer: BackgroundWriter,
    path: Path,
    kw: dict[str, Any],
    device: torch.device,
    bs: int,
    channels_last: bool,
    *,
    in_background: bool = False,
) -> np.ndarray | None:
    """Logits of every split (eval mode, no augmentation) written to ``path``.

    In the background (CPU training on one thread while another core is free) a
    snapshot of the model computes them on the writer thread and None is returned;
    otherwise they are computed here and val's logits are returned.
    """
    splits = [s for s in ("train", "val", "test") if len(data[s].y)]

    def compute(m: nn.Module) -> list[Any]:
        return [
            (
                s,
                predict_logits(m, xs[s], device=device, batch_size=bs, channels_last=channels_last),
                data[s].y,
                data[s].ids,
            )
            for s in splits
        ]

    if in_background:
        snap = copy.deepcopy(model)
        writer.submit(path, kw, lambda: compute(snap))
        return None
    parts = compute(model)
    writer.submit(path, kw, lambda: parts)
    zval = [z for s, z, _, _ in parts if s == "val"]
    return zval[0] if zval else np.empty((0, data.num_classes), np.float32)
