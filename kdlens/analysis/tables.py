"""From one part's accumulators to analyze's tables: the summary row, the per-class
table, the similarity matrix in long form, the sparsified graph and the reliability table."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from kdlens._internal.defaults import SIMILARITY_TABLE_FULL_MAX_K, SIMILARITY_TABLE_TOP
from kdlens.errors import InputError
from kdlens.measures.calibration import TemperatureFitAccumulator
from kdlens.store.format import Part

__all__ = ["PartTables", "part_tables"]


@dataclass
class PartTables:
    """analyze's rows of one part (the fitted temperature is filled in afterwards)."""

    row: dict[str, Any]
    classes: pl.DataFrame
    similarity: pl.DataFrame
    edges: pl.DataFrame
    calibration: pl.DataFrame
    tfit: TemperatureFitAccumulator | None


def part_tables(
    result: Any,
    *,
    class_names: list[str] | None,
    temperature: float,
    n_permutations: int,
    sup: np.ndarray | None,
    top_k: int,
    drop_nonfinite: bool,
    use_predicted_labels: bool,
) -> PartTables:
    """analyze's tables of one :class:`~kdlens.analysis.passes.PartResult` at ``temperature``."""
    part: Part = result.part
    ms = result.sets[temperature]
    soft, sim, stats = ms.soft, ms.sim, result.stats
    k = soft.num_classes
    where = f"run {part.run!r} checkpoint {part.checkpoint!r} split {part.split!r}"
    if soft.n == 0:
        raise InputError(
            f"{where}: no rows to analyse (empty checkpoint"
            + (", or every row dropped as non-finite)" if stats.get("nonfinite") else ")")
        )
    summ = soft.finalize()
    res = sim.finalize(warn_absent=False)  # warned below, naming the part
    absent = np.flatnonzero(summ.class_counts == 0)
    if absent.size:
        warnings.warn(
            f"{where}: {absent.size} of {k} classes have no example (first: {int(absent[0])}); "
            "class-level measures use the present classes only",
            stacklevel=4,
        )
    row: dict[str, Any] = {
        "run": part.run,
        "checkpoint": part.checkpoint,
        "epoch": part.epoch,
        "step": part.step,
        "batch_size": part.batch_size,
        "split": part.split,
    }
    row.update(summ.as_row())
    row["n_nonfinite_dropped"] = stats.get("nonfinite", 0) if drop_nonfinite else 0
    row["n_predicted_labels"] = stats.get("unlabeled", 0) if use_predicted_labels else 0
    si = float(res.similarity_information)
    row["similarity_information"] = si
    row["similarity_information_normalized"] = si / math.log(k - 1) if k > 2 else 0.0
    row["instance_information"] = float(res.instance_information)
    row.update(_structure(res, n_permutations))
    present = summ.class_counts > 0
    sparse = hasattr(res, "background")  # the bounded large-K similarity
    row["similarity_method"] = f"sparse top-{res.top} per example" if sparse else "dense"
    if sparse and (sup is not None or result.extras.get("reference") is not None):
        warnings.warn(
            f"{where}: K = {k:,} uses the bounded similarity path; superclass recovery and "
            "reference agreement need the dense K x K matrix and are left out",
            stacklevel=4,
        )
    if sup is not None and not sparse:
        row.update(_superclass(res, sup, present))
    ref = result.extras.get("reference")
    if ref is not None and not sparse:
        row.update(_reference_columns(res, ref, present, soft.n))
    keys = {"run": part.run, "checkpoint": part.checkpoint, "split": part.split}
    classes = summ.classes_frame(class_names).with_columns(
        pl.Series("si", np.asarray(res.si_per_class, np.float64)).fill_nan(None),
        pl.Series("ii", np.asarray(res.ii_per_class, np.float64)).fill_nan(None),
        pl.lit(temperature).alias("temperature"),
    )
    calib = summ.calibration.table if summ.calibration is not None else pl.DataFrame()
    sim_long = (
        _long_from(res.top_entries(_table_top(k)), temperature)
        if sparse
        else _long_similarity(np.asarray(res.matrix), temperature)
    )
    # How much of S the table holds: all of it up to SIMILARITY_TABLE_FULL_MAX_K classes.
    kept = np.bincount(sim_long["source"].to_numpy(), sim_long["weight"].to_numpy(), k)
    row["similarity_table_top"] = int(min(k - 1, _table_top(k)))
    row["similarity_table_mass"] = float(kept[present].mean()) if present.any() else None
    return PartTables(
        row=row,
        classes=with_keys(classes, keys),
        similarity=with_keys(sim_long, keys),
        edges=with_keys(_edges(res, top_k, present, temperature, sparse), keys),
        calibration=with_keys(calib, keys) if calib.height else calib,
        tfit=result.tfit,
    )


