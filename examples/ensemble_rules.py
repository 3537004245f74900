"""Which combination rule makes the best ensemble teacher? A small distillation check.

A script, not a test (issue 11, part 2). On the digits benchmark of
``examples/validate_recommend.py`` (an MLP teacher grid, 3 batch sizes x 7 checkpoints,
label noise 0, 0.2 and 0.4, three data splits each) it, per grid,

1. trains (or reuses) the teacher grid;
2. for each rule of :data:`kdlens.store.mixture.RULES` selects an ensemble on ``val``
   (:func:`kdlens.select_ensemble`) and writes it as a store (:func:`kdlens.write_ensemble`);
3. distills the same student seeds (T = 4, alpha = 0.9) from every mixture and from the
   best single checkpoint (the first greedy pick: lowest ``val`` NLL after the fit);
4. prints one row per teacher and grid: members, held-out NLL after the fit (val, test),
   the students' test accuracy (mean, sd over seeds, the seed-paired difference to the
   best single checkpoint's students) and the rule's rank; then per noise level and rule
   the mean and sd over grids of that difference and in how many grids the rule was best.

    python examples/ensemble_rules.py --out runs/ensemble-rules     # 9 grids, ~6 min CPU
    python examples/ensemble_rules.py --out runs/ensemble-rules --noise 0.2 --split-seeds 0

Reruns reuse the teachers (delete ``--out`` to start over).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validate_recommend import benchmark  # noqa: E402

from kdlens.harness.distill import distill  # noqa: E402
from kdlens.harness.dump import dump  # noqa: E402
from kdlens.recommend.ensemble import select_ensemble  # noqa: E402
from kdlens.store.mixture import RULES, write_ensemble  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    ap.add_argument("--split-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seeds", type=int, default=6, help="student seeds per teacher")
    ap.add_argument("--max-members", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    for noise in args.noise:
        for split_seed in args.split_seeds:
            rows += grid(args, noise, split_seed)
            print(f"noise {noise} split {split_seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    table = pl.DataFrame(rows)
    pl.Config.set_tbl_cols(20).set_tbl_width_chars(200).set_tbl_rows(100)
    print(table.drop("accs"))
    summary = (
        table.filter(pl.col("teacher") != "best single")
        .group_by("noise", "teacher", maintain_order=True)
        .agg(
            pl.len().alias("grids"),
            pl.col("members").mean(),
            pl.col("nll_fit_test").mean(),
            pl.col("student_acc").mean(),
            pl.col("minus_single_pp").mean().alias("minus_single_pp_mean"),
            pl.col("minus_single_pp").std().alias("minus_single_pp_sd"),
            (pl.col("rank") == 1).sum().alias("best_rule_in_grids"),
        )
    )
    print(summary)
    print(f"total: {time.perf_counter() - t0:.0f} s")
    table.drop("accs").write_csv(args.out / "rules.csv")
    summary.write_csv(args.out / "summary.csv")


def grid(args: argparse.Namespace, noise: float, split_seed: int) -> list[dict]:
    """Every rule's ensemble and the best single checkpoint on one teacher grid."""
    cfg, sc = benchmark("digits", label_noise=noise)
    cfg.split_seed = split_seed
    out = args.out / f"noise{noise:g}-split{split_seed}"
    store = out / "teachers"
    dump(store, cfg)
    seeds = list(range(args.seeds))
    kw = {"temperature": args.temperature, "alpha": args.alpha, "seeds": seeds, "student": sc}
    rows = []
    for rule in RULES:
        ens = select_ensemble(
            store, max_members=args.max_members, rule=rule, temperature=args.temperature
        )
        mix = write_ensemble(
            store,
            ens.members,
            out / f"mix-{rule}",
            weights=ens.weights,
            rule=rule,
            temperature=args.temperature,
            overwrite=True,
        )
        rows.append(_row(rule, ens, distill(mix, all_checkpoints=True, **kw)))
    one = select_ensemble(store, max_members=1, temperature=args.temperature)
    assert one.best_single is not None
    rows.append(_row("best single", one, distill(store, checkpoints=[one.best_single], **kw)))
    base = np.array(rows[-1]["accs"])
    for r in rows:
        r.update(noise=noise, split_seed=split_seed)
        r["minus_single_pp"] = 100 * float(np.mean(np.array(r["accs"]) - base))
    order = sorted(range(len(RULES)), key=lambda i: -rows[i]["student_acc"])
    for rank, i in enumerate(order, 1):
        rows[i]["rank"] = rank
    rows[-1]["rank"] = 0
    return rows


def _row(name: str, ens, res: pl.DataFrame) -> dict:
    acc = res.sort("seed")["student_test_acc"].to_numpy()
    cmp = {(r["split"], r["measure"]): r for r in ens.comparison.iter_rows(named=True)}
    return {
        "teacher": name,
        "members": ens.n_members,
        "nll_fit_val": cmp[("val", "nll_fit")]["mixture"],
        "nll_fit_test": cmp[("test", "nll_fit")]["mixture"],
        "acc_test": cmp[("test", "accuracy")]["mixture"],
        "student_acc": float(acc.mean()),
        "student_sd": float(acc.std(ddof=1)) if acc.size > 1 else float("nan"),
        "accs": acc.tolist(),
    }


if __name__ == "__main__":
    main()
