"""`kdlens dump` and `kdlens distill`: the training harness (needs torch).

torch is imported inside the command bodies only, so `kdlens --help` and every
other command work without it.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from kdlens.cli._app import app, cli_flags, handle_errors
from kdlens.cli._render import cell, json_rows, say, show, title
from kdlens.cli._reporters import RichReporter
from kdlens.errors import InputError

# The option defaults below restate DumpConfig's and StudentConfig's (importing them needs
# torch, which --help must not load); tests/test_cli_options.py holds the two sides equal.

#: DumpConfig fields with no `kdlens dump` option (set them through the Python API).
DUMPCONFIG_NOT_ON_CLI = frozenset({"dump_batch_size", "num_threads"})
#: `kdlens dump` options that are not DumpConfig fields: the output, the
#: --from-checkpoints mode and its run name, and how to treat existing output.
DUMP_NOT_IN_CONFIG = frozenset({"out", "from_checkpoints", "run", "overwrite", "quiet", "as_json"})
#: `kdlens distill` option -> the StudentConfig field it sets.
STUDENT_OPTIONS = {
    "student": "model",
    "student_hidden": "hidden",
    "student_epochs": "epochs",
    "student_lr": "lr",
    "student_batch_size": "batch_size",
}
#: StudentConfig fields with no `kdlens distill` option.
STUDENTCONFIG_NOT_ON_CLI = frozenset({"weight_decay"})


def _ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None or text == "":
        return None
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise InputError(f"--{name} must be comma-separated integers, got {text!r}") from None


def _size(text: str | None, name: str) -> float | int | None:
    if text is None or text == "":
        return None
    try:
        v = float(text)
    except ValueError:
        raise InputError(f"--{name}-size must be a fraction or a count, got {text!r}") from None
    return v if v < 1.0 else int(v) if v == int(v) else v


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError("this command needs torch: pip install 'kdlens[torch]'") from None


@app.command("dump")
@handle_errors
def dump_cmd(
    out: str = typer.Option("runs/digits", "--out", "-o", help="Output directory of the store."),
    dataset: str = typer.Option(
        "digits",
        "--dataset",
        help="digits | idx:IMAGES,LABELS | idx:DIR | cifar:DIR | emnist-letters:DIR | "
        "cifar10-jpeg:DIR | npz:FILE | folder:DIR[,HxW] "
        "(class sub-folders of images) | module:function (your arrays or Dataset); no downloads.",
    ),
    model: str = typer.Option(
        "mlp",
        "--model",
        help="mlp, cnn, resnet20/32/56/110, wrn-16-4, timm:NAME (needs timm), or "
        "module:function returning an nn.Module.",
    ),
    hidden: str = typer.Option("256,128", "--hidden", help="Hidden layer sizes of the mlp."),
    shortcut: str = typer.Option(
        "A", "--shortcut", help="ResNet shortcut: A (zero-pad) or B (1x1 conv)."
    ),
    batch_sizes: str = typer.Option(
        "16,64,256", "--batch-sizes", help="Comma-separated batch sizes (one run each)."
    ),
    seeds: str = typer.Option(
        "0", "--seeds", help="Comma-separated training seeds (one run each)."
    ),
    epochs: int = typer.Option(60, "--epochs", help="Training epochs per run."),
    checkpoints: str = typer.Option(
        None,
        "--checkpoints",
        help="Epochs to checkpoint and dump (default: powers of 2 and the last).",
    ),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (momentum, Nesterov) or adamw."),
    lr: float = typer.Option(
        None, "--lr", help="Learning rate at batch size 128 (default 0.1 sgd, 1e-3 adamw)."
    ),
    lr_scaling: str = typer.Option(
        "linear",
        "--lr-scaling",
        help="How lr scales with batch size relative to 128: linear, sqrt, none.",
    ),
    momentum: float = typer.Option(0.9, "--momentum", help="SGD momentum."),
    weight_decay: float = typer.Option(
        5e-4, "--weight-decay", help="Weight decay (not on biases/norms)."
    ),
    schedule: str = typer.Option(
        "cosine", "--schedule", help="cosine, step (x0.1 at 50%/75%) or constant."
    ),
    label_smoothing: float = typer.Option(
        0.0, "--label-smoothing", help="Label smoothing of the teacher's loss."
    ),
    augment: bool = typer.Option(
        None,
        "--augment/--no-augment",
        help="Train-time shifts (and flips for 32x32x3); default on except for mlp. "
        "Dumps never augment.",
    ),
    split_seed: int = typer.Option(
        0, "--split-seed", help="Seed of the stratified train/val/test split."
    ),
    train_size: str = typer.Option(
        None, "--train-size", help="Transfer set size: fraction or count (default: the rest)."
    ),
    val_size: str = typer.Option(
        "0.2", "--val-size", help="Held-out split size: fraction or count."
    ),
    test_size: str = typer.Option(
        None,
        "--test-size",
        help="Test size: fraction or count (default 0.2, or the dataset's own test set).",
    ),
    label_noise: float = typer.Option(
        0.0, "--label-noise", help="Fraction of train labels flipped (seeded)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    devices: str = typer.Option(
        None,
        "--devices",
        help="Train runs in parallel, one process per device: cpu,cpu | cuda:0,cuda:1 | "
        "auto (every CUDA device, else the CPU once). Overrides --device.",
    ),
    from_checkpoints: str = typer.Option(
        None,
        "--from-checkpoints",
        help="Glob of existing state-dict .pt files to dump instead of training (needs --model).",
    ),
    run: str = typer.Option("imported", "--run", help="Run name for --from-checkpoints."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace output with a different configuration."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the runs (or the files written) as JSON on stdout."
    ),
) -> None:
    """Train a teacher grid (batch sizes x seeds) and dump every split's logits at each checkpoint.

    Re-running the same command skips finished checkpoints and resumes interrupted runs.
    """
    _need_torch()
    from kdlens.harness.dump import dump, dump_checkpoints, summarize_runs
    from kdlens.harness.train import DumpConfig

    sizes = {
        "train_size": _size(train_size, "train"),
        "val_size": _size(val_size, "val"),
        "test_size": _size(test_size, "test"),
    }
    hid = _ints(hidden, "hidden") or ()
    if from_checkpoints:
        with RichReporter(0, quiet or as_json, cli_flags(dump_cmd)) as rep:
            files = dump_checkpoints(
                from_checkpoints,
                out,
                model=model,
                dataset=dataset,
                run=run,
                hidden=hid,
                shortcut=shortcut,
                split_seed=split_seed,
                device=device,
                overwrite=overwrite,
                reporter=rep,
                **sizes,  # type: ignore[arg-type]
            )
        if as_json:
            typer.echo(json.dumps({"store": out, "run": run, "files": [str(f) for f in files]}))
        elif not quiet:
            say(f"wrote {len(files)} checkpoint file(s) under {out}/{run}")
        return
    cfg = DumpConfig(
        dataset=dataset,
        model=model,
        hidden=hid,
        shortcut=shortcut,
        batch_sizes=_ints(batch_sizes, "batch-sizes") or (),
        seeds=_ints(seeds, "seeds") or (),
        epochs=epochs,
        checkpoints=_ints(checkpoints, "checkpoints"),
        optimizer=optimizer,
        lr=lr,
        lr_scaling=lr_scaling,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        label_smoothing=label_smoothing,
        augment=augment,
        split_seed=split_seed,
        label_noise=label_noise,
        device=device,
        devices=devices,
        **sizes,  # type: ignore[arg-type]
    )
    cfg.validate()
    total_runs = len(cfg.batch_sizes) * len(cfg.seeds)
    with RichReporter(total_runs, quiet or as_json, cli_flags(dump_cmd)) as rep:
        results = dump(out, cfg, overwrite=overwrite, reporter=rep)
    _show_dump(summarize_runs(results), out, quiet=quiet, as_json=as_json)


def _show_dump(df: Any, out: str, *, quiet: bool, as_json: bool) -> None:
    """The runs table and the dump's cost, as text or JSON (one figure, one label)."""
    from rich.table import Table

    from kdlens.harness.reporting import dump_cost_line

    tot_t, tot_d = float(df["train_seconds"].sum()), float(df["dump_seconds"].sum())
    tot_w = float(df["dump_worker_seconds"].sum())
    cost = dump_cost_line(tot_t, tot_d, tot_w)
    if as_json:
        rows = json_rows(df)
        doc = {
            "store": out,
            "runs": rows,
            "train_seconds": tot_t,
            "dump_wait_seconds": tot_d,
            "dump_work_seconds": tot_w,
            "summary": cost,
        }
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    if quiet:
        say(cost)
        return
    t = Table(title=title(f"kdlens dump -> {out}"))
    for c in ("run", "status", "ckpts", "val acc", "train s", "dump cost"):
        t.add_column(c, justify="left" if c in ("run", "status") else "right", no_wrap=c == "run")
    for r in df.iter_rows(named=True):
        wait = r["dump_overhead"]
        t.add_row(
            cell(r["run"]),
            cell(r["status"]),
            str(r["checkpoints"]),
            "-" if r["final_val_acc"] is None else f"{r['final_val_acc']:.4f}",
            f"{r['train_seconds']:.2f}",
            "-" if wait is None or wait != wait else f"{100 * wait:.2f} %",
        )
    show(t)
    say(cost)
    say(f"store: {out}")


