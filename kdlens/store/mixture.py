"""Mixtures of checkpoints: the combination rules, and writing a mixture as a store.

A mixture of members ``j`` with weights ``w_j`` (summing to 1) under one of the rules
(:data:`RULES`, default :data:`~kdlens._internal.defaults.ENSEMBLE_RULE`):

- ``mean_prob``: ``p = sum_j w_j softmax(z_j)``, stored as ``log p``;
- ``mean_prob_t``: ``p_T = sum_j w_j softmax(z_j / T)``, stored as ``T log p_T`` (so that
  ``softmax(logits / T)``, what a distillation loss at T computes, is that mean);
- ``mean_logit``: ``sum_j w_j z_j``.

Every rule works in a space where the mixture is a weighted mean or a log-sum-exp of
the members' arrays (:func:`member_array`, :func:`combine`, :func:`to_logits`); the
ensemble selection (:mod:`kdlens.recommend.ensemble_select`) uses the same functions.
:func:`write_ensemble` writes the mixture as an ordinary one-checkpoint store, every
split present in all members, through :class:`~kdlens.store.writer.CheckpointWriter`
(atomic: nothing half-written on failure).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.special import log_softmax, logsumexp

from kdlens._internal.checks import check_temperature
from kdlens._internal.defaults import ENSEMBLE_RULE, ENSEMBLE_RULES, RECOMMEND_TEMPERATURE
from kdlens._internal.names import path_component
from kdlens.errors import InputError, StoreError
from kdlens.store.reader import LogitsStore, open_store
from kdlens.store.writer import CheckpointWriter

__all__ = ["RULES", "check_rule", "combine", "member_array", "to_logits", "write_ensemble"]

RULES = ENSEMBLE_RULES


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise InputError(f"`rule` must be one of {', '.join(RULES)}, got {rule!r}")
    return rule


def member_array(logits: np.ndarray, rule: str, temperature: float) -> np.ndarray:
    """One checkpoint's (n, K) logits in the space its rule averages in (float32)."""
    z = np.asarray(logits, np.float64)
    if rule == "mean_prob":
        z = log_softmax(z, axis=-1)
    elif rule == "mean_prob_t":
        z = log_softmax(z / temperature, axis=-1)
    return z.astype(np.float32)


def combine(arrays: np.ndarray, weights: np.ndarray, rule: str) -> np.ndarray:
    """The mixture (n, K) of member arrays (M, n, K) with weights (M,), in rule space."""
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    a = np.asarray(arrays, np.float64)
    if rule == "mean_logit":
        return np.einsum("m,mnk->nk", w, a)
    with np.errstate(divide="ignore"):
        return np.asarray(logsumexp(a + np.log(w)[:, None, None], axis=0))


def to_logits(mixture: np.ndarray, rule: str, temperature: float) -> np.ndarray:
    """Logits whose softmax at the rule's temperature is the mixture (float32)."""
    scale = temperature if rule == "mean_prob_t" else 1.0
    return (np.asarray(mixture, np.float64) * scale).astype(np.float32)


def parse_members(
    st: LogitsStore, members: Sequence[str | tuple[str, str]]
) -> list[tuple[str, str]]:
    """``members`` as (run, checkpoint) pairs of ``st``; InputError naming a bad one."""
    have = set(st.keys())
    out: list[tuple[str, str]] = []
    for m in members:
        if isinstance(m, str):
            run, sep, ck = m.rpartition("/")
            if not sep or not run or not ck:
                raise InputError(f"`members`: {m!r} is not RUN/CHECKPOINT")
            key = (run, ck)
        else:
            key = (str(m[0]), str(m[1]))
        if key not in have:
            raise InputError(
                f"`members`: {'/'.join(key)!r} is not a checkpoint of {st.source} (it has: "
                f"{', '.join('/'.join(k) for k in st.keys()[:8])}"
                f"{', ...' if len(have) > 8 else ''})"
            )
        if key in out:
            raise InputError(f"`members` lists {'/'.join(key)!r} twice (use `weights`)")
        out.append(key)
    if not out:
        raise InputError("`members` is empty")
    return out


