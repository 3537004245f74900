"""Validate `kdlens recommend` against real students.

For one benchmark (dataset + teacher grid) this script

1. trains the teacher grid with the harness (:func:`kdlens.harness.dump.dump`):
   batch sizes x checkpoints, logits of train (transfer) / val / test per checkpoint;
2. distills several student seeds from every checkpoint, plus plain students with
   no teacher (:func:`kdlens.harness.distill.distill`);
3. scores every checkpoint with kdlens (:func:`kdlens.recommend.rank.recommend`) and with
   the baselines a user would otherwise use (highest held-out accuracy, lowest
   held-out NLL after a temperature fit, the last checkpoint, the highest entropy),
   plus a small grid of candidate settings of the kdlens score (T, w);
4. reports Spearman / Kendall against mean student test accuracy, the regret of
   each score's top pick (percentage points), the distillation gain over plain
   students, the seed-to-seed noise and the spread across checkpoints.

5. selects the ensemble teacher ``recommend --ensemble`` would recommend
   (:func:`kdlens.select_ensemble`), writes it as a store (:func:`kdlens.write_ensemble`),
   distills the same student seeds from it and reports its students' accuracy minus the
   best single checkpoint's (and minus kdlens's single pick, and minus plain students),
   with a paired seed-bootstrap interval (``examples/validate_mixture.py``).

Outputs under ``--out``: ``teachers/`` (the store), ``students/results.parquet``,
``checkpoints.parquet`` (one row per checkpoint: signals, scores, student accuracy),
``scores.parquet`` (one row per score), ``mixture/`` and ``students-mixture/`` (the
ensemble teacher and its students), ``mixture.parquet`` (the comparisons), ``run.json``
and ``validation.md``; with ``--sharpen`` also ``mixture-sharp/``,
``students-mixture-sharp/`` and ``mixture-sharp.parquet`` (the sharpness-matched mixture of
``examples/validate_mixture.py``).

    python examples/validate_recommend.py digits --out runs/validate-digits
    python examples/validate_recommend.py mnist  --out runs/validate-mnist
    python examples/validate_recommend.py mnist10k --variant noisy --out runs/v-mnist10k-noisy
    python examples/validate_recommend.py cifar10 --variant gap --smoke --out /tmp/v-smoke

The real-size benchmarks (``mnist10k``, ``mnist60k``, ``emnist``, ``cifar10``; variants
``clean``, ``noisy``, ``gap``) and the declared fit set are in
``examples/validate_benchmarks.py``; ``--smoke`` runs one at toy size in seconds.

Reruns reuse finished teachers and students (delete ``--out`` to start over); a rerun with
more ``--seeds`` trains only the new seeds' students and reports on the seeds it was given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import validate_benchmarks as bench
import validate_mixture as mixture

from kdlens._internal.defaults import ENSEMBLE_MAX_MEMBERS
from kdlens.harness.distill import StudentConfig, distill
from kdlens.harness.dump import dump
from kdlens.harness.train import DumpConfig
from kdlens.recommend.rank import (
    DEFAULT_COLLAPSE_WEIGHT,
    DEFAULT_TEMPERATURE,
    recommend,
    score_checkpoints,
)
from kdlens.recommend.students import evaluate_scores, student_table

REPO = Path(__file__).resolve().parents[1]
EXTERNAL = Path(os.environ.get("KDLENS_EXTERNAL", REPO.parent / "shared" / "external"))
MNIST = EXTERNAL / "mnist"

#: Candidate settings of the kdlens score explored on every benchmark (reported, not hidden).
TEMPERATURES = (1.0, 4.0)
#: Family "nll": -(held-out NLL after a T fit + w * collapse);
#: family "acc": held-out accuracy - w * collapse.
NLL_WEIGHTS = (0.05, 0.1, 0.2, 0.5)
ACC_WEIGHTS = (0.01, 0.02, 0.05)
BASELINES = ("baseline_accuracy", "baseline_nll", "baseline_last", "baseline_entropy")


OLD_BENCHMARKS = ("digits", "mnist", "mnist-cnn", "mnist-cnn16")


def benchmark(
    name: str, *, label_noise: float | None, variant: str = "noisy", smoke: bool = False
) -> tuple[str, DumpConfig, StudentConfig]:
    """(label, teacher grid, student) of a benchmark; the first four are the original toys."""
    if name in bench.BENCHMARKS:
        if label_noise is not None:
            raise SystemExit("--label-noise is set by --variant on the real-size benchmarks")
        cfg, sc = bench.real_size(name, variant)
        if smoke:
            cfg, sc = bench.smoke(name, cfg, sc)
        return f"{name}-{variant}", cfg, sc
    if smoke:
        raise SystemExit(f"--smoke applies to {', '.join(bench.BENCHMARKS)} only")
    cfg, sc = original(name, label_noise=0.2 if label_noise is None else label_noise)
    return name, cfg, sc


def original(name: str, *, label_noise: float) -> tuple[DumpConfig, StudentConfig]:
    """The teacher grid and the student of each original benchmark (a 2-core CPU, minutes)."""
    if name == "digits":
        return DumpConfig(
            dataset="digits",
            model="mlp",
            hidden=(256, 128),
            batch_sizes=(16, 64, 256),
            seeds=(0,),
            epochs=64,
            checkpoints=(1, 2, 4, 8, 16, 32, 64),
            augment=False,
            label_noise=label_noise,
            val_size=0.2,
            test_size=0.3,
            device="cpu",
        ), StudentConfig(model="mlp", hidden=(16,), epochs=200, lr=1e-2)
    if name == "mnist":
        spec = f"idx:{MNIST / 't10k-images-idx3-ubyte.gz'},{MNIST / 't10k-labels-idx1-ubyte.gz'}"
        return DumpConfig(
            dataset=spec,
            model="mlp",
            hidden=(256, 128),
            batch_sizes=(16, 64, 256),
            seeds=(0,),
            epochs=32,
            checkpoints=(1, 2, 4, 8, 16, 32),
            augment=False,
            label_noise=label_noise,
            train_size=3000,
            val_size=2000,
            test_size=5000,
            device="cpu",
        ), StudentConfig(model="mlp", hidden=(24,), epochs=200, lr=1e-2)
    if name == "mnist-cnn":
        spec = f"idx:{MNIST / 't10k-images-idx3-ubyte.gz'},{MNIST / 't10k-labels-idx1-ubyte.gz'}"
        return DumpConfig(
            dataset=spec,
            model=f"{Path(__file__).resolve()}:tiny_cnn",
            lr=0.2,
            lr_scaling="sqrt",
            batch_sizes=(16, 64, 256),
            seeds=(0,),
            epochs=32,
            checkpoints=(1, 2, 4, 8, 16, 32),
            augment=False,
            label_noise=label_noise,
            train_size=3000,
            val_size=2000,
            test_size=5000,
            device="cpu",
        ), StudentConfig(model="mlp", hidden=(24,), epochs=200, lr=1e-2)
    if name == "mnist-cnn16":
        cfg, sc = original("mnist-cnn", label_noise=label_noise)
        cfg.model = f"{Path(__file__).resolve()}:small_cnn16"
        return cfg, sc
    raise SystemExit(f"unknown benchmark {name!r}: choose digits, mnist, mnist-cnn or mnist-cnn16")


def tiny_cnn(num_classes: int, input_shape: tuple[int, ...] = (1, 28, 28)) -> torch.nn.Module:
    """The harness's SmallCNN at width 8 (8/16/32 channels): a convnet teacher a CPU can train."""
    from kdlens.harness.models import SmallCNN

    return SmallCNN(input_shape[0], num_classes, width=8)


