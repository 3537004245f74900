"""Benchmark: ``kdlens recommend`` and ``kdlens report`` against ``kdlens analyze``.

A script, not a test. Issue 9's goal: each command reads every checkpoint once, so
``recommend`` and ``report`` cost at most a little more than ``analyze`` on the same store.
It writes a synthetic store (class-structured float32 logits, ``train`` and ``val``
splits), then runs the three commands through the real CLI (``python -m kdlens ...``),
each in a fresh process, and reports wall time (imports included), CPU time (user +
system: less sensitive to other load on the machine), peak RSS, and the ratios to
``analyze`` measured in the same run: of the median runs, and "paired", the median over
repeats of each run's ratio to the analyze run of the same repeat (run seconds apart, the
two see the same load).

Stores (``--store``):

- ``1m-100``: two checkpoints x (450,000 train + 50,000 val) x K = 100 (1,000,000 rows);
- ``2x100k-1000``: two checkpoints x (100,000 train + 100,000 val) x K = 1,000;
- ``imagenet``: one checkpoint x (1,281,167 train + 50,000 val) x K = 1,000 (5.3 GB of
  logits; ``recommend`` has nothing to rank and must say so before reading any logits).

Goals: recommend / analyze and report / analyze <= 1.3 on the first two, <= 1.5 on
``imagenet``.

    python tests/benchmarks/bench_commands.py --store 1m-100
    python tests/benchmarks/bench_commands.py --store 2x100k-1000
    python tests/benchmarks/bench_commands.py --store imagenet --dir /tmp/kdlens-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _bytecode import bytecode_env

REPO = Path(__file__).resolve().parents[2]

#: name -> (checkpoints, train rows, val rows, K)
STORES = {
    "1m-100": (2, 450_000, 50_000, 100),
    "2x100k-1000": (2, 100_000, 100_000, 1000),
    "imagenet": (1, 1_281_167, 50_000, 1000),
}
_CHUNK_ELEMENTS = 1 << 24  # 16 M float32 logits (64 MiB) generated at a time


def write_store(root: Path, checkpoints: int, n_train: int, n_val: int, k: int) -> Path:
    """Class-structured logits: the true class up by a margin, classes in groups of 10
    share mass (so similarity and the structure test have something to find)."""
    from kdlens import CheckpointWriter

    rng = np.random.default_rng(0)
    group = np.arange(k) // 10
    affinity = (group[:, None] == group[None, :]).astype(np.float32) * 1.5
    store = root / "store"
    for c in range(checkpoints):
        margin = 2.0 + 2.0 * c  # later checkpoints: sharper, more confident
        path = store / f"run0/ep{c + 1:03d}.parquet"
        with CheckpointWriter(path, run="run0", checkpoint=f"ep{c + 1:03d}", num_classes=k) as w:
            offset = 0
            for split, n in (("train", n_train), ("val", n_val)):
                step = max(1, _CHUNK_ELEMENTS // k)
                for start in range(0, n, step):
                    m = min(step, n - start)
                    y = rng.integers(0, k, m)
                    z = rng.standard_normal((m, k), dtype=np.float32)
                    z += affinity[y]
                    z[np.arange(m), y] += margin
                    ids = np.arange(offset + start, offset + start + m)
                    w.write(z, split=split, example_ids=ids, labels=y)
                offset += n
    return store


def run(cmd: list[str], tree: Path = REPO) -> dict[str, Any]:
    """Wall time and peak RSS of one command in its own process, with kdlens from ``tree``."""
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tree, env=_env(tree))
        _, status, ru = os.wait4(proc.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - t0
        log.seek(0)
        lines = log.read().decode(errors="replace").strip().splitlines()
    return {
        "wall": wall,
        "cpu": ru.ru_utime + ru.ru_stime,
        "rss_gib": ru.ru_maxrss / 1024**2,
        "rc": os.waitstatus_to_exitcode(status),
        "tail": lines[-1] if lines else "",
    }


def _env(tree: Path = REPO) -> dict[str, str]:
    env = bytecode_env(tree)
    env["COLUMNS"] = "100"
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", choices=sorted(STORES), default="1m-100")
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory (default: temp)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each command (median)")
    ap.add_argument("--keep", action="store_true", help="keep the generated store")
    ap.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="also run the commands with kdlens from this tree (e.g. `git archive` of a "
        "baseline), interleaved with this one's, on the same store",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kdlens-bench-", dir=a.dir))
    try:
        ck, n_train, n_val, k = STORES[a.store]
        t0 = time.perf_counter()
        store = write_store(scratch, ck, n_train, n_val, k)
        made = time.perf_counter() - t0
        py = [sys.executable, "-m", "kdlens"]
        commands = {
            "analyze": [*py, "analyze", str(store), "-o", str(scratch / "analysis")],
            "recommend": [*py, "recommend", str(store)],
            "report": [*py, "report", str(store), "-o", str(scratch / "report.html")],
        }
        trees = [REPO] + ([a.compare.resolve()] if a.compare else [])
        runs: dict[tuple[Path, str], list[dict[str, Any]]] = {}
        for _ in range(a.repeats):  # interleaved, so load changes hit every tree alike
            for tree in trees:
                for name, cmd in commands.items():
                    runs.setdefault((tree, name), []).append(run(cmd, tree))
        meta = {
            "store": a.store,
            "checkpoints": ck,
            "train_rows": n_train,
            "val_rows": n_val,
            "num_classes": k,
            "store_written_s": round(made, 1),
            "repeats": a.repeats,
        }
        outs = {tree: _summary(runs, tree, commands) for tree in trees}
        if a.json:
            print(
                json.dumps(
                    {**meta, **outs[REPO], "compare": outs[trees[1]] if len(trees) > 1 else {}}
                )
            )
        else:
            print(
                f"store {a.store}: {ck} checkpoint(s) x ({n_train:,} train + {n_val:,} val) x K={k}"
            )
            for tree in trees:
                _print(outs[tree], commands, None if tree == REPO else tree)
    finally:
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch}", file=sys.stderr)


def _summary(
    runs: dict[tuple[Path, str], list[dict[str, Any]]], tree: Path, commands: dict[str, Any]
) -> dict[str, Any]:
    """Median (by wall time) run of each command of one tree, with ratios to its analyze."""
    results = {}
    for name in commands:
        rs = sorted(runs[(tree, name)], key=lambda r: r["wall"])
        results[name] = rs[len(rs) // 2]
    base = results["analyze"]
    analyzes = runs[(tree, "analyze")]

    def paired(name: str, key: str) -> float:
        # Each repeat's command over the analyze run just before it (same load), median.
        xs = sorted(r[key] / a[key] for r, a in zip(runs[(tree, name)], analyzes, strict=True))
        return round(xs[len(xs) // 2], 3)

    return {
        name: {
            "wall_s": round(r["wall"], 2),
            "peak_rss_gib": round(r["rss_gib"], 2),
            "ratio_to_analyze": round(r["wall"] / base["wall"], 3),
            "cpu_s": round(r["cpu"], 2),
            "cpu_ratio_to_analyze": round(r["cpu"] / base["cpu"], 3),
            "paired_ratio": paired(name, "wall"),
            "paired_cpu_ratio": paired(name, "cpu"),
            # Every repeat's CPU seconds, in run order (the spread shows the load).
            "cpu_runs": [round(x["cpu"], 2) for x in runs[(tree, name)]],
            "exit_code": r["rc"],
            "last_line": r["tail"][:120],
        }
        for name, r in results.items()
    }


def _print(out: dict[str, Any], commands: dict[str, Any], tree: Path | None) -> None:
    if tree is not None:
        print(f"-- with kdlens from {tree}")
    print(
        f"{'command':<10} {'wall s':>8} {'/ analyze':>10} {'cpu s':>8} {'/ analyze':>10} "
        f"{'paired':>7} {'cpu':>6} {'peak GiB':>9}  rc  cpu s of each run"
    )
    for name in commands:
        r = out[name]
        print(
            f"{name:<10} {r['wall_s']:>8.2f} {r['ratio_to_analyze']:>10.3f} "
            f"{r['cpu_s']:>8.2f} {r['cpu_ratio_to_analyze']:>10.3f} "
            f"{r['paired_ratio']:>7.3f} {r['paired_cpu_ratio']:>6.3f} "
            f"{r['peak_rss_gib']:>9.2f} {r['exit_code']:>3}  {r['cpu_runs']}"
        )


if __name__ == "__main__":
    main()
