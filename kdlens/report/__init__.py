"""The offline HTML report (altair charts, Vega inlined): data, sections, rendering.

Imported lazily by ``kdlens``, and lazy itself: altair loads only when a chart is
built, so :func:`build_report` can import it on a thread while its pass runs.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

_PUBLIC = {
    "ANALYSIS_TABLES": "kdlens.report.data",
    "ReportData": "kdlens.report.data",
    "build_report": "kdlens.report.build",
    "collect_report_data": "kdlens.report.data",
    "export_charts": "kdlens.report.render",
    "render_report": "kdlens.report.render",
    "report_charts": "kdlens.report.sections",
}

__all__ = [
    "ANALYSIS_TABLES",
    "ReportData",
    "build_report",
    "collect_report_data",
    "export_charts",
    "render_report",
    "report_charts",
]


def __getattr__(name: str) -> _Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'kdlens.report' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if _TYPE_CHECKING:
    from kdlens.report.build import build_report
    from kdlens.report.data import ANALYSIS_TABLES, ReportData, collect_report_data
    from kdlens.report.render import export_charts, render_report
    from kdlens.report.sections import report_charts