def small_cnn16(num_classes: int, input_shape: tuple[int, ...] = (1, 28, 28)) -> torch.nn.Module:
    """The harness's SmallCNN at width 16 (16/32/64 channels)."""
    from kdlens.harness.models import SmallCNN

    return SmallCNN(input_shape[0], num_classes, width=16)


def teachers_and_students(
    out: Path, cfg: DumpConfig, sc: StudentConfig, *, seeds: tuple[int, ...], t: float, a: float
) -> tuple[pl.DataFrame, float, float]:
    """Dump the grid, then students of every checkpoint and plain students (reused on rerun)."""
    t0 = time.perf_counter()
    dump(out / "teachers", cfg)
    t_teach = time.perf_counter() - t0
    print(f"[{out.name}] teachers done in {t_teach:.0f}s", flush=True)
    res_path = out / "students" / "results.parquet"
    store = str(out / "teachers")
    t1 = time.perf_counter()
    # Only the seeds without students yet: a rerun with more --seeds adds to the results.
    if todo := mixture.missing_seeds(res_path, seeds):
        kw = {"seeds": todo, "student": sc}
        distill(store, out / "students", all_checkpoints=True, temperature=t, alpha=a, **kw)
    if todo := mixture.missing_seeds(res_path, seeds, plain=True):
        distill(store, out / "students", plain=True, seeds=todo, student=sc)
    t_stud = time.perf_counter() - t1
    print(f"[{out.name}] students done in {t_stud:.0f}s", flush=True)
    return mixture.read_students(res_path, seeds), t_teach, t_stud


