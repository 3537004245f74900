"""Throughput of the harness on ResNet-20 with synthetic 32x32x3 data.

Measures training samples/s (SGD, bf16 autocast + channels_last on CUDA),
dump samples/s (inference_mode, every split) and the dump overhead ratio of a
real `kdlens dump` run (time the training loop waited for dumps / time training).

    python examples/gpu_resnet20_bench.py                    # CUDA if available
    python examples/gpu_resnet20_bench.py --device cpu --n 512 --epochs 2   # tiny CPU run

No downloads: the data is random uint8 images written to a temporary .npz.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kdlens.harness import DumpConfig, build_model, dump
from kdlens.harness.augment import augment_batch
from kdlens.harness.runtime import autocast, place, predict_logits, resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(device: torch.device, n: int, batch_size: int, steps: int) -> dict[str, float]:
    """Raw samples/s of a training step and of a dump forward pass."""
    model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32)).to(device)
    cl = device.type == "cuda"
    if cl:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = place(torch.randn(n, 3, 32, 32), device)
    y = place(torch.randint(0, 10, (n,)), device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    gen = torch.Generator(device=device).manual_seed(0)

    def step(i: int) -> None:
        idx = torch.randint(0, n, (batch_size,), device=device)
        xb = augment_batch(x[idx].to(device, non_blocking=True), gen, pad=4, flip=True)
        if cl:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            loss = torch.nn.functional.cross_entropy(model(xb).float(), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(3):  # warm-up (cuDNN autotuning, allocator)
        step(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    train_sps = steps * batch_size / (time.perf_counter() - t0)
    predict_logits(model, x[: min(n, 1024)], device=device, batch_size=1024, channels_last=cl)
    _sync(device)
    t0 = time.perf_counter()
    predict_logits(model, x, device=device, batch_size=2048, channels_last=cl)
    _sync(device)
    dump_sps = n / (time.perf_counter() - t0)
    return {"train_samples_per_s": train_sps, "dump_samples_per_s": dump_sps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=50_000, help="synthetic examples (CIFAR-10 size)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the kdlens dump run")
    args = ap.parse_args()
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    out: dict[str, object] = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    out.update(throughput(device, args.n, args.batch_size, args.steps))
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        npz = Path(tmp) / "synthetic.npz"
        np.savez(
            npz,
            X=rng.integers(0, 256, (args.n, 3, 32, 32), dtype=np.uint8),
            y=np.arange(args.n) % 10,
        )
        t0 = time.perf_counter()
        res = dump(
            Path(tmp) / "store",
            DumpConfig(
                dataset=str(npz),
                model="resnet20",
                batch_sizes=(args.batch_size,),
                epochs=args.epochs,
                checkpoints=tuple(range(1, args.epochs + 1)),
                device=args.device,
                val_size=0.1,
                test_size=0.1,
            ),
        )
        r = res[0]
        out.update(
            {
                "dump_run_wall_s": time.perf_counter() - t0,
                "dump_run_train_s": r.train_seconds,
                "dump_run_dump_s": r.dump_seconds,
                "dump_overhead": r.dump_overhead,
                "dump_worker_s": r.dump_worker_seconds,
                "checkpoints_dumped": len(r.checkpoints),
            }
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
