"""``kdlens dump``: train a teacher grid and dump logits, or dump existing checkpoints."""

from __future__ import annotations

import glob as _glob
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl
import torch

from kdlens._internal.lock import locked_output
from kdlens._internal.names import path_component
from kdlens.errors import InputError
from kdlens.harness.config import DumpConfig
from kdlens.harness.data import Splits, prepare_data
from kdlens.harness.models import build_model, is_convnet, probe_model
from kdlens.harness.parallel import parse_devices, train_runs_parallel
from kdlens.harness.reporting import QuietReporter, Reporter, RunResult
from kdlens.harness.rundir import changed_keys, read_manifest, write_json_atomic
from kdlens.harness.runtime import (
    environment,
    extract_state_dict,
    load_state_dict_checked,
    load_tensors,
    place,
    predict_logits,
    resolve_device,
)
from kdlens.harness.train import train_run
from kdlens.store.writer import CheckpointWriter

__all__ = ["dump", "dump_checkpoints", "summarize_runs"]


@locked_output("out")
def dump(
    out: str | Path,
    config: DumpConfig | None = None,
    *,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    on_epoch_end: Callable[[str, int], None] | None = None,
) -> list[RunResult]:
    """Train every (batch size, seed) run of ``config`` and dump logits under ``out``.

    Writes ``<out>/<run>/<checkpoint>.parquet`` (all splits), ``<out>/<run>/ckpt/*.pt``,
    ``<out>/<run>/manifest.json`` and ``<out>/kdlens-dump.json``. Finished runs are
    skipped and interrupted ones resumed; a run directory holding a different
    configuration raises :class:`InputError` unless ``overwrite``. With ``cfg.devices``
    naming several devices, the runs train in parallel, one process per device
    (:mod:`kdlens.harness.parallel`; ``on_epoch_end`` then runs in the workers).
    """
    cfg = config or DumpConfig()
    cfg.validate()
    rep = reporter or QuietReporter()
    devices = parse_devices(cfg.devices) if cfg.devices is not None else None
    device = resolve_device(devices[0] if devices else cfg.device)
    outp = Path(out)
    t0 = time.perf_counter()
    data = prepare_data(
        cfg.dataset,
        seed=cfg.split_seed,
        train_size=cfg.train_size,
        val_size=cfg.val_size,
        test_size=cfg.test_size,
        label_noise=cfg.label_noise,
    )
    _announce(rep, cfg, data, device)
    # A bad model name or factory fails here, before any existing output is looked at.
    probe_model(
        build_model(
            cfg.model,
            num_classes=data.num_classes,
            input_shape=data.input_shape,
            hidden=cfg.hidden,
            shortcut=cfg.shortcut,
        ),
        cfg.model,
        data.input_shape,
        data.num_classes,
    )
    # Check every existing run first, so a conflict is reported before any training.
    if not overwrite:
        for b in cfg.batch_sizes:
            for s in cfg.seeds:
                _check_existing(outp / f"bs{b}-seed{s}", cfg.run_config(b, s))
    results = []
    if devices is not None and len(devices) > 1:
        results = train_runs_parallel(
            cfg, data, devices, outp, overwrite=overwrite, reporter=rep, on_epoch_end=on_epoch_end
        )
    for b in cfg.batch_sizes if not results else ():
        for s in cfg.seeds:
            results.append(
                train_run(
                    cfg,
                    data,
                    batch_size=b,
                    seed=s,
                    out=outp,
                    device=device,
                    overwrite=overwrite,
                    reporter=rep,
                    on_epoch_end=on_epoch_end,
                )
            )
    write_json_atomic(
        {
            "config": asdict(cfg),
            "data": data.info,
            "device": str(device) if not devices or len(devices) == 1 else ",".join(devices),
            "environment": environment(device),
            "wall_seconds": time.perf_counter() - t0,
            "runs": [_run_summary(r) for r in results],
        },
        outp / "kdlens-dump.json",
    )
    return results


def _announce(rep: Reporter, cfg: DumpConfig, data: Splits, device: torch.device) -> None:
    """The dataset's sizes and the learning rate of each batch size."""
    i = data.info
    rep.message(
        f"dataset {data.spec}: K={data.num_classes}, train={i['n_train']}, val={i['n_val']}, "
        f"test={i['n_test']}"
        + (f", {i['labels_flipped']} train labels flipped" if i["labels_flipped"] else "")
        + f"; device {device}"
    )
    rep.message(
        "learning rate: "
        + ", ".join(f"bs{b}: {cfg.run_config(b, 0)['effective_lr']:.4g}" for b in cfg.batch_sizes)
        + f" ({cfg.lr_scaling} scaling of {cfg.base_lr:g} at batch size 128)"
    )


def _run_summary(r: RunResult) -> dict[str, Any]:
    return {
        "run": r.run,
        "status": r.status,
        "train_seconds": r.train_seconds,
        "dump_seconds": r.dump_seconds,
        "dump_overhead": r.dump_overhead,
        "dump_worker_seconds": r.dump_worker_seconds,
    }