def score_table(store: str, students: pl.DataFrame, n_bootstrap: int) -> tuple[pl.DataFrame, Any]:
    """One row per checkpoint: kdlens's score, the baselines, the candidates, student accuracy."""
    rec = recommend(store, n_bootstrap=n_bootstrap, seed=0)
    table = rec.ranking.select(
        "run",
        "checkpoint",
        "batch_size",
        "epoch",
        "accuracy_heldout",
        "nll_fit_heldout",
        "entropy_heldout",
        "dark_mass_heldout",
        "dark_mass_transfer",
        "collapse",
        "similarity_information_transfer",
        "oemc_share_transfer",
        "probability_best",
        *BASELINES,
        pl.col("score").alias("kdlens"),
    )
    for t in TEMPERATURES:
        sig = recommend(store, n_bootstrap=0, temperature=t).ranking
        extra = sig.select("run", "checkpoint")
        for w in NLL_WEIGHTS:
            extra = extra.with_columns(
                pl.Series(f"nll_T{t:g}_w{w:g}", score_checkpoints(sig, collapse_weight=w))
            )
        for w in ACC_WEIGHTS:
            acc = sig["accuracy_heldout"].to_numpy() - w * np.nan_to_num(sig["collapse"].to_numpy())
            extra = extra.with_columns(pl.Series(f"acc_T{t:g}_w{w:g}", acc))
        table = table.join(extra, on=["run", "checkpoint"], how="left")
    st = student_table(students.filter(~pl.col("plain")), accuracy="student_test_acc")
    table = table.join(st, on=["run", "checkpoint"], how="inner").sort("batch_size", "epoch")
    return table, rec


def evaluate(
    table: pl.DataFrame, students: pl.DataFrame, label: str, role: str, n_seeds: int
) -> pl.DataFrame:
    """Spearman / Kendall / regret of every score, on the whole grid and its top half."""
    plain = students.filter(pl.col("plain"))["student_test_acc"]
    plain_mean = float(plain.mean())  # type: ignore[arg-type]
    cands = [c for c in table.columns if c.startswith(("nll_T", "acc_T"))]
    ev = evaluate_scores(table, scores=["kdlens", *BASELINES, *cands])
    # The full-grid correlation is dominated by untrained vs trained teachers; the choice a
    # user faces is among good ones: the half of the grid with the best teacher accuracy.
    good = table.filter(pl.col("accuracy_heldout") >= pl.col("accuracy_heldout").median())
    top = evaluate_scores(good, scores=["kdlens", *BASELINES, *cands]).select(
        "score",
        pl.col("spearman").alias("spearman_top_half"),
        pl.col("kendall").alias("kendall_top_half"),
    )
    ev = ev.join(top, on="score", how="left", maintain_order="left")
    seed_noise = float(table["student_accuracy_std"].mean())  # type: ignore[arg-type]
    means = table["student_accuracy_mean"]
    return ev.with_columns(
        benchmark=pl.lit(label),
        role=pl.lit(role),
        gain_at_pick_pp=100 * (pl.col("pick_student_accuracy") - plain_mean),
        plain_student_accuracy=pl.lit(plain_mean),
        best_student_accuracy=pl.lit(float(means.max())),  # type: ignore[arg-type]
        seed_noise_pp=pl.lit(100 * seed_noise),
        spread_pp=pl.lit(100 * (float(means.max()) - float(means.min()))),  # type: ignore[arg-type]
        spread_std_pp=pl.lit(100 * float(means.std())),  # type: ignore[arg-type]
        n_checkpoints=pl.lit(table.height),
        n_seeds=pl.lit(n_seeds),
    )


