"""Install size of each optional extra beyond the core install, from the installed packages.

    python tests/benchmarks/bench_extras.py                 # every extra of pyproject.toml
    python tests/benchmarks/bench_extras.py --json

For each extra, the distributions its requirements pull in (their dependencies followed
through the installed metadata, markers evaluated here) that the core install does not
already have, and the size of their files as installed (the RECORD of each distribution:
what ``pip show -f`` lists). Reported in MB, and as a ratio to the core install's own size,
measured in the same run. Also beyond the ``torch`` extra, since the integrations need
torch anyway. Only what is installed is counted: a missing distribution is named.
"""

from __future__ import annotations

import argparse
import json
import re
from importlib import metadata
from pathlib import Path

import tomllib  # Python >= 3.11, as the benchmarks are run
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str], missing: set[str]) -> set[str]:
    """The installed distributions ``requirements`` need, transitively (normalised names)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = _norm(req.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            missing.add(name)
            continue
        seen.add(name)
        for sub in dist.requires or []:
            r = Requirement(sub)
            wanted = r.marker is None or any(
                r.marker.evaluate({"extra": e}) for e in ("", *req.extras)
            )
            if wanted:
                todo.append(r)
    return seen


def size_mb(names: set[str]) -> float:
    total = 0
    for name in names:
        for f in metadata.distribution(name).files or []:
            p = Path(f.locate())
            if p.is_file():
                total += p.stat().st_size
    return total / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    missing: set[str] = set()
    core = closure(project["dependencies"], missing)
    core_mb = size_mb(core)
    torch_extra = closure(project["optional-dependencies"]["torch"], missing) - core
    rows = []
    for extra, reqs in project["optional-dependencies"].items():
        extra_dists = closure(reqs, missing) - core
        rows.append(
            {
                "extra": extra,
                "distributions": len(extra_dists),
                "mb_beyond_core": round(size_mb(extra_dists), 1),
                "ratio_to_core": round(size_mb(extra_dists) / core_mb, 2),
                "mb_beyond_torch_extra": round(size_mb(extra_dists - torch_extra), 1),
                "beyond_torch_extra": sorted(extra_dists - torch_extra),
            }
        )
    out = {"core_mb": round(core_mb, 1), "extras": rows, "not_installed": sorted(missing)}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"core install: {out['core_mb']} MB ({len(core)} distributions)")
    print(f"{'extra':14} {'MB beyond core':>15} {'x core':>7} {'MB beyond [torch]':>18}")
    for r in rows:
        print(
            f"{r['extra']:14} {r['mb_beyond_core']:15.1f} {r['ratio_to_core']:7.2f} "
            f"{r['mb_beyond_torch_extra']:18.1f}  {', '.join(r['beyond_torch_extra'])}"
        )
    if missing:
        print("not installed (not counted):", ", ".join(sorted(missing)))


if __name__ == "__main__":
    main()
