"""The report's charts: altair (Vega-Lite) specs built from polars frames.

Every builder takes plain frames (the tables of :mod:`kdlens.analysis.engine` and
:mod:`kdlens.recommend.rank`, or frames with the same columns) and returns an altair
chart whose data is inlined as JSON values, so a spec renders with no file or
network access. A builder that cannot draw anything meaningful (one checkpoint,
a missing column) raises :class:`ChartUnavailable` with a sentence that the
report shows instead of an empty chart.

Column conventions: a *teacher* is one (run, checkpoint); its display label is
``"run / checkpoint"`` (:func:`teacher_label`).

The builders live in :mod:`.grid` (sweet spot, trajectories, Pareto front),
:mod:`.similarity` (class order, layout, heatmap, graph) and :mod:`.calibration`
(reliability, entropy); :mod:`.common` holds what they share.
"""

from kdlens.report.charts.calibration import entropy_chart, reliability_chart
from kdlens.report.charts.common import NO_TRAINING_TIME, ChartUnavailable
from kdlens.report.charts.grid import (
    TRAJECTORY_METRICS,
    pareto_chart,
    sweet_spot_chart,
    trajectory_chart,
)
from kdlens.report.charts.similarity import (
    MAX_AXIS_LABELS,
    MAX_NODE_LABELS,
    class_distance,
    class_layout,
    class_order,
    similarity_graph_chart,
    similarity_heatmap,
)
from kdlens.report.labels import teacher_label

__all__ = [
    "MAX_AXIS_LABELS",
    "MAX_NODE_LABELS",
    "NO_TRAINING_TIME",
    "TRAJECTORY_METRICS",
    "ChartUnavailable",
    "class_distance",
    "class_layout",
    "class_order",
    "entropy_chart",
    "pareto_chart",
    "reliability_chart",
    "similarity_graph_chart",
    "similarity_heatmap",
    "sweet_spot_chart",
    "teacher_label",
    "trajectory_chart",
]
