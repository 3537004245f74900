"""Teacher and student architectures, and user model factories.

Built-in names: ``mlp``, ``cnn``, the CIFAR ResNets ``resnet20/32/56/110`` (He et al.
2016, shortcut option A = parameter-free zero-padded identity, B = 1x1 projection)
and ``wrn-16-4`` (Zagoruyko & Komodakis 2016). ``timm:NAME`` builds timm's architecture
NAME with ``pretrained=False``, ``num_classes`` from the data and ``in_chans`` from the
input shape (timm is optional: ``pip install 'kdlens[timm]'``, imported only then).
``module:function`` (or ``path/to/file.py:function``) calls a user factory with
``num_classes`` and, when its signature accepts it, ``input_shape``; it must return an
``nn.Module``. Both are checked with one forward pass on a tiny batch when built.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlens.errors import InputError

__all__ = ["MODELS", "build_model", "is_convnet", "MLP", "SmallCNN", "CifarResNet", "WideResNet"]


class MLP(nn.Module):
    """Flatten, then ``hidden`` ReLU layers, then a linear classifier."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 128)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU layers (32, 64, 128 channels), global average pool, linear."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        w = width

        def block(i: int, o: int) -> list[nn.Module]:
            return [
                nn.Conv2d(i, o, 3, padding=1, bias=False),
                nn.BatchNorm2d(o),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *block(in_channels, w),
            *block(w, 2 * w),
            nn.MaxPool2d(2),
            *block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = 0
        self.proj: nn.Module | None = None
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.pad = cout - cin
            else:
                self.proj = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.proj is not None:
            sc = self.proj(x)
        elif self.stride != 1 or self.pad:
            # Option A: subsample and zero-pad channels; no parameters.
            sc = x[:, :, :: self.stride, :: self.stride]
            sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        else:
            sc = x
        return F.relu(out + sc)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 16/32/64 channels, n blocks per stage."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, shortcut: str = "A"):
        super().__init__()
        if (depth - 2) % 6:
            raise InputError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        cin = 16
        for i, cout in enumerate((16, 32, 64)):
            for j in range(n):
                blocks.append(_BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, shortcut))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.proj = (
            None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        sc = x if self.proj is None else self.proj(o)
        o = self.conv1(o)
        o = F.relu(self.bn2(o))
        if self.dropout:
            o = F.dropout(o, self.dropout, self.training)
        return self.conv2(o) + sc


class WideResNet(nn.Module):
    """WRN-depth-k (pre-activation), e.g. WRN-16-4."""

    def __init__(
        self, depth: int, widen: int, num_classes: int, in_channels: int = 3, dropout: float = 0.0
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise InputError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, cout in enumerate(widths[1:]):
            for j in range(n):
                blocks.append(_WideBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, dropout))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


MODELS = ("mlp", "cnn", "resnet20", "resnet32", "resnet56", "resnet110", "wrn-16-4")


def is_convnet(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def build_model(
    name: str,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    hidden: Sequence[int] = (256, 128),
    shortcut: str = "A",
) -> nn.Module:
    """Build a model by name (see :data:`MODELS`) or from a ``module:function`` factory.

    ``input_shape`` is one example's shape, e.g. (1, 8, 8) or (3, 32, 32).
    """
    shape = tuple(int(s) for s in input_shape)
    in_features = 1
    for s in shape:
        in_features *= s
    in_ch = shape[0] if len(shape) == 3 else 1
    if shortcut not in ("A", "B"):
        raise InputError(f"`shortcut` must be A or B, got {shortcut!r}")
    if name == "mlp":
        return MLP(in_features, num_classes, hidden)
    if (
        name in ("cnn", "resnet20", "resnet32", "resnet56", "resnet110", "wrn-16-4")
        and len(shape) != 3
    ):
        raise InputError(f"model {name!r} needs image inputs (C, H, W), got input shape {shape}")
    if name == "cnn":
        return SmallCNN(in_ch, num_classes)
    if name.startswith("resnet") and name[6:].isdigit() and int(name[6:]) in (20, 32, 56, 110):
        return CifarResNet(int(name[6:]), num_classes, in_ch, shortcut)
    if name == "wrn-16-4":
        return WideResNet(16, 4, num_classes, in_ch)
    if ":" in name:
        # A model kdlens did not write is checked against the data now, in one line,
        # wherever it is built (dump, --from-checkpoints, a distill student).
        net = _from_timm(name, num_classes, shape) if name.startswith("timm:") else None
        net = net if net is not None else _from_factory(name, num_classes, shape)
        probe_model(net, name, shape, num_classes)
        return net
    raise InputError(
        f"unknown model {name!r}: choose one of {', '.join(MODELS)}, timm:NAME or module:function"
    )


def _from_timm(spec: str, num_classes: int, shape: tuple[int, ...]) -> nn.Module:
    """``timm:NAME``: timm's architecture NAME, randomly initialised (never downloaded)."""
    arch = spec[len("timm:") :]
    if not arch:
        raise InputError(f"`model` {spec!r}: expected timm:NAME, e.g. timm:resnet18")
    try:
        import timm
    except Exception as exc:  # absent, or present but broken (e.g. a torchvision mismatch)
        why = (str(exc).strip().splitlines() or [""])[0][:160]
        raise InputError(
            f"`model` {spec!r} needs timm: pip install 'kdlens[timm]' "
            f"(import timm failed: {type(exc).__name__}: {why})"
        ) from None
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes}
    if len(shape) == 3:
        kwargs["in_chans"] = shape[0]
    try:
        model = timm.create_model(arch, **kwargs)
    except Exception as exc:  # timm raises RuntimeError for an unknown name, others for args
        why = (str(exc).strip().splitlines() or [""])[0][:160]
        raise InputError(
            f"`model` {spec!r}: timm cannot build {arch!r} ({type(exc).__name__}: {why})"
        ) from None
    if not isinstance(model, nn.Module):
        raise InputError(f"`model` {spec!r}: timm returned {type(model).__name__}")
    return model


def import_factory(spec: str, *, param: str = "model") -> Any:
    """The callable named by ``module:function`` or ``path/to/file.py:function``; errors
    name ``param`` (the option the spec came from)."""
    mod_name, _, fn_name = spec.rpartition(":")
    if not mod_name or not fn_name:
        raise InputError(f"`{param}` {spec!r}: expected module:function")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise InputError(f"`{param}` {spec!r}: no such file {path}")
            mspec = importlib.util.spec_from_file_location(path.stem, path)
            if mspec is None or mspec.loader is None:
                raise InputError(f"`{param}` {spec!r}: cannot load {path}")
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            # A console script does not put the working directory on sys.path; a user
            # naming their own package expects it to be found there.
            cwd = str(Path.cwd())
            if cwd not in sys.path:
                sys.path.append(cwd)
            module = importlib.import_module(mod_name)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"`{param}` {spec!r}: cannot import {mod_name} ({type(exc).__name__}: {exc})"
        ) from None
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise InputError(f"`{param}` {spec!r}: {mod_name} has no callable {fn_name!r}")
    return fn


