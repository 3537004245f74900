"""Run timed kdlens processes as an installed kdlens runs: from compiled bytecode.

``pip install`` compiles a package's modules once; a checkout run with
``PYTHONDONTWRITEBYTECODE=1`` (set on this workplace's machines) compiles every kdlens
module from source in every process instead, 0.1-0.25 s here, and more for commands
that import more of kdlens (the report) than for others (analyze). The benchmarks that
time fresh processes compile each tree once, up front and untimed, and let the timed
processes read that bytecode.
"""

from __future__ import annotations

import compileall
import os
from pathlib import Path

_compiled: set[Path] = set()


def bytecode_env(tree: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a timed process running ``tree``'s kdlens,
    after compiling that kdlens once; bytecode reads allowed, ``PYTHONPATH`` = ``tree``."""
    tree = tree.resolve()
    if tree not in _compiled:
        if not compileall.compile_dir(tree / "kdlens", quiet=1):
            raise SystemExit(f"could not compile {tree / 'kdlens'}")
        _compiled.add(tree)
    out = dict(os.environ if env is None else env)
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    out["PYTHONPATH"] = str(tree) + os.pathsep + out.get("PYTHONPATH", "")
    return out
