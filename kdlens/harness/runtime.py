"""Device placement, mixed precision, batched inference and safe checkpoint I/O."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlens._internal.atomic import atomic_path
from kdlens.errors import InputError

__all__ = [
    "resolve_device",
    "cpu_threads",
    "environment",
    "environment_changes",
    "autocast",
    "predict_logits",
    "save_atomic",
    "load_tensors",
    "load_state_dict_checked",
]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"`device` must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("`device=cuda` asked for but torch sees no CUDA device")
    return torch.device(device)


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op CPU threads (restored afterwards).

    Small models run fastest on one thread: the OpenMP workers of a tiny matmul
    spin and, on a busy machine, slow training down by an order of magnitude.
    """
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def environment(device: torch.device) -> dict[str, Any]:
    """What a run's numbers depend on beyond its configuration, for its manifest.

    The same configuration trains to bit-identical weights only under the same
    library versions and the same kernels: torch picks its CPU kernels by the
    processor's vector capability (e.g. AVX2 or AVX512), whose rounding differs, and a
    difference in the first step grows over epochs of SGD.
    """
    import platform

    from kdlens._version import __version__

    env: dict[str, Any] = {
        "kdlens": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": device.type,
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


def environment_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for each entry of :func:`environment` that differs (none when
    ``old`` is missing: a manifest written before environments were recorded)."""
    if not old:
        return []
    return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in new if old.get(k) != new.get(k)]


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; full precision on CPU (CPU bf16 is slow and lossy here)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def place(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Put a dataset array where batches will be cut from it.

    On CUDA a dataset that fits comfortably goes to the GPU once (no per-batch
    copies); a larger one stays in pinned host memory for non_blocking copies.
    """
    t = torch.as_tensor(x)
    if device.type != "cuda":
        return t
    free, _ = torch.cuda.mem_get_info(device)
    if t.numel() * t.element_size() < 0.25 * free:
        return t.to(device, non_blocking=True)
    return t.pin_memory()


def batches(
    x: torch.Tensor, device: torch.device, batch_size: int, channels_last: bool = False
) -> Iterator[torch.Tensor]:
    for i in range(0, x.shape[0], batch_size):
        b = x[i : i + batch_size].to(device, non_blocking=True)
        if channels_last and b.ndim == 4:
            b = b.contiguous(memory_format=torch.channels_last)
        yield b


def predict_logits(
    model: nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 1024,
    channels_last: bool = False,
) -> np.ndarray:
    """Logits (n, K) float32 of ``model`` in eval mode under inference_mode.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        with torch.inference_mode(), autocast(device):
            for b in batches(x, device, batch_size, channels_last):
                out.append(model(b).float())
        z = torch.cat(out) if out else torch.empty(0, 0)
    finally:
        model.train(was_training)
    return z.cpu().numpy()


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file in the same directory, then rename."""
    p = Path(path)
    with atomic_path(p) as tmp:
        torch.save(obj, tmp)
    return p


def load_tensors(path: str | os.PathLike[str]) -> Any:
    """``torch.load(..., weights_only=True)``: tensors and plain containers only.

    Anything else (pickled classes, code) is refused with an :class:`InputError`.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such checkpoint file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{p}: refused to load: it holds something other than tensors and plain "
            f"containers, or is not a torch file ({first})"
        ) from None


def extract_state_dict(obj: Any, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in a loaded checkpoint: itself or its ``state_dict``/``model`` entry."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            # DataParallel / torch.compile prefixes would otherwise never match.
            out = {}
            for k, v in obj.items():
                for pre in ("module.", "_orig_mod."):
                    if k.startswith(pre):
                        k = k[len(pre) :]
                out[k] = v
            return out
    raise InputError(f"{path}: not a state dict (a mapping of parameter names to tensors)")


def load_state_dict_checked(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load ``state`` strictly; on a mismatch name the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:

        def few(xs: list[str]) -> str:
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")

        bits = []
        if missing:
            bits.append(f"missing keys: {few(missing)}")
        if unexpected:
            bits.append(f"unexpected keys: {few(unexpected)}")
        if shapes:
            bits.append(f"mismatched shapes: {few(shapes)}")
        raise InputError(f"{source}: state dict does not fit the model; " + "; ".join(bits))
    model.load_state_dict(state, strict=True)
