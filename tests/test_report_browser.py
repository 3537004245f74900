"""Open the report in a real headless browser, offline, and check every chart renders.

Chromium (Debian package ``chromium``, binary ``chromium``) loads the report
over ``file://`` with name resolution disabled, so a script or font fetched from
the network would fail. A probe script injected at the top of a copy of the page
records ``console.error``, uncaught errors and every resource the page loads; once
the report's own embed promises settle (the ``kdlens-rendered`` event) it writes
what it saw, with the size of each chart's SVG, into the DOM, which ``--dump-dom``
prints. The test skips only when chromium is absent outside CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kdlens.report.build import build_report

CHART_KEYS = {
    "sweet_spot",
    "trajectories",
    "pareto",
    "similarity",
    "graph",
    "reliability",
    "entropy",
}

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
    "--hide-scrollbars",
    "--window-size=1280,1000",
    "--virtual-time-budget=15000",
]

PROBE = """<script>
(function () {
  var seen = { errors: [], resources: [] };
  var orig = console.error;
  console.error = function () {
    seen.errors.push(Array.prototype.map.call(arguments, String).join(" "));
    return orig.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    seen.errors.push("uncaught: " + e.message);
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    seen.errors.push("unhandled rejection: " + e.reason);
  });
  document.addEventListener("kdlens-rendered", function () {
    performance.getEntriesByType("resource").forEach(function (r) { seen.resources.push(r.name); });
    seen.status = window.kdlensStatus;
    seen.charts = {};
    document.querySelectorAll("div.chart").forEach(function (el) {
      var g = el.querySelector("svg, canvas");
      var r = g ? g.getBoundingClientRect() : { width: 0, height: 0 };
      var card = el.closest("section.card");
      seen.charts[el.getAttribute("data-chart")] = {
        graphic: g ? g.tagName.toLowerCase() : null, width: r.width, height: r.height,
        marks: el.querySelectorAll("path, rect, line, text").length,
        overflow: card ? card.scrollWidth - card.clientWidth : -1
      };
    });
    var pre = document.createElement("pre");
    pre.id = "kdlens-probe";
    pre.textContent = JSON.stringify(seen);
    document.body.appendChild(pre);
  });
})();
</script>"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _chromium()
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is required in CI (apt-get install -y chromium)")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return path


def _run(chromium: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={cwd / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cwd,
    )


def _probe(chromium: str, report: Path, tmp_path: Path) -> dict[str, Any]:
    """Render ``report`` with the probe injected; return what the probe saw."""
    probed = tmp_path / f"probed-{report.name}"
    probed.write_text(report.read_text().replace("<head>", "<head>\n" + PROBE, 1))
    proc = _run(chromium, "--dump-dom", probed.as_uri(), cwd=tmp_path)
    m = re.search(r'<pre id="kdlens-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"the page never finished rendering; stderr tail:\n{proc.stderr[-2000:]}"
    seen: dict[str, Any] = json.loads(
        m.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )
    return seen


def test_report_renders_offline_in_chromium(chromium: str, tmp_path: Path) -> None:
    from test_report import build_fixture

    store, ana = build_fixture(tmp_path)
    report = build_report(ana, tmp_path / "report.html", store=store, n_bootstrap=20)
    seen = _probe(chromium, report, tmp_path)

    assert seen["errors"] == [], seen["errors"]
    assert seen["status"]["failed"] == []
    assert set(seen["charts"]) == CHART_KEYS
    for key, c in seen["charts"].items():
        assert c["graphic"] in ("svg", "canvas"), key
        assert c["width"] > 50 and c["height"] > 50, (key, c)
        assert c["marks"] > 5, (key, c)
        assert c["overflow"] <= 1, f"{key} is wider than its card at 1280 px: {c}"
    remote = [r for r in seen["resources"] if not r.startswith(("file:", "data:", "blob:"))]
    assert remote == [], f"the report fetched {remote}"

    shot = tmp_path / "shot.png"
    proc = _run(
        chromium, f"--screenshot={shot}", "--window-size=1280,2400", report.as_uri(), cwd=tmp_path
    )
    assert shot.is_file() and shot.stat().st_size > 20_000, proc.stderr[-2000:]


def test_hundred_classes_without_epochs_fit_their_cards(chromium: str, tmp_path: Path) -> None:
    """CIFAR-100-like imported models: K = 100, no epochs, one (test) split."""
    from test_report import write_imported_store

    store = write_imported_store(tmp_path / "store", k=100, n=400)
    report = build_report(store, tmp_path / "c100.html", n_bootstrap=0)
    seen = _probe(chromium, report, tmp_path)

    assert seen["errors"] == [] and seen["status"]["failed"] == [], seen
    # no fake trajectory joining models in name order; a sentence instead
    assert "trajectories" not in seen["charts"] and "sweet_spot" not in seen["charts"]
    assert {"similarity", "graph"} <= set(seen["charts"])
    for key, c in seen["charts"].items():
        assert c["width"] > 50 and c["height"] > 50, (key, c)
        assert c["overflow"] <= 1, f"{key} is wider than its card at 1280 px: {c}"
