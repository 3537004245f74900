"""Benchmark: ``kdlens analyze`` against the I/O floor and a naive user script.

A script, not a test. It writes a synthetic store of ``--n`` x ``--k`` float32
logits (one checkpoint, split ``train``), then runs three things, each in a
fresh subprocess so that its peak RSS is its own:

- ``floor``: read the logits with pyarrow, batch by batch, into numpy (nothing computed);
- ``analyze``: :func:`kdlens.analysis.engine.analyze` with its defaults (every scalar,
  S, SI/II, the structure test, calibration, the temperature fit);
- ``naive``: what a user would write -- pandas read, ``np.stack`` of the logits
  column, ``scipy.special.softmax``, ``scipy.stats.entropy`` and a per-class
  loop for the similarity matrix -- computing only entropy and S.

Reported: wall time of the work (after imports) and peak RSS of each, and the
ratios analyze / floor and naive / analyze. Goals: analyze <= 2x floor, >= 5x
faster than naive, peak RSS <= 1.5 GiB.

    python tests/benchmarks/bench_analyze.py --n 1000000 --k 100
    python tests/benchmarks/bench_analyze.py --n 200000 --k 1000
    python tests/benchmarks/bench_analyze.py --skip-naive --repeats 3 --compare /tmp/base
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bytecode import bytecode_env

REPO = Path(__file__).resolve().parents[2]

FLOOR = r"""
import resource, sys, time, json
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from pathlib import Path
import numpy as np, pyarrow.parquet as pq
t0 = time.perf_counter()
src = Path(sys.argv[1])  # one checkpoint file, or a store directory (every checkpoint)
n = 0
s = 0.0
for f in sorted(src.rglob("*.parquet")) if src.is_dir() else [src]:
    pf = pq.ParquetFile(f)
    k = pf.schema_arrow.field("logits").type.list_size
    for rb in pf.iter_batches(batch_size=max(1024, (1 << 23) // k),
                              columns=["example_id", "label", "logits"]):
        z = rb.column("logits").values.to_numpy().reshape(-1, k)
        y = rb.column("label").to_numpy(zero_copy_only=False)
        n += z.shape[0]
        s += float(z[:, 0].sum())  # touch the data
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "rss_mib": rss(), "n": n}))
"""

ANALYZE = r"""
import resource, sys, time, json
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from kdlens.analysis.engine import analyze
t0, c0 = time.perf_counter(), time.process_time()
res = analyze(sys.argv[1], n_permutations=int(sys.argv[2]))
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
row = res.summary.row(0, named=True)
import kdlens
print(json.dumps({"wall": wall, "cpu": cpu, "rss_mib": rss(), "kdlens": kdlens.__file__,
                  "n": row["n"], "entropy": row["entropy"], "si": row["similarity_information"]}))
"""

NAIVE = r"""
import resource, sys, time, json
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import numpy as np, pandas as pd
from scipy.special import softmax
from scipy.stats import entropy
t0 = time.perf_counter()
df = pd.read_parquet(sys.argv[1], columns=["label", "logits"])
z = np.stack(df["logits"].to_numpy())
y = df["label"].to_numpy()
p = softmax(z, axis=1)
h = entropy(p, axis=1)
k = z.shape[1]
S = np.zeros((k, k))
for c in range(k):
    pc = p[y == c].copy()
    pc[:, c] = 0.0
    q = pc / pc.sum(axis=1, keepdims=True)
    S[c] = q.mean(axis=0)
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "rss_mib": rss(),
                  "n": int(z.shape[0]), "entropy": float(h.mean())}))
