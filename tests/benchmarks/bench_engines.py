"""Benchmark: ``kdlens analyze`` on each engine, as ratios to the read floor of the same run.

A script, not a test. It writes one synthetic store of ``--n`` x ``--k`` float32 logits
(one checkpoint, split ``train``, with class structure), then runs, each in a fresh
subprocess:

- ``floor``: read the logits with pyarrow, batch by batch, into numpy (nothing computed);
- ``local``: ``analyze`` on the local engine in one process (the default, two threads);
- ``workers2``: ``analyze(workers=2)``, a pool of two processes;
- ``dask2``: ``analyze(engine="dask")``, a ``LocalCluster`` of two worker processes on
  127.0.0.1 that kdlens starts and closes (its start-up is part of the time).

Times are of the work after imports (start-up of pools and clusters included). Peak
RSS is sampled (every 50 ms, psutil) for every process of the step's tree: the main
process and the largest worker are reported. The results are checked equal across
engines (the summary row, exactly).

    nice -n 10 python tests/benchmarks/bench_engines.py               # 1,000,000 x 100
    nice -n 10 python tests/benchmarks/bench_engines.py --n 200000 --k 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_analyze import FLOOR, REPO, write_store  # noqa: E402

ANALYZE = r"""
import sys, time, json
from kdlens.analysis.engine import analyze
kw = json.loads(sys.argv[3])
t0 = time.perf_counter()
res = analyze(sys.argv[1], n_permutations=int(sys.argv[2]), **kw)
wall = time.perf_counter() - t0
row = res.summary.row(0, named=True)
print(json.dumps({"wall": wall, "row": {k: v for k, v in row.items() if isinstance(v, float)}}))
"""

ENGINES = {
    "local": {},
    "workers2": {"workers": 2},
    "dask2": {"engine": "dask", "workers": 2},
}


def run(script: str, *args: str) -> dict:
    """Run ``script`` in a subprocess; sample the RSS of it and all its descendants."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    peaks: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                peaks[p.pid] = max(peaks.get(p.pid, 0.0), rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{err}")
    res = json.loads(out.strip().splitlines()[-1])
    main = peaks.pop(proc.pid, 0.0)
    # Worker processes only (a forkserver or a nanny that never grew is not a worker).
    res["rss_main_mib"] = main
    res["rss_worker_mib"] = max(peaks.values(), default=0.0)
    res["processes"] = 1 + len(peaks)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="examples")
    ap.add_argument("--k", type=int, default=100, help="classes")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the store")
    ap.add_argument("--permutations", type=int, default=1000, help="structure-test draws")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each step (best reported)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / f"bench_{args.n}x{args.k}.parquet"
        write_store(path, args.n, args.k)
        print(f"store: {args.n:,} x {args.k} float32, {path.stat().st_size / 2**20:,.0f} MiB")
        steps = {"floor": (FLOOR, [])} | {
            name: (ANALYZE, [str(args.permutations), json.dumps(kw)])
            for name, kw in ENGINES.items()
        }
        results: dict[str, dict] = {}
        for name, (script, extra) in steps.items():
            best = None
            for _ in range(args.repeats):
                r = run(script, str(path), *extra)
                if best is None or r["wall"] < best["wall"]:
                    best = r
            assert best is not None
            results[name] = best
        floor = results["floor"]["wall"]
        print(f"{'step':>9} {'time':>8} {'/ floor':>8} {'RSS main':>9} {'RSS worker':>11}")
        for name, r in results.items():
            worker = f"{r['rss_worker_mib']:8.0f} MiB" if name not in ("floor", "local") else ""
            print(
                f"{name:>9} {r['wall']:7.2f}s {r['wall'] / floor:7.2f}x "
                f"{r['rss_main_mib']:5.0f} MiB {worker:>11}"
            )
        rows = [results[n]["row"] for n in ENGINES]
        same = all(
            json.dumps(r, sort_keys=True) == json.dumps(rows[0], sort_keys=True) for r in rows
        )
        print(f"summary identical on every engine: {same}")


if __name__ == "__main__":
    main()
