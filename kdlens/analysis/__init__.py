"""``kdlens analyze``: every measure per run x checkpoint x split, in one streamed pass."""

from kdlens.analysis.engine import AnalysisResult, analyze, read_reference_probs

__all__ = ["AnalysisResult", "analyze", "read_reference_probs"]