"""


def write_store(path: Path, n: int, k: int, seed: int = 0, epoch: int = 1) -> None:
    sys.path.insert(0, str(REPO))
    from kdlens.store.format import default_batch_rows
    from kdlens.store.writer import CheckpointWriter

    rng = np.random.default_rng(seed)
    # A structured teacher: class c is confused with its two neighbours.
    rows = default_batch_rows(k)
    with CheckpointWriter(
        path,
        run="bench",
        checkpoint=f"ep{epoch}",
        num_classes=k,
        epoch=epoch,
        batch_size=128,
        overwrite=True,
    ) as w:
        for start in range(0, n, rows):
            m = min(rows, n - start)
            y = rng.integers(0, k, m)
            z = rng.normal(0.0, 1.0, size=(m, k)).astype(np.float32)
            r = np.arange(m)
            z[r, y] += 6.0
            z[r, (y + 1) % k] += 3.0
            z[r, (y - 1) % k] += 2.0
            w.write(z, split="train", labels=y, example_ids=np.arange(start, start + m))


def run(script: str, path: Path, *extra: str, tree: Path = REPO) -> dict[str, float]:
    env = bytecode_env(tree)
    t0 = time.perf_counter()
    # cwd=tree: ``python -c`` puts the working directory first on sys.path, before
    # PYTHONPATH, so run from another checkout it would import that checkout's kdlens
    # (as --compare runs from the repository root once did: both "trees" were this one).
    out = subprocess.run(
        [sys.executable, "-c", script, str(path), *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
    )
    total = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    used = res.pop("kdlens", None)
    if used is not None and not Path(used).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"benchmark step imported kdlens from {used}, not from {tree}")
    res["process_wall"] = total
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="examples")
    ap.add_argument("--k", type=int, default=100, help="classes")
    ap.add_argument(
        "--dir", type=Path, default=None, help="where to write the store (default: tmp)"
    )
    ap.add_argument("--skip-naive", action="store_true", help="do not run the naive script")
    ap.add_argument(
        "--permutations",
        type=int,
        default=1000,
        help="structure-test permutations passed to analyze (0 skips the test)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="runs of each step (best is reported)")
    ap.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="also run analyze with kdlens from this tree (e.g. `git archive` of a baseline), "
        "interleaved with this one's and the floor, on the same store",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / f"bench_{args.n}x{args.k}.parquet"
        t0 = time.perf_counter()
        write_store(path, args.n, args.k)
        size = path.stat().st_size / 2**20
        print(
            f"store: {args.n:,} x {args.k} float32 ({size:,.0f} MiB on disk), "
            f"written in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        steps: dict[str, tuple[str, Path]] = {"floor": (FLOOR, REPO), "analyze": (ANALYZE, REPO)}
        if args.compare is not None:
            steps["analyze (compare)"] = (ANALYZE, args.compare.resolve())
        if not args.skip_naive:
            steps["naive"] = (NAIVE, REPO)
        results: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):  # interleaved, so load changes hit every step alike
            for name, (script, tree) in steps.items():
                extra = [str(args.permutations)] if script is ANALYZE else []
                r = run(script, path, *extra, tree=tree)
                if name not in results or r["wall"] < results[name]["wall"]:
                    results[name] = r
        for name, best in results.items():
            cpu = f", {best['cpu']:6.2f} s CPU" if "cpu" in best else ""
            print(
                f"{name:>17}: {best['wall']:7.2f} s work{cpu}, {best['process_wall']:7.2f} s "
                f"process, peak RSS {best['rss_mib']:7.0f} MiB",
                flush=True,
            )
        if "analyze (compare)" in results:
            c = results["analyze (compare)"]
            print(f"compare / floor = {c['wall'] / results['floor']['wall']:.2f}x")
        a, f = results["analyze"], results["floor"]
        print(f"analyze / floor = {a['wall'] / f['wall']:.2f}x (goal <= 2)")
        if "naive" in results:
            nv = results["naive"]
            print(f"naive / analyze = {nv['wall'] / a['wall']:.2f}x (goal >= 5)")
            print(f"entropy: analyze {a['entropy']:.6f}, naive {nv['entropy']:.6f}")
        print(f"analyze peak RSS = {a['rss_mib'] / 1024:.2f} GiB (goal <= 1.5)")


if __name__ == "__main__":
    main()