def _check_existing(rdir: Path, rc: dict[str, Any]) -> None:
    if not rdir.exists():
        return
    old = read_manifest(rdir)
    if old is None or old.get("config") != rc:
        keys = changed_keys(rc, old)
        why = f"differs in: {', '.join(keys[:6])}" if keys else "no readable manifest"
        raise InputError(
            f"{rdir}: already holds a different run ({why}); pass `overwrite=True` to replace it"
        )


def summarize_runs(results: Sequence[RunResult]) -> pl.DataFrame:
    """One row per run: status, checkpoints, seconds training and dumping, their ratio."""
    return pl.DataFrame(
        {
            "run": [r.run for r in results],
            "status": [r.status for r in results],
            "checkpoints": [len(r.checkpoints) for r in results],
            "final_val_acc": [
                r.checkpoints[-1]["val_acc"] if r.checkpoints else None for r in results
            ],
            "train_seconds": [r.train_seconds for r in results],
            "dump_seconds": [r.dump_seconds for r in results],
            "dump_overhead": [r.dump_overhead for r in results],
            "dump_worker_seconds": [r.dump_worker_seconds for r in results],
        },
        schema={
            "run": pl.Utf8,
            "status": pl.Utf8,
            "checkpoints": pl.Int64,
            "final_val_acc": pl.Float64,
            "train_seconds": pl.Float64,
            "dump_seconds": pl.Float64,
            "dump_overhead": pl.Float64,
            "dump_worker_seconds": pl.Float64,
        },
    )


_EPOCH_RE = re.compile(r"(?:^|[^a-z])(?:ep|epoch)[_-]?(\d+)", re.IGNORECASE)


def dump_checkpoints(
    checkpoints: str | Sequence[str | Path],
    out: str | Path,
    *,
    model: str,
    dataset: str = "digits",
    run: str = "imported",
    hidden: Sequence[int] = (256, 128),
    shortcut: str = "A",
    split_seed: int = 0,
    train_size: float | int | None = None,
    val_size: float | int | None = 0.2,
    test_size: float | int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    dump_batch_size: int = 2048,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> list[Path]:
    """Dump the logits of existing state-dict checkpoints (a glob or a list of .pt files).

    Each file becomes checkpoint ``<file stem>`` of ``run`` in
    ``<out>/<run>/<stem>.parquet``; an epoch is read from names like ``ep10``/``epoch_10``.
    Files are loaded with ``weights_only=True``: anything but tensors is refused.
    """
    if isinstance(checkpoints, (str, Path)):
        s = str(checkpoints)
        files = sorted(Path(f) for f in _glob.glob(s)) if any(c in s for c in "*?[") else [Path(s)]
    else:
        files = [Path(f) for f in checkpoints]
    files = [f for f in files if f.is_file()]
    if not files:
        raise InputError(f"{checkpoints!s}: matches no files")
    path_component(run, field="run")  # names become paths: check them before any work
    for f in files:
        path_component(f.stem, field="checkpoint")
    rep = reporter or QuietReporter()
    dev = resolve_device(device)
    data = prepare_data(
        dataset, seed=split_seed, train_size=train_size, val_size=val_size, test_size=test_size
    )
    net = build_model(
        model,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        hidden=hidden,
        shortcut=shortcut,
    )
    # Validate every file before writing anything.
    states = []
    for f in files:
        sd = extract_state_dict(load_tensors(f), f)
        load_state_dict_checked(net, sd, str(f))
        states.append(sd)
    probe_model(net, model, data.input_shape, data.num_classes)
    net = net.to(dev)
    cl = dev.type == "cuda" and is_convnet(net)
    xs = {s: place(data[s].x, dev) for s in ("train", "val", "test")}
    config = {
        "model": model,
        "hidden": list(hidden),
        "shortcut": shortcut,
        "source": "checkpoints",
        "data": data.info,
    }
    written = []
    for f, sd in zip(files, states, strict=True):
        net.load_state_dict(sd)
        ck = f.stem
        m = _EPOCH_RE.search(ck)
        epoch = int(m.group(1)) if m else None
        path = Path(out) / run / f"{ck}.parquet"
        if path.exists() and not overwrite:  # re-running skips what is done
            rep.message(f"{f}: {path} exists, skipped (`overwrite=True` redoes it)")
            written.append(path)
            continue
        with CheckpointWriter(
            path,
            run=run,
            checkpoint=ck,
            num_classes=data.num_classes,
            epoch=epoch,
            batch_size=batch_size,
            class_names=data.class_names,
            dataset=data.spec,
            model=model,
            config={**config, "checkpoint_file": str(f)},
            overwrite=overwrite,
        ) as w:
            for split in ("train", "val", "test"):
                a = data[split]
                if len(a.y):
                    z = predict_logits(
                        net, xs[split], device=dev, batch_size=dump_batch_size, channels_last=cl
                    )
                    w.write(z, split=split, labels=a.y, example_ids=a.ids)
        rep.message(f"{f} -> {path}")
        written.append(path)
    return written
