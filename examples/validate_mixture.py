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

``--sharpen`` (declared 2026-12-02, fourth session, before any run) adds a second mixture
teacher: the same mixture with its logits ``log p`` scaled by the factor ``c`` at which its
mean transfer-split dark mass at the distillation T equals that of kdlens's single pick
(:func:`matched_factor`; no free parameter), distilled to the same seeds at the same T and
alpha. It separates "a better teacher" from "a softer teacher": averaging probabilities
spreads them, and the selected mixtures were softer than the best single checkpoint on every
real-size run. Its comparisons go to ``mixture-sharp.parquet``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.optimize import brentq

from kdlens import dark_mass
from kdlens.harness.distill import StudentConfig, distill
from kdlens.recommend.ensemble import EnsembleRecommendation, select_ensemble
from kdlens.store.mixture import write_ensemble
from kdlens.store.reader import open_store
from kdlens.store.writer import CheckpointWriter

#: The split the students are distilled on (the harness's transfer split).
TRANSFER = "train"

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


def missing_seeds(results: Path, seeds: tuple[int, ...], *, plain: bool = False) -> tuple[int, ...]:
    """The ``seeds`` without a student (KD, or ``plain``) in ``results`` yet: a rerun with
    more seeds trains only those (``distill`` merges its rows by key)."""
    if not results.is_file():
        return seeds
    done = set(pl.read_parquet(results).filter(pl.col("plain") == plain)["seed"].to_list())
    return tuple(s for s in seeds if s not in done)


def read_students(results: Path, seeds: tuple[int, ...]) -> pl.DataFrame:
    """The students of ``seeds`` (a results file may also hold other seeds' rows)."""
    return pl.read_parquet(results).filter(pl.col("seed").is_in(list(seeds)))


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
    if todo := missing_seeds(res, seeds):
        distill(
            out / "mixture",
            out / "students-mixture",
            all_checkpoints=True,
            temperature=temperature,
            alpha=alpha,
            seeds=todo,
            student=sc,
        )
    return read_students(res, seeds)


def matched_factor(
    teachers: Path, single: tuple[str, str], mixture: Path, *, temperature: float
) -> tuple[float, float, float]:
    """``(c, single's dark mass, mixture's dark mass)``: the factor ``c`` with
    ``mean dark_mass(c * z_mix, T) = mean dark_mass(z_single, T)`` on the transfer split.

    Scaling the logits by ``c`` is distilling at ``T / c``; the mean dark mass falls as ``c``
    grows (the soft labels sharpen), so the root is bracketed in [1/16, 16] whenever the
    target lies between the mixture's dark masses at those ends.
    """
    b = open_store(teachers).load(*single, TRANSFER)
    target = float(dark_mass(b.logits, b.labels, temperature=temperature).mean())
    mst = open_store(mixture)
    m = mst.load(*mst.keys()[0], TRANSFER)
    z = m.logits.astype(np.float64)

    def gap(c: float) -> float:
        return float(dark_mass(z * c, m.labels, temperature=temperature).mean()) - target

    mixed = gap(1.0) + target
    return float(brentq(gap, 1 / 16, 16, xtol=1e-6)), target, mixed


def write_scaled(src: Path, dst: Path, factor: float) -> None:
    """The one-checkpoint store ``src`` with every split's logits times ``factor``."""
    st = open_store(src)
    ((run, ck),) = st.keys()
    meta = st.checkpoint_metadata(run, ck)
    config = dict(meta.get("config") or {}) | {"sharpen": factor}
    dst.mkdir(parents=True, exist_ok=True)
    with CheckpointWriter(
        dst / f"{run}-{ck}-sharp.parquet",
        run=run,
        checkpoint=f"{ck}-sharp",
        num_classes=st.num_classes,
        class_names=st.class_names,
        dataset=meta.get("dataset"),
        model=f"{meta.get('model')} sharpened x{factor:.4f}",
        config=config,
        overwrite=True,
    ) as w:
        for split in st.splits():
            b = st.load(run, ck, split)
            lab = None if (b.labels < 0).all() else b.labels
            z = b.logits * np.float32(factor)
            w.write(z, split=split, example_ids=b.example_ids, labels=lab)


def sharpened_students(
    out: Path,
    ens: EnsembleRecommendation,
    single: tuple[str, str],
    *,
    sc: StudentConfig,
    seeds: tuple[int, ...],
    temperature: float,
    alpha: float,
) -> tuple[pl.DataFrame, dict[str, float]]:
    """Students of the sharpness-matched mixture (``out/mixture`` must exist)."""
    c, target, mixed = matched_factor(
        out / "teachers", single, out / "mixture", temperature=temperature
    )
    info = {"factor": c, "dark_mass_single": target, "dark_mass_mixture": mixed}
    res = out / "students-mixture-sharp" / "results.parquet"
    if not res.is_file():
        write_scaled(out / "mixture", out / "mixture-sharp", c)
    if todo := missing_seeds(res, seeds):
        distill(
            out / "mixture-sharp",
            out / "students-mixture-sharp",
            all_checkpoints=True,
            temperature=temperature,
            alpha=alpha,
            seeds=todo,
            student=sc,
        )
    return read_students(res, seeds), info


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
    sharpen: bool = False,
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
    if sharpen and ens.n_members > 1 and rec.recommended:
        single = (rec.recommended["run"], rec.recommended["checkpoint"])
        sharp_df, info = sharpened_students(
            out, ens, single, sc=sc, seeds=seeds, temperature=temperature, alpha=alpha
        )
        mix_ref = ("unsharpened mixture", "mixture", _as_students(mix))
        sharp = compare(per_seed(sharp_df), [*refs, mix_ref], ens)
        sharp = sharp.with_columns(**{k: pl.lit(v) for k, v in info.items()})
        sharp.write_parquet(out / "mixture-sharp.parquet")
    return ens, df


def _as_students(acc: dict[int, float]) -> pl.DataFrame:
    return pl.DataFrame({"seed": list(acc), "student_test_acc": list(acc.values())})


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
    ]
    return "\n".join(lines + _students_table(df, "mixture students")) + "\n"


def sharp_markdown(df: pl.DataFrame) -> str:
    """The sharpness-matched mixture's students against the references (``--sharpen``)."""
    r0 = df.row(0, named=True)
    lines = [
        "",
        f"Sharpness-matched mixture: logits x{r0['factor']:.3f}, transfer dark mass "
        f"{r0['dark_mass_mixture']:.3f} -> {r0['dark_mass_single']:.3f} (kdlens's single pick's).",
    ]
    return "\n".join(lines + _students_table(df, "sharpened-mixture students")) + "\n"


def _students_table(df: pl.DataFrame, teacher: str) -> list[str]:
    lines = [
        "",
        f"| versus | reference | {teacher} | reference students | difference (pp) "
        "| 95 % interval (pp) | seeds |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in df.iter_rows(named=True):
        lines.append(
            f"| {r['versus']} | {r['reference']} | {100 * r['mixture_accuracy']:.2f} | "
            f"{100 * r['reference_accuracy']:.2f} | {r['difference_pp']:+.2f} | "
            f"[{r['ci_low_pp']:+.2f}, {r['ci_high_pp']:+.2f}] | {r['n_seeds']} |"
        )
    return lines
