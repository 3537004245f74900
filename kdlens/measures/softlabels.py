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

Labels follow the one rule of :mod:`kdlens._internal.checks`. Rows with a missing
label (``-1``) are only accepted by :func:`per_example`, which keeps them (NaN in the
label-dependent columns, ``label`` -1) so they are counted, not dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from scipy.special import log_softmax

from kdlens._internal.checks import (
    check_example_ids,
    check_fraction,
    check_labels,
    check_logits,
    check_logits_labels,
    check_temperature,
)
from kdlens._internal.defaults import OEMC_DELTA
from kdlens.measures.core import _Core as _Core
from kdlens.measures.core import _log_s_at_one as _log_s_at_one
from kdlens.measures.core import _margin_from as _margin_from
from kdlens.measures.core import _normalize_nt as _normalize_nt
from kdlens.measures.core import _oemc_from_log_dark as _oemc_from_log_dark
from kdlens.measures.core import _Target as _Target

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
# The checks (one set for kdlens, :mod:`kdlens._internal.checks`) and the log-softmax
# intermediates (:mod:`kdlens.measures.core`) keep their old private names here, which
# calibration, controls and the analysis pass import.
_check_temperature = check_temperature
_check_logits = check_logits
_check_labels = check_labels


def _check(logits: Any, labels: Any, temperature: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Logits, labels (every row labelled) and temperature of one call."""
    z, y = check_logits_labels(logits, labels)
    return z, y, check_temperature(temperature)


# --------------------------------------------------------------------------- public arrays


def log_probs(logits: Any, *, temperature: float = 1.0) -> np.ndarray:
    """``log softmax(logits / T)``, (n, K) float64."""
    t = check_temperature(temperature)
    z = check_logits(logits)
    return log_softmax(z.astype(np.float64) / t, axis=1)


def probs(logits: Any, *, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / T)``, (n, K) float64."""
    return np.exp(log_probs(logits, temperature=temperature))


def entropy(logits: Any, *, temperature: float = 1.0, normalized: bool = False) -> np.ndarray:
    """``H(p)`` in nats per example, (n,); ``normalized`` divides by ``log K``."""
    t = check_temperature(temperature)
    z = check_logits(logits)
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
    d = check_fraction(delta, name="delta")
    ld = log_dark_mass(logits, labels, temperature=temperature)
    return _oemc_from_log_dark(ld, d)


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
    z: np.ndarray,
    y: np.ndarray,
    temperature: float,
    delta: float,
    core: _Core | None = None,
    prediction: np.ndarray | None = None,
    target: _Target | None = None,
) -> tuple[dict[str, np.ndarray], _Core, _Target, np.ndarray]:
    """:func:`_compute_per_example` plus its intermediates (for the similarity sums)
    and the labels it used (the prediction where ``y`` is -1). ``core``: a core of ``z`` at
    ``temperature`` already formed (:func:`kdlens.measures.core._cores_for`);
    ``prediction``: ``argmax(z, axis=1)`` already formed (it does not depend on T);
    ``target``: ``core``'s target for labels ``y`` (none missing) already formed
    (:func:`kdlens.measures.core._shared_targets`)."""
    n, k = z.shape
    if core is None:
        core = _Core(z, temperature)
    missing = y < 0
    any_missing = bool(missing.any())
    if prediction is None:
        # The first index of the row maximum: the same on z as on the shifted x at any
        # T > 0 (x is 0 exactly where z / T equals its maximum), and float32 is half the read.
        prediction = np.argmax(z, axis=1)
    y_safe = np.where(missing, prediction, y) if any_missing else y
    tg = _Target(core, y_safe) if target is None or any_missing else target
    h = core.entropy()
    # NLL and confidence are at T = 1 whatever T the soft labels are measured at:
    # log p_y(T=1) = T * x_y - log s1 in the core's shifted frame (+0.0 for a perfect fit).
    log_s1 = _log_s_at_one(core)
    nll1 = log_s1 - tg.x_y * core.temperature
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
    t = check_temperature(temperature)
    z, y = check_logits_labels(logits, labels, allow_missing=True)
    d = check_fraction(oemc_delta, name="oemc_delta")
    cols = _compute_per_example(z, y, t, d)
    front: dict[str, Any] = {}
    if example_ids is not None:
        front["example_id"] = check_example_ids(example_ids, z.shape[0])
    front["label"] = y
    front["temperature"] = np.full(z.shape[0], t)
    return pl.DataFrame({**front, **cols})
