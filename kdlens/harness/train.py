"""Train one teacher run, checkpointing and dumping every split's logits on the way.

A run is one (batch size, seed) of a :class:`DumpConfig`. At every listed epoch it
saves ``<run>/ckpt/epNNN.pt`` (a state dict), writes ``<run>/epNNN.parquet`` (the
logits of ``train``, ``val`` and ``test``) and a resume file holding the model,
optimizer and RNG states, so a rerun skips finished checkpoints and resumes an
interrupted run from its last one. Every file is written to a temporary name and
renamed, so Ctrl-C never leaves a partial file.

The configuration lives in :mod:`.config`, the run directory (manifest, config
check, resume file) in :mod:`.rundir`, the background writing of logits in
:mod:`.dumping`; this module is the training loop.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlens.harness.augment import augment_batch, augment_kind
from kdlens.harness.config import (
    DumpConfig,
    checkpoint_id,
    effective_lr,
    scheduled_lr,
)
from kdlens.harness.data import Splits
from kdlens.harness.dumping import BackgroundWriter, accuracy, dump_logits
from kdlens.harness.models import build_model, is_convnet
from kdlens.harness.reporting import QuietReporter, Reporter, RunResult
from kdlens.harness.rundir import (
    MANIFEST,
    check_run_dir,
    finish_manifest,
    new_manifest,
    record_environment,
    restore_run,
    save_resume,
    set_dump_overhead,
    write_json_atomic,
)
from kdlens.harness.runtime import (
    autocast,
    cpu_threads,
    environment,
    load_tensors,
    place,
    save_atomic,
)

__all__ = [
    "DumpConfig",
    "QuietReporter",
    "Reporter",
    "RunResult",
    "train_run",
    "effective_lr",
    "checkpoint_id",
]


# --------------------------------------------------------------------------- a run


@dataclass
class _Run:
    """One run being trained: its model, optimizer, RNGs and data on the device."""

    cfg: DumpConfig
    data: Splits
    device: torch.device
    name: str
    rdir: Path
    rc: dict[str, Any]
    batch_size: int
    model: nn.Module
    opt: torch.optim.Optimizer
    loss_fn: nn.Module
    channels_last: bool
    lr0: float
    total_steps: int
    shuffle_gen: torch.Generator
    aug_gen: torch.Generator
    aug: tuple[int, bool] | None
    xs: dict[str, torch.Tensor]
    ytr: torch.Tensor

    def lr_at(self, step: int) -> float:
        return scheduled_lr(self.cfg.schedule, self.lr0, step, self.total_steps)

    def store_kwargs(self, checkpoint: str, epoch: int, step: int) -> dict[str, Any]:
        """The :class:`CheckpointWriter` arguments of one checkpoint's store file."""
        return {
            "run": self.name,
            "num_classes": self.data.num_classes,
            "batch_size": self.batch_size,
            "class_names": self.data.class_names,
            "dataset": self.data.spec,
            "model": self.cfg.model,
            "checkpoint": checkpoint,
            "epoch": epoch,
            "step": step,
            "config": {**self.rc, "data": self.data.info},
        }

    def build_model(self) -> nn.Module:
        return _new_model(self.cfg, self.data)

    def val_accuracy(self) -> float:
        return accuracy(
            self.model,
            self.xs["val"],
            self.data["val"].y,
            self.device,
            self.cfg.dump_batch_size,
            self.channels_last,
        )