def _reference_columns(res: Any, ref: Any, present: np.ndarray, n: int) -> dict[str, float]:
    from kdlens.measures.similarity import reference_agreement

    s_ref = ref.sim.finalize(warn_absent=False).matrix
    rho = reference_agreement(
        _present(res.matrix, present), _present(s_ref, present), symmetric=True
    )
    return {"reference_similarity_spearman": float(rho), "reference_kl": ref.kl_sum / n}


def concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def with_keys(df: pl.DataFrame, keys: dict[str, str]) -> pl.DataFrame:
    if df.height == 0 and not df.columns:
        return df
    return df.select([pl.lit(v).alias(c) for c, v in keys.items()] + [pl.all()])


def _present(m: np.ndarray, present: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return m[np.ix_(present, present)] if not present.all() else m


def _structure(res: Any, n_permutations: int) -> dict[str, Any]:
    if n_permutations == 0:
        return {"structure_p_value": float("nan"), "structure_effect": float("nan")}
    from kdlens.hypotheses.structure import structure_test_from_result, structure_verdict

    st = structure_test_from_result(res, n_permutations=n_permutations, seed=0)
    return {
        "structure_p_value": float(st.p_value),
        "structure_effect": float(st.effect_size),
        "structure_permutations": int(st.n_permutations),
        # which null ran: "analytic" (closed-form moments, see kdlens.hypotheses.structure)
        "structure_method": st.method,
        "structure_verdict": structure_verdict(st.p_value, st.normalized_effect, st.num_classes),
    }


def _superclass(res: Any, sup: np.ndarray, present: np.ndarray) -> dict[str, float]:
    from kdlens.measures.similarity import superclass_recovery

    est = np.asarray(getattr(res, "estimate", res.matrix), np.float64)
    rec = superclass_recovery(_present(est, present), sup[present])
    return {"superclass_ari": float(rec["ari"]), "superclass_nmi": float(rec["nmi"])}


def _long_similarity(s: np.ndarray, temperature: float) -> pl.DataFrame:
    """S in long form: every off-diagonal entry up to ``SIMILARITY_TABLE_FULL_MAX_K``
    classes, else each class's ``SIMILARITY_TABLE_TOP`` largest entries (the full table
    would be K² rows: 25 M at K = 5,000, the largest thing analyze held)."""
    from kdlens.measures.similarity.matrix import top_entries

    return _long_from(top_entries(s, _table_top(s.shape[0])), temperature)


def _long_from(entries: tuple[np.ndarray, np.ndarray, np.ndarray], temperature: float) -> Any:
    src, tgt, w = entries
    return pl.DataFrame(
        {
            "source": src,
            "target": tgt,
            "weight": w,
            "temperature": np.full(w.size, temperature),
        }
    )


def _table_top(k: int) -> int:
    return k - 1 if k <= SIMILARITY_TABLE_FULL_MAX_K else min(SIMILARITY_TABLE_TOP, k - 1)


def _edges(
    res: Any, top_k: int, present: np.ndarray, temperature: float, sparse: bool = False
) -> pl.DataFrame:
    from kdlens.measures.similarity import similarity_graph

    if top_k <= 0:
        return pl.DataFrame()
    if sparse:
        g = res.graph(top_k)
        return g.with_columns(pl.lit(temperature).alias("temperature")) if g.height else g
    # Absent classes are NaN rows and columns of the estimate: the graph leaves them out
    # and keeps class indices, so no copy restricted to the present classes is needed.
    est = np.asarray(getattr(res, "estimate", res.matrix), np.float64)
    n_present = int(np.count_nonzero(present))
    g = similarity_graph(est, top_k=min(top_k, max(n_present - 1, 1)))
    if g.height == 0:
        return g
    return g.with_columns(pl.lit(temperature).alias("temperature"))
