"""Train one teacher run, checkpointing and dumping every split's logits on the way.

A run is one (batch size, seed) of a :class:`DumpConfig`. At every listed epoch it
saves ``<run>/ckpt/epNNN.pt`` (a state dict), writes ``<run>/epNNN.parquet`` (the
logits of ``train``, ``val`` and ``test``) and a resume file holding the model,
optimizer and RNG states, so a rerun skips finished checkpoints and resumes an
interrupted run from its last one. Every file is written to a temporary name and
renamed, so Ctrl-C never leaves a partial file.
"""

from __future__ import annotations

import copy
import json
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdlens._internal.atomic import write_text_atomic
from kdlens.errors import InputError
from kdlens.harness.data import Splits
from kdlens.harness.models import build_model, is_convnet
from kdlens.harness.runtime import (
    autocast,
    cpu_threads,
    load_tensors,
    place,
    predict_logits,
    save_atomic,
)
from kdlens.store.writer import CheckpointWriter

__all__ = [
    "DumpConfig",
    "QuietReporter",
    "Reporter",
    "RunResult",
    "train_run",
    "effective_lr",
    "checkpoint_id",
]

BASE_BATCH_SIZE = 128


@dataclass
class DumpConfig:
    """Everything that decides a teacher grid's logits (recorded in every store file).

    ``lr`` is the learning rate at the base batch size of 128; ``lr_scaling`` says
    how it changes with the batch size (``linear``: lr * bs/128, ``sqrt``:
    lr * sqrt(bs/128), ``none``). ``checkpoints`` are epochs (default: powers of
    two and the last epoch).
    """

    dataset: str = "digits"
    model: str = "mlp"
    hidden: tuple[int, ...] = (256, 128)
    shortcut: str = "A"
    batch_sizes: tuple[int, ...] = (16, 64, 256)
    seeds: tuple[int, ...] = (0,)
    epochs: int = 60
    checkpoints: tuple[int, ...] | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    lr_scaling: str = "linear"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    #: None = on for convnets and user models, off for ``mlp`` (shifts hurt an MLP).
    augment: bool | None = None
    split_seed: int = 0
    train_size: float | int | None = None
    val_size: float | int | None = 0.2
    test_size: float | int | None = None
    label_noise: float = 0.0
    device: str = "auto"
    dump_batch_size: int = 2048
    #: CPU threads for torch; None = 1 for models under 1M parameters, else torch's default.
    num_threads: int | None = None

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.batch_sizes = tuple(int(b) for b in self.batch_sizes)
        self.seeds = tuple(int(s) for s in self.seeds)
        if self.checkpoints is None:
            pts = {2**i for i in range(32) if 2**i < self.epochs} | {self.epochs}
            self.checkpoints = tuple(sorted(pts))
        self.checkpoints = tuple(sorted({int(c) for c in self.checkpoints}))
        if self.augment is None:
            self.augment = self.model != "mlp"

    def validate(self) -> None:
        if self.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {self.epochs}")
        assert self.checkpoints is not None
        bad = [c for c in self.checkpoints if c < 1 or c > self.epochs]
        if bad:
            raise InputError(
                f"--checkpoints {','.join(map(str, bad))}: outside epochs 1..{self.epochs} "
                "(--epochs)"
            )
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InputError(
                "--batch-sizes must be positive integers, got "
                + ",".join(map(str, self.batch_sizes))
            )
        if not self.seeds:
            raise InputError("--seeds must name at least one seed")
        for name, value, allowed in (
            ("optimizer", self.optimizer, ("sgd", "adamw")),
            ("lr-scaling", self.lr_scaling, ("linear", "sqrt", "none")),
            ("schedule", self.schedule, ("cosine", "step", "constant")),
            ("shortcut", self.shortcut, ("A", "B")),
        ):
            if value not in allowed:
                raise InputError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise InputError(f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.lr is not None and self.lr <= 0:
            raise InputError(f"--lr must be positive, got {self.lr}")

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 0.1 if self.optimizer == "sgd" else 1e-3

    def run_config(self, batch_size: int, seed: int) -> dict[str, Any]:
        """The configuration of one run: what must match for a rerun to resume it."""
        d = asdict(self)
        for k in ("batch_sizes", "seeds", "device", "dump_batch_size", "num_threads"):
            d.pop(k)
        d.update(
            batch_size=batch_size,
            seed=seed,
            lr=self.base_lr,
            base_batch_size=BASE_BATCH_SIZE,
            effective_lr=effective_lr(self.base_lr, batch_size, self.lr_scaling),
        )
        return json.loads(json.dumps(d))  # tuples -> lists, as the manifest stores them


def effective_lr(base_lr: float, batch_size: int, scaling: str) -> float:
    """The learning rate used at ``batch_size`` given ``base_lr`` at batch size 128."""
    r = batch_size / BASE_BATCH_SIZE
    return base_lr * (r if scaling == "linear" else math.sqrt(r) if scaling == "sqrt" else 1.0)


def checkpoint_id(epoch: int) -> str:
    return f"ep{epoch:03d}"


class Reporter(Protocol):
    """Progress callbacks the harness calls; the CLI passes rich bars, quiet mode none."""

    def message(self, text: str) -> None: ...
    def run_started(self, run: str, *, epochs: int, start_epoch: int) -> None: ...
    def epoch_done(self, run: str, epoch: int, metrics: dict[str, float]) -> None: ...
    def run_done(self, run: str, result: RunResult) -> None: ...


class QuietReporter:
    """Reports nothing."""

    def message(self, text: str) -> None:
        pass

    def run_started(self, run: str, *, epochs: int, start_epoch: int) -> None:
        pass

    def epoch_done(self, run: str, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def run_done(self, run: str, result: RunResult) -> None:
        pass


@dataclass
class RunResult:
    run: str
    directory: Path
    status: str  # "trained", "resumed", "skipped"
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    dump_seconds: float = 0.0
    eval_seconds: float = 0.0
    #: Time the writer thread spent computing (on CPU) and writing dumps, in parallel.
    dump_worker_seconds: float = 0.0

    @property
    def dump_overhead(self) -> float:
        """Time the training loop waited for dumps / time training."""
        return self.dump_seconds / self.train_seconds if self.train_seconds > 0 else float("nan")


# --------------------------------------------------------------------------- helpers


def write_json_atomic(obj: Any, path: Path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def augment_batch(x: torch.Tensor, gen: torch.Generator, *, pad: int, flip: bool) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (zero fill) and optional horizontal flip."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    out = xp[bi, ci, rows, cols]
    if flip:
        m = torch.rand(b, generator=gen, device=gen.device).to(x.device) < 0.5
        out = torch.where(m[:, None, None, None], out.flip(3), out)
    return out


def _augment_kind(shape: tuple[int, ...]) -> tuple[int, bool] | None:
    if len(shape) != 3:
        return None
    c, h, w = shape
    if c == 3 and h >= 24:
        return 4, True  # CIFAR-like: pad-4 random crop + flip
    # Digits / MNIST: small shifts, never flip (a flipped 2 is not a 2); on 8x8 digits
    # a 2-pixel shift is a quarter of the image, so 1 pixel there.
    return (1 if h <= 16 else 2), False


class _BackgroundWriter:
    """Writes store files (and, on CPU, computes dump logits) on a worker thread.

    A job is a callable returning complete arrays; on close (also after an
    exception) pending jobs are finished, so every file exists whole or not at all.
    ``busy_seconds`` is the worker's own time, reported beside the blocking time.
    """

    def __init__(self) -> None:
        self._q: queue.Queue[tuple[Path, dict[str, Any], Callable[[], list[Any]]] | None] = (
            queue.Queue()
        )
        self._error: BaseException | None = None
        self.busy_seconds = 0.0
        self._t = threading.Thread(target=self._work, daemon=True, name="kdlens-store-writer")
        self._t.start()

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            path, kw, make_parts = item
            t0 = time.perf_counter()
            try:
                parts = make_parts()
                with CheckpointWriter(path, overwrite=True, **kw) as w:
                    for split, z, y, ids in parts:
                        w.write(z, split=split, labels=y, example_ids=ids)
            except BaseException as exc:  # surfaced on the main thread
                self._error = exc
            self.busy_seconds += time.perf_counter() - t0

    def submit(self, path: Path, kw: dict[str, Any], make_parts: Callable[[], list[Any]]) -> None:
        if self._error is not None:
            raise self._error
        self._q.put((path, kw, make_parts))

    def close(self) -> None:
        self._q.put(None)
        self._t.join()
        if self._error is not None:
            raise self._error


# --------------------------------------------------------------------------- a run


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
    run = f"bs{batch_size}-seed{seed}"
    rdir = out / run
    rc = cfg.run_config(batch_size, seed)
    manifest_path = rdir / "manifest.json"
    resume_path = rdir / "resume.pt"
    assert cfg.checkpoints is not None
    ck_epochs = list(cfg.checkpoints)

    if rdir.exists():
        old = None
        if manifest_path.is_file():
            try:
                old = json.loads(manifest_path.read_text())
            except json.JSONDecodeError:
                old = None
        same = old is not None and old.get("config") == rc
        if overwrite or not same:
            if not overwrite:
                why = (
                    "holds a different configuration"
                    if old
                    else "exists but has no readable manifest"
                )
                diff = ""
                if old and isinstance(old.get("config"), dict):
                    keys = sorted(
                        k for k in set(rc) | set(old["config"]) if rc.get(k) != old["config"].get(k)
                    )
                    diff = " (differs in: " + ", ".join(keys[:6]) + ")"
                raise InputError(f"{rdir}: {why}{diff}; pass --overwrite to replace it")
            shutil.rmtree(rdir)

    num_classes = data.num_classes
    torch_gen_seed = 1_000_003 * seed + 17
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(
            cfg.model,
            num_classes=num_classes,
            input_shape=data.input_shape,
            hidden=cfg.hidden,
            shortcut=cfg.shortcut,
        )
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
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    tr = data["train"]
    n = len(tr.y)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    milestones = (int(0.5 * total_steps), int(0.75 * total_steps))

    def lr_at(step: int) -> float:
        if cfg.schedule == "cosine":
            return lr0 * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
        if cfg.schedule == "step":
            return lr0 * 0.1 ** sum(step >= m for m in milestones)
        return lr0

    shuffle_gen = torch.Generator().manual_seed(torch_gen_seed)
    aug_gen = torch.Generator(device=device).manual_seed(torch_gen_seed + 1)
    aug = _augment_kind(data.input_shape) if cfg.augment else None

    xs = {s: place(data[s].x, device) for s in ("train", "val", "test")}
    ytr = place(data["train"].y, device)

    manifest: dict[str, Any] = {
        "run": run,
        "status": "running",
        "config": rc,
        "data": data.info,
        "class_names": data.class_names,
        "epochs_done": 0,
        "step": 0,
        "checkpoints": [],
        "history": [],
        "timings": {
            "train_seconds": 0.0,
            "dump_seconds": 0.0,
            "eval_seconds": 0.0,
            "checkpoint_seconds": 0.0,
        },
    }
    start_epoch, step, status = 0, 0, "trained"
    if resume_path.is_file() and manifest_path.is_file():
        state = load_tensors(resume_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        shuffle_gen.set_state(state["shuffle_rng"])
        aug_gen.set_state(state["aug_rng"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        old = json.loads(manifest_path.read_text())
        for key in ("checkpoints", "history", "timings"):
            manifest[key] = old.get(key, manifest[key])
        manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["epoch"] <= start_epoch]
        manifest["history"] = [h for h in manifest["history"] if h["epoch"] <= start_epoch]
        manifest["epochs_done"], manifest["step"] = start_epoch, step
        status = "resumed" if start_epoch < cfg.epochs else "skipped"
    else:
        if rdir.exists():
            shutil.rmtree(rdir)  # a manifest without a resume file: nothing reusable
        # Record the configuration before anything else, so an interrupted run is recognised.
        write_json_atomic(manifest, manifest_path)
    timings = manifest["timings"]

    store_kw = {
        "run": run,
        "num_classes": num_classes,
        "batch_size": batch_size,
        "class_names": data.class_names,
        "dataset": data.spec,
        "model": cfg.model,
    }
    threads = cfg.num_threads
    if threads is None and device.type == "cpu":
        threads = 1 if sum(p.numel() for p in model.parameters()) < 1_000_000 else None
    writer = _BackgroundWriter()
    thread_ctx = cpu_threads(threads if device.type == "cpu" else None)
    thread_ctx.__enter__()
    # Training on one CPU thread leaves a core free: dump logits from a snapshot of the
    # model on the writer thread, so the training loop waits only for the snapshot.
    background = (
        device.type == "cpu" and torch.get_num_threads() == 1 and (os.cpu_count() or 1) >= 2
    )
    try:
        # Re-dump any finished checkpoint whose store file was lost after its .pt was saved.
        for c in manifest["checkpoints"]:
            sp = rdir / c["file"]
            if not sp.is_file():
                sd = load_tensors(rdir / c["ckpt"])
                m2 = build_model(
                    cfg.model,
                    num_classes=num_classes,
                    input_shape=data.input_shape,
                    hidden=cfg.hidden,
                    shortcut=cfg.shortcut,
                ).to(device)
                m2.load_state_dict(sd)
                _dump(
                    m2,
                    data,
                    xs,
                    writer,
                    sp,
                    {
                        **store_kw,
                        "checkpoint": c["checkpoint"],
                        "epoch": c["epoch"],
                        "step": c["step"],
                        "config": {**rc, "data": data.info},
                    },
                    device,
                    cfg.dump_batch_size,
                    channels_last,
                )
        rep.run_started(run, epochs=cfg.epochs, start_epoch=start_epoch)
        last_resume_save = time.perf_counter()
        model.train()
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=shuffle_gen)
            # Index each array where it lives (GPU, or pinned host memory when too large).
            perm_x = perm.to(xs["train"].device, non_blocking=True)
            perm_y = perm.to(ytr.device, non_blocking=True)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            for i in range(0, n, batch_size):
                xb = xs["train"][perm_x[i : i + batch_size]].to(device, non_blocking=True)
                yb = ytr[perm_y[i : i + batch_size]].to(device, non_blocking=True)
                if aug is not None:
                    xb = augment_batch(xb, aug_gen, pad=aug[0], flip=aug[1])
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
                with autocast(device):
                    logits = model(xb)
                    loss = loss_fn(logits.float(), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                # Accumulate on the device: no host sync per step.
                loss_sum += loss.detach() * len(yb)
                correct += (logits.detach().argmax(1) == yb).sum()
            train_loss, train_acc = float(loss_sum) / n, float(correct) / n
            timings["train_seconds"] += time.perf_counter() - t0
            metrics = {
                "epoch": epoch,
                "step": step,
                "loss": train_loss,
                "train_acc": train_acc,
                "lr": lr_at(step),
            }
            if epoch in ck_epochs:
                ck = checkpoint_id(epoch)
                t1 = time.perf_counter()
                ckpt_rel = f"ckpt/{ck}.pt"
                save_atomic(
                    {k: v.detach().cpu() for k, v in model.state_dict().items()}, rdir / ckpt_rel
                )
                timings["checkpoint_seconds"] += time.perf_counter() - t1
                t2 = time.perf_counter()
                zval = _dump(
                    model,
                    data,
                    xs,
                    writer,
                    rdir / f"{ck}.parquet",
                    {
                        **store_kw,
                        "checkpoint": ck,
                        "epoch": epoch,
                        "step": step,
                        "config": {**rc, "data": data.info},
                    },
                    device,
                    cfg.dump_batch_size,
                    channels_last,
                    in_background=background,
                )
                timings["dump_seconds"] += time.perf_counter() - t2
                if zval is None:
                    t2 = time.perf_counter()
                    val_acc = _accuracy(
                        model, xs["val"], data["val"].y, device, cfg.dump_batch_size, channels_last
                    )
                    timings["eval_seconds"] += time.perf_counter() - t2
                else:
                    val_acc = (
                        float((zval.argmax(1) == data["val"].y).mean())
                        if len(zval)
                        else float("nan")
                    )
                manifest["checkpoints"].append(
                    {
                        "checkpoint": ck,
                        "epoch": epoch,
                        "step": step,
                        "file": f"{ck}.parquet",
                        "ckpt": ckpt_rel,
                        "train_loss": train_loss,
                        "train_acc": train_acc,
                        "val_acc": val_acc,
                    }
                )
            else:
                t2 = time.perf_counter()
                val_acc = _accuracy(
                    model, xs["val"], data["val"].y, device, cfg.dump_batch_size, channels_last
                )
                timings["eval_seconds"] += time.perf_counter() - t2
            metrics["val_acc"] = val_acc
            manifest["history"].append(metrics)
            manifest["epochs_done"], manifest["step"] = epoch, step
            now = time.perf_counter()
            if epoch in ck_epochs or epoch == cfg.epochs or now - last_resume_save > 60:
                t1 = time.perf_counter()
                save_atomic(
                    {
                        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "optimizer": opt.state_dict(),
                        "shuffle_rng": shuffle_gen.get_state(),
                        "aug_rng": aug_gen.get_state(),
                        "epoch": epoch,
                        "step": step,
                    },
                    resume_path,
                )
                timings["checkpoint_seconds"] += time.perf_counter() - t1
                last_resume_save = now
                tt = timings
                tt["dump_overhead"] = (
                    tt["dump_seconds"] / tt["train_seconds"] if tt["train_seconds"] else None
                )
                if epoch == cfg.epochs:
                    manifest["status"] = "complete"
                write_json_atomic(manifest, manifest_path)
            rep.epoch_done(run, epoch, metrics)
            if on_epoch_end is not None:
                on_epoch_end(run, epoch)
    finally:
        thread_ctx.__exit__(None, None, None)
        writer.close()
        timings["dump_worker_seconds"] = (
            timings.get("dump_worker_seconds", 0.0) + writer.busy_seconds
        )
    if manifest["status"] != "complete" and manifest["epochs_done"] >= cfg.epochs:
        manifest["status"] = "complete"
    timings["dump_overhead"] = (
        timings["dump_seconds"] / timings["train_seconds"] if timings["train_seconds"] else None
    )
    write_json_atomic(manifest, manifest_path)
    res = RunResult(
        run,
        rdir,
        status,
        manifest["checkpoints"],
        timings["train_seconds"],
        timings["dump_seconds"],
        timings["eval_seconds"],
        timings["dump_worker_seconds"],
    )
    rep.run_done(run, res)
    return res


def _accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: np.ndarray,
    device: torch.device,
    bs: int,
    channels_last: bool,
) -> float:
    if len(y) == 0:
        return float("nan")
    z = predict_logits(model, x, device=device, batch_size=bs, channels_last=channels_last)
    return float((z.argmax(1) == y).mean())


def _dump(
    model: nn.Module,
    data: Splits,
    xs: dict[str, torch.Tensor],
    writer: _BackgroundWriter,
    path: Path,
    kw: dict[str, Any],
    device: torch.device,
    bs: int,
    channels_last: bool,
    *,
    in_background: bool = False,
) -> np.ndarray | None:
    """Logits of every split (eval mode, no augmentation) written to ``path``.

    In the background (CPU training on one thread while another core is free) a
    snapshot of the model computes them on the writer thread and None is returned;
    otherwise they are computed here and val's logits are returned.
    """
    splits = [s for s in ("train", "val", "test") if len(data[s].y)]

    def compute(m: nn.Module) -> list[Any]:
        return [
            (
                s,
                predict_logits(m, xs[s], device=device, batch_size=bs, channels_last=channels_last),
                data[s].y,
                data[s].ids,
            )
            for s in splits
        ]

    if in_background:
        snap = copy.deepcopy(model)
        writer.submit(path, kw, lambda: compute(snap))
        return None
    parts = compute(model)
    writer.submit(path, kw, lambda: parts)
    zval = [z for s, z, _, _ in parts if s == "val"]
    return zval[0] if zval else np.empty((0, data.num_classes), np.float32)
