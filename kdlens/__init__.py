"""kdlens: which teacher checkpoint should you distill from?

The public API, named explicitly and loaded lazily (PEP 562): ``import kdlens`` imports
no numerical library, no altair and no torch; each name imports its module on first use.
The analyses need numpy, scipy, polars, pyarrow and scikit-learn; the report needs
altair; the training harness (``LogitsWriter``, ``kdlens.harness``) needs the ``torch``
extra.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from kdlens._version import __version__

# The public names, by the module that defines them, in the order of the pipeline.
_MODULES: dict[str, str] = {
    "errors": "KdlensError StoreError InputError",
    "store.format": "FORMAT_VERSION Batch Part arrow_schema",
    "store.writer": "CheckpointWriter write_logits",
    "store.reader": "LogitsStore open_store",
    "store.validate": "PartReport ValidationReport validate",
    "store.importing": "ImportedCheckpoint import_files",
    "store.arrays": "read_array_file",
    "store.mixture": "write_ensemble",
    "measures.softlabels": (
        "DEFAULT_OEMC_DELTA correct dark_mass effective_classes entropy log_dark_mass "
        "log_probs margin nckd_weight nll nontarget_entropy nontarget_log_probs "
        "nontarget_probs oemc oemc_share per_example probs target_prob tckd_weight"
    ),
    "measures.summary": "SoftLabelAccumulator SoftLabelSummary MEAN_COLUMNS",
    "measures.calibration": (
        "DEFAULT_N_BINS CalibrationAccumulator CalibrationResult "
        "TemperatureFitAccumulator expected_calibration_error fit_temperature nll_loss "
        "reliability_table"
    ),
    "measures.fidelity": "FidelityAccumulator FidelityResult fidelity predictive_kl top1_agreement",
    "measures.similarity": (
        "SimilarityAccumulator SimilarityResult similarity_matrix "
        "similarity_information instance_information similarity_from_probs "
        "similarity_estimate similarity_graph cluster_classes superclass_recovery "
        "reference_agreement write_graph write_edges_parquet ClassGraph read_hierarchy "
        "store_class_graph"
    ),
    "hypotheses.structure": "StructureTestResult structure_test structure_test_from_result",
    "hypotheses.controls": "CONTROL_KINDS control_log_probs make_controls",
    "hypotheses.compare": (
        "StudentComparison compare_students compare_stores KNOWLEDGE_DISTILLATION "
        "REGULARIZATION_EFFECT"
    ),
    "analysis.engine": "AnalysisResult analyze read_reference_probs",
    "_internal.progress": "NullProgress",
    "recommend.rank": (
        "DEFAULT_COLLAPSE_WEIGHT DEFAULT_TEMPERATURE SCORE_DEFINITION Recommendation "
        "checkpoint_signals recommend score_checkpoints"
    ),
    "recommend.ensemble": "EnsembleRecommendation select_ensemble",
    "report.build": "build_report",
    "report.data": "ReportData collect_report_data",
    "report.render": "export_charts",
    "harness.writer": "LogitsWriter",
}
#: name -> the module that defines it.
_PUBLIC: dict[str, str] = {n: f"kdlens.{m}" for m, names in _MODULES.items() for n in names.split()}

__all__ = sorted(["__version__", *_PUBLIC])

# The package kdlens.recommend shares its name with the function kdlens.recommend. Import
# the (light) package now and drop the attribute the import bound, so that the name always
# resolves through __getattr__ to the function, whatever submodule is imported later.
_importlib.import_module("kdlens.recommend")
del globals()["recommend"]


def __getattr__(name: str) -> _Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'kdlens' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if _TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from kdlens._internal.progress import NullProgress
    from kdlens.analysis.engine import AnalysisResult, analyze, read_reference_probs
    from kdlens.errors import InputError, KdlensError, StoreError
    from kdlens.harness.writer import LogitsWriter
    from kdlens.hypotheses.compare import (
        KNOWLEDGE_DISTILLATION,
        REGULARIZATION_EFFECT,
        StudentComparison,
        compare_stores,
        compare_students,
    )
    from kdlens.hypotheses.controls import CONTROL_KINDS, control_log_probs, make_controls
    from kdlens.hypotheses.structure import (
        StructureTestResult,
        structure_test,
        structure_test_from_result,
    )
    from kdlens.measures.calibration import (
        DEFAULT_N_BINS,
        CalibrationAccumulator,
        CalibrationResult,
        TemperatureFitAccumulator,
        expected_calibration_error,
        fit_temperature,
        nll_loss,
        reliability_table,
    )
    from kdlens.measures.fidelity import (
        FidelityAccumulator,
        FidelityResult,
        fidelity,
        predictive_kl,
        top1_agreement,
    )
    from kdlens.measures.similarity import (
        ClassGraph,
        SimilarityAccumulator,
        SimilarityResult,
        cluster_classes,
        instance_information,
        read_hierarchy,
        reference_agreement,
        similarity_estimate,
        similarity_from_probs,
        similarity_graph,
        similarity_information,
        similarity_matrix,
        store_class_graph,
        superclass_recovery,
        write_edges_parquet,
        write_graph,
    )
    from kdlens.measures.softlabels import (
        DEFAULT_OEMC_DELTA,
        correct,
        dark_mass,
        effective_classes,
        entropy,
        log_dark_mass,
        log_probs,
        margin,
        nckd_weight,
        nll,
        nontarget_entropy,
        nontarget_log_probs,
        nontarget_probs,
        oemc,
        oemc_share,
        per_example,
        probs,
        target_prob,
        tckd_weight,
    )
    from kdlens.measures.summary import MEAN_COLUMNS, SoftLabelAccumulator, SoftLabelSummary
    from kdlens.recommend.ensemble import EnsembleRecommendation, select_ensemble
    from kdlens.recommend.rank import (
        DEFAULT_COLLAPSE_WEIGHT,
        DEFAULT_TEMPERATURE,
        SCORE_DEFINITION,
        Recommendation,
        checkpoint_signals,
        recommend,
        score_checkpoints,
    )
    from kdlens.report.build import build_report
    from kdlens.report.data import ReportData, collect_report_data
    from kdlens.report.render import export_charts
    from kdlens.store.arrays import read_array_file
    from kdlens.store.format import FORMAT_VERSION, Batch, Part, arrow_schema
    from kdlens.store.importing import ImportedCheckpoint, import_files
    from kdlens.store.mixture import write_ensemble
    from kdlens.store.reader import LogitsStore, open_store
    from kdlens.store.validate import PartReport, ValidationReport, validate
    from kdlens.store.writer import CheckpointWriter, write_logits