@app.command("distill")
@handle_errors(
    flags={
        "model": "--student",  # the only model distill builds
        **{
            f"student.{field}": "--" + opt.replace("_", "-")
            for opt, field in STUDENT_OPTIONS.items()
        },
    }
)
def distill_cmd(
    store: str = typer.Argument(..., help="The teacher logits store (file, directory or glob)."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="Teacher checkpoint id, e.g. ep008."),
    run: str = typer.Option(
        None, "--run", help="Teacher run (default: every run with that checkpoint)."
    ),
    all_checkpoints: bool = typer.Option(
        False, "--all-checkpoints", help="Distill from every (run, checkpoint)."
    ),
    student: str = typer.Option(
        "mlp", "--student", help="Student model (mlp, or any --model name)."
    ),
    student_hidden: str = typer.Option(
        "24", "--student-hidden", help="Hidden sizes of the mlp student."
    ),
    student_epochs: int = typer.Option(200, "--student-epochs", help="Student training epochs."),
    student_lr: float = typer.Option(1e-2, "--student-lr", help="Student AdamW learning rate."),
    student_batch_size: int = typer.Option(0, "--student-batch-size", help="0 = full batch."),
    temperature: float = typer.Option(
        4.0, "--temperature", "-T", help="Distillation temperature T."
    ),
    alpha: float = typer.Option(
        0.9, "--alpha", help="Weight of the KD term; 1 - alpha weighs the label CE."
    ),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated student seeds."),
    plain: bool = typer.Option(
        False, "--plain", help="Train the same students with no teacher (alpha = 0)."
    ),
    dataset: str = typer.Option(
        None, "--dataset", help="Dataset spec when the store does not record one."
    ),
    out: str = typer.Option(
        "students", "--out", "-o", help="Output directory (results.parquet, logits/)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the results table."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the results (one row per student) as JSON on stdout."
    ),
) -> None:
    """Train small students offline from STORED teacher logits and report their test accuracy."""
    _need_torch()
    from rich.table import Table

    from kdlens.cli._reporters import StudentsProgress
    from kdlens.harness.distill import StudentConfig, distill

    sc = StudentConfig(
        model=student,
        hidden=_ints(student_hidden, "student-hidden") or (),
        epochs=student_epochs,
        lr=student_lr,
        batch_size=student_batch_size,
    )
    with StudentsProgress(quiet or as_json) as rep:
        df = distill(
            store,
            out,
            checkpoint=checkpoint,
            run=run,
            all_checkpoints=all_checkpoints,
            temperature=temperature,
            alpha=alpha,
            seeds=_ints(seeds, "seeds") or (),
            plain=plain,
            student=sc,
            dataset=dataset,
            device=device,
            reporter=rep,
        )
    if as_json:
        rows = json_rows(df)
        doc = {"results": f"{out}/results.parquet", "logits": f"{out}/logits/", "students": rows}
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    t = Table(
        title=title(
            f"student test accuracy ({sc.model}, T={temperature:g}, "
            f"alpha={0.0 if plain else alpha:g})"
        )
    )
    for c in ("teacher", "ckpt", "epoch", "bs", "seed", "teacher acc", "student acc"):
        t.add_column(
            c, justify="left" if c in ("teacher", "ckpt") else "right", no_wrap=c == "teacher"
        )
    for r in df.iter_rows(named=True):
        t.add_row(
            cell(r["run"] or "(none)"),
            cell(r["checkpoint"] or "-"),
            _s(r["epoch"]),
            _s(r["batch_size"]),
            str(r["seed"]),
            "-"
            if r["teacher_test_acc"] != r["teacher_test_acc"]
            else f"{r['teacher_test_acc']:.4f}",
            f"{r['student_test_acc']:.4f}",
        )
    show(t)
    say(f"results: {out}/results.parquet; student logits: {out}/logits/")


def _s(v: object) -> str:
    return "-" if v is None else str(v)
