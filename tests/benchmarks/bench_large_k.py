"""Benchmark: ``kdlens analyze`` at large K (issue 10: 20,000 x 5,000; issue 14:
100,000 x 21,841), peak RSS per process and time against the read floor.

A script, not a test. It writes one checkpoint of ``--n`` x ``--k`` float32 logits in row
groups (the store is never in memory; a teacher whose class c leans towards c ± 1), then
runs, each in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own:

- ``floor``: read the logits with pyarrow, batch by batch (``bench_analyze.py``'s floor);
- ``analyze``: :func:`kdlens.analysis.engine.analyze` with its defaults.

    nice -n 10 python tests/benchmarks/bench_large_k.py --n 20000 --k 5000
    nice -n 10 python tests/benchmarks/bench_large_k.py --n 100000 --k 21841
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_analyze import ANALYZE, FLOOR, run, write_store  # noqa: E402

ANALYZE_ROWS = ANALYZE.replace(
    "row = res.summary.row(0, named=True)",
    "row = res.summary.row(0, named=True); row['similarity_rows'] = res.similarity.height",
).replace(
    '"si": row["similarity_information"]}',
    '"si": row["similarity_information"], "similarity_rows": row["similarity_rows"], '
    '"method": row.get("similarity_method", "dense")}',
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=5_000)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--permutations", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / f"bench_{args.n}x{args.k}.parquet"
        t0 = time.perf_counter()
        write_store(path, args.n, args.k)
        print(
            f"store: {args.n:,} x {args.k:,} ({path.stat().st_size / 2**20:,.0f} MiB), "
            f"written in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        f = run(FLOOR, path)
        a = run(ANALYZE_ROWS, path, str(args.permutations))
        print(
            f"| {args.n:,} x {args.k:,} | {f['wall']:.1f} s | {a['wall']:.1f} s | "
            f"{a['wall'] / f['wall']:.2f} | {f['rss_mib'] / 1024:.2f} GiB | "
            f"{a['rss_mib'] / 1024:.2f} GiB | {a['method']} | {a['similarity_rows']:,} |"
        )
        print(f"SI = {a['si']:.6f}")


if __name__ == "__main__":
    main()
