"""The one log-softmax pass that every soft-label quantity is read from.

:class:`_Core` holds the row-shifted, tempered logits and their exponentials;
:class:`_Target` the label-dependent intermediates (target log-probability, log dark
mass, non-target entropy, runner-up), formed without ``1 - p_y`` by subtraction (see
:mod:`kdlens.measures.softlabels` for the numerics). Calibration, controls, similarity
and the analysis pass reuse them so the log-softmax is computed once per batch.
Everything here trusts its inputs (checked by the public functions).
"""

from __future__ import annotations

import numpy as np

#: Below this non-target sum (in the frame shifted by the row maximum) a row is
#: recomputed with the non-target maximum as shift, so ``q`` never underflows.
_RESHIFT_BELOW = 1e-150


class _Core:
    """Intermediates of one log-softmax pass, reused by every quantity.

    ``x = z / T - max(z / T)`` (so ``x <= 0`` and the row maximum is 0),
    ``e = exp(x)``, ``s = sum(e)``; ``log p = x - log s``. ``s`` and ``log s`` are formed
    when first read: :class:`_Target` sets them from its non-target sums, so a pass that
    forms a target does not sum ``e`` twice.
    """

    __slots__ = ("x", "e", "_s", "_log_s", "ex", "temperature", "log_s1", "base", "runner")

    def __init__(self, z: np.ndarray, temperature: float) -> None:
        # The row maximum of the float32 logits, divided by T, is the maximum of the
        # float64 z / T (float32 -> float64 is exact and division by T > 0 is monotone):
        # half the memory read of a float64 maximum, the same bits.
        m = z.max(axis=1, keepdims=True).astype(np.float64)
        x: np.ndarray = np.empty(z.shape, np.float64)
        if temperature != 1.0:
            np.divide(z, temperature, out=x, dtype=np.float64)  # cast and divide in one pass
            m /= temperature
        else:
            x[...] = z
        x -= m
        self.x, self.temperature = x, temperature
        self.e = np.exp(x)
        self._s: np.ndarray | None = None
        self._log_s: np.ndarray | None = None
        self.ex: np.ndarray | None = None  # sum(e * x) per row, filled when needed
        #: the T = 1 normaliser ``log sum exp(z - max z)``, when formed beside this core
        self.log_s1: np.ndarray | None = None
        #: the core this one was derived from by :meth:`at_one` (None: formed directly)
        self.base: _Core | None = None
        #: (labels, largest non-target ``e`` per row), left by this core's :class:`_Target`
        self.runner: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def s(self) -> np.ndarray:
        if self._s is None:
            self._s = self.e.sum(axis=1)
        return self._s

    @s.setter
    def s(self, value: np.ndarray) -> None:
        self._s, self._log_s = value, None

    @property
    def log_s(self) -> np.ndarray:
        if self._log_s is None:
            self._log_s = np.log(self.s)
        return self._log_s

    @log_s.setter
    def log_s(self, value: np.ndarray) -> None:
        self._log_s = value

    @classmethod
    def _from_shifted(cls, x: np.ndarray, e: np.ndarray, temperature: float) -> _Core:
        core = cls.__new__(cls)
        core.x, core.e, core.temperature = x, e, temperature
        core._s = core._log_s = core.ex = core.log_s1 = core.base = core.runner = None
        return core

    def at_one(self) -> _Core:
        """The T = 1 core of the same logits, for an integer T in [2, 64].

        ``z - max z = T * x`` and ``exp(z - max z) = e ** T`` (the maximum sits at the same
        index for every T > 0), so a few multiplies replace a second copy, shift and
        exponential pass. For a power-of-two T the shifted logits are bit-identical to a
        direct T = 1 pass and ``e ** T`` is within a few ulps of ``exp``; both underflow
        to 0 at the same place. This core's :attr:`log_s1` is the derived core's
        ``log_s`` once its target is formed (:func:`_shared_targets`).
        """
        one = _Core._from_shifted(
            self.x * int(self.temperature), _power(self.e, int(self.temperature)), 1.0
        )
        one.base = self
        return one

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
        e_runner = _runner_from_base(core, y)
        if e_runner is None:
            e_runner = e.max(axis=1)
        core.runner = (y, e_runner)
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


