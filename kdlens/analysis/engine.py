"""``analyze``: every soft-label measure of every checkpoint of a store, in one pass per part.

For each part (run x checkpoint x split) the logits are read one bounded batch at
a time; each batch goes through one log-softmax pass
(:mod:`kdlens.analysis.passes`) whose per-example columns feed
the streaming accumulators (soft-label means, per-class sums, calibration
histogram), the class-similarity accumulator of :mod:`kdlens.measures.similarity`, a
bounded hash-chosen sample for the temperature fit and, optionally, the
per-example Parquet file. Memory is bounded by the batch size and K^2.

Outputs (polars frames of :class:`AnalysisResult`):

- ``summary``: one row per run x checkpoint x split with every scalar;
- ``classes``: per class per part (count, accuracy, dark mass, SI_c, II_c, ...);
- ``similarity``: the class-similarity matrix S in long form (off-diagonal);
- ``edges``: the sparsified similarity graph (top-k neighbours per class).

Conventions: soft-label quantities (entropy, dark mass, S, SI, II, OEMC) are at
the requested temperature T, recorded in every table; accuracy, NLL, margin and
ECE are at T = 1 (the teacher's own predictions). ``fitted_temperature`` is the
T minimising held-out NLL, fitted on the ``val`` split of the same checkpoint
when the analysis covers one (``fitted_temperature_split`` says which split;
``fitted_temperature_at_bound`` flags a fit that ended at a bound of the search);
``nll_fitted`` is each split's NLL at that temperature (on the fit's id-hashed sample
of at most ``max(2000, 2e6 / K)`` examples, the whole split when smaller).
``reference_kl`` is ``KL(p_ref || p_T)`` averaged over examples.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kdlens._internal.atomic import staged_dir
from kdlens._internal.checks import check_fraction, check_positive_int, check_temperature
from kdlens._internal.defaults import N_PERMUTATIONS, TOP_K
from kdlens._internal.lock import locked_output
from kdlens.analysis.examples_file import ExamplesWriter
from kdlens.analysis.executors import engine_spec
from kdlens.analysis.parts import fitted_temperatures, select_parts
from kdlens.analysis.passes import CheckOptions, Extra, PartPlan, PartResult, run_pass
from kdlens.analysis.reference import ReferenceExtra, _Reference, read_reference_probs
from kdlens.analysis.tables import PartTables, concat, part_tables
from kdlens.errors import InputError
from kdlens.measures.calibration import DEFAULT_N_BINS
from kdlens.measures.softlabels import DEFAULT_OEMC_DELTA
from kdlens.store.format import Batch, Part
from kdlens.store.fs import StorePath, store_path
from kdlens.store.reader import LogitsStore, open_store

__all__ = [
    "AnalysisRequest",
    "AnalysisResult",
    "OUTPUT_FILES",
    "analyze",
    "analyze_into",
    "read_reference_probs",
]

#: Neighbours kept per class in the ``edges`` table.
DEFAULT_TOP_K = TOP_K


# --------------------------------------------------------------------------- result


@dataclass
class AnalysisResult:
    """The tables of one analysis; :meth:`write` saves them as Parquet."""

    summary: pl.DataFrame
    classes: pl.DataFrame
    similarity: pl.DataFrame
    edges: pl.DataFrame
    temperature: float
    examples_path: StorePath | None = None
    calibration: pl.DataFrame = field(default_factory=pl.DataFrame)

    TABLES = ("summary", "classes", "similarity", "edges", "calibration")

    @locked_output("directory", directory=False)
    def write(self, directory: str | os.PathLike[str]) -> dict[str, StorePath]:
        """Write ``<table>.parquet`` for each table into ``directory``: built beside it and
        moved in when complete (:func:`~kdlens._internal.atomic.staged_dir`)."""
        out = _check_directory(directory)
        with staged_dir(out) as stage:
            for name in self.TABLES:
                df: pl.DataFrame = getattr(self, name)
                df.write_parquet(stage / f"{name}.parquet")
        return {name: out / f"{name}.parquet" for name in self.TABLES}


#: The files an analysis directory holds; a re-run removes those it no longer writes.
OUTPUT_FILES = (*(f"{t}.parquet" for t in AnalysisResult.TABLES), "examples.parquet")


@locked_output("directory", directory=False)  # held for the whole pass, not just the write
def analyze_into(
    directory: str | os.PathLike[str], store: Any, *, per_example: bool = False, **options: Any
) -> tuple[AnalysisResult, dict[str, StorePath]]:
    """:func:`analyze` ``store`` and write its tables (and ``examples.parquet`` when
    ``per_example``) into ``directory`` as one transaction.

    Everything is built beside ``directory`` and moved in when complete: a failure leaves
    the directory as it was, and a re-run leaves no file of an earlier analysis behind
    (:data:`OUTPUT_FILES`; other files in the directory stay). ``options`` are those of
    :func:`analyze` except ``per_example_path``. Returns the result and the table paths.
    """
    out = _check_directory(directory)
    with staged_dir(out, remove=OUTPUT_FILES) as stage:
        examples = stage / "examples.parquet" if per_example else None
        result = analyze(store, per_example_path=examples, **options)
        result.write(stage)
    if result.examples_path is not None:
        result.examples_path = out / "examples.parquet"
    return result, {name: out / f"{name}.parquet" for name in AnalysisResult.TABLES}


def _check_directory(directory: str | os.PathLike[str]) -> StorePath:
    out = store_path(directory)  # a URL (s3://bucket/analysis) keeps its scheme
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory; choose another directory")
    return out


# --------------------------------------------------------------------------- analysis


@dataclass
class AnalysisRequest:
    """analyze's validated options: what it needs from each part, and how it finishes.

    Commands that share the pass with analyze (``kdlens report``) merge
    :meth:`plans` with their own and call :meth:`finish` on the results.
    """

    st: LogitsStore
    temperature: float
    delta: float
    n_bins: int
    n_permutations: int
    top_k: int
    check: CheckOptions
    sup: np.ndarray | None = None
    ref: _Reference | None = None
    parts: list[Part] = field(default_factory=list)

    def plans(self) -> list[PartPlan]:
        k, t, ref = self.st.num_classes, self.temperature, self.ref
        extras: dict[str, Callable[[], Extra]] = {}
        if ref is not None:
            # A partial, not a lambda: worker processes unpickle the plan.
            extras["reference"] = functools.partial(ReferenceExtra, ref, k, t)
        null_at = {t} if self.n_permutations > 0 else set()
        return [PartPlan(p, {t: True}, True, dict(extras), set(null_at)) for p in self.parts]

    def finish(self, results: Sequence[PartResult], examples_path: Path | None) -> AnalysisResult:
        wanted = {(p.run, p.checkpoint, p.split) for p in self.parts}
        outs = [
            part_tables(
                r,
                class_names=self.st.class_names,
                temperature=self.temperature,
                n_permutations=self.n_permutations,
                sup=self.sup,
                top_k=self.top_k,
                drop_nonfinite=self.check.drop_nonfinite,
                use_predicted_labels=self.check.use_predicted_labels,
            )
            for r in results
            if r.plan.key in wanted
        ]
        _fill_fitted_temperature(outs)
        return AnalysisResult(
            summary=pl.DataFrame([o.row for o in outs], infer_schema_length=None),
            classes=concat([o.classes for o in outs]),
            similarity=concat([o.similarity for o in outs]),
            edges=concat([o.edges for o in outs]),
            calibration=concat([o.calibration for o in outs]),
            temperature=self.temperature,
            examples_path=examples_path,
        )


def analysis_request(
    store: Any,
    *,
    temperature: float = 1.0,
    splits: Sequence[str] | None = None,
    oemc_delta: float = DEFAULT_OEMC_DELTA,
    n_bins: int = DEFAULT_N_BINS,
    hierarchy: str | os.PathLike[str] | None = None,
    reference_probs: str | os.PathLike[str] | None = None,
    n_permutations: int = N_PERMUTATIONS,
    drop_nonfinite: bool = False,
    use_predicted_labels: bool = False,
    top_k: int = DEFAULT_TOP_K,
) -> AnalysisRequest:
    """Validate :func:`analyze`'s options (before any logits are read)."""
    t = check_temperature(temperature)
    delta = check_fraction(oemc_delta, name="oemc_delta")
    check_positive_int(n_bins, name="n_bins")
    check_positive_int(n_permutations, name="n_permutations", minimum=0)
    st = open_store(store)
    k = st.num_classes
    parts = select_parts(st, splits)
    from kdlens.measures.similarity import read_hierarchy

    sup = read_hierarchy(hierarchy, k, st.class_names)[0] if hierarchy is not None else None
    ref = read_reference_probs(reference_probs, k) if reference_probs is not None else None
    check = CheckOptions(drop_nonfinite=drop_nonfinite, use_predicted_labels=use_predicted_labels)
    return AnalysisRequest(
        st, t, delta, int(n_bins), int(n_permutations), int(top_k), check, sup, ref, parts
    )


