"""Start-up time of kdlens against ``python -c "import polars"``, in the same run.

    python tests/benchmarks/bench_startup.py              # 15 runs of each command
    python tests/benchmarks/bench_startup.py --runs 30 --json
    python tests/benchmarks/bench_startup.py --compare ../main   # and another checkout's --help

Each command runs ``--runs`` times in a fresh interpreter, the commands interleaved
(round-robin) so that a change in the machine's load hits all of them alike; the figure
is the median wall time of the process, start to exit. The baseline is importing polars,
the lightest of the libraries an analysis needs. Goal: ``kdlens --help`` <= 0.5 s on an
idle machine. The console script is measured when one is on PATH (``kdlens``, an editable
install, say); PYTHONPATH is set to this checkout, so every command runs its kdlens.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _bytecode import bytecode_env

REPO = Path(__file__).resolve().parents[2]


def _commands() -> dict[str, list[str]]:
    py = sys.executable
    cmds = {
        'python -c "import polars" (baseline)': [py, "-c", "import polars"],
        'python -c "pass"': [py, "-c", "pass"],
        'python -c "import kdlens"': [py, "-c", "import kdlens"],
        "python -m kdlens --help": [py, "-m", "kdlens", "--help"],
        "python -m kdlens analyze --help": [py, "-m", "kdlens", "analyze", "--help"],
    }
    script = shutil.which("kdlens")
    if script is not None:
        cmds[f"kdlens --help ({script})"] = [script, "--help"]
    return cmds


def _time(cmd: list[str], repo: Path) -> float:
    # `python -m` puts the working directory first on sys.path: run in the checkout.
    env = bytecode_env(repo, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    t = time.perf_counter()
    subprocess.run(
        cmd, env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - t


def measure(runs: int, other: Path | None = None) -> dict[str, dict[str, float]]:
    cmds = {name: (cmd, REPO) for name, cmd in _commands().items()}
    if other is not None:
        cmds[f"python -m kdlens --help ({other})"] = (
            [sys.executable, "-m", "kdlens", "--help"],
            other,
        )
    for cmd, repo in cmds.values():  # warm the file cache; not counted
        _time(cmd, repo)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, (cmd, repo) in cmds.items():
            times[name].append(_time(cmd, repo))
    base = statistics.median(next(iter(times.values())))
    return {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "ratio_to_baseline": statistics.median(ts) / base,
        }
        for name, ts in times.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="runs of each command (default 15)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument(
        "--compare", type=Path, help="another kdlens checkout whose --help to time too (before)"
    )
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    res = measure(args.runs, args.compare.resolve() if args.compare else None)
    if args.json:
        print(json.dumps({"runs": args.runs, "python": sys.version.split()[0], "results": res}))
        return
    width = max(len(n) for n in res)
    print(f"median wall time of {args.runs} runs each (python {sys.version.split()[0]})")
    print(f"{'command':<{width}}  {'median':>8}  {'min':>7}  {'max':>7}  {'/ polars':>8}")
    for name, r in res.items():
        print(
            f"{name:<{width}}  {r['median_s']:>7.3f}s  {r['min_s']:>6.3f}s  {r['max_s']:>6.3f}s"
            f"  {r['ratio_to_baseline']:>8.2f}"
        )


if __name__ == "__main__":
    main()
