"""Benchmark: ``kdlens recommend --ensemble`` against ``kdlens recommend`` on the same store.

A script, not a test. Issue 11's goal: on a 21-checkpoint store of 10,000 x 10 (rows x
classes per split), ``recommend --ensemble`` takes at most 3x the time of ``recommend``.
It writes a synthetic store (3 runs x 7 checkpoints; ``train``, ``val`` and ``test`` of
``--rows`` rows each; each checkpoint's logits are a shared signal plus its own noise, so
mixtures do help), then runs both commands through the real CLI in fresh processes
(``python -m kdlens ...``, imports included) and reports wall time, CPU time, peak RSS
and the ratio measured in the same run (median of ``--repeats``).

    python tests/benchmarks/bench_ensemble.py
    python tests/benchmarks/bench_ensemble.py --rows 50000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_commands import run  # noqa: E402


def write_store(root: Path, runs: int, checkpoints: int, rows: int, k: int) -> Path:
    from kdlens import CheckpointWriter

    rng = np.random.default_rng(0)
    store = root / "store"
    labels = {s: rng.integers(0, k, rows) for s in ("train", "val", "test")}
    shared = {s: rng.standard_normal((rows, k), dtype=np.float32) for s in labels}
    for r in range(runs):
        for c in range(checkpoints):
            name = f"ep{c + 1:03d}"
            with CheckpointWriter(
                store / f"run{r}-{name}.parquet", run=f"run{r}", checkpoint=name, num_classes=k
            ) as w:
                for i, (split, y) in enumerate(labels.items()):
                    z = shared[split] + rng.standard_normal((rows, k), dtype=np.float32)
                    z[np.arange(rows), y] += 1.0 + 0.3 * c
                    ids = np.arange(i * rows, (i + 1) * rows)
                    w.write(z, split=split, example_ids=ids, labels=y)
    return store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000, help="rows per split")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--checkpoints", type=int, default=7, help="checkpoints per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--report", action="store_true", help="also time report [--ensemble]")
    a = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kdlens-bench-ens-", dir=a.dir))
    try:
        t0 = time.perf_counter()
        store = write_store(scratch, a.runs, a.checkpoints, a.rows, a.classes)
        made = time.perf_counter() - t0
        py = [sys.executable, "-m", "kdlens", "recommend", str(store), "-q"]
        commands = {"recommend": py, "recommend --ensemble": [*py, "--ensemble"]}
        if a.report:
            rep = [sys.executable, "-m", "kdlens", "report", str(store), "-q"]
            rep += ["-o", str(scratch / "r.html")]
            commands |= {"report": rep, "report --ensemble": [*rep, "--ensemble"]}
        results: dict[str, dict[str, Any]] = {}
        for _ in range(a.repeats):  # interleaved, so slow phases of the machine hit both
            for name, cmd in commands.items():
                results.setdefault(name, {"runs": []})["runs"].append(run(cmd))
        med = {
            n: sorted(r["runs"], key=lambda x: x["wall"])[a.repeats // 2]
            for n, r in results.items()
        }
        # report --ensemble is compared with report, recommend --ensemble with recommend.
        bases = {n: med[n.removesuffix(" --ensemble")] for n in med}
        out = {
            "checkpoints": a.runs * a.checkpoints,
            "rows_per_split": a.rows,
            "splits": ["train", "val", "test"],
            "num_classes": a.classes,
            "store_written_s": round(made, 1),
            "repeats": a.repeats,
            **{
                n: {
                    "wall_s": round(r["wall"], 2),
                    "cpu_s": round(r["cpu"], 2),
                    "wall_ratio": round(r["wall"] / bases[n]["wall"], 2),
                    "cpu_ratio": round(r["cpu"] / bases[n]["cpu"], 2),
                    "peak_rss_gib": round(r["rss_gib"], 2),
                    "exit_code": r["rc"],
                }
                for n, r in med.items()
            },
        }
        if a.json:
            print(json.dumps(out))
            return
        print(
            f"{out['checkpoints']} checkpoints x (train, val, test) x {a.rows:,} rows x K = "
            f"{a.classes}; median of {a.repeats}"
        )
        print(
            f"{'command':<22} {'wall s':>7} {'ratio':>6} {'cpu s':>7} {'ratio':>6} {'GiB':>5}  rc"
        )
        for n in commands:
            r = out[n]
            print(
                f"{n:<22} {r['wall_s']:>7.2f} {r['wall_ratio']:>6.2f} {r['cpu_s']:>7.2f} "
                f"{r['cpu_ratio']:>6.2f} {r['peak_rss_gib']:>5.2f} {r['exit_code']:>3}"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