def run(
    name: str,
    out: Path,
    *,
    seeds: tuple[int, ...],
    label_noise: float | None,
    temperature: float,
    alpha: float,
    n_bootstrap: int,
    role: str | None,
    teacher_lr: float | None = None,
    lr_scaling: str | None = None,
    variant: str = "noisy",
    smoke: bool = False,
    max_members: int = ENSEMBLE_MAX_MEMBERS,
    sharpen: bool = False,
) -> pl.DataFrame:
    torch.set_num_threads(1)  # the machine is shared; students are tiny anyway
    label, cfg, sc = benchmark(name, label_noise=label_noise, variant=variant, smoke=smoke)
    role = role or bench.role(label)
    if teacher_lr is not None:
        cfg.lr = teacher_lr
    if lr_scaling is not None:
        cfg.lr_scaling = lr_scaling
    out.mkdir(parents=True, exist_ok=True)
    students, t_teach, t_stud = teachers_and_students(
        out, cfg, sc, seeds=seeds, t=temperature, a=alpha
    )
    store = str(out / "teachers")
    table, rec = score_table(store, students, n_bootstrap)
    table.write_parquet(out / "checkpoints.parquet")
    ev = evaluate(table, students, label, role, len(seeds))
    ev.write_parquet(out / "scores.parquet")
    ens, mix = mixture.run_mixture(
        out,
        students,
        table,
        rec,
        sc=sc,
        seeds=seeds,
        temperature=temperature,
        alpha=alpha,
        max_members=max_members,
        n_bootstrap=n_bootstrap,
        smoke=smoke,
        sharpen=sharpen,
    )
    meta = {
        "benchmark": label,
        "role": role,
        "smoke": smoke,
        "dump": asdict(cfg),
        "student": asdict(sc),
        "temperature": temperature,
        "alpha": alpha,
        "seeds": list(seeds),
        "teacher_seconds": t_teach,
        "student_seconds": t_stud,
        "kdlens_defaults": {
            "temperature": DEFAULT_TEMPERATURE,
            "collapse_weight": DEFAULT_COLLAPSE_WEIGHT,
        },
        "recommended": rec.recommended
        and {k: rec.recommended[k] for k in ("run", "checkpoint", "score")},
        "reason": rec.reason,
        "advice": rec.advice,
        "ensemble": mixture.summary(ens),
        "command": " ".join(sys.argv),
    }
    (out / "run.json").write_text(json.dumps(meta, indent=2, default=str))
    text = markdown(ev, table, meta) + mixture.markdown(ens, mix)
    if sharpen and (out / "mixture-sharp.parquet").is_file():
        text += mixture.sharp_markdown(pl.read_parquet(out / "mixture-sharp.parquet"))
    (out / "validation.md").write_text(text)
    print(text, flush=True)
    return ev


