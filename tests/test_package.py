"""Package-level promises: no torch for analysis, every command documented, docs that run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import kdlens
from kdlens.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_analysis_api_imports_without_torch() -> None:
    code = (
        "import sys; import kdlens, kdlens.cli; "
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, (
        f"importing kdlens pulled in torch: {res.stdout[:200]}{res.stderr[-500:]}"
    )


def test_flat_public_api() -> None:
    assert kdlens.__version__
    for name in kdlens.__all__:
        assert hasattr(kdlens, name), name
    for name in ("open_store", "CheckpointWriter", "validate", "import_files"):
        assert name in kdlens.__all__


def _commands() -> list[tuple[str, Any]]:
    # typer may ship its own click: rely on the command objects' shape, not their class.
    return sorted(typer.main.get_command(app).commands.items())  # type: ignore[attr-defined]


def test_every_command_and_option_has_help() -> None:
    missing = []
    for name, cmd in _commands():
        if not (cmd.help or "").strip():
            missing.append(f"command {name}")
        for p in cmd.params:
            is_option = getattr(p, "param_type_name", "") == "option"
            if is_option and not (getattr(p, "help", "") or "").strip() and p.name != "help":
                missing.append(f"{name} {p.opts[0]}")
    assert not missing, f"undocumented: {missing}"


def test_every_command_appears_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    absent = [name for name, _ in _commands() if not re.search(rf"kdlens {name}\b", readme)]
    assert not absent, f"commands missing from README.md: {absent}"


def test_version_and_module_entry_point() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and kdlens.__version__ in res.output
    out = subprocess.run([sys.executable, "-m", "kdlens", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "validate" in out.stdout


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(
        r"<!-- test-command -->\s*```bash\n(.+?)\n```\s*<!-- /test-command -->", readme, re.S
    )
    assert block, "README.md lacks the marked test command"
    assert "README.md" in (REPO / ".ci" / "run").read_text()


def test_data_schema_readme_example_runs(tmp_path: Path) -> None:
    text = (REPO / "data_schema" / "README.md").read_text()
    code = re.findall(r"```python\n(.+?)```", text, re.S)
    assert code
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for snippet in code:
        res = subprocess.run(
            [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, env=env
        )
        assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_have_a_docstring(path: Path) -> None:
    assert path.read_text().lstrip().startswith(('"""', "#!")), f"{path.name}: say what it does"


def test_own_training_loop_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "mine"
    res = subprocess.run(
        [sys.executable, str(REPO / "examples" / "own_training_loop.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    report = kdlens.validate(out)
    assert report.ok and report.checkpoints >= 2, report.problems


def test_gpu_benchmark_example_runs_tiny_on_cpu(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    cmd = [
        sys.executable,
        str(REPO / "examples" / "gpu_resnet20_bench.py"),
        "--device",
        "cpu",
        "--n",
        "128",
        "--steps",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "32",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["device"] == "cpu" and out["train_samples_per_s"] > 0
    assert 0 <= out["dump_overhead"] < 1
