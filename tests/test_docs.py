"""The user docs in docs/ run as written: every ```bash block that starts with a command,
and every ```python block of the pages that hold whole scripts (:data:`SCRIPT_PAGES`;
elsewhere, e.g. integrations.md, python blocks are fragments of a user's training code,
whose whole versions are the tested scripts in examples/).

Blocks run in order, one temporary directory per page, as a user would type them
(``kdlens`` is run as ``python -m kdlens`` of this checkout, a python block as
``python -c``). The examples use tiny data, so each page runs in well under a minute.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))


#: Pages whose ```python blocks are whole scripts, run in order with the bash blocks.
SCRIPT_PAGES = {"api.md"}


def _commands(text: str, *, scripts: bool = False) -> list[str]:
    """The runnable blocks in page order: shell commands, and (``scripts``) python blocks
    prefixed with ``#python`` so the runner can tell them apart."""
    out = []
    for kind, block in re.findall(r"```(bash|python)\n(.+?)```", text, re.S):
        if kind == "bash" and block.strip().startswith(("kdlens ", "python ")):
            out.append(block.strip())
        elif kind == "python" and scripts:
            out.append("#python\n" + block)
    return out


def _runnable(page: Path) -> list[str]:
    return _commands(page.read_text(), scripts=page.name in SCRIPT_PAGES)


def test_docs_exist_and_link_nothing_outside_the_repository() -> None:
    assert {p.name for p in PAGES} >= {"science.md", "commands.md", "cli.md"}
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(REPO) and resolved.exists(), (page.name, target)


def test_every_command_has_a_section_in_commands_md() -> None:
    from typer.main import get_command

    from kdlens.cli import app

    text = (DOCS / "commands.md").read_text()
    names = get_command(app).commands  # type: ignore[attr-defined]
    assert [n for n in names if not re.search(rf"^## .*\b{n}\b", text, re.M)] == []


def test_script_pages_hold_python_blocks() -> None:
    for name in SCRIPT_PAGES:
        assert any(c.startswith("#python") for c in _runnable(DOCS / name)), name


@pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p)], ids=str)
def test_every_example_runs(page: Path, tmp_path: Path) -> None:
    needs_torch = re.search(r"^kdlens (dump|distill)", page.read_text(), re.M)
    if needs_torch:
        pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"}
    for command in _runnable(page):
        if command.startswith("#python"):
            argv = [sys.executable, "-c", command]
        else:
            argv = shlex.split(command)
            argv = [sys.executable, "-m", "kdlens", *argv[1:]] if argv[0] == "kdlens" else argv
            if argv[0] == "python":
                argv[0] = sys.executable
        res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert res.returncode == 0, f"{command}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        assert "Traceback" not in res.stderr, command
