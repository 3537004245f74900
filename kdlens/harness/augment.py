"""Data augmentation of training batches, on the device: random shifts and flips."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["augment_batch", "augment_kind"]


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


def augment_kind(shape: tuple[int, ...]) -> tuple[int, bool] | None:
    """(pad, flip) for images of ``shape`` (C, H, W); ``None`` for non-images."""
    if len(shape) != 3:
        return None
    c, h, w = shape
    if c == 3 and h >= 24:
        return 4, True  # CIFAR-like: pad-4 random crop + flip
    # Digits / MNIST: small shifts, never flip (a flipped 2 is not a 2); on 8x8 digits
    # a 2-pixel shift is a quarter of the image, so 1 pixel there.
    return (1 if h <= 16 else 2), False
