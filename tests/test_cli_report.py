"""``kdlens report`` and ``kdlens demo`` through the typer app."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdlens.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from test_report import build_fixture

    return build_fixture(tmp_path_factory.mktemp("cli"), epochs=(1, 4), n=120)


def test_report_from_analysis_dir(fixture_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    store, ana = fixture_dirs
    out = tmp_path / "r.html"
    res = runner.invoke(app, ["report", str(ana), "-o", str(out), "--store", str(store), "-q"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().endswith("r.html")
    assert out.is_file() and "vegaEmbed" in out.read_text()


def test_report_from_store(fixture_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    store, _ = fixture_dirs
    out = tmp_path / "r.html"
    res = runner.invoke(
        app,
        ["report", str(store), "-o", str(out), "--bootstrap", "10", "--checkpoint", "bs256/ep4"],
    )
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "bs256 / ep4" in text and "Reliability" in text


def test_report_errors_are_one_line(fixture_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    _, ana = fixture_dirs
    broken = tmp_path / "ana"
    broken.mkdir()
    (broken / "summary.parquet").write_bytes((ana / "summary.parquet").read_bytes())
    res = runner.invoke(app, ["report", str(broken), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 2
    assert "classes.parquet" in res.output and "kdlens analyze" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "nope"), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "no such file" in res.output
    assert not (tmp_path / "r.html").exists()


def test_help_texts() -> None:
    for cmd in ("report", "demo"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0
        assert "--out" in res.output


@pytest.mark.slow
def test_demo_quick(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    res = runner.invoke(app, ["demo", "--quick", "-o", str(tmp_path / "demo"), "-q"])
    assert res.exit_code == 0, res.output
    report = Path(res.stdout.strip().splitlines()[-1])
    assert report == tmp_path / "demo" / "report.html" and report.is_file()
    assert (tmp_path / "demo" / "analysis" / "summary.parquet").is_file()
    assert (tmp_path / "demo" / "recommendation.json").is_file()
    text = report.read_text()
    assert "Distill from" in text and "Not shown" not in text
