"""What ``kdlens import`` stores: an input of logits, probabilities or log-probabilities
becomes finite float32 logits, converted and checked one block of rows at a time.

Every check runs on every row, and a failure is reported as an import of the whole
array in memory would report it: which check failed first (range before row sums before
non-finite results), how many rows fail it and the first of them. Each step is row-wise
(``float64`` → check → ``float32``), so the stored values do not depend on the block size.
After the first failing block nothing more is written; the remaining rows are still read
to count the failures, and the caller's staged output is discarded.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logsumexp

from kdlens.errors import InputError

__all__ = ["LogitsConverter"]


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


class LogitsConverter:
    """Convert blocks of an (N, K) input of ``kind`` to float32 logits, checking as it goes.

    :meth:`convert` returns the block's logits, or ``None`` once any row (of this block or
    an earlier one) has failed a check; :meth:`finish` raises the failure, or warns when
    ``kind="logits"`` inputs look like probabilities.
    """

    def __init__(self, kind: str, path: Path, *, prob_floor: float, prob_tol: float) -> None:
        self.kind, self.path, self.floor, self.tol = kind, path, prob_floor, prob_tol
        self.range_bad = False  # probs outside [0, 1]; log-probs NaN or +inf
        self.off = 0  # rows whose sum (probs) or logsumexp (log-probs) is off
        self.first_off: tuple[int, float] | None = None
        self.nonfinite = 0  # rows whose stored logits would not be finite
        self.first_nonfinite: tuple[int, str] | None = None
        self.like_probs = True  # kind="logits": every row so far in [0, 1] and summing to 1

    @property
    def failed(self) -> bool:
        return self.range_bad or self.off > 0 or self.nonfinite > 0

    def convert(self, block: Any, start: int) -> np.ndarray | None:
        """The float32 logits of rows ``start, start + 1, ...`` (``block``: those rows)."""
        x = np.asarray(block).astype(np.float64)
        if self.kind == "logits":
            if self.like_probs:
                self.like_probs = bool(
                    np.isfinite(x).all()
                    and (x >= 0).all()
                    and np.allclose(x.sum(axis=1), 1.0, atol=self.tol)
                )
            with np.errstate(over="ignore"):  # overflow to Inf is refused below
                z = x.astype(np.float32)
        elif self.kind == "probs":
            if self.range_bad or np.isnan(x).any() or (x < 0).any() or (x > 1 + self.tol).any():
                self.range_bad = True
                return None
            sums = x.sum(axis=1)
            self._rows_off(np.abs(sums - 1.0) > self.tol, sums, start)
            if self.failed:
                return None
            z = np.log(np.maximum(x, self.floor)).astype(np.float32)
        else:  # log-probs: -inf is a zero probability; it gets the same stated floor
            if self.range_bad or np.isnan(x).any() or (x == np.inf).any():
                self.range_bad = True
                return None
            x = np.maximum(x, np.log(self.floor))
            lse = logsumexp(x, axis=1)
            self._rows_off(np.abs(lse) > self.tol, lse, start)
            if self.failed:
                return None
            with np.errstate(over="ignore"):
                z = x.astype(np.float32)
        finite = np.isfinite(z).all(axis=1)
        if not finite.all():
            i = int(np.argmin(finite))
            if self.first_nonfinite is None:
                why = (
                    "NaN or Inf in the input"
                    if not np.isfinite(np.asarray(block[i], dtype=np.float64)).all()
                    else "values beyond the float32 range (about 3.4e38)"
                )
                self.first_nonfinite = (start + i, why)
            self.nonfinite += int((~finite).sum())
        return None if self.failed else z

    def _rows_off(self, off: np.ndarray, value: np.ndarray, start: int) -> None:
        if off.any():
            if self.first_off is None:
                i = _first(off)
                self.first_off = (start + i, float(value[i]))
            self.off += int(off.sum())

    def finish(self) -> None:
        """Raise the first check that failed (see the module docstring), else warn when
        ``kind="logits"`` rows all look like probabilities."""
        path = self.path
        if self.range_bad:
            if self.kind == "probs":
                raise InputError(f"{path}: probabilities must lie in [0, 1]; are these logits?")
            raise InputError(f"{path}: log-probabilities contain NaN or +inf")
        if self.first_off is not None:
            i, v = self.first_off
            if self.kind == "probs":
                raise InputError(
                    f"{path}: {self.off} rows do not sum to 1 within {self.tol} "
                    f"(row {i} sums to {v:.6g}); are these logits?"
                )
            raise InputError(
                f"{path}: {self.off} rows are not normalised log-probabilities "
                f"(row {i}: logsumexp = {v:.6g}); use `kind=logits`?"
            )
        if self.first_nonfinite is not None:
            i, why = self.first_nonfinite
            raise InputError(
                f"{path}: {self.nonfinite} rows would store non-finite logits "
                f"(first at row {i}: {why}); a store holds finite float32 logits"
            )
        if self.kind == "logits" and self.like_probs:
            warnings.warn(
                f"{path}: every row lies in [0, 1] and sums to 1: these look like "
                "probabilities; use `kind=probs` unless they really are logits",
                stacklevel=3,
            )