def markdown(ev: pl.DataFrame, table: pl.DataFrame, meta: dict) -> str:
    r0 = ev.row(0, named=True)
    lines = [
        f"### {meta['benchmark']} ({meta['role']})",
        "",
        f"{table.height} checkpoints x {r0['n_seeds']} student seeds; plain students "
        f"{100 * r0['plain_student_accuracy']:.2f}%, best checkpoint's students "
        f"{100 * r0['best_student_accuracy']:.2f}%; seed noise "
        "(std across seeds, mean over checkpoints) "
        f"{r0['seed_noise_pp']:.2f} pp; spread of mean student accuracy across checkpoints "
        f"{r0['spread_pp']:.2f} pp (std {r0['spread_std_pp']:.2f} pp).",
        "",
        "| score | Spearman | Kendall | Spearman (top half) | regret (pp) "
        "| gain over plain at pick (pp) | pick |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in ev.iter_rows(named=True):
        lines.append(
            f"| {r['score']} | {r['spearman']:.3f} | {r['kendall']:.3f} | "
            f"{r['spearman_top_half']:.3f} | {r['regret_pp']:.2f} | "
            f"{r['gain_at_pick_pp']:.2f} | {r['pick_run']}/{r['pick_checkpoint']} |"
        )
    lines += [
        "",
        "Per checkpoint (mean +- std student test accuracy over seeds):",
        "",
        "| run | epoch | teacher held-out acc | held-out NLL (T fit) | dark mass transfer (T=4) | "
        "collapse (nats) | kdlens score | P(best) | student acc |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table.iter_rows(named=True):
        lines.append(
            f"| {r['run']} | {r['epoch']} | {100 * r['accuracy_heldout']:.2f} | "
            f"{r['nll_fit_heldout']:.3f} | "
            f"{r['dark_mass_transfer']:.3g} | {r['collapse']:.2f} | {r['kdlens']:.4f} | "
            f"{r['probability_best']:.2f} | {100 * r['student_accuracy_mean']:.2f} +- "
            f"{100 * r['student_accuracy_std']:.2f} |"
        )
    lines += ["", f"kdlens recommends: {meta['reason']}", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("benchmark", choices=[*OLD_BENCHMARKS, *bench.BENCHMARKS])
    p.add_argument("--out", type=Path, required=True, help="output directory (reused on rerun)")
    p.add_argument("--variant", default="noisy", choices=bench.VARIANTS, help="real-size only")
    p.add_argument("--smoke", action="store_true", help="toy size, seconds (checks it runs)")
    p.add_argument("--seeds", default=None, help="student seeds (default 0,1,2,3; smoke 0,1)")
    p.add_argument(
        "--label-noise", type=float, default=None, help="original benchmarks: default 0.2"
    )
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the KD term")
    p.add_argument("--bootstrap", type=int, default=None, help="replicates (default 200; smoke 20)")
    p.add_argument("--max-members", type=int, default=ENSEMBLE_MAX_MEMBERS, help="ensemble size")
    p.add_argument("--role", default=None, help="'fit' or 'held-out' (default: the declared set)")
    p.add_argument("--teacher-lr", type=float, default=None, help="teacher lr at batch size 128")
    p.add_argument("--lr-scaling", default=None, help="teacher lr scaling: linear, sqrt or none")
    p.add_argument(
        "--sharpen",
        action="store_true",
        help="also distil the mixture sharpened to the single pick's transfer dark mass",
    )
    a = p.parse_args()
    seeds = tuple(int(s) for s in (a.seeds or ("0,1" if a.smoke else "0,1,2,3")).split(","))
    run(
        a.benchmark,
        a.out,
        seeds=seeds,
        label_noise=a.label_noise,
        temperature=a.temperature,
        alpha=a.alpha,
        n_bootstrap=a.bootstrap if a.bootstrap is not None else (20 if a.smoke else 200),
        role=a.role,
        teacher_lr=a.teacher_lr,
        lr_scaling=a.lr_scaling,
        variant=a.variant,
        smoke=a.smoke,
        max_members=3 if a.smoke else a.max_members,
        sharpen=a.sharpen,
    )


if __name__ == "__main__":
    main()
