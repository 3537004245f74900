"""Offline distillation: train small students from STORED teacher logits.

No teacher forward pass: the student's targets are the logits in the store,
matched to the inputs by ``example_id`` (the row index in the source dataset, which
is re-created from the store's metadata or given as ``dataset``). The loss is

    alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

on the ``train`` split (the transfer set) with the stored labels (the ones the
teacher trained on, noisy or not); students are evaluated on the ``test`` split.
Students are small MLPs trained full-batch, so ~100 of them fit in minutes on a CPU.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from kdlens._internal.atomic import atomic_path
from kdlens._internal.names import path_component
from kdlens.errors import InputError
from kdlens.harness.reporting import QuietReporter, Reporter
from kdlens.harness.runtime import cpu_threads
from kdlens.harness.sources import SourceData, load_source
from kdlens.harness.students import (
    StudentConfig,
    student_dict,
    student_label,
    train_mlp_students,
    train_student,
)
from kdlens.harness.transfer import TeacherData, teacher_data
from kdlens.store.reader import LogitsStore, open_store
from kdlens.store.writer import CheckpointWriter

__all__ = ["distill", "StudentConfig", "RESULT_SCHEMA"]

RESULT_SCHEMA: dict[str, Any] = {
    "run": pl.Utf8,  # teacher run (null for --plain students)
    "checkpoint": pl.Utf8,  # teacher checkpoint
    "epoch": pl.Int32,
    "batch_size": pl.Int32,
    "seed": pl.Int64,
    "student": pl.Utf8,
    "temperature": pl.Float64,
    "alpha": pl.Float64,
    "plain": pl.Boolean,
    "n_train": pl.Int64,
    "n_test": pl.Int64,
    "teacher_test_acc": pl.Float64,
    "student_test_acc": pl.Float64,
    "student_test_nll": pl.Float64,
    "student_run": pl.Utf8,
    "seconds": pl.Float64,
}


def distill(
    store: str | os.PathLike[str] | LogitsStore,
    out: str | os.PathLike[str] | None = None,
    *,
    checkpoint: str | None = None,
    run: str | None = None,
    checkpoints: Sequence[tuple[str, str]] | None = None,
    all_checkpoints: bool = False,
    temperature: float = 4.0,
    alpha: float = 0.9,
    seeds: Sequence[int] = (0, 1, 2),
    plain: bool = False,
    student: StudentConfig | None = None,
    dataset: str | None = None,
    device: str = "cpu",
    reporter: Reporter | None = None,
) -> pl.DataFrame:
    """Train students from stored logits; one result row per (teacher checkpoint, seed).

    Parameters
    ----------
    store : a logits store (path, glob or open :class:`LogitsStore`) with ``train``
        (transfer set) and ``test`` parts; control-teacher stores work the same way.
    out : directory for ``results.parquet`` (merged with earlier results by key) and
        ``logits/<student_run>/seed<S>.parquet`` (each student's test logits). ``None``
        writes nothing.
    checkpoint, run : distill from ``checkpoint`` of ``run`` (every run holding that
        checkpoint when ``run`` is None).
    checkpoints : an explicit list of (run, checkpoint) pairs instead.
    all_checkpoints : every (run, checkpoint) in the store.
    temperature, alpha : T and the weight of the KD term (alpha = 0: labels only).
    seeds : one student per seed and teacher checkpoint.
    plain : train the students with no teacher (alpha = 0), once per seed; the
        teacher columns of the result are null.
    student : architecture and optimisation of the students (:class:`StudentConfig`).
    dataset : dataset spec when the store's metadata does not record one.
    device : ``cpu`` (default; students are tiny), ``cuda`` or ``auto``.

    Returns
    -------
    polars.DataFrame with columns :data:`RESULT_SCHEMA`: ``run``, ``checkpoint``,
    ``epoch``, ``batch_size`` (of the teacher), ``seed``, ``student_test_acc``,
    ``student_test_nll``, ``teacher_test_acc``, ``temperature``, ``alpha``, ...
    """
    from kdlens.harness.runtime import resolve_device

    st = store if isinstance(store, LogitsStore) else open_store(store)
    sc = student or StudentConfig()
    sc.validate()
    if temperature <= 0:
        raise InputError(f"`temperature` must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"`alpha` must lie in [0, 1], got {alpha}")
    if not seeds:
        raise InputError("`seeds` must name at least one seed")
    keys = _select(
        st,
        checkpoint=checkpoint,
        run=run,
        checkpoints=checkpoints,
        all_checkpoints=all_checkpoints,
        plain=plain,
    )
    if out is not None and not plain:  # names become paths: refuse them before training
        for r, c in keys:
            path_component(r, field="run")
            path_component(c, field="checkpoint")
            path_component(_student_run(r, c, plain), field="run")
    dev = resolve_device(device)
    rep = reporter or QuietReporter()
    a = 0.0 if plain else float(alpha)
    outp = Path(out) if out is not None else None
    # Students are tiny: one CPU thread avoids OpenMP spinning (much faster on a busy machine).
    with cpu_threads(1 if dev.type == "cpu" else None):
        rows = _run_all(
            st,
            keys,
            sc,
            dataset=dataset,
            temperature=temperature,
            alpha=a,
            seeds=seeds,
            plain=plain,
            dev=dev,
            rep=rep,
            outp=outp,
        )
    df = pl.DataFrame(rows, schema=RESULT_SCHEMA)
    if outp is not None:
        _merge_results(df, outp / "results.parquet")
    return df


def _run_all(
    st: LogitsStore,
    keys: list[tuple[str, str]],
    sc: StudentConfig,
    *,
    dataset: str | None,
    temperature: float,
    alpha: float,
    seeds: Sequence[int],
    plain: bool,
    dev: torch.device,
    rep: Reporter,
    outp: Path | None,
) -> list[dict[str, Any]]:
    sources: dict[str, SourceData] = {}
    rows: list[dict[str, Any]] = []
    for r, ck in keys:
        meta = st.checkpoint_metadata(r, ck)
        if not plain:
            _warn_control_temperature(meta, r, temperature)
        spec = dataset or meta.get("dataset")
        if not spec:
            raise InputError(f"{st.source}: run {r!r} records no dataset; pass `dataset`")
        if spec not in sources:
            sources[spec] = load_source(spec)
        t = teacher_data(st, r, ck, meta, spec, sources[spec], plain=plain)
        kw: dict[str, Any] = {
            "num_classes": st.num_classes,
            "temperature": temperature,
            "alpha": alpha,
            "device": dev,
        }
        outs: list[np.ndarray] = []
        per_seed = 0.0
        if sc.model == "mlp" and sc.batch_size == 0:
            # Full-batch MLP students of every seed train together, as one wide network.
            t0 = time.perf_counter()
            outs = train_mlp_students(
                t.xtr, t.ytr, t.zt, t.xte, sc, seeds=[int(v) for v in seeds], **kw
            )
            per_seed = (time.perf_counter() - t0) / len(outs)
        for i, seed in enumerate(seeds):
            t0 = time.perf_counter()
            if outs:
                z_s = outs[i]
            else:
                z_s = train_student(t.xtr, t.ytr, t.zt, t.xte, sc, seed=int(seed), **kw)
            row = _result_row(t, z_s, sc, seed=int(seed), temperature=temperature, alpha=alpha)
            row["seconds"] = per_seed + time.perf_counter() - t0
            rows.append(row)
            if outp is not None:
                _write_student_logits(st, t, row, z_s, sc, outp, temperature=temperature)
            rep.message(
                f"{row['student_run']} seed {seed}: student test acc "
                f"{row['student_test_acc']:.4f}"
                + ("" if plain else f" (teacher {t.teacher_acc:.4f})")
            )
    return rows


def _warn_control_temperature(meta: dict[str, Any], run: str, temperature: float) -> None:
    """A control keeps p_y only at the temperature it was made at: warn at any other."""
    cfg_in = meta.get("config") or {}
    control_t = cfg_in.get("temperature") if cfg_in.get("control") else None
    if control_t is not None and not math.isclose(float(control_t), temperature):
        warnings.warn(
            f"run {run!r} is a {cfg_in['control']!r} control made at T = {control_t:g} but "
            f"distilled at T = {temperature:g}: at this T it no longer keeps the teacher's "
            f"p_y; make it with `kdlens controls -T {temperature:g}`",
            stacklevel=3,  # the line in distill()
        )


def _result_row(
    t: TeacherData,
    z_s: np.ndarray,
    sc: StudentConfig,
    *,
    seed: int,
    temperature: float,
    alpha: float,
) -> dict[str, Any]:
    """One row of :data:`RESULT_SCHEMA` (``seconds`` is set by the caller)."""
    logp = torch.log_softmax(torch.from_numpy(z_s).double(), 1).numpy()
    acc = float((z_s.argmax(1) == t.te_y).mean())
    nll = float(-logp[np.arange(len(t.te_y)), t.te_y].mean())
    plain = t.plain
    return {
        "run": None if plain else t.run,
        "checkpoint": None if plain else t.checkpoint,
        "epoch": None if plain else t.epoch,
        "batch_size": None if plain else t.batch_size,
        "seed": seed,
        "student": student_label(sc),
        "temperature": float(temperature),
        "alpha": alpha,
        "plain": plain,
        "n_train": len(t.ytr),
        "n_test": len(t.te_y),
        "teacher_test_acc": t.teacher_acc,
        "student_test_acc": acc,
        "student_test_nll": nll,
        "student_run": _student_run(t.run, t.checkpoint, t.plain),
        "seconds": 0.0,
    }


def _student_run(run: str, checkpoint: str, plain: bool) -> str:
    return "student-plain" if plain else f"student-{run}-{checkpoint}"


def _write_student_logits(
    st: LogitsStore,
    t: TeacherData,
    row: dict[str, Any],
    z_s: np.ndarray,
    sc: StudentConfig,
    outp: Path,
    *,
    temperature: float,
) -> None:
    """``outp/logits/<student_run>/seed<S>.parquet``: one student's test logits."""
    srun, seed = row["student_run"], row["seed"]
    cfg = {
        "teacher_run": row["run"],
        "teacher_checkpoint": row["checkpoint"],
        "temperature": temperature,
        "alpha": row["alpha"],
        "seed": seed,
        "plain": t.plain,
        "student": student_dict(sc),
        "teacher_store": str(st.source),
    }
    with CheckpointWriter(
        outp / "logits" / path_component(srun, field="run") / f"seed{seed}.parquet",
        run=srun,
        checkpoint=f"seed{seed}",
        num_classes=st.num_classes,
        class_names=st.class_names,
        dataset=t.spec,
        model=sc.model,
        config=cfg,
        overwrite=True,
    ) as w:
        w.write(z_s, split="test", labels=t.te_y, example_ids=t.te_ids)


def _select(
    st: LogitsStore,
    *,
    checkpoint: str | None,
    run: str | None,
    checkpoints: Sequence[tuple[str, str]] | None,
    all_checkpoints: bool,
    plain: bool,
) -> list[tuple[str, str]]:
    keys = st.keys()
    if checkpoints:
        sel = [(str(r), str(c)) for r, c in checkpoints]
        for k in sel:
            st.find(*k)  # raises StoreError naming the missing pair
    elif all_checkpoints:
        sel = keys
    elif checkpoint is not None:
        runs = sorted({r for r, _ in keys})
        if run is not None and run not in runs:
            raise InputError(f"{st.source}: no run {run!r}; runs: {', '.join(runs[:12])}")
        sel = [k for k in keys if k[1] == checkpoint and (run is None or k[0] == run)]
        if not sel:
            have = sorted({c for _, c in keys})
            raise InputError(
                f"{st.source}: no checkpoint {checkpoint!r}"
                + (f" in run {run!r}" if run else "")
                + f"; the store has {', '.join(have[:12])}"
            )
    elif run is not None:
        sel = [k for k in keys if k[0] == run]
        if not sel:
            raise InputError(
                f"{st.source}: no run {run!r}; runs: {', '.join(sorted({r for r, _ in keys}))}"
            )
    elif plain:
        sel = keys[:1]
    else:
        raise InputError("say which teacher: `checkpoint` [and `run`], or `all_checkpoints=True`")
    if plain:
        # The plain students ignore the teacher: train them once, on the first pair's transfer set.
        sel = sel[:1]
    return sel


_KEY = ["student_run", "seed", "student", "temperature", "alpha", "plain"]


def _merge_results(df: pl.DataFrame, path: Path) -> None:
    """Add ``df`` to ``path``, replacing earlier rows with the same key; atomic."""

    if path.is_file():
        old = pl.read_parquet(path)
        if set(old.columns) == set(df.columns):
            prev = old.select(df.columns).cast(RESULT_SCHEMA)  # type: ignore[arg-type]
            df = pl.concat([prev, df]).unique(subset=_KEY, keep="last", maintain_order=True)
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)
