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

import hashlib
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from kdlens._internal.atomic import atomic_path
from kdlens.errors import InputError, StoreError
from kdlens.harness.data import SourceData, load_source, prepare_data
from kdlens.harness.models import build_model
from kdlens.harness.runtime import cpu_threads
from kdlens.harness.train import QuietReporter, Reporter
from kdlens.store.parquet import CheckpointWriter, LogitsStore, open_store

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


@dataclass(frozen=True)
class StudentConfig:
    """How each student is built and trained (full batch when ``batch_size`` is 0)."""

    model: str = "mlp"
    hidden: tuple[int, ...] = (24,)
    epochs: int = 200
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 0

    def validate(self) -> None:
        if self.epochs < 1:
            raise InputError(f"`student.epochs` must be at least 1, got {self.epochs}")
        if self.lr <= 0:
            raise InputError(f"`student.lr` must be positive, got {self.lr}")
        if self.batch_size < 0:
            raise InputError(
                f"`student.batch_size` must be >= 0 (0 = full batch), got {self.batch_size}"
            )


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
    a = alpha
    sources: dict[str, SourceData] = {}
    rows: list[dict[str, Any]] = []
    for r, ck in keys:
        meta = st.checkpoint_metadata(r, ck)
        cfg_in = meta.get("config") or {}
        control_t = cfg_in.get("temperature") if cfg_in.get("control") else None
        if not plain and control_t is not None and not math.isclose(float(control_t), temperature):
            # A control keeps p_y only at the temperature it was made at.
            warnings.warn(
                f"run {r!r} is a {cfg_in['control']!r} control made at T = {control_t:g} but "
                f"distilled at T = {temperature:g}: at this T it no longer keeps the teacher's "
                f"p_y; make it with `kdlens controls -T {temperature:g}`",
                stacklevel=2,
            )
        spec = dataset or meta.get("dataset")
        if not spec:
            raise InputError(f"{st.source}: run {r!r} records no dataset; pass `dataset`")
        if spec not in sources:
            sources[spec] = load_source(spec)
        src = sources[spec]
        tr = st.load(r, ck, "train")
        if len(tr) == 0:
            raise StoreError(f"{st.source}: run={r!r} checkpoint={ck!r} has no train rows")
        te_ids, te_y, te_logits = _test_part(st, r, ck, meta, spec, src)
        part = st.find(r, ck, "train")[0]
        xtr, xte = _inputs(src, tr.example_ids, te_ids, where=f"{r}/{ck}")
        ytr = np.where(tr.labels >= 0, tr.labels, src.y[tr.example_ids]).astype(np.int64)
        if (ytr >= st.num_classes).any() or src.num_classes > st.num_classes:
            raise InputError(
                f"dataset {spec!r} has {src.num_classes} classes but the store has "
                f"K={st.num_classes}"
            )
        teacher_acc = (
            float((te_logits.argmax(1) == te_y).mean())
            if te_logits is not None and not plain
            else float("nan")
        )
        zt = None if plain else tr.logits
        kw: dict[str, Any] = {
            "num_classes": st.num_classes,
            "temperature": temperature,
            "alpha": a,
            "device": dev,
        }
        outs: list[np.ndarray] = []
        per_seed = 0.0
        if sc.model == "mlp" and sc.batch_size == 0:
            # Full-batch MLP students of every seed train together, as one wide network.
            t0 = time.perf_counter()
            outs = _train_mlp_students(xtr, ytr, zt, xte, sc, seeds=[int(v) for v in seeds], **kw)
            per_seed = (time.perf_counter() - t0) / len(outs)
        for i, seed in enumerate(seeds):
            t0 = time.perf_counter()
            if outs:
                z_s = outs[i]
            else:
                z_s = _train_student(xtr, ytr, zt, xte, sc, seed=int(seed), **kw)
            logp = torch.log_softmax(torch.from_numpy(z_s).double(), 1).numpy()
            acc = float((z_s.argmax(1) == te_y).mean())
            nll = float(-logp[np.arange(len(te_y)), te_y].mean())
            srun = "student-plain" if plain else f"student-{r}-{ck}"
            row = {
                "run": None if plain else r,
                "checkpoint": None if plain else ck,
                "epoch": None if plain else part.epoch,
                "batch_size": None if plain else part.batch_size,
                "seed": int(seed),
                "student": _student_label(sc),
                "temperature": float(temperature),
                "alpha": a,
                "plain": plain,
                "n_train": len(ytr),
                "n_test": len(te_y),
                "teacher_test_acc": teacher_acc,
                "student_test_acc": acc,
                "student_test_nll": nll,
                "student_run": srun,
                "seconds": per_seed + time.perf_counter() - t0,
            }
            rows.append(row)
            if outp is not None:
                cfg = {
                    "teacher_run": row["run"],
                    "teacher_checkpoint": row["checkpoint"],
                    "temperature": temperature,
                    "alpha": a,
                    "seed": int(seed),
                    "plain": plain,
                    "student": _student_dict(sc),
                    "teacher_store": str(st.source),
                }
                with CheckpointWriter(
                    outp / "logits" / srun / f"seed{seed}.parquet",
                    run=srun,
                    checkpoint=f"seed{seed}",
                    num_classes=st.num_classes,
                    class_names=st.class_names,
                    dataset=spec,
                    model=sc.model,
                    config=cfg,
                    overwrite=True,
                ) as w:
                    w.write(z_s, split="test", labels=te_y, example_ids=te_ids)
            rep.message(
                f"{srun} seed {seed}: student test acc {acc:.4f}"
                + ("" if plain else f" (teacher {teacher_acc:.4f})")
            )
    return rows


