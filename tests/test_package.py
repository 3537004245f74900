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


#: Libraries that `import kdlens` and every `--help` must not import: they cost seconds
#: (pydantic: typer coerces option values through it, 0.2 s; see kdlens/cli/store_cmd.py).
HEAVY = ("numpy", "polars", "pyarrow", "scipy", "sklearn", "altair", "torch", "pydantic")


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def _heavy_after(code: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The heavy top-level packages in sys.modules after ``code`` ran in a fresh python."""
    probe = (
        f"{code}\nimport sys, json\nheavy = {HEAVY + extra!r}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))"
    )
    res = _run_python(probe)
    assert res.returncode == 0, res.stderr[-2000:]
    return list(json.loads(res.stdout.strip().splitlines()[-1]))


def test_import_kdlens_imports_neither_altair_nor_torch() -> None:
    # The promise of issue 9, verbatim.
    res = _run_python(
        "import kdlens, sys; assert 'altair' not in sys.modules and 'torch' not in sys.modules"
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_the_reports_pass_side_imports_no_altair() -> None:
    # build_report imports altair on a thread while its pass runs; that only pays if the
    # modules the pass needs (build, data, gather) do not import it first.
    res = _run_python(
        "import kdlens.report, kdlens.report.build, kdlens.report.data, kdlens.report.gather, "
        "sys; assert 'altair' not in sys.modules"
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_analyze_of_a_store_imports_neither_pandas_nor_torch(tmp_path: Path) -> None:
    # pyarrow's to_numpy and fill_null import pandas when it is installed (a third of a
    # second of every command's start); the store's reader takes buffer views instead.
    import numpy as np

    from kdlens.store.writer import write_logits

    rng = np.random.default_rng(0)
    path = tmp_path / "s.parquet"
    write_logits(
        path,
        rng.standard_normal((300, 5)),
        split="train",
        run="r",
        checkpoint="c",
        labels=rng.integers(0, 5, 300),
    )
    code = f"from kdlens import analyze\nanalyze({str(path)!r})"
    assert set(_heavy_after(code, extra=("pandas", "torch"))) & {"pandas", "torch"} == set()


def test_import_kdlens_and_the_cli_import_no_heavy_library() -> None:
    assert _heavy_after("import kdlens, kdlens.cli") == []


def test_the_integrations_package_imports_nothing_heavy() -> None:
    # Its submodules import Lightning or transformers; the package itself must not.
    assert _heavy_after("import kdlens.integrations") == []


def test_help_of_every_command_imports_no_heavy_library() -> None:
    # Not a timed test: what makes --help slow is importing these, so assert that none
    # was imported, for the top level and for every command's --help.
    code = (
        "from typer.main import get_command\n"
        "from kdlens.cli import app\n"
        "names = sorted(get_command(app).commands)\n"
        "assert len(names) > 5, names\n"
        "for argv in [['--help']] + [[n, '--help'] for n in names]:\n"
        "    try:\n"
        "        app(argv, prog_name='kdlens')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (argv, exc.code)\n"
    )
    assert _heavy_after(code) == []


def test_module_entry_point_help_imports_no_heavy_library() -> None:
    code = (
        "import runpy, sys\n"
        "sys.argv = ['kdlens', 'analyze', '--help']\n"
        "try:\n"
        "    runpy.run_module('kdlens', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
    )
    assert _heavy_after(code) == []


def test_the_heavy_check_can_fail() -> None:
    assert "polars" in _heavy_after("import kdlens\nkdlens.open_store")


def test_every_public_name_resolves_and_is_listed() -> None:
    listed = dir(kdlens)
    for name in kdlens.__all__:
        assert name in listed, name
        assert getattr(kdlens, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        kdlens.no_such_name  # noqa: B018


def test_docs_api_names_every_public_name() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    assert [n for n in kdlens.__all__ if f"`{n}`" not in text] == []


@pytest.mark.parametrize(
    "first",
    [
        "import kdlens",
        "import kdlens.recommend",
        "import kdlens.recommend.rank",
        "import kdlens.recommend.students",
        "from kdlens.recommend import rank",
        "import kdlens.report",
        "import kdlens.analysis.engine",
    ],
)
def test_kdlens_recommend_is_the_function_whatever_was_imported_first(first: str) -> None:
    res = _run_python(
        f"{first}\n"
        "import importlib, kdlens\n"
        "from kdlens import recommend\n"
        "rank = importlib.import_module('kdlens.recommend.rank')\n"
        "assert kdlens.recommend is rank.recommend, kdlens.recommend\n"
        "assert recommend is rank.recommend, recommend\n"
    )
    assert res.returncode == 0, res.stderr[-2000:]


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