def train_run(
    cfg: DumpConfig,
    data: Splits,
    *,
    batch_size: int,
    seed: int,
    out: Path,
    device: torch.device,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    on_epoch_end: Callable[[str, int], None] | None = None,
) -> RunResult:
    """Train (or resume, or skip) the run ``bs<batch_size>-seed<seed>`` under ``out``.

    ``on_epoch_end(run, epoch)`` is called after each epoch's checkpoint and
    resume files are written (tests use it to simulate an interruption).
    """
    rep = reporter or QuietReporter()
    name = f"bs{batch_size}-seed{seed}"
    rdir = out / name
    rc = cfg.run_config(batch_size, seed)
    assert cfg.checkpoints is not None
    check_run_dir(rdir, rc, overwrite=overwrite)
    r = _setup_run(
        cfg, data, batch_size=batch_size, seed=seed, device=device, name=name, rdir=rdir, rc=rc
    )
    manifest = new_manifest(name, rc, data)
    start_epoch, step, status = restore_run(
        rdir, manifest, r.model, r.opt, r.shuffle_gen, r.aug_gen, epochs=cfg.epochs
    )
    timings = manifest["timings"]
    threads = cfg.num_threads
    if threads is None and device.type == "cpu":
        threads = 1 if sum(p.numel() for p in r.model.parameters()) < 1_000_000 else None
    writer = BackgroundWriter()
    thread_ctx = cpu_threads(threads if device.type == "cpu" else None)
    thread_ctx.__enter__()
    # Training on one CPU thread leaves a core free: dump logits from a snapshot of the
    # model on the writer thread, so the training loop waits only for the snapshot.
    background = (
        device.type == "cpu" and torch.get_num_threads() == 1 and (os.cpu_count() or 1) >= 2
    )
    try:
        record_environment(manifest, environment(device), status, start_epoch, rep)
        _redump_missing(r, manifest, writer)
        rep.run_started(name, epochs=cfg.epochs, start_epoch=start_epoch)
        _train_epochs(r, manifest, writer, start_epoch, step, background, rep, on_epoch_end)
    finally:
        thread_ctx.__exit__(None, None, None)
        writer.close()
        timings["dump_worker_seconds"] = (
            timings.get("dump_worker_seconds", 0.0) + writer.busy_seconds
        )
    finish_manifest(rdir, manifest, epochs=cfg.epochs)
    res = RunResult(
        name,
        rdir,
        status,
        manifest["checkpoints"],
        timings["train_seconds"],
        timings["dump_seconds"],
        timings["eval_seconds"],
        timings["dump_worker_seconds"],
    )
    rep.run_done(name, res)
    return res