def _student_label(sc: StudentConfig) -> str:
    h = "x".join(map(str, sc.hidden))
    return f"{sc.model}-{h}" if sc.model == "mlp" else sc.model


def _student_dict(sc: StudentConfig) -> dict[str, Any]:
    return {
        "model": sc.model,
        "hidden": list(sc.hidden),
        "epochs": sc.epochs,
        "lr": sc.lr,
        "weight_decay": sc.weight_decay,
        "batch_size": sc.batch_size,
    }


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


def _test_part(
    st: LogitsStore, r: str, ck: str, meta: dict[str, Any], spec: str, src: SourceData
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Test ids, labels and teacher logits; ids re-created from the dump's split if absent."""
    if any(p.split == "test" for p in st.find(r, ck)):
        te = st.load(r, ck, "test")
        ids = te.example_ids
        _check_ids(ids, len(src.y), f"{r}/{ck} test")
        y = np.where(te.labels >= 0, te.labels, src.y[ids]).astype(np.int64)
        return ids, y, te.logits
    d = (meta.get("config") or {}).get("data") or {}
    if not d:
        raise StoreError(
            f"{st.source}: run={r!r} checkpoint={ck!r} has no test split and no "
            "recorded split to re-create it from"
        )
    splits = prepare_data(
        spec,
        seed=int(d.get("split_seed", 0)),
        train_size=d.get("train_size"),
        val_size=d.get("val_size", 0.2),
        test_size=d.get("test_size"),
    )
    te_ids = splits["test"].ids
    return te_ids, src.y[te_ids].astype(np.int64), None


def _check_ids(ids: np.ndarray, n: int, where: str) -> None:
    if len(ids) and (ids.min() < 0 or ids.max() >= n):
        raise InputError(
            f"{where}: example ids run {int(ids.min())}..{int(ids.max())} but the dataset "
            f"has {n} rows; "
            "is `dataset` the one the teacher was dumped from?"
        )


_NORM_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _inputs(
    src: SourceData, train_ids: np.ndarray, test_ids: np.ndarray, *, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised inputs of the given rows, with the transfer set's statistics (as dump does)."""
    _check_ids(train_ids, len(src.y), f"{where} train")
    x = src.x
    key = hashlib.sha1(np.ascontiguousarray(np.sort(train_ids)).tobytes()).hexdigest() + src.spec
    if key not in _NORM_CACHE:
        axes = (0, 2, 3) if x.ndim == 4 else (0,)
        xt = x[train_ids].astype(np.float32)
        mean = xt.mean(axis=axes, keepdims=True)
        std = xt.std(axis=axes, keepdims=True)
        _NORM_CACHE.clear()  # one transfer set at a time is the common case
        _NORM_CACHE[key] = (mean, np.where(std > 1e-6, std, 1.0).astype(np.float32))
    mean, std = _NORM_CACHE[key]
    xtr = ((x[train_ids].astype(np.float32) - mean) / std).astype(np.float32)
    xte = ((x[test_ids].astype(np.float32) - mean) / std).astype(np.float32)
    return xtr, xte


def _teacher_log_probs(
    z_teacher: np.ndarray | None, alpha: float, t: float, device: torch.device
) -> torch.Tensor | None:
    """log softmax(z_teacher / T), or None when the KD term is off."""
    if z_teacher is None or alpha <= 0:
        return None
    return torch.log_softmax(torch.from_numpy(z_teacher).to(device).float() / t, 1)


def _predict(fn: Any, xte: np.ndarray, device: torch.device) -> list[torch.Tensor]:
    """``fn`` over the test inputs in chunks of 4096 rows, on the CPU as float32."""
    with torch.inference_mode():
        return [
            fn(torch.from_numpy(xte[i : i + 4096]).to(device)).float().cpu()
            for i in range(0, len(xte), 4096)
        ]


def _train_student(
    xtr: np.ndarray,
    ytr: np.ndarray,
    z_teacher: np.ndarray | None,
    xte: np.ndarray,
    sc: StudentConfig,
    *,
    num_classes: int,
    temperature: float,
    alpha: float,
    seed: int,
    device: torch.device,
) -> np.ndarray:
    """Train one student; return its test logits (n_test, K) float32."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(
            sc.model, num_classes=num_classes, input_shape=xtr.shape[1:], hidden=sc.hidden
        ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=sc.lr, weight_decay=sc.weight_decay)
    x = torch.from_numpy(xtr).to(device)
    y = torch.from_numpy(ytr).to(device)
    t = float(temperature)
    log_pt = _teacher_log_probs(z_teacher, alpha, t, device)
    n = len(ytr)
    bs = n if sc.batch_size == 0 else min(sc.batch_size, n)
    gen = torch.Generator().manual_seed(seed + 99991)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=sc.epochs * ((n + bs - 1) // bs))
    model.train()
    for _ in range(sc.epochs):
        order = torch.randperm(n, generator=gen).to(device) if bs < n else None
        for i in range(0, n, bs):
            idx = order[i : i + bs] if order is not None else slice(None)
            z = model(x[idx])
            loss = F.cross_entropy(z, y[idx]) * (1.0 - alpha) if alpha < 1 else z.sum() * 0.0
            if log_pt is not None:
                kl = F.kl_div(
                    torch.log_softmax(z / t, 1), log_pt[idx], log_target=True, reduction="batchmean"
                )
                loss = loss + alpha * t * t * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    out = _predict(model, xte, device)
    return torch.cat(out).numpy() if out else np.empty((0, num_classes), np.float32)


def _train_mlp_students(
    xtr: np.ndarray,
    ytr: np.ndarray,
    z_teacher: np.ndarray | None,
    xte: np.ndarray,
    sc: StudentConfig,
    *,
    seeds: list[int],
    num_classes: int,
    temperature: float,
    alpha: float,
    device: torch.device,
) -> list[np.ndarray]:
    """Full-batch MLP students, one per seed, trained side by side; their test logits.

    Student ``s`` is initialised exactly as ``MLP`` under ``torch.manual_seed(s)``; the
    losses add up over students and AdamW is elementwise, so no student affects another:
    this equals training each alone, only with one wide first-layer matmul per step.
    """
    n, d = xtr.shape[0], int(np.prod(xtr.shape[1:]))
    ws: list[list[torch.Tensor]] = []
    bs: list[list[torch.Tensor]] = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            m = build_model(
                "mlp", num_classes=num_classes, input_shape=xtr.shape[1:], hidden=sc.hidden
            )
        lin = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
        ws.append([mod.weight.detach().t().contiguous() for mod in lin])  # (in, out)
        bs.append([mod.bias.detach().clone() for mod in lin])
    S = len(seeds)
    weights = [
        torch.stack([w[j] for w in ws]).to(device).requires_grad_() for j in range(len(ws[0]))
    ]  # (S, in, out)
    biases = [
        torch.stack([b[j] for b in bs])[:, None, :].to(device).requires_grad_()
        for j in range(len(bs[0]))
    ]  # (S, 1, out)
    opt = torch.optim.AdamW([*weights, *biases], lr=sc.lr, weight_decay=sc.weight_decay)
    # AdamW decays biases too in the single-student path (model.parameters()): same here.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=sc.epochs)

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], d)
        w0 = weights[0]
        h = (x @ w0.permute(1, 0, 2).reshape(d, -1)).reshape(x.shape[0], S, -1).transpose(0, 1)
        h = h + biases[0]
        for w, b in zip(weights[1:], biases[1:], strict=True):
            h = torch.baddbmm(b, torch.relu(h), w)
        return h  # (S, n, K)

    x = torch.from_numpy(xtr).to(device)
    y = torch.from_numpy(ytr).to(device)
    t = float(temperature)
    log_pt = _teacher_log_probs(z_teacher, alpha, t, device)
    for _ in range(sc.epochs):
        z = forward(x)
        # Sum over students of each student's mean loss.
        loss = z.sum() * 0.0
        if alpha < 1:
            ce = F.cross_entropy(z.reshape(S * n, -1), y.repeat(S), reduction="sum") / n
            loss = loss + (1.0 - alpha) * ce
        if log_pt is not None:
            kl = (
                F.kl_div(
                    torch.log_softmax(z / t, 2),
                    log_pt.expand(S, -1, -1),
                    log_target=True,
                    reduction="sum",
                )
                / n
            )
            loss = loss + alpha * t * t * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    outs = _predict(forward, xte, device)
    zte = torch.cat(outs, 1) if outs else torch.empty(S, 0, num_classes)
    return [zte[i].numpy() for i in range(S)]


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
