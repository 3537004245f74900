"""A run's directory: its manifest, the configuration check, and the resume file.

``<run>/manifest.json`` records the run's configuration, finished checkpoints,
per-epoch history, timings and the environment it trained in; ``<run>/resume.pt``
holds the model, optimizer and RNG states after the last saved epoch. A rerun with the
same configuration resumes from there, bit for bit as if it had never stopped (in the
same environment); a different configuration is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlens._internal.atomic import write_text_atomic
from kdlens.errors import InputError
from kdlens.harness.data import Splits
from kdlens.harness.reporting import Reporter
from kdlens.harness.runtime import environment_changes, load_tensors, save_atomic

__all__ = [
    "MANIFEST",
    "RESUME",
    "changed_keys",
    "check_run_dir",
    "finish_manifest",
    "new_manifest",
    "read_manifest",
    "record_environment",
    "restore_run",
    "save_resume",
    "set_dump_overhead",
    "write_json_atomic",
]

MANIFEST = "manifest.json"
RESUME = "resume.pt"


def write_json_atomic(obj: Any, path: Path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def check_run_dir(rdir: Path, rc: dict[str, Any], *, overwrite: bool) -> None:
    """Refuse a run directory that holds another configuration; with ``overwrite``, clear it."""
    if not rdir.exists():
        return
    old = read_manifest(rdir)
    same = old is not None and old.get("config") == rc
    if same and not overwrite:
        return
    if not overwrite:
        why = "holds a different configuration" if old else "exists but has no readable manifest"
        diff = ""
        if old and isinstance(old.get("config"), dict):
            diff = " (differs in: " + ", ".join(changed_keys(rc, old)[:6]) + ")"
        raise InputError(f"{rdir}: {why}{diff}; pass `overwrite=True` to replace it")
    shutil.rmtree(rdir)


def read_manifest(rdir: Path) -> dict[str, Any] | None:
    """The run directory's manifest, or None when it is missing or not valid JSON."""
    path = rdir / MANIFEST
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return old if isinstance(old, dict) else None


def changed_keys(rc: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
    """The configuration keys whose values differ between ``rc`` and an old manifest's."""
    if not old or not isinstance(old.get("config"), dict):
        return []
    return sorted(k for k in set(rc) | set(old["config"]) if rc.get(k) != old["config"].get(k))


def new_manifest(run: str, rc: dict[str, Any], data: Splits) -> dict[str, Any]:
    """The manifest of a run that has not trained yet."""
    return {
        "run": run,
        "status": "running",
        "config": rc,
        "data": data.info,
        "class_names": data.class_names,
        "epochs_done": 0,
        "step": 0,
        #: set by the training loop (harness.runtime.environment); kept across resumes
        "environment": None,
        "checkpoints": [],
        "history": [],
        "timings": {
            "train_seconds": 0.0,
            "dump_seconds": 0.0,
            "eval_seconds": 0.0,
            "checkpoint_seconds": 0.0,
        },
    }


def restore_run(
    rdir: Path,
    manifest: dict[str, Any],
    model: nn.Module,
    opt: torch.optim.Optimizer,
    shuffle_gen: torch.Generator,
    aug_gen: torch.Generator,
    *,
    epochs: int,
) -> tuple[int, int, str]:
    """Load the resume state into the model, optimizer, RNGs and ``manifest``, if there is one.

    Returns (start epoch, step, status): status is ``"resumed"``, ``"skipped"`` (nothing
    left to train) or ``"trained"`` (a fresh start, whose manifest is then written).
    """
    manifest_path, resume_path = rdir / MANIFEST, rdir / RESUME
    if not (resume_path.is_file() and manifest_path.is_file()):
        if rdir.exists():
            shutil.rmtree(rdir)  # a manifest without a resume file: nothing reusable
        # Record the configuration before anything else, so an interrupted run is recognised.
        write_json_atomic(manifest, manifest_path)
        return 0, 0, "trained"
    state = load_tensors(resume_path)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    shuffle_gen.set_state(state["shuffle_rng"])
    aug_gen.set_state(state["aug_rng"])
    start_epoch, step = int(state["epoch"]), int(state["step"])
    old = json.loads(manifest_path.read_text())
    for key in ("checkpoints", "history", "timings", "environment", "resumed_environments"):
        if key in old:
            manifest[key] = old[key]
    manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["epoch"] <= start_epoch]
    manifest["history"] = [h for h in manifest["history"] if h["epoch"] <= start_epoch]
    manifest["epochs_done"], manifest["step"] = start_epoch, step
    return start_epoch, step, "resumed" if start_epoch < epochs else "skipped"


def save_resume(
    rdir: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    shuffle_gen: torch.Generator,
    aug_gen: torch.Generator,
    *,
    epoch: int,
    step: int,
) -> None:
    """Write the state a rerun resumes from (tensors and plain containers only)."""
    save_atomic(
        {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "shuffle_rng": shuffle_gen.get_state(),
            "aug_rng": aug_gen.get_state(),
            "epoch": epoch,
            "step": step,
        },
        rdir / RESUME,
    )


def set_dump_overhead(timings: dict[str, Any]) -> None:
    """Time the training loop waited for dumps / time training (None before any training)."""
    timings["dump_overhead"] = (
        timings["dump_seconds"] / timings["train_seconds"] if timings["train_seconds"] else None
    )


def finish_manifest(rdir: Path, manifest: dict[str, Any], *, epochs: int) -> None:
    """Mark a run that reached its last epoch complete and write the manifest."""
    if manifest["status"] != "complete" and manifest["epochs_done"] >= epochs:
        manifest["status"] = "complete"
    set_dump_overhead(manifest["timings"])
    write_json_atomic(manifest, rdir / MANIFEST)


def record_environment(
    manifest: dict[str, Any], env: dict[str, Any], status: str, start_epoch: int, rep: Reporter
) -> None:
    """Keep the environment the run started in; a resume under another one is recorded
    and said, since its logits will not match an uninterrupted run's bit for bit."""
    if manifest.get("environment") is None:
        manifest["environment"] = env
        return
    changes = environment_changes(manifest["environment"], env)
    if status == "resumed" and changes:
        manifest.setdefault("resumed_environments", []).append({"epoch": start_epoch, **env})
        rep.message(
            f"{manifest['run']}: resumed at epoch {start_epoch} in a different environment "
            f"({'; '.join(changes)}): its logits will not match an uninterrupted run's bit for bit"
        )
