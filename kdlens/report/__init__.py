"""The offline HTML report (altair charts, Vega inlined): data, sections, rendering.

Imported lazily by ``kdlens``: altair loads only when a report or chart is built.
"""

from kdlens.report.build import build_report
from kdlens.report.data import ANALYSIS_TABLES, ReportData, collect_report_data
from kdlens.report.render import export_charts, render_report
from kdlens.report.sections import report_charts

__all__ = [
    "ANALYSIS_TABLES",
    "ReportData",
    "build_report",
    "collect_report_data",
    "export_charts",
    "render_report",
    "report_charts",
]