def _from_factory(spec: str, num_classes: int, shape: tuple[int, ...]) -> nn.Module:
    fn = import_factory(spec)
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    try:
        params = inspect.signature(fn).parameters
        if "input_shape" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs["input_shape"] = shape
    except (TypeError, ValueError):
        pass
    try:
        model = fn(**kwargs)
    except Exception as exc:
        raise InputError(
            f"`model` {spec!r}: the factory raised {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(model, nn.Module):
        raise InputError(
            f"`model` {spec!r}: the factory must return a torch.nn.Module, "
            f"got {type(model).__name__}"
        )
    return model


def probe_model(model: nn.Module, name: str, input_shape: Sequence[int], num_classes: int) -> None:
    """One forward pass on a tiny batch, so that a model whose input or output shape does
    not fit the data fails now, in one line, not after a run of training."""
    x = torch.zeros((2, *(int(s) for s in input_shape)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"`model` {name!r} does not accept the dataset's inputs: each example has shape "
            f"{tuple(x.shape[1:])} ({int(x[0].numel())} values){_first_layer(model)}; "
            f"a forward pass on inputs of shape {tuple(x.shape)} failed ({msg})"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"`model` {name!r}: expected outputs of shape (batch, {num_classes}) for "
            f"{num_classes} classes, got {got}"
        )


def _first_layer(model: nn.Module) -> str:
    """What the model's first Linear or Conv layer expects, as a clause ('' if neither)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return f", the model's first layer expects {m.in_features} input features"
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return f", the model's first layer expects {m.in_channels} input channels"
    return ""
