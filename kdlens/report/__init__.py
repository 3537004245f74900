"""The offline HTML report (altair charts, Vega inlined): data, sections, rendering.

Imported lazily by ``kdlens``: altair loads only when a report or chart is built.
"""

from kdlens.report.build import (
    ANALYSIS_TABLES,
    ReportData,
    build_report,
    collect_report_data,
    export_charts,
    render_report,
    report_charts,
)

__all__ = [
    "ANALYSIS_TABLES",
    "ReportData",
    "build_report",
    "collect_report_data",
    "export_charts",
    "render_report",
    "report_charts",
]