def _setup_run(
    cfg: DumpConfig,
    data: Splits,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    name: str,
    rdir: Path,
    rc: dict[str, Any],
) -> _Run:
    """The seeded model, its optimizer, the run's RNGs and the data on the device."""
    torch_gen_seed = 1_000_003 * seed + 17
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _new_model(cfg, data)
    channels_last = device.type == "cuda" and is_convnet(model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    lr0 = effective_lr(cfg.base_lr, batch_size, cfg.lr_scaling)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr0, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    else:
        opt = torch.optim.AdamW(groups, lr=lr0)
    steps_per_epoch = math.ceil(len(data["train"].y) / batch_size)
    return _Run(
        cfg=cfg,
        data=data,
        device=device,
        name=name,
        rdir=rdir,
        rc=rc,
        batch_size=batch_size,
        model=model,
        opt=opt,
        loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        channels_last=channels_last,
        lr0=lr0,
        total_steps=steps_per_epoch * cfg.epochs,
        shuffle_gen=torch.Generator().manual_seed(torch_gen_seed),
        aug_gen=torch.Generator(device=device).manual_seed(torch_gen_seed + 1),
        aug=augment_kind(data.input_shape) if cfg.augment else None,
        xs={s: place(data[s].x, device) for s in ("train", "val", "test")},
        ytr=place(data["train"].y, device),
    )


def _new_model(cfg: DumpConfig, data: Splits) -> nn.Module:
    return build_model(
        cfg.model,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        hidden=cfg.hidden,
        shortcut=cfg.shortcut,
    )


def _redump_missing(r: _Run, manifest: dict[str, Any], writer: BackgroundWriter) -> None:
    """Re-dump any finished checkpoint whose store file was lost after its .pt was saved."""
    for c in manifest["checkpoints"]:
        sp = r.rdir / c["file"]
        if sp.is_file():
            continue
        m2 = r.build_model().to(r.device)
        m2.load_state_dict(load_tensors(r.rdir / c["ckpt"]))
        dump_logits(
            m2,
            r.data,
            r.xs,
            writer,
            sp,
            r.store_kwargs(c["checkpoint"], c["epoch"], c["step"]),
            r.device,
            r.cfg.dump_batch_size,
            r.channels_last,
        )


def _train_epochs(
    r: _Run,
    manifest: dict[str, Any],
    writer: BackgroundWriter,
    start_epoch: int,
    step: int,
    background: bool,
    rep: Reporter,
    on_epoch_end: Callable[[str, int], None] | None,
) -> None:
    """Epochs ``start_epoch + 1 .. epochs``: train, checkpoint and dump, save resume state."""
    cfg, timings = r.cfg, manifest["timings"]
    assert cfg.checkpoints is not None
    last_resume_save = time.perf_counter()
    r.model.train()
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        step, train_loss, train_acc = _train_epoch(r, step)
        timings["train_seconds"] += time.perf_counter() - t0
        metrics = {
            "epoch": epoch,
            "step": step,
            "loss": train_loss,
            "train_acc": train_acc,
            "lr": r.lr_at(step),
        }
        if epoch in cfg.checkpoints:
            val_acc = _checkpoint(r, manifest, writer, metrics, background)
        else:
            t2 = time.perf_counter()
            val_acc = r.val_accuracy()
            timings["eval_seconds"] += time.perf_counter() - t2
        metrics["val_acc"] = val_acc
        manifest["history"].append(metrics)
        manifest["epochs_done"], manifest["step"] = epoch, step
        now = time.perf_counter()
        if epoch in cfg.checkpoints or epoch == cfg.epochs or now - last_resume_save > 60:
            t1 = time.perf_counter()
            save_resume(r.rdir, r.model, r.opt, r.shuffle_gen, r.aug_gen, epoch=epoch, step=step)
            timings["checkpoint_seconds"] += time.perf_counter() - t1
            last_resume_save = now
            set_dump_overhead(timings)
            if epoch == cfg.epochs:
                manifest["status"] = "complete"
            write_json_atomic(manifest, r.rdir / MANIFEST)
        rep.epoch_done(r.name, epoch, metrics)
        if on_epoch_end is not None:
            on_epoch_end(r.name, epoch)


def _train_epoch(r: _Run, step: int) -> tuple[int, float, float]:
    """One pass over the shuffled training split; returns (step, mean loss, accuracy)."""
    n, bs, device = len(r.data["train"].y), r.batch_size, r.device
    perm = torch.randperm(n, generator=r.shuffle_gen)
    # Index each array where it lives (GPU, or pinned host memory when too large).
    perm_x = perm.to(r.xs["train"].device, non_blocking=True)
    perm_y = perm.to(r.ytr.device, non_blocking=True)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for i in range(0, n, bs):
        xb = r.xs["train"][perm_x[i : i + bs]].to(device, non_blocking=True)
        yb = r.ytr[perm_y[i : i + bs]].to(device, non_blocking=True)
        if r.aug is not None:
            xb = augment_batch(xb, r.aug_gen, pad=r.aug[0], flip=r.aug[1])
        if r.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        for g in r.opt.param_groups:
            g["lr"] = r.lr_at(step)
        with autocast(device):
            logits = r.model(xb)
            loss = r.loss_fn(logits.float(), yb)
        r.opt.zero_grad(set_to_none=True)
        loss.backward()
        r.opt.step()
        step += 1
        # Accumulate on the device: no host sync per step.
        loss_sum += loss.detach() * len(yb)
        correct += (logits.detach().argmax(1) == yb).sum()
    return step, float(loss_sum) / n, float(correct) / n


def _checkpoint(
    r: _Run,
    manifest: dict[str, Any],
    writer: BackgroundWriter,
    metrics: dict[str, Any],
    background: bool,
) -> float:
    """Save the state dict, dump every split's logits, record the checkpoint; val accuracy."""
    timings, epoch, step = manifest["timings"], metrics["epoch"], metrics["step"]
    ck = checkpoint_id(epoch)
    t1 = time.perf_counter()
    ckpt_rel = f"ckpt/{ck}.pt"
    save_atomic({k: v.detach().cpu() for k, v in r.model.state_dict().items()}, r.rdir / ckpt_rel)
    timings["checkpoint_seconds"] += time.perf_counter() - t1
    t2 = time.perf_counter()
    zval = dump_logits(
        r.model,
        r.data,
        r.xs,
        writer,
        r.rdir / f"{ck}.parquet",
        r.store_kwargs(ck, epoch, step),
        r.device,
        r.cfg.dump_batch_size,
        r.channels_last,
        in_background=background,
    )
    timings["dump_seconds"] += time.perf_counter() - t2
    if zval is None:
        t2 = time.perf_counter()
        val_acc = r.val_accuracy()
        timings["eval_seconds"] += time.perf_counter() - t2
    else:
        y = r.data["val"].y
        val_acc = float((zval.argmax(1) == y).mean()) if len(zval) else float("nan")
    manifest["checkpoints"].append(
        {
            "checkpoint": ck,
            "epoch": epoch,
            "step": step,
            "file": f"{ck}.parquet",
            "ckpt": ckpt_rel,
            "train_loss": metrics["loss"],
            "train_acc": metrics["train_acc"],
            "val_acc": val_acc,
        }
    )
    return val_acc
