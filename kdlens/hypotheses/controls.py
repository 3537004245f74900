"""Control teachers (science.md, "Distillation vs regularization: tests", 2).

From any checkpoint, build a teacher that keeps ``p_y`` of every example and
changes only how the dark mass ``1 - p_y`` is spread over the other classes:

- ``ls`` (LS-equivalent): uniformly -- pure regularization, SI = II = 0;
- ``permuted``: the example's own non-target probabilities, shuffled at random
  per example (seeded) -- same entropy and dark mass, no class structure;
- ``class-mean``: ``q_x`` replaced by ``S[y]``, the class's mean non-target
  distribution -- class similarity kept, instance knowledge removed (II = 0).
  Needs a first pass over the part to compute ``S``.

Controls are defined at a temperature T: the control distribution is ``p`` with
``softmax(z / T) = p``. The output logits are ``z = T * log p`` (valid logits:
``softmax(z / T)`` reproduces the control distribution exactly, up to float32
storage), computed in log space -- ``log p_j = log(1 - p_y) + log q_j`` with
``log(1 - p_y) = LSE(z_{!=y}/T) - LSE(z/T)``, never ``log(1 - p_y)`` by subtraction.
Log-probabilities are floored at ``-1e4`` so that every logit is finite (a
probability of ``exp(-1e4)`` is 0 in float64 anyway).

The controls are written as ordinary stores, one file per source run x checkpoint
(all its splits), run name ``<run>+<kind>``; the file's ``config`` records the
kind, temperature, seed and source. Labels are required (controls are defined
around the true class).

Mind that the controls are *label-informed*: where the teacher was wrong but
``p_y > 1/K``, spreading the rest of the mass uniformly (``ls``) or as the class
mean makes the label the top class, so a control can be more accurate than its
teacher (on digits, 0.953 -> 0.992). Students of a control therefore see a
slightly cleaner target than students of the teacher: a student comparison that
still favours the real teacher is evidence for knowledge beyond the label.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdlens._internal.atomic import staged_dir
from kdlens._internal.checks import check_logits_labels, check_square, check_temperature
from kdlens._internal.names import path_component
from kdlens.errors import InputError
from kdlens.measures.core import _Core, _Target
from kdlens.store.fs import StorePath, store_path
from kdlens.store.reader import LogitsStore, open_store
from kdlens.store.writer import CheckpointWriter

__all__ = ["CONTROL_KINDS", "control_log_probs", "make_controls"]

CONTROL_KINDS = ("ls", "permuted", "class-mean")
#: Floor on control log-probabilities so that every written logit is finite.
LOG_PROB_FLOOR = -1.0e4


def _check_kind(kind: str) -> str:
    if kind not in CONTROL_KINDS:
        raise InputError(f"kind must be one of {', '.join(CONTROL_KINDS)}, got {kind!r}")
    return kind


def _compute_control(
    z: np.ndarray,
    y: np.ndarray,
    kind: str,
    temperature: float,
    *,
    rng: np.random.Generator | None = None,
    class_matrix: np.ndarray | None = None,
) -> np.ndarray:
    """Control log-probabilities at T, (n, K) float64 (trusts its inputs)."""
    n, k = z.shape
    core = _Core(z, temperature)
    tg = _Target(core, y)
    rows = np.arange(n)
    if kind == "ls":
        logq = np.full((n, k), -np.log(k - 1)) if k > 2 else np.zeros((n, k))
    elif kind == "permuted":
        logq = core.x - tg.log_snt[:, None]
        if k > 2:
            assert rng is not None  # internal: make_controls / control_log_probs pass one
            keep = np.ones((n, k), bool)
            keep[rows, y] = False
            nt = logq[keep].reshape(n, k - 1)
            perm = np.argsort(rng.random((n, k - 1)), axis=1)
            logq[keep] = np.take_along_axis(nt, perm, axis=1).reshape(-1)
    else:  # class-mean
        assert class_matrix is not None  # internal
        with np.errstate(divide="ignore"):
            logq = np.log(class_matrix[y])
    logp = tg.log_dark[:, None] + logq
    logp[rows, y] = tg.log_pt
    return np.maximum(logp, LOG_PROB_FLOOR)


def control_log_probs(
    logits: Any,
    labels: Any,
    *,
    kind: str,
    temperature: float = 1.0,
    seed: int = 0,
    class_matrix: Any = None,
) -> np.ndarray:
    """The control teacher's log-probabilities at T for one array of examples, (n, K).

    ``class-mean`` uses ``class_matrix`` (K, K) when given, else ``S`` of these
    examples (:class:`kdlens.measures.similarity.SimilarityAccumulator` at T). Control
    logits are ``temperature * control_log_probs(...)``.
    """
    z, y = check_logits_labels(logits, labels)
    t = check_temperature(temperature)
    kind = _check_kind(kind)
    s = None
    if kind == "class-mean":
        s = _class_matrix(class_matrix, z, y, t)
    return _compute_control(z, y, kind, t, rng=np.random.default_rng(seed), class_matrix=s)


def _class_matrix(m: Any, z: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
    k = z.shape[1]
    if m is None:
        from kdlens.measures.similarity import SimilarityAccumulator

        return _usable(
            SimilarityAccumulator(k, temperature=t, entries=False)
            .update(z, y)
            .finalize(warn_absent=False)
            .matrix,
            y,
        )
    s = check_square(m, name="class_matrix")
    if s.shape != (k, k):
        raise InputError(f"class_matrix must be ({k}, {k}), got {s.shape}")
    return _usable(s, y)


def _usable(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    bad = np.unique(y[np.isnan(s[y]).any(axis=1)])
    if bad.size:
        raise InputError(f"class_matrix has no row for class {int(bad[0])}")
    return s


def make_controls(
    store: Any,
    out: str | os.PathLike[str],
    *,
    kind: str,
    temperature: float = 1.0,
    seed: int = 0,
    overwrite: bool = False,
    runs: Sequence[str] | None = None,
    batch_rows: int | None = None,
) -> list[StorePath]:
    """Write the ``kind`` control of every run x checkpoint of ``store`` under directory ``out``.

    Streams part by part through :class:`~kdlens.store.writer.CheckpointWriter`; one file
    ``<run>+<kind>/<checkpoint>.parquet`` (the layout of a dump) per source checkpoint,
    holding every split, run name ``<run>+<kind>``. ``permuted`` is deterministic in ``seed``
    (and the part); ``class-mean`` reads each part twice (``S`` first).

    Returns the written paths.
    """
    kind = _check_kind(kind)
    t = check_temperature(temperature)
    st: LogitsStore = open_store(store)
    out_dir = store_path(out)  # a directory or a URL (s3://bucket/controls)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a directory")
    keys = [key for key in st.keys() if runs is None or key[0] in runs]
    if not keys:
        raise InputError(f"{st.source}: no run matches {list(runs or [])}")
    # Every name becomes a path: check them all, and every target, before writing anything.
    paths = {}
    for run, ck in keys:
        name = path_component(f"{path_component(run, field='run')}+{kind}", field="run")
        paths[run, ck] = (name, f"{path_component(ck, field='checkpoint')}.parquet")
        if (out_dir / name / paths[run, ck][1]).exists() and not overwrite:
            raise InputError(
                f"{out_dir / name / paths[run, ck][1]}: already exists (pass `overwrite=True`)"
            )
    # Built beside `out` and moved in when complete: a failure leaves `out` as it was.
    with staged_dir(out_dir) as stage:
        for run, ck in keys:
            _write_checkpoint(
                st,
                stage / paths[run, ck][0] / paths[run, ck][1],
                run,
                ck,
                kind,
                t,
                seed,
                batch_rows,
            )
    return [out_dir / a / b for a, b in paths.values()]


def _write_checkpoint(
    st: LogitsStore,
    path: Path,
    run: str,
    ck: str,
    kind: str,
    t: float,
    seed: int,
    batch_rows: int | None,
) -> None:
    parts = st.find(run, ck)
    first = parts[0]
    meta = st.checkpoint_metadata(run, ck)
    config = {
        "control": kind,
        "temperature": t,
        "seed": seed if kind == "permuted" else None,
        "source_store": str(st.source),
        "source_run": run,
        "source_checkpoint": ck,
        "source_config": meta.get("config") or {},
    }
    with CheckpointWriter(
        path,
        run=f"{run}+{kind}",
        checkpoint=ck,
        num_classes=st.num_classes,
        epoch=first.epoch,
        step=first.step,
        batch_size=first.batch_size,
        class_names=st.class_names,
        dataset=meta.get("dataset"),
        model=meta.get("model"),
        config=config,
    ) as w:
        for split in sorted({p.split for p in parts}):
            _write_part(st, w, run, ck, split, kind, t, seed, batch_rows)


def _write_part(
    st: LogitsStore,
    w: CheckpointWriter,
    run: str,
    ck: str,
    split: str,
    kind: str,
    t: float,
    seed: int,
    batch_rows: int | None,
) -> None:
    where = f"run {run!r} checkpoint {ck!r} split {split!r}"
    s = None
    if kind == "class-mean":
        from kdlens.measures.similarity import SimilarityAccumulator

        acc = SimilarityAccumulator(st.num_classes, temperature=t, entries=False)
        for b in st.iter_batches(run, ck, split, batch_rows=batch_rows):
            _check_batch(b.logits, b.labels, b.example_ids, where)
            acc.update(b.logits, b.labels)
        s = acc.finalize(warn_absent=False).matrix
    # One generator per part, seeded from the seed and the part's names.
    rng = np.random.default_rng(
        [seed, zlib.crc32(run.encode()), zlib.crc32(ck.encode()), zlib.crc32(split.encode())]
    )
    for b in st.iter_batches(run, ck, split, batch_rows=batch_rows):
        _check_batch(b.logits, b.labels, b.example_ids, where)
        y = b.labels.astype(np.int64)
        logp = _compute_control(b.logits, y, kind, t, rng=rng, class_matrix=s)
        w.write((t * logp).astype(np.float32), split=split, example_ids=b.example_ids, labels=y)


def _check_batch(z: np.ndarray, y: np.ndarray, ids: np.ndarray, where: str) -> None:
    finite = np.isfinite(z).all(axis=1)
    if not finite.all():
        raise InputError(
            f"{where}: rows with NaN/Inf logits (first example_id {int(ids[np.argmin(finite)])}); "
            "controls need finite logits"
        )
    if (y < 0).any():
        raise InputError(
            f"{where}: {int((y < 0).sum())} rows have no label; controls keep p_y of the "
            "true class and need labels"
        )