def _runner_from_base(core: _Core, y: np.ndarray) -> np.ndarray | None:
    """The largest non-target ``e`` per row of a core derived by :meth:`_Core.at_one`,
    from its base core's target (formed first, same labels), else None.

    ``e1 = e ** T`` is formed elementwise by the squarings of :func:`_power`, each a
    correctly rounded multiply of non-negative numbers and so non-decreasing: the power
    of the base's row maximum is the row maximum of ``e1``, bit for bit, without a
    second (n, K) reduction.
    """
    base = core.base
    if base is None or base.runner is None:
        return None
    labels, runner = base.runner
    if labels is not y and not np.array_equal(labels, y):
        return None
    return _power(runner, int(base.temperature))


def _margin_from(core: _Core, y: np.ndarray, tg: _Target) -> np.ndarray:
    """``z_y - max_{j != y} z_j`` in logit units (T = 1), from the shifted frame."""
    return (tg.x_y - tg.x_runner) * core.temperature


def _power(e: np.ndarray, n: int) -> np.ndarray:
    """``e ** n`` (n >= 1) by repeated squaring; ``e`` itself when n = 1, else one new
    array squared in place: a few multiplies per element, no transcendental call."""
    if n == 1:
        return e
    h = _power(e, n // 2)
    out = np.multiply(h, h, out=None if h is e else h)
    if n % 2:
        out *= e
    return out


def _row_sum_power_from(half: np.ndarray, e: np.ndarray, n: int) -> np.ndarray:
    if n % 2:
        return np.einsum("ij,ij,ij->i", half, half, e)
    return np.einsum("ij,ij->i", half, half)


def _row_sum_power(e: np.ndarray, n: int) -> np.ndarray:
    """``sum_j e_ij ** n`` per row, the last squaring folded into a row-wise dot product."""
    return _row_sum_power_from(_power(e, n // 2), e, n)


def _log_s_at_one(core: _Core) -> np.ndarray:
    """``log sum exp(z - max z)`` (the T = 1 normaliser) from a core at any T.

    ``z - max z = T * x`` (the maximum sits at the same index for every T > 0), so
    ``exp(z - max z) = e ** T``: for an integer T (the usual distillation temperatures)
    that is a few multiplies of the core's ``e`` instead of a second exponential pass.
    """
    t = core.temperature
    if t == 1.0:
        return core.log_s
    if core.log_s1 is not None:
        return core.log_s1
    if _derivable(t):
        return np.log(_row_sum_power(core.e, int(t)))
    return np.log(np.exp(core.x * t).sum(axis=1))


def _derivable(temperature: float) -> bool:
    """Whether the T = 1 core can be formed from a core at ``temperature`` by squaring."""
    return float(temperature).is_integer() and 2 <= temperature <= 64


def _cores_for(z: np.ndarray, temperatures: list[float]) -> dict[float, _Core]:
    """Cores that can share one exponential pass: when T = 1 and an integer T > 1 are
    both wanted, the T = 1 core is derived from the other (:meth:`_Core.at_one`). The
    rest are built by the caller as usual."""
    if 1.0 not in temperatures:
        return {}
    base = next((t for t in temperatures if t != 1.0 and _derivable(t)), None)
    if base is None:
        return {}
    core = _Core(z, base)
    return {base: core, 1.0: core.at_one()}


def _shared_targets(shared: dict[float, _Core], y: np.ndarray) -> dict[float, _Target]:
    """The targets of the cores of :func:`_cores_for` (labels ``y`` without -1): the base
    first, so the derived T = 1 target takes its runner-up from it, and the base's
    :attr:`_Core.log_s1` is the T = 1 target's normaliser (its sums formed once)."""
    if not shared or bool((y < 0).any()):
        return {}
    base_t = next(t for t in shared if t != 1.0)
    base, one = shared[base_t], shared[1.0]
    out = {base_t: _Target(base, y), 1.0: _Target(one, y)}
    base.log_s1 = one.log_s
    return out


def _normalize_nt(h: np.ndarray, k: int) -> np.ndarray:
    if k == 2:
        return np.zeros_like(h)  # q is a point mass: no spread to normalise
    return h / np.log(k - 1)


def _oemc_from_log_dark(log_dark: np.ndarray, delta: float) -> np.ndarray:
    if delta == 0.0:
        return np.ones(log_dark.shape, bool)
    return log_dark >= np.log(delta)
