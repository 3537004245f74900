"""The ensemble-teacher half of ``examples/validate_recommend.py``.

Selects the mixture ``kdlens recommend --ensemble`` would recommend
(:func:`kdlens.select_ensemble`, its defaults: greedy selection with replacement on ``val``,
held-out NLL after a temperature fit), writes it as a store (:func:`kdlens.write_ensemble`)
and distills the same student seeds from it. When the selection keeps one checkpoint the
"mixture" is that checkpoint and its students are reused.

The comparisons are paired by student seed (seed ``s`` starts every student from the same
initial weights), with a percentile bootstrap over seeds (:func:`seed_bootstrap`):

- mixture minus the **best single checkpoint of the whole sweep** (the highest mean student
  accuracy over seeds: an oracle no score can beat, so the difference is conservative);
- mixture minus **kdlens's single-checkpoint pick** (``recommend``'s top);
- mixture minus **plain students** (no teacher).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kdlens.harness.distill import StudentConfig, distill
from kdlens.recommend.ensemble import EnsembleRecommendation, select_ensemble
from kdlens.store.mixture import write_ensemble

#: Bootstrap replicates of the seed bootstrap and its interval (percent).
N_SEED_BOOTSTRAP = 10_000
INTERVAL = (2.5, 97.5)


def seed_bootstrap(diff: np.ndarray, *, n: int = N_SEED_BOOTSTRAP, seed: int = 0) -> tuple:
    """Mean of per-seed differences and its percentile interval, resampling seeds."""
    d = np.asarray(diff, np.float64)
    rng = np.random.default_rng(seed)
    reps = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    low, high = np.percentile(reps, INTERVAL)
    return float(d.mean()), float(low), float(high)


def per_seed(students: pl.DataFrame) -> dict[int, float]:
    seeds, acc = students["seed"].to_list(), students["student_test_acc"].to_list()
    return dict(zip(seeds, acc, strict=True))


def mixture_students(
    out: Path,
    ens: EnsembleRecommendation,
    students: pl.DataFrame,
    *,
    sc: StudentConfig,
    seeds: tuple[int, ...],
    temperature: float,
    alpha: float,
    reuse_single: bool = True,
) -> pl.DataFrame:
    """Students of the mixture (reused on rerun; a one-member mixture reuses its checkpoint's
    students unless ``reuse_single`` is False, as under ``--smoke``, which runs every step)."""
    if ens.n_members == 1 and reuse_single:
        r, c = ens.members[0]
        return students.filter((pl.col("run") == r) & (pl.col("checkpoint") == c))
    res = out / "students-mixture" / "results.parquet"
    if not res.is_file():
        write_ensemble(
            out / "teachers",
            ens.members,
            out / "mixture",
            weights=ens.weights,
            rule=ens.rule,
            temperature=ens.temperature,
            overwrite=True,
        )
        distill(
            out / "mixture",
            out / "students-mixture",
            all_checkpoints=True,
            temperature=temperature,
            alpha=alpha,
            seeds=seeds,
            student=sc,
        )
    return pl.read_parquet(res)


def run_mixture(
    out: Path,
    students: pl.DataFrame,
    table: pl.DataFrame,
    rec: Any,
    *,
    sc: StudentConfig,
    seeds: tuple[int, ...],
    temperature: float,
    alpha: float,
    max_members: int,
    n_bootstrap: int,
    smoke: bool = False,
) -> tuple[EnsembleRecommendation, pl.DataFrame]:
    """Select, write and distill the mixture; one row per comparison (``mixture.parquet``)."""
    ens = select_ensemble(
        out / "teachers", max_members=max_members, temperature=temperature, n_bootstrap=n_bootstrap
    )
    if not ens.ok:
        return ens, pl.DataFrame()
    mix = per_seed(
        mixture_students(
            out,
            ens,
            students,
            sc=sc,
            seeds=seeds,
            temperature=temperature,
            alpha=alpha,
            reuse_single=not smoke,
        )
    )
    kd = students.filter(~pl.col("plain"))
    best = table.sort("student_accuracy_mean", descending=True).row(0, named=True)
    refs: list[tuple[str, str, pl.DataFrame]] = [
        (
            "best single checkpoint",
            f"{best['run']}/{best['checkpoint']}",
            kd.filter(
                (pl.col("run") == best["run"]) & (pl.col("checkpoint") == best["checkpoint"])
            ),
        ),
    ]
    if rec.recommended:
        r, c = rec.recommended["run"], rec.recommended["checkpoint"]
        refs.append(
            (
                "kdlens single pick",
                f"{r}/{c}",
                kd.filter((pl.col("run") == r) & (pl.col("checkpoint") == c)),
            )
        )
    refs.append(("plain students", "plain", students.filter(pl.col("plain"))))
    df = compare(mix, refs, ens)
    df.write_parquet(out / "mixture.parquet")
    return ens, df


def compare(
    mix: dict[int, float], refs: list[tuple[str, str, pl.DataFrame]], ens: EnsembleRecommendation
) -> pl.DataFrame:
    """Mixture students minus each reference's, paired by seed, with the seed bootstrap."""
    members = ", ".join(f"{m} x{w:.2f}" for m, w in zip(ens.member_names, ens.weights, strict=True))
    rows = []
    for versus, name, ref_df in refs:
        ref = per_seed(ref_df)
        common = sorted(set(mix) & set(ref))
        diff, low, high = seed_bootstrap(np.array([100 * (mix[s] - ref[s]) for s in common]))
        rows.append(
            {
                "versus": versus,
                "reference": name,
                "mixture_accuracy": float(np.mean([mix[s] for s in common])),
                "reference_accuracy": float(np.mean([ref[s] for s in common])),
                "difference_pp": diff,
                "ci_low_pp": low,
                "ci_high_pp": high,
                "n_seeds": len(common),
                "n_members": ens.n_members,
                "members": members,
                "rule": ens.rule,
            }
        )
    return pl.DataFrame(rows)


