"""Fidelity between two checkpoints on the same examples (Stanton et al. 2021).

Two measures: top-1 agreement (share of examples where both predict the same
class) and the predictive KL ``KL(p_a || p_b)`` at temperature T, both averaged
over examples. Examples are matched by ``example_id``.

Streaming: :class:`FidelityAccumulator` takes a batch of each side, sorts both by
id and pairs the ids present in both; rows whose partner has not arrived yet are
held (bounded by ``max_pending`` rows) and paired with later batches. The two
parts must hold the same example ids; ids left unpaired at the end are an error.
Reading both parts in the order they were written keeps the pending set empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import log_softmax

from kdlens._internal.accumulator import Accumulator
from kdlens._internal.checks import check_example_ids, check_logits, check_temperature
from kdlens.errors import InputError

__all__ = [
    "FidelityAccumulator",
    "FidelityResult",
    "fidelity",
    "predictive_kl",
    "top1_agreement",
]


def _pair_check(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    za = check_logits(a, name="logits_a")
    zb = check_logits(b, name="logits_b")
    if za.shape != zb.shape:
        raise InputError(
            f"logits_a and logits_b must have the same shape, got {za.shape} and {zb.shape}"
        )
    return za, zb


def _compute_kl(za: np.ndarray, zb: np.ndarray, t: float) -> np.ndarray:
    la = log_softmax(za.astype(np.float64) / t, axis=1)
    lb = log_softmax(zb.astype(np.float64) / t, axis=1)
    return np.maximum(np.einsum("ij,ij->i", np.exp(la), la - lb), 0.0)


def top1_agreement(logits_a: Any, logits_b: Any) -> np.ndarray:
    """Whether both predict the same top-1 class, (n,) bool (row i of a pairs with row i of b)."""
    za, zb = _pair_check(logits_a, logits_b)
    return np.argmax(za, axis=1) == np.argmax(zb, axis=1)


def predictive_kl(logits_a: Any, logits_b: Any, *, temperature: float = 1.0) -> np.ndarray:
    """``KL(p_a || p_b)`` per example at temperature T (nats), (n,)."""
    za, zb = _pair_check(logits_a, logits_b)
    return _compute_kl(za, zb, check_temperature(temperature))


@dataclass
class FidelityResult:
    n: int
    agreement: float
    kl: float
    temperature: float


class FidelityAccumulator(Accumulator):
    """Streaming top-1 agreement and predictive KL, pairing rows by example id."""

    def __init__(self, *, temperature: float = 1.0, max_pending: int = 1_000_000) -> None:
        self.temperature = check_temperature(temperature)
        self.max_pending = int(max_pending)
        self.n = 0
        self.sum_agree = 0
        self.sum_kl = 0.0
        self._pa: tuple[np.ndarray, np.ndarray] | None = None
        self._pb: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        # max_pending bounds memory only; it does not change the result.
        return {"temperature": self.temperature}

    def update(self, logits_a: Any, ids_a: Any, logits_b: Any, ids_b: Any) -> FidelityAccumulator:
        """Add a batch of each side; rows are paired by example id, within and across batches."""
        za = check_logits(logits_a, name="logits_a")
        zb = check_logits(logits_b, name="logits_b", num_classes=za.shape[1])
        ia = check_example_ids(ids_a, za.shape[0], name="ids_a")
        ib = check_example_ids(ids_b, zb.shape[0], name="ids_b")
        if self._pa is not None:
            za, ia = np.concatenate([self._pa[0], za]), np.concatenate([self._pa[1], ia])
        if self._pb is not None:
            zb, ib = np.concatenate([self._pb[0], zb]), np.concatenate([self._pb[1], ib])
        common, ja, jb = np.intersect1d(ia, ib, assume_unique=False, return_indices=True)
        if common.size:
            self._add(za[ja], zb[jb])
        ra = np.setdiff1d(np.arange(ia.shape[0]), ja, assume_unique=True)
        rb = np.setdiff1d(np.arange(ib.shape[0]), jb, assume_unique=True)
        self._pa = (za[ra], ia[ra]) if ra.size else None
        self._pb = (zb[rb], ib[rb]) if rb.size else None
        if ra.size + rb.size > self.max_pending:
            raise InputError(
                f"{ra.size + rb.size} rows wait for a partner with the same example_id; "
                "the two parts must hold the same example ids in a similar order"
            )
        return self

    def _add(self, za: np.ndarray, zb: np.ndarray) -> None:
        self.n += int(za.shape[0])
        self.sum_agree += int(np.sum(np.argmax(za, axis=1) == np.argmax(zb, axis=1)))
        self.sum_kl += float(np.sum(_compute_kl(za, zb, self.temperature)))

    def _merge(self, other: FidelityAccumulator) -> None:
        self.n += other.n
        self.sum_agree += other.sum_agree
        self.sum_kl += other.sum_kl
        if other._pa is not None or other._pb is not None:
            k = (other._pa or other._pb)[0].shape[1]  # type: ignore[index]
            empty = (np.empty((0, k), np.float32), np.empty(0, np.int64))
            self.update(*(other._pa or empty), *(other._pb or empty))

    def finalize(self) -> FidelityResult:
        left = sum(p[1].shape[0] for p in (self._pa, self._pb) if p is not None)
        if left:
            first = (self._pa or self._pb)[1][0]  # type: ignore[index]
            raise InputError(
                f"{left} example ids appear on one side only (first: {int(first)}); "
                "fidelity needs both parts to hold the same examples"
            )
        n = self.n
        return FidelityResult(
            n=n,
            agreement=self.sum_agree / n if n else float("nan"),
            kl=self.sum_kl / n if n else float("nan"),
            temperature=self.temperature,
        )


def fidelity(
    store: Any,
    a: tuple[str, str],
    b: tuple[str, str],
    *,
    split: str,
    temperature: float = 1.0,
) -> FidelityResult:
    """Agreement and ``KL(p_a || p_b)`` between checkpoints ``a`` and ``b`` on one split.

    ``a`` and ``b`` are ``(run, checkpoint)`` pairs; both parts are streamed side by side.
    """
    from kdlens.store.reader import open_store

    st = open_store(store)
    acc = FidelityAccumulator(temperature=temperature)
    it_b = st.iter_batches(b[0], b[1], split)
    empty = (np.empty((0, st.num_classes), np.float32), np.empty(0, np.int64))
    for ba in st.iter_batches(a[0], a[1], split):
        bb = next(it_b, None)
        zb, ib = (bb.logits, bb.example_ids) if bb is not None else empty
        acc.update(ba.logits, ba.example_ids, zb, ib)
    for bb in it_b:
        acc.update(empty[0], empty[1], bb.logits, bb.example_ids)
    return acc.finalize()
