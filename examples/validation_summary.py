"""One table of finished real-size validation runs (``validate_recommend.py`` outputs).

Reads each run directory's ``run.json``, ``scores.parquet`` and ``mixture.parquet`` and
prints, per benchmark, the numbers the issue's goals are checked against: whether
distillation beats plain students beyond the seed noise, kdlens's single-checkpoint regret,
and the ensemble teacher's students against the best single checkpoint of the whole sweep.

    python examples/validation_summary.py runs/kdv/mnist10k-noisy runs/kdv/mnist10k-clean
    python examples/validation_summary.py --dark-mass runs/kdv/mnist60k-noisy

``--dark-mass`` adds a second table: the dark mass (non-target probability mass) at the
distillation temperature on the transfer split of the best single checkpoint's soft labels
and of the mixture's, read with ``kdlens.analyze`` from the run's ``teachers/`` and
``mixture/`` stores: how much softer the mixture's soft labels are than the best single
checkpoint's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl


def summary_row(run: Path) -> dict[str, object]:
    """The goal-relevant figures of one finished run directory."""
    meta = json.loads((run / "run.json").read_text())
    scores = pl.read_parquet(run / "scores.parquet")
    mixture = pl.read_parquet(run / "mixture.parquet")
    k = scores.filter(pl.col("score") == "kdlens").row(0, named=True)
    best = mixture.filter(pl.col("versus") == "best single checkpoint").row(0, named=True)
    plain = mixture.filter(pl.col("versus") == "plain students").row(0, named=True)
    test_nll = next(
        (
            c
            for c in meta["ensemble"].get("comparison", [])
            if c["split"] == "test" and c["measure"] == "nll_fit"
        ),
        None,
    )
    gain = 100 * (k["best_student_accuracy"] - k["plain_student_accuracy"])
    return {
        "benchmark": meta["benchmark"],
        "role": meta["role"],
        "plain_pct": 100 * k["plain_student_accuracy"],
        "best_single_pct": 100 * k["best_student_accuracy"],
        "seed_noise_pp": k["seed_noise_pp"],
        "kd_gain_pp": gain,
        "kd_beats_plain": gain > k["seed_noise_pp"],
        "kdlens_regret_pp": k["regret_pp"],
        "kdlens_spearman": k["spearman"],
        "members": best["n_members"],
        "mixture_pct": 100 * best["mixture_accuracy"],
        "mix_minus_best_pp": best["difference_pp"],
        "mix_minus_best_ci": (best["ci_low_pp"], best["ci_high_pp"]),
        "mix_minus_plain_pp": plain["difference_pp"],
        "mix_minus_plain_ci": (plain["ci_low_pp"], plain["ci_high_pp"]),
        "test_nll_best_to_mixture": (
            (test_nll["single"], test_nll["mixture"]) if test_nll else (float("nan"),) * 2
        ),
    }


def dark_mass_row(run: Path) -> dict[str, object]:
    """Transfer-split dark mass, at the run's distillation temperature, of the best single
    checkpoint and of the mixture."""
    from kdlens import analyze

    meta = json.loads((run / "run.json").read_text())
    t = float(meta["temperature"])
    mixture = pl.read_parquet(run / "mixture.parquet")
    best = mixture.filter(pl.col("versus") == "best single checkpoint").row(0, named=True)

    def dark_masses(store: Path) -> dict[tuple[str, str], float]:
        summ = analyze(store, temperature=t, splits=["train"], n_permutations=0).summary
        rows = summ.select("run", "checkpoint", "dark_mass").rows()
        return {(r, c): float(d) for r, c, d in rows}

    teachers = dark_masses(run / "teachers")
    # A one-member selection writes no mixture store (its students are its checkpoint's).
    if best["n_members"] > 1:
        mixed = next(iter(dark_masses(run / "mixture").values()))
    else:
        mixed = teachers[_member(str(best["members"]))]
    return {
        "benchmark": meta["benchmark"],
        "temperature": t,
        "best_single": best["reference"],
        "dark_mass_best_single": teachers[_member(str(best["reference"]))],
        "members": best["n_members"],
        "dark_mass_mixture": mixed,
    }


def teacher_seed_markdown(runs: list[Path]) -> str:
    """Per teacher seed of each run with more than one: the best checkpoint by its students,
    the mixture's members from that seed, and each seed's best against the first seed's
    (student-seed-paired difference, pp, 95 % seed-bootstrap interval)."""
    from validate_mixture import read_students, seed_bootstrap

    lines = [
        "| benchmark | teacher seed | best checkpoint | its students "
        "| − the first seed's best [95 % CI] | mixture members from this seed |",
        "| --- | ---: | --- | ---: | --- | ---: |",
    ]
    for run in runs:
        meta = json.loads((run / "run.json").read_text())
        kd = read_students(run / "students" / "results.parquet", tuple(meta["seeds"]))
        kd = kd.filter(~pl.col("plain")).with_columns(
            teacher_seed=pl.col("run").str.extract(r"-seed(\d+)$").cast(pl.Int64)
        )
        seeds = sorted(set(kd["teacher_seed"].to_list()))
        if len(seeds) < 2:
            continue
        means = kd.group_by("teacher_seed", "run", "checkpoint").agg(
            acc=pl.col("student_test_acc").mean()
        )
        members = pl.read_parquet(run / "mixture.parquet")["members"][0].split(", ")
        first: dict[int, float] = {}
        for ts in seeds:
            best = means.filter(pl.col("teacher_seed") == ts).sort(
                ["acc", "run", "checkpoint"], descending=[True, False, False]
            )
            run_name, ck, acc = best.row(0)[1:]
            per = dict(
                kd.filter(pl.col("run") == run_name, pl.col("checkpoint") == ck)
                .select("seed", "student_test_acc")
                .rows()
            )
            if not first:
                first, versus = per, "—"
            else:
                common = sorted(set(per) & set(first))
                d, lo, hi = seed_bootstrap(100 * np.array([per[s] - first[s] for s in common]))
                versus = f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"
            mine = sum(m.split("/")[0].endswith(f"-seed{ts}") for m in members)
            lines.append(
                f"| {meta['benchmark']} | {ts} | {run_name}/{ck} | {100 * acc:.2f} % "
                f"| {versus} | {mine} of {len(members)} |"
            )
    return "\n".join(lines)


def _member(members: str) -> tuple[str, str]:
    """(run, checkpoint) of the first of ``"run/ck x0.75, run/ck x0.25"`` (or of ``"run/ck"``)."""
    run, ck = members.split(" ")[0].split("/")
    return run, ck


def dark_mass_markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| benchmark | T | best single checkpoint | its transfer dark mass "
        "| mixture members | mixture's transfer dark mass |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['benchmark']} | {r['temperature']:g} | {r['best_single']} "
            f"| {r['dark_mass_best_single']:.3f} | {r['members']} | {r['dark_mass_mixture']:.3f} |"
        )
    return "\n".join(lines)


def sharpen_markdown(runs: list[Path]) -> str:
    """The sharpness-matched mixture (``validate_recommend.py --sharpen``) of every run that
    has one: its factor, and its students against the best single checkpoint and the
    unsharpened mixture (seed-paired differences, pp, 95 % seed-bootstrap interval)."""
    lines = [
        "| benchmark | logits x | transfer dark mass: mixture → matched | mixture − best single "
        "| sharpened − best single | sharpened − mixture |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for run in runs:
        path = run / "mixture-sharp.parquet"
        if not path.is_file():
            continue
        sharp = pl.read_parquet(path)
        mix = pl.read_parquet(run / "mixture.parquet")
        bench = json.loads((run / "run.json").read_text())["benchmark"]

        def diff(df: pl.DataFrame, versus: str) -> str:
            r = df.filter(pl.col("versus") == versus).row(0, named=True)
            return f"{r['difference_pp']:+.2f} [{r['ci_low_pp']:+.2f}, {r['ci_high_pp']:+.2f}]"

        r0 = sharp.row(0, named=True)
        lines.append(
            f"| {bench} | {r0['factor']:.3f} | {r0['dark_mass_mixture']:.3f} → "
            f"{r0['dark_mass_single']:.3f} | {diff(mix, 'best single checkpoint')} "
            f"| {diff(sharp, 'best single checkpoint')} | {diff(sharp, 'unsharpened mixture')} |"
        )
    return "\n".join(lines)


def markdown(rows: list[dict[str, object]]) -> str:
    head = (
        "| benchmark | role | plain students | best single checkpoint's students | seed noise "
        "| KD beats plain beyond noise | kdlens regret | kdlens Spearman | mixture members "
        "| mixture's students | mixture − best single [95 % CI] | mixture − plain [95 % CI] "
        "| test NLL (T fit): best single → mixture |\n"
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- |"
    )
    lines = [head]
    for r in rows:
        lo, hi = r["mix_minus_best_ci"]  # type: ignore[misc]
        plo, phi = r["mix_minus_plain_ci"]  # type: ignore[misc]
        a, b = r["test_nll_best_to_mixture"]  # type: ignore[misc]
        lines.append(
            f"| {r['benchmark']} | {r['role']} | {r['plain_pct']:.2f} % "
            f"| {r['best_single_pct']:.2f} % | {r['seed_noise_pp']:.2f} pp "
            f"| {'yes' if r['kd_beats_plain'] else 'no'} ({r['kd_gain_pp']:+.2f} pp) "
            f"| {r['kdlens_regret_pp']:.2f} pp | {r['kdlens_spearman']:.3f} | {r['members']} "
            f"| {r['mixture_pct']:.2f} % | {r['mix_minus_best_pp']:+.2f} [{lo:+.2f}, {hi:+.2f}] "
            f"| {r['mix_minus_plain_pp']:+.2f} [{plo:+.2f}, {phi:+.2f}] | {a:.3f} → {b:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    ap.add_argument(
        "--dark-mass",
        action="store_true",
        help="also the transfer dark mass at the distillation T of the best single checkpoint "
        "and the mixture",
    )
    ap.add_argument(
        "--sharpen",
        action="store_true",
        help="also the sharpness-matched mixture of the runs made with --sharpen",
    )
    a = ap.parse_args()
    print(markdown([summary_row(r) for r in a.runs]))
    if (seeds := teacher_seed_markdown(a.runs)).count("\n") > 1:
        print()
        print(seeds)
    if a.sharpen:
        print()
        print(sharpen_markdown(a.runs))
    if a.dark_mass:
        print()
        print(dark_mass_markdown([dark_mass_row(r) for r in a.runs]))


if __name__ == "__main__":
    main()
