"""The self-contained HTML report: which checkpoint to distill from, and why.

:func:`build_report` turns a logits store or an analysis directory into one HTML
file that opens offline: Vega, Vega-Lite and vega-embed are inlined from the
bundle shipped inside ``vl-convert-python`` (never fetched from a CDN), and every
chart's data is inlined as JSON. The page states the temperature, the confidence
bins and the OEMC threshold it was computed with.

Pipeline: :func:`collect_report_data` gathers the tables (analysis summary,
similarity, edges, the recommendation, and, when a store is at hand, a
reliability table and per-example entropy histograms of a few checkpoints, both
streamed batch by batch); :func:`report_charts` builds the altair charts;
:func:`render_report` writes the page; :func:`export_charts` writes PNG/SVG.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from kdlens._internal.atomic import write_bytes_atomic
from kdlens._internal.defaults import (
    N_BOOTSTRAP,
)
from kdlens.errors import InputError
from kdlens.report.data import (
    Progress,
    _quiet,
    collect_report_data,
)

__all__ = ["build_report"]


def build_report(
    source: Any,
    out: str | os.PathLike[str],
    *,
    temperature: float = 1.0,
    store: Any = None,
    recommendation: Any = None,
    students: Any = None,
    checkpoint: str | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    png_dir: str | os.PathLike[str] | None = None,
    title: str | None = None,
    progress: Progress = _quiet,
    ensemble: bool = False,
    engine: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
) -> Path:
    """Write the self-contained HTML report of a store or an analysis; return its path.

    Parameters are those of :func:`collect_report_data`, plus ``out`` (the HTML
    file, written atomically) and ``png_dir`` (also write every chart there as PNG
    and SVG). Analyse/recommend commands that already hold their results pass the
    ``AnalysisResult`` as ``source`` and the ``Recommendation`` as ``recommendation``.
    ``ensemble`` adds the ensemble teacher beside the recommendation (from the same pass).
    """
    out_path = Path(out)
    if out_path.is_dir():
        raise InputError(f"{out_path}: is a directory; give the path of the HTML file to write")
    charts = _import_charts_meanwhile()
    try:
        data = collect_report_data(
            source,
            temperature=temperature,
            store=store,
            recommendation=recommendation,
            students=students,
            checkpoint=checkpoint,
            n_bootstrap=n_bootstrap,
            title=title,
            progress=progress,
            ensemble=ensemble,
            engine=engine,
            workers=workers,
            scheduler=scheduler,
        )
    finally:
        # Also on an error: the process never exits with an import half done on a thread.
        charts.join()
    progress("building charts")
    from kdlens.report.render import export_charts, render_report
    from kdlens.report.sections import report_charts

    sections = report_charts(data)
    page = render_report(data, sections)
    write_bytes_atomic(out_path, page.encode("utf-8"))
    if png_dir is not None:
        progress(f"exporting charts to {png_dir}")
        export_charts(sections, png_dir)
    return out_path


def _import_charts_meanwhile() -> threading.Thread:
    """Import the chart stack (altair: ~0.4 s) on a thread while the pass runs: the
    pass's numpy work releases the interpreter and rarely fills every core. Only
    :mod:`kdlens.report.charts` (altair, numpy, polars), whose modules the pass never
    imports, so the two threads never wait on each other's module locks; an import
    error is left for the main thread's own import to raise."""

    def run() -> None:
        try:
            import kdlens.report.charts  # noqa: F401
        except Exception:  # noqa: BLE001 - re-raised by the main thread's import
            pass

    t = threading.Thread(target=run, name="kdlens-report-charts", daemon=True)
    t.start()
    return t
