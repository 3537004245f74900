"""Benchmark: how ``kdlens analyze`` grows with the number of checkpoints (1, 4, 16).

A script, not a test. It writes stores of 1, 4 and 16 checkpoints, each ``--n`` x ``--k``
float32 logits (split ``train``, class-structured as in ``bench_analyze.py``), then runs,
each in a fresh subprocess and interleaved over ``--repeats``:

- ``floor``: read every checkpoint's logits with pyarrow, batch by batch (nothing computed);
- ``analyze``: :func:`kdlens.analysis.engine.analyze` at its defaults (work after imports).

Reported per store: the median of each, analyze / floor, and each per checkpoint, so a
line that stays flat says the cost is linear in the number of checkpoints.

    python tests/benchmarks/bench_scaling.py                       # 250,000 x 100 each
    python tests/benchmarks/bench_scaling.py --n 50000 --k 1000
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_analyze import ANALYZE, FLOOR, run, write_store  # noqa: E402

COUNTS = (1, 4, 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=250_000, help="examples per checkpoint")
    ap.add_argument("--k", type=int, default=100, help="classes")
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory (default: tmp)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each step (median)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kdlens-scaling-", dir=a.dir))
    try:
        # One set of 16 checkpoint files; the smaller stores hold copies of the first ones.
        files = []
        for c in range(max(COUNTS)):
            f = scratch / "all" / f"ep{c + 1:03d}.parquet"
            f.parent.mkdir(parents=True, exist_ok=True)
            write_store(f, a.n, a.k, seed=c, epoch=c + 1)
            files.append(f)
        stores = {}
        for count in COUNTS:
            d = scratch / f"store{count}"
            d.mkdir()
            for f in files[:count]:
                shutil.copyfile(f, d / f.name)
            stores[count] = d
        runs: dict[tuple[int, str], list[dict[str, float]]] = {}
        for _ in range(a.repeats):
            for count, d in stores.items():
                runs.setdefault((count, "floor"), []).append(run(FLOOR, d))
                runs.setdefault((count, "analyze"), []).append(run(ANALYZE, d, "1000"))
        rows = []
        for count in COUNTS:
            floor = statistics.median(r["wall"] for r in runs[(count, "floor")])
            ana = statistics.median(r["wall"] for r in runs[(count, "analyze")])
            rss = max(r["rss_mib"] for r in runs[(count, "analyze")])
            rows.append(
                {
                    "checkpoints": count,
                    "floor_s": round(floor, 2),
                    "analyze_s": round(ana, 2),
                    "ratio": round(ana / floor, 2),
                    "floor_per_checkpoint_s": round(floor / count, 2),
                    "analyze_per_checkpoint_s": round(ana / count, 2),
                    "analyze_peak_rss_mib": round(rss),
                }
            )
        if a.json:
            print(json.dumps({"n": a.n, "k": a.k, "repeats": a.repeats, "rows": rows}))
            return
        print(f"{a.n:,} x {a.k} logits per checkpoint, median of {a.repeats}")
        print("checkpoints  floor s  analyze s  / floor  floor/ck  analyze/ck  peak MiB")
        for r in rows:
            print(
                f"{r['checkpoints']:>11}  {r['floor_s']:7.2f}  {r['analyze_s']:9.2f}  "
                f"{r['ratio']:7.2f}  {r['floor_per_checkpoint_s']:8.2f}  "
                f"{r['analyze_per_checkpoint_s']:10.2f}  {r['analyze_peak_rss_mib']:8d}"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
