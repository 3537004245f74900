"""Reference class probabilities (``analyze(reference_probs=...)``): read, look up by example
id, and accumulate ``reference_kl`` and the reference similarity sums on the pass."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy.special import log_softmax

from kdlens.errors import InputError
from kdlens.store.format import Batch

__all__ = ["read_reference_probs"]


class _Reference:
    """Reference class probabilities looked up by example id."""

    def __init__(self, path: Path, probs: np.ndarray, ids: np.ndarray | None) -> None:
        self.path, self.probs = path, probs
        self._order = None if ids is None else np.argsort(ids, kind="stable")
        self._sorted = None if ids is None else ids[self._order]

    def rows(self, example_ids: np.ndarray) -> np.ndarray:
        if self._sorted is None:
            bad = (example_ids < 0) | (example_ids >= self.probs.shape[0])
            if bad.any():
                raise InputError(
                    f"{self.path}: has {self.probs.shape[0]} rows (row = example_id) but the store "
                    f"has example_id {int(example_ids[bad][0])}"
                )
            idx = example_ids
        else:
            pos = np.searchsorted(self._sorted, example_ids)
            pos = np.minimum(pos, self._sorted.shape[0] - 1)
            bad = self._sorted[pos] != example_ids
            if bad.any():
                raise InputError(f"{self.path}: no row for example_id {int(example_ids[bad][0])}")
            idx = self._order[pos]  # type: ignore[index]
        # Sorted access keeps a memory-mapped file read sequentially.
        order = np.argsort(idx, kind="stable")
        out = np.empty((idx.shape[0], self.probs.shape[1]))
        out[order] = np.asarray(self.probs[idx[order]], dtype=np.float64)
        if not np.isfinite(out).all() or (out < 0).any():
            raise InputError(f"{self.path}: probabilities must be finite and non-negative")
        sums = out.sum(axis=1)
        if np.any(np.abs(sums - 1.0) > 1e-3):
            raise InputError(
                f"{self.path}: rows must sum to 1, found a row summing to "
                f"{float(sums[np.argmax(np.abs(sums - 1))]):.4g}"
            )
        return out / sums[:, None]


def read_reference_probs(path: str | os.PathLike[str], num_classes: int) -> _Reference:
    """Open reference probabilities: ``.npy`` (N, K), row = example_id, or ``.npz`` with
    ``probs`` (N, K) and optional ``example_id`` (N,)."""
    p = Path(path)
    try:
        if p.suffix == ".npz":
            with np.load(p) as f:
                if "probs" not in f:
                    raise InputError(f"{p}: .npz must hold an array named 'probs'")
                probs = np.asarray(f["probs"])
                ids = np.asarray(f["example_id"], np.int64) if "example_id" in f else None
        else:
            probs = np.load(p, mmap_mode="r")
            ids = None
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: cannot read reference probabilities ({exc})") from None
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise InputError(
            f"{p}: reference probabilities must be (N, {num_classes}), got {probs.shape}"
        )
    if ids is not None and ids.shape != (probs.shape[0],):
        raise InputError(
            f"{p}: 'example_id' has shape {ids.shape} but 'probs' has {probs.shape[0]} rows"
        )
    if ids is not None and np.unique(ids).size != ids.size:
        raise InputError(f"{p}: 'example_id' holds duplicates")
    return _Reference(p, probs, ids)


class ReferenceExtra:
    """Pass extra: ``sum KL(p_ref || p_T)`` and the reference similarity sums of one part."""

    def __init__(self, ref: _Reference, k: int, temperature: float) -> None:
        from kdlens.measures.similarity import SimilarityAccumulator

        self.ref, self.temperature = ref, temperature
        self.sim = SimilarityAccumulator(k, temperature=1.0, entries=False)
        self.kl_sum = 0.0

    def update(self, b: Batch, cols: dict[str, np.ndarray]) -> None:
        pr = self.ref.rows(b.example_ids)
        with np.errstate(divide="ignore"):
            lr = np.log(pr)
        lt = log_softmax(b.logits.astype(np.float64) / self.temperature, axis=1)
        # 0 log 0 = 0: classes without reference mass contribute nothing.
        self.kl_sum += float(np.sum(pr * np.where(pr > 0, lr - lt, 0.0)))
        # log 0 -> a very negative finite logit: the class gets (numerically) no mass.
        self.sim.update(np.maximum(lr, -1e4).astype(np.float32), b.labels.astype(np.int64))

    def merge(self, other: ReferenceExtra) -> ReferenceExtra:
        self.sim.merge(other.sim)
        self.kl_sum += other.kl_sum
        return self
