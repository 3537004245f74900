"""The students of offline distillation: their configuration and their training.

A student is trained from a transfer set's inputs, labels and (optionally) the
teacher's stored logits, with the loss

    alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y);

:func:`train_mlp_students` trains full-batch MLP students of several seeds side by
side, exactly as :func:`train_student` would train each alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdlens.errors import InputError
from kdlens.harness.models import build_model

__all__ = ["StudentConfig", "student_dict", "student_label", "train_mlp_students", "train_student"]


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


def student_label(sc: StudentConfig) -> str:
    h = "x".join(map(str, sc.hidden))
    return f"{sc.model}-{h}" if sc.model == "mlp" else sc.model


def student_dict(sc: StudentConfig) -> dict[str, Any]:
    return {
        "model": sc.model,
        "hidden": list(sc.hidden),
        "epochs": sc.epochs,
        "lr": sc.lr,
        "weight_decay": sc.weight_decay,
        "batch_size": sc.batch_size,
    }


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


def train_student(
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


def train_mlp_students(
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
    S = len(seeds)
    weights, biases = _stacked_mlp_params(
        seeds, sc, num_classes=num_classes, input_shape=xtr.shape[1:], device=device
    )
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


def _stacked_mlp_params(
    seeds: list[int],
    sc: StudentConfig,
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    device: torch.device,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the weights (S, in, out) and biases (S, 1, out) of one MLP per seed."""
    ws: list[list[torch.Tensor]] = []
    bs: list[list[torch.Tensor]] = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            m = build_model(
                "mlp", num_classes=num_classes, input_shape=input_shape, hidden=sc.hidden
            )
        lin = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
        ws.append([mod.weight.detach().t().contiguous() for mod in lin])  # (in, out)
        bs.append([mod.bias.detach().clone() for mod in lin])
    weights = [
        torch.stack([w[j] for w in ws]).to(device).requires_grad_() for j in range(len(ws[0]))
    ]
    biases = [
        torch.stack([b[j] for b in bs])[:, None, :].to(device).requires_grad_()
        for j in range(len(bs[0]))
    ]
    return weights, biases