def check_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """Weights as a float64 array summing to 1 (equal when None)."""
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(list(weights), np.float64)
    if w.shape != (n,):
        raise InputError(f"`weights` has {w.size} value(s) for {n} member(s)")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
        raise InputError(f"`weights` must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w / w.sum()


def _split_arrays(
    st: LogitsStore, members: list[tuple[str, str]], split: str
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(ids, labels, logits per member) of one split, rows in the first member's order."""
    first = st.load(*members[0], split)
    order = np.argsort(first.example_ids, kind="stable")
    ids = first.example_ids[order]
    if np.unique(ids).size != ids.size:
        raise StoreError(f"{st.source}: {'/'.join(members[0])} split {split!r}: repeated ids")
    zs = [first.logits[order]]
    for run, ck in members[1:]:
        b = st.load(run, ck, split)
        o = np.argsort(b.example_ids, kind="stable")
        if not np.array_equal(b.example_ids[o], ids):
            raise StoreError(
                f"{st.source}: {run}/{ck} split {split!r} does not hold the same example ids "
                f"as {'/'.join(members[0])}: a mixture needs every member on the same examples"
            )
        if not np.array_equal(b.labels[o], first.labels[order]):
            raise StoreError(
                f"{st.source}: {run}/{ck} split {split!r} labels the examples differently "
                f"from {'/'.join(members[0])}"
            )
        zs.append(b.logits[o])
    return ids, first.labels[order], zs


def write_ensemble(
    store: LogitsStore | str | os.PathLike[str] | Sequence[str],
    members: Sequence[str | tuple[str, str]],
    out: str | os.PathLike[str],
    *,
    weights: Sequence[float] | None = None,
    rule: str = ENSEMBLE_RULE,
    temperature: float = RECOMMEND_TEMPERATURE,
    run: str = "ensemble",
    checkpoint: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the mixture of ``members`` of ``store`` as a one-checkpoint store at ``out``.

    ``members`` are ``"run/checkpoint"`` strings or (run, checkpoint) pairs; ``weights``
    default to equal. Every split present in all members is written (logits by
    :func:`to_logits`, labels and example ids of the members, which must agree); the file
    metadata's ``config["ensemble"]`` names the members, weights, rule and temperature
    (``config["data"]``, the members' data split, is kept for the harness).
    ``out`` ending in ``.parquet`` is the file; otherwise a directory that receives
    ``<run>-<checkpoint>.parquet``. Returns ``out``.
    """
    st = store if isinstance(store, LogitsStore) else open_store(store)
    keys = parse_members(st, members)
    w = check_weights(weights, len(keys))
    check_rule(rule)
    t = check_temperature(temperature)
    ck = checkpoint or f"{rule.replace('_', '-')}-{len(keys)}"
    path_component(run, field="run")
    path_component(ck, field="checkpoint")
    splits = [s for s in st.splits() if all(st.find(r, c, s) for r, c in keys)]
    if not splits:
        raise InputError(f"`members` share no split in {st.source}")
    dest = Path(out)
    target = dest if dest.suffix == ".parquet" else dest / f"{run}-{ck}.parquet"
    meta = st.checkpoint_metadata(*keys[0])
    # The members' data split (the harness re-creates inputs from it); nothing run-specific.
    data = (meta.get("config") or {}).get("data")
    config: dict[str, object] = {} if data is None else {"data": data}
    config["ensemble"] = {
        "members": ["/".join(k) for k in keys],
        "weights": [float(v) for v in w],
        "rule": rule,
        "temperature": t,
        "source": str(st.source),
        "splits": splits,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    with CheckpointWriter(
        target,
        run=run,
        checkpoint=ck,
        num_classes=st.num_classes,
        class_names=st.class_names,
        dataset=meta.get("dataset"),
        model=f"ensemble of {len(keys)} checkpoints",
        config=config,
        overwrite=overwrite,
    ) as writer:
        for split in splits:
            ids, labels, zs = _split_arrays(st, keys, split)
            arrays = np.stack([member_array(z, rule, t) for z in zs])
            logits = to_logits(combine(arrays, w, rule), rule, t)
            if not np.all(np.isfinite(logits)):
                raise StoreError(f"split {split!r}: the mixture has non-finite logits")
            lab = None if (labels < 0).all() else labels
            if lab is not None and (labels < 0).any():
                raise InputError(f"split {split!r} mixes labelled and unlabelled rows")
            writer.write(logits, split=split, example_ids=ids, labels=lab)
    return dest
