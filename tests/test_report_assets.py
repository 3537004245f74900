"""The report page's asset files: found as package resources, shipped, every placeholder filled."""

from __future__ import annotations

import fnmatch
from importlib import resources
from pathlib import Path

import pytest

from kdlens.report import render

ROOT = Path(__file__).resolve().parents[1]
ASSETS = resources.files("kdlens.report") / "assets"


def _asset_names() -> list[str]:
    return sorted(p.name for p in ASSETS.iterdir() if p.is_file())


def test_assets_are_package_resources() -> None:
    names = _asset_names()
    assert {"page.html", "report.css", "embed.js"} <= set(names)
    for name in names:
        assert render._asset_text(name).strip(), name


def test_every_asset_is_package_data() -> None:
    """An installed wheel has them: pyproject's package-data globs match every asset file."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = conf["tool"]["setuptools"]["package-data"]["kdlens"]
    for name in _asset_names():
        rel = f"report/assets/{name}"
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} is not package data"


def test_page_template_placeholders_fill() -> None:
    """Every ``${name}`` of the page is a valid placeholder and none survives substitution.

    (``render_report`` uses ``substitute``, which raises on any placeholder it does not
    fill, so the report tests fail if the template and the renderer drift apart.)
    """
    page = render._asset("page.html")
    named = {m.group("named") or m.group("braced") for m in page.pattern.finditer(page.template)}
    named.discard(None)
    assert named, "the page template has no placeholders"
    filled = page.substitute({k: f"<<{k}>>" for k in named})
    assert "${" not in filled
    for k in named:
        assert f"<<{k}>>" in filled