def summary(ens: EnsembleRecommendation) -> dict[str, Any]:
    """What run.json records of the selection."""
    keep = ("ok", "reason", "rule", "member_names", "weights", "best_single", "statement")
    d = ens.to_dict()
    return {k: d.get(k) for k in keep} | {"comparison": d.get("comparison")}


def markdown(ens: EnsembleRecommendation, df: pl.DataFrame) -> str:
    if not ens.ok:
        return f"\nNo ensemble teacher: {ens.reason}\n"
    lines = [
        "",
        f"Ensemble teacher ({ens.rule}, {ens.n_members} distinct members): "
        + ", ".join(f"{m} x{w:.2f}" for m, w in zip(ens.member_names, ens.weights, strict=True)),
        f"Selection says: {ens.statement}",
        "",
        "| held-out split | measure | best single (selection) | mixture | difference [95 % CI] |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for r in ens.comparison.iter_rows(named=True):
        lines.append(
            f"| {r['split']} | {r['measure']} | {r['single']:.4f} | {r['mixture']:.4f} | "
            f"{r['difference']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] |"
        )
    lines += [
        "",
        "Students of the mixture minus students of a reference (test accuracy, pp; paired by "
        "seed, 95 % seed-bootstrap interval). The first row is the mixture minus best single "
        "checkpoint of the whole sweep:",
        "",
        "| versus | reference | mixture students | reference students | difference (pp) "
        "| 95 % interval (pp) | seeds |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in df.iter_rows(named=True):
        lines.append(
            f"| {r['versus']} | {r['reference']} | {100 * r['mixture_accuracy']:.2f} | "
            f"{100 * r['reference_accuracy']:.2f} | {r['difference_pp']:+.2f} | "
            f"[{r['ci_low_pp']:+.2f}, {r['ci_high_pp']:+.2f}] | {r['n_seeds']} |"
        )
    return "\n".join(lines) + "\n"
