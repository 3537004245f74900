"""Per-example soft-label quantities from raw logits (science.md, "Per example").

Every function takes plain arrays: ``logits`` (n, K) and, where the quantity is
about the true class, ``labels`` (n,) ints in ``[0, K)``; the temperature is a
keyword and is always explicit. ``p = softmax(logits / T)``; logs are natural.

Numerics: all math is float64 in log space. The dark mass ``1 - p_y`` is never
formed by subtraction: it is ``exp(LSE(z_{!=y}/T) - LSE(z/T))`` from the
non-target sum itself, so it stays exact (relative precision) when ``p_y`` rounds
to 1, and the non-target distribution ``q = softmax(z_{!=y}/T)`` is exact even
when the dark mass underflows (such rows are recomputed with their own shift).

``correct``, ``nll`` and ``margin`` are at T = 1 whatever the temperature, since
they describe the teacher's own predictions rather than its softened response.

K = 2: the non-target distribution ``q`` is a point mass on the one other class,
so ``nontarget_entropy`` is 0 and its normalised form (``/ log(K - 1) = / 0``)
is defined as 0; class-similarity quantities built on ``q`` (SI, II) are then
degenerate (0) rather than errors.

Rows with a missing label (``-1``) are only accepted by :func:`per_example`,
which reports NaN for label-dependent columns of those rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from scipy.special import log_softmax

from kdlens._internal.defaults import OEMC_DELTA
from kdlens.errors import InputError

__all__ = [
    "DEFAULT_OEMC_DELTA",
    "correct",
    "dark_mass",
    "effective_classes",
    "entropy",
    "log_dark_mass",
    "log_probs",
    "margin",
    "nckd_weight",
    "nll",
    "nontarget_entropy",
    "nontarget_log_probs",
    "nontarget_probs",
    "oemc",
    "oemc_share",
    "per_example",
    "probs",
    "target_prob",
    "tckd_weight",
]

#: Default OEMC threshold on the dark mass at temperature T.
DEFAULT_OEMC_DELTA = OEMC_DELTA
#: Below this non-target sum (in the frame shifted by the row maximum) a row is
#: recomputed with the non-target maximum as shift, so ``q`` never underflows.
_RESHIFT_BELOW = 1e-150


# --------------------------------------------------------------------------- validation


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise InputError(f"temperature must be a positive finite number, got {temperature}")
    return t


def _check_logits(logits: Any, *, name: str = "logits") -> np.ndarray:
    z = np.asarray(logits)
    if z.ndim != 2:
        raise InputError(f"{name} must be 2-D (n, K), got shape {z.shape}")
    if z.shape[1] < 2:
        raise InputError(f"{name} must have at least 2 classes, got K={z.shape[1]}")
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float64)
    bad = ~np.isfinite(z)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise InputError(
            f"{name} holds {int(rows.size)} rows with NaN/Inf values (first at row {int(rows[0])})"
        )
    return z


def _check_labels(labels: Any, n: int, k: int, *, allow_missing: bool = False) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        y = y.reshape(-1)
    if y.shape[0] != n:
        raise InputError(
            f"logits and labels must be same length, but logits has {n} rows "
            f"and labels has {y.shape[0]}"
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise InputError("labels must be integers")
    y = y.astype(np.int64, copy=False)
    lo = -1 if allow_missing else 0
    bad = (y < lo) | (y >= k)
    if bad.any():
        where = "[-1, K)" if allow_missing else "[0, K)"
        raise InputError(f"labels must lie in {where} with K={k}, found {int(y[bad][0])}")
    return y


def _check(logits: Any, labels: Any, temperature: float) -> tuple[np.ndarray, np.ndarray, float]:
    z = _check_logits(logits)
    y = _check_labels(labels, z.shape[0], z.shape[1])
    return z, y, _check_temperature(temperature)


# --------------------------------------------------------------------------- core


class _Core:
    """Intermediates of one log-softmax pass, reused by every quantity.

    ``x = z / T - max(z / T)`` (so ``x <= 0`` and the row maximum is 0),
    ``e = exp(x)``, ``s = sum(e)``; ``log p = x - log s``.
    """

    __slots__ = ("x", "e", "s", "log_s", "ex", "temperature")

    def __init__(self, z: np.ndarray, temperature: float) -> None:
        x = np.array(z, dtype=np.float64, copy=True)
        if temperature != 1.0:
            x /= temperature
        x -= x.max(axis=1, keepdims=True)
        e = np.exp(x)
        self.x, self.e, self.temperature = x, e, temperature
        self.s = e.sum(axis=1)
        self.log_s = np.log(self.s)
        self.ex: np.ndarray | None = None  # sum(e * x) per row, filled when needed

    def entropy(self) -> np.ndarray:
        if self.ex is None:
            self.ex = np.einsum("ij,ij->i", self.e, self.x)
        # H = -sum p log p = log s - sum(e x) / s; every term of sum(e x) is <= 0.
        return np.maximum(self.log_s - self.ex / self.s, 0.0)


class _Target:
    """Label-dependent intermediates: target log-prob, log dark mass, H(q), runner-up.

    ``log_snt`` is ``LSE(x_{!=y})`` in the shifted frame of ``core.x``; ``s_nt`` the
    non-target sum ``sum_{j != y} e_j`` (0 or tiny on the rows listed in ``small``,
    which were recomputed with the non-target maximum as shift); ``x_runner`` the
    largest non-target ``x``.
    """

    __slots__ = (
        "log_pt",
        "log_snt",
        "log_dark",
        "nt_entropy",
        "x_y",
        "rows",
        "s_nt",
        "small",
        "x_runner",
    )

    def __init__(self, core: _Core, y: np.ndarray) -> None:
        x, e = core.x, core.e
        n = x.shape[0]
        rows = np.arange(n)
        x_y = x[rows, y]
        e_y = e[rows, y].copy()
        # Zero the target entry so the non-target sums are formed directly (no 1 - p_y).
        e[rows, y] = 0.0
        s_nt = e.sum(axis=1)
        ex_nt = np.einsum("ij,ij->i", e, x)
        e_runner = e.max(axis=1)
        # Recover the full-row sums by addition (same sign terms: no cancellation).
        core.s = s_nt + e_y
        core.log_s = np.log(core.s)
        core.ex = ex_nt + e_y * x_y
        e[rows, y] = e_y
        with np.errstate(divide="ignore", invalid="ignore"):
            log_snt = np.log(s_nt)
            nt_entropy = log_snt - ex_nt / s_nt
            x_runner = np.log(e_runner)
        small = np.flatnonzero(~(s_nt >= _RESHIFT_BELOW))
        if small.size:
            # Dark mass (nearly) underflowed: redo these rows shifted by the non-target max.
            xs = x[small].copy()
            xs[np.arange(small.size), y[small]] = -np.inf
            m2 = xs.max(axis=1, keepdims=True)
            xs -= m2
            es = np.exp(xs)
            s2 = es.sum(axis=1)
            ex2 = np.einsum("ij,ij->i", es, np.where(np.isfinite(xs), xs, 0.0))
            log_snt[small] = m2[:, 0] + np.log(s2)
            nt_entropy[small] = np.log(s2) - ex2 / s2
            x_runner[small] = m2[:, 0]
        if x.shape[1] == 2:
            nt_entropy[:] = 0.0  # q is a point mass; avoid log s - s x / s rounding to 1e-16
        self.x_y, self.rows, self.s_nt, self.small = x_y, rows, s_nt, small
        self.log_pt = x_y - core.log_s
        self.log_snt = log_snt
        self.log_dark = log_snt - core.log_s
        self.nt_entropy = np.maximum(nt_entropy, 0.0)
        self.x_runner = x_runner

    def nontarget_probs(self, core: _Core, y: np.ndarray, *, inplace: bool = False) -> np.ndarray:
        """``q`` as (n, K) with the target column 0, exact on every row.

        ``inplace`` reuses ``core.e`` as the output (the core's ``e`` is then gone).
        """
        with np.errstate(divide="ignore"):
            inv = 1.0 / self.s_nt
        inv[self.small] = 0.0
        q = np.multiply(core.e, inv[:, None], out=core.e if inplace else None)
        q[self.rows, y] = 0.0
        if self.small.size:
            xs = core.x[self.small] - self.log_snt[self.small, None]
            qs = np.exp(xs)
            qs[np.arange(self.small.size), y[self.small]] = 0.0
            q[self.small] = qs
        return q


def _margin_from(core: _Core, y: np.ndarray, tg: _Target) -> np.ndarray:
    """``z_y - max_{j != y} z_j`` in logit units (T = 1), from the shifted frame."""
    return (tg.x_y - tg.x_runner) * core.temperature


def _log_softmax_at_one(z: np.ndarray, core: _Core) -> tuple[np.ndarray, np.ndarray]:
    """(x1, log s1) at T = 1, reusing ``core`` when it is already at T = 1."""
    if core.temperature == 1.0:
        return core.x, core.log_s
    c1 = _Core(z, 1.0)
    return c1.x, c1.log_s


# --------------------------------------------------------------------------- public arrays


def log_probs(logits: Any, *, temperature: float = 1.0) -> np.ndarray:
    """``log softmax(logits / T)``, (n, K) float64."""
    t = _check_temperature(temperature)
    z = _check_logits(logits)
    return log_softmax(z.astype(np.float64) / t, axis=1)


def probs(logits: Any, *, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / T)``, (n, K) float64."""
    return np.exp(log_probs(logits, temperature=temperature))


def entropy(logits: Any, *, temperature: float = 1.0, normalized: bool = False) -> np.ndarray:
    """``H(p)`` in nats per example, (n,); ``normalized`` divides by ``log K``."""
    t = _check_temperature(temperature)
    z = _check_logits(logits)
    h = _Core(z, t).entropy()
    return h / np.log(z.shape[1]) if normalized else h


def effective_classes(logits: Any, *, temperature: float = 1.0) -> np.ndarray:
    """``exp(H(p))``, between 1 (one-hot) and K (uniform), (n,)."""
    return np.exp(entropy(logits, temperature=temperature))


def target_prob(logits: Any, labels: Any, *, temperature: float = 1.0) -> np.ndarray:
    """``p_y``, (n,)."""
    z, y, t = _check(logits, labels, temperature)
    return np.exp(_Target(_Core(z, t), y).log_pt)


def log_dark_mass(logits: Any, labels: Any, *, temperature: float = 1.0) -> np.ndarray:
    """``log(1 - p_y) = LSE(z_{!=y}/T) - LSE(z/T)``, (n,); ``-inf`` never arises from rounding."""
    z, y, t = _check(logits, labels, temperature)
    return _Target(_Core(z, t), y).log_dark


def dark_mass(logits: Any, labels: Any, *, temperature: float = 1.0) -> np.ndarray:
    """``1 - p_y`` computed as ``exp(LSE(z_{!=y}/T) - LSE(z/T))``, (n,)."""
    return np.exp(log_dark_mass(logits, labels, temperature=temperature))


def nontarget_log_probs(logits: Any, labels: Any, *, temperature: float = 1.0) -> np.ndarray:
    """``log q`` with ``q = softmax(z_{!=y} / T)``, returned as (n, K).

    The target column holds ``-inf`` (``q_y = 0``) so columns keep their class
    indices; the other K - 1 entries of each row sum (in probability) to 1.
    """
    z, y, t = _check(logits, labels, temperature)
    core = _Core(z, t)
    tg = _Target(core, y)
    out = core.x - tg.log_snt[:, None]
    out[tg.rows, y] = -np.inf
    return out


def nontarget_probs(logits: Any, labels: Any, *, temperature: float = 1.0) -> np.ndarray:
    """``q = softmax(z_{!=y} / T)`` as (n, K) with the target column 0."""
    return np.exp(nontarget_log_probs(logits, labels, temperature=temperature))


def nontarget_entropy(
    logits: Any, labels: Any, *, temperature: float = 1.0, normalized: bool = False
) -> np.ndarray:
    """``H(q)`` per example, (n,); ``normalized`` divides by ``log(K - 1)`` (0 when K = 2)."""
    z, y, t = _check(logits, labels, temperature)
    h = _Target(_Core(z, t), y).nt_entropy
    if normalized:
        return _normalize_nt(h, z.shape[1])
    return h


def _normalize_nt(h: np.ndarray, k: int) -> np.ndarray:
    if k == 2:
        return np.zeros_like(h)  # q is a point mass: no spread to normalise
    return h / np.log(k - 1)


def tckd_weight(logits: Any, labels: Any, *, temperature: float = 1.0) -> np.ndarray:
    """DKD's binary target-vs-rest distribution ``(p_t, 1 - p_t)``, (n, 2).

    Both columns come from log space, so they are exact when ``p_t`` rounds to 1.
    """
    z, y, t = _check(logits, labels, temperature)
    tg = _Target(_Core(z, t), y)
    return np.stack([np.exp(tg.log_pt), np.exp(tg.log_dark)], axis=1)


def nckd_weight(logits: Any, labels: Any, *, temperature: float = 1.0) -> np.ndarray:
    """DKD's NCKD weight ``1 - p_t`` (= the dark mass), (n,)."""
    return dark_mass(logits, labels, temperature=temperature)


def correct(logits: Any, labels: Any) -> np.ndarray:
    """Whether the top-1 prediction is the label, (n,) bool; a tie for the top is not correct."""
    return margin(logits, labels) > 0


def nll(logits: Any, labels: Any) -> np.ndarray:
    """``-log p_y`` at T = 1, (n,)."""
    z, y, _ = _check(logits, labels, 1.0)
    core = _Core(z, 1.0)
    tg = _Target(core, y)
    return core.log_s - tg.x_y


def margin(logits: Any, labels: Any) -> np.ndarray:
    """Logit margin ``z_y - max_{j != y} z_j`` at T = 1, (n,); > 0 iff correct."""
    z, y, _ = _check(logits, labels, 1.0)
    core = _Core(z, 1.0)
    return _margin_from(core, y, _Target(core, y))


def oemc(
    logits: Any, labels: Any, *, temperature: float = 1.0, delta: float = DEFAULT_OEMC_DELTA
) -> np.ndarray:
    """One-example-many-class mask: ``dark_mass >= delta`` at T, (n,) bool."""
    d = float(delta)
    if not 0.0 <= d <= 1.0:
        raise InputError(f"delta must lie in [0, 1], got {delta}")
    ld = log_dark_mass(logits, labels, temperature=temperature)
    return _oemc_from_log_dark(ld, d)


def _oemc_from_log_dark(log_dark: np.ndarray, delta: float) -> np.ndarray:
    if delta == 0.0:
        return np.ones(log_dark.shape, bool)
    return log_dark >= np.log(delta)


def oemc_share(
    logits: Any, labels: Any, *, temperature: float = 1.0, delta: float = DEFAULT_OEMC_DELTA
) -> float:
    """Share of examples that are OEMC (``dark_mass >= delta`` at T); the rest are OEOC."""
    mask = oemc(logits, labels, temperature=temperature, delta=delta)
    return float(mask.mean()) if mask.size else float("nan")


# --------------------------------------------------------------------------- one pass

#: Columns of :func:`per_example`, in order (``example_id`` and ``label`` first when given).
PER_EXAMPLE_COLUMNS = (
    "entropy",
    "entropy_normalized",
    "effective_classes",
    "target_prob",
    "dark_mass",
    "log_dark_mass",
    "nontarget_entropy",
    "nontarget_entropy_normalized",
    "oemc",
    "prediction",
    "confidence",
    "correct",
    "nll",
    "margin",
)


def _compute_per_example(
    z: np.ndarray, y: np.ndarray, temperature: float, delta: float
) -> dict[str, np.ndarray]:
    """All per-example quantities from one log-softmax pass (trusts its inputs).

    ``y`` may hold -1 (missing): those rows get NaN in label-dependent columns.
    ``confidence`` (max p) and ``prediction`` are at T = 1, like correct / nll / margin.
    """
    return _per_example_core(z, y, temperature, delta)[0]


def _per_example_core(
    z: np.ndarray, y: np.ndarray, temperature: float, delta: float
) -> tuple[dict[str, np.ndarray], _Core, _Target, np.ndarray]:
    """:func:`_compute_per_example` plus its intermediates (for the similarity sums)
    and the labels it used (the prediction where ``y`` is -1)."""
    n, k = z.shape
    core = _Core(z, temperature)
    missing = y < 0
    any_missing = bool(missing.any())
    prediction = np.argmax(core.x, axis=1)  # argmax is invariant to T > 0
    y_safe = np.where(missing, prediction, y) if any_missing else y
    tg = _Target(core, y_safe)
    h = core.entropy()
    x1, log_s1 = _log_softmax_at_one(z, core)
    if x1 is core.x:
        nll1 = core.log_s - tg.x_y  # written this way round so a perfect fit gives +0.0
    else:
        nll1 = log_s1 - x1[tg.rows, y_safe]
    mg = _margin_from(core, y_safe, tg)
    out: dict[str, np.ndarray] = {
        "entropy": h,
        "entropy_normalized": h / np.log(k),
        "effective_classes": np.exp(h),
        "target_prob": np.exp(tg.log_pt),
        "dark_mass": np.exp(tg.log_dark),
        "log_dark_mass": tg.log_dark,
        "nontarget_entropy": tg.nt_entropy,
        "nontarget_entropy_normalized": _normalize_nt(tg.nt_entropy, k),
        "oemc": _oemc_from_log_dark(tg.log_dark, delta),
        "prediction": prediction,
        "confidence": np.exp(-log_s1),  # max p = exp(0 - log s) in the shifted frame
        "correct": mg > 0,
        "nll": nll1,
        "margin": mg,
    }
    if any_missing:
        for name in (
            "target_prob",
            "dark_mass",
            "log_dark_mass",
            "nontarget_entropy",
            "nontarget_entropy_normalized",
            "nll",
            "margin",
        ):
            out[name] = np.where(missing, np.nan, out[name])
    return out, core, tg, y_safe


def per_example(
    logits: Any,
    labels: Any,
    *,
    temperature: float = 1.0,
    example_ids: Any = None,
    oemc_delta: float = DEFAULT_OEMC_DELTA,
) -> pl.DataFrame:
    """Every per-example quantity in one vectorised pass, as a polars DataFrame.

    Parameters
    ----------
    logits : (n, K) array of raw logits.
    labels : (n,) ints in ``[0, K)``, ``-1`` = missing (label-dependent columns NaN;
        ``correct`` is then false).
    temperature : T of ``p = softmax(logits / T)``; recorded in column ``temperature``.
    example_ids : optional (n,) ints, stored as the first column.
    oemc_delta : the dark-mass threshold of the ``oemc`` column.

    Returns
    -------
    DataFrame with ``example_id`` (if given), ``label``, ``temperature`` and
    :data:`PER_EXAMPLE_COLUMNS`.
    """
    t = _check_temperature(temperature)
    z = _check_logits(logits)
    y = _check_labels(labels, z.shape[0], z.shape[1], allow_missing=True)
    d = float(oemc_delta)
    if not 0.0 <= d <= 1.0:
        raise InputError(f"oemc_delta must lie in [0, 1], got {oemc_delta}")
    cols = _compute_per_example(z, y, t, d)
    front: dict[str, Any] = {}
    if example_ids is not None:
        ids = np.asarray(example_ids, dtype=np.int64).reshape(-1)
        if ids.shape[0] != z.shape[0]:
            raise InputError(f"example_ids has {ids.shape[0]} rows but logits has {z.shape[0]}")
        front["example_id"] = ids
    front["label"] = y
    front["temperature"] = np.full(z.shape[0], t)
    return pl.DataFrame({**front, **cols})