@locked_output("per_example_path", parent=True)
def analyze(
    store: Any,
    *,
    temperature: float = 1.0,
    splits: Sequence[str] | None = None,
    oemc_delta: float = DEFAULT_OEMC_DELTA,
    n_bins: int = DEFAULT_N_BINS,
    hierarchy: str | os.PathLike[str] | None = None,
    reference_probs: str | os.PathLike[str] | None = None,
    per_example_path: str | os.PathLike[str] | None = None,
    n_permutations: int = N_PERMUTATIONS,
    drop_nonfinite: bool = False,
    use_predicted_labels: bool = False,
    top_k: int = DEFAULT_TOP_K,
    batch_rows: int | None = None,
    progress: Any = None,
    engine: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
) -> AnalysisResult:
    """Analyse every run x checkpoint x split of a logits store.

    Parameters
    ----------
    store : a :class:`~kdlens.store.reader.LogitsStore` or anything :func:`open_store` takes.
    temperature : T of the soft-label measures (recorded in every table).
    splits : analyse only these splits (default: all).
    oemc_delta : dark-mass threshold of the OEMC share.
    n_bins : equal-width confidence bins of ECE (column ``ece_bins``).
    hierarchy : CSV ``class,superclass``; adds ``superclass_ari`` / ``superclass_nmi``.
    reference_probs : ``.npy``/``.npz`` reference probabilities; adds
        ``reference_similarity_spearman`` (Spearman between the symmetrised similarity
        matrices over class pairs: which way a confusion goes is mostly noise, see
        :mod:`kdlens.measures.similarity`) and ``reference_kl`` (mean KL(p_ref || p_T)).
    per_example_path : stream every per-example quantity to this Parquet file.
    n_permutations : permutations of the structure test (0 skips it).
    drop_nonfinite : skip rows with NaN/Inf logits instead of refusing them.
    use_predicted_labels : use the top-1 prediction where a label is missing.
    top_k : neighbours per class in the ``edges`` table.
    batch_rows : rows per read batch (default: the store's bounded default).
    progress : a rich ``Progress``-like object (``add_task``/``advance``) or a
        callable ``(done_rows, total_rows, description)``; nothing by default.
    engine, workers, scheduler : where the pass runs (:mod:`kdlens.analysis.executors`):
        ``local`` in this process, or ``workers`` processes; ``dask`` on the cluster at
        ``scheduler`` or a ``LocalCluster`` of ``workers`` processes on 127.0.0.1. The
        results are bit-identical whichever runs it.
    """
    spec = engine_spec(engine, workers, scheduler)
    req = analysis_request(
        store,
        temperature=temperature,
        splits=splits,
        oemc_delta=oemc_delta,
        n_bins=n_bins,
        hierarchy=hierarchy,
        reference_probs=reference_probs,
        n_permutations=n_permutations,
        drop_nonfinite=drop_nonfinite,
        use_predicted_labels=use_predicted_labels,
        top_k=top_k,
    )
    writer = ExamplesWriter(per_example_path) if per_example_path is not None else None
    t = req.temperature

    def sink(part: Part, b: Batch, cols: dict[float, dict[str, np.ndarray]]) -> None:
        assert writer is not None
        writer.write(part, b.example_ids, b.labels.astype(np.int64), t, cols[t])

    try:
        results = run_pass(
            req.st,
            req.plans(),
            delta=req.delta,
            n_bins=req.n_bins,
            check=req.check,
            batch_rows=batch_rows,
            progress=progress,
            description="analyze",
            sink=sink if writer is not None else None,
            engine=spec,
        )
        result = req.finish(results, None)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        result.examples_path = writer.close()
    return result


def _fill_fitted_temperature(outs: list[PartTables]) -> None:
    """Fitted T and NLL after the fit, by the one rule of :mod:`kdlens.analysis.parts`."""
    by_key: dict[tuple[str, str], dict[str, PartTables]] = {}
    for o in outs:
        by_key.setdefault((o.row["run"], o.row["checkpoint"]), {})[o.row["split"]] = o
    for per_split in by_key.values():
        fits = fitted_temperatures({s: o.tfit for s, o in per_split.items()})
        for split, o in per_split.items():
            f = fits[split]
            o.row["fitted_temperature"] = f.temperature
            o.row["fitted_temperature_split"] = f.split
            o.row["fitted_temperature_at_bound"] = f.at_bound
            # NLL after the temperature fit (what `recommend` ranks by), on the same
            # id-hashed sample the fit uses.
            o.row["nll_fitted"] = f.nll
