"""recommend's signals: per checkpoint, the shared measures of its held-out and transfer splits.

The signals are columns of ``analyze``'s summary (named by the metric registry) taken
from two splits: the **held-out** split (``val``, else ``test``) and the **transfer**
split (``train``). From a store they come from the same accumulators ``analyze`` uses
(:mod:`kdlens.analysis.passes`), and the fitted temperature from the same rule
(:func:`kdlens.analysis.parts.fitted_temperatures`), so ``recommend`` and ``analyze``
report identical values; from an analysis they are read from its summary.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kdlens._internal.checks import check_positive_int, check_temperature
from kdlens._internal.defaults import HELDOUT_SPLITS, TEMPERATURE_BOUNDS, TRANSFER_SPLIT
from kdlens.analysis.parts import at_temperature_bound, fitted_temperatures
from kdlens.analysis.passes import CheckOptions, PartPlan, PartResult, run_pass
from kdlens.errors import InputError, StoreError
from kdlens.measures.registry import metric
from kdlens.recommend.bootstrap import (
    BootstrapExtra,
    refit_replicates,
    replicate_weights,
)
from kdlens.recommend.result import DEFAULT_TEMPERATURE, key_of
from kdlens.store.format import Part
from kdlens.store.reader import LogitsStore, open_store

__all__ = ["SIGNALS", "RecommendRequest", "Signal", "checkpoint_signals", "recommend_request"]


@dataclass(frozen=True)
class Signal:
    """A signal column: a registry metric measured on the held-out or the transfer split."""

    column: str
    metric: str
    role: str  # "heldout" or "transfer"


#: Signal columns every source is reduced to (one value per run x checkpoint).
SIGNALS = (
    Signal("accuracy_heldout", "accuracy", "heldout"),
    Signal("nll_heldout", "nll", "heldout"),
    Signal("nll_fit_heldout", "nll_fitted", "heldout"),
    Signal("entropy_heldout", "entropy", "heldout"),
    Signal("dark_mass_heldout", "dark_mass", "heldout"),
    Signal("accuracy_transfer", "accuracy", "transfer"),
    Signal("nll_fit_transfer", "nll_fitted", "transfer"),
    Signal("dark_mass_transfer", "dark_mass", "transfer"),
    Signal("oemc_share_transfer", "oemc_share", "transfer"),
    Signal("similarity_information_transfer", "similarity_information", "transfer"),
)
#: Summary columns holding the NLL at the fitted temperature, if an analysis provides one
#: (older analyses used the other names).
_NLL_FIT_COLUMNS = (metric("nll_fitted").column, "nll_at_fitted_temperature", "nll_fit")
#: Prefix of a metric's signal and bootstrap names (``nll_fit_heldout``).
_SHORT = {"nll_fitted": "nll_fit"}


def _check_options(temperature: float, n_bootstrap: int) -> None:
    check_temperature(temperature)
    check_positive_int(n_bootstrap, name="n_bootstrap", minimum=0)


def _check_classes(st: LogitsStore) -> None:
    names: dict[str, tuple[str, ...] | None] = {}
    for f in st.files:
        cn = st.file_metadata(f).get("class_names")
        names[str(f)] = tuple(cn) if cn else None
    distinct = {v for v in names.values() if v is not None}
    if len(distinct) > 1:
        a, b = list(distinct)[:2]
        fa = next(k for k, v in names.items() if v == a)
        fb = next(k for k, v in names.items() if v == b)
        raise StoreError(
            f"{st.source}: checkpoints disagree on the classes ({Path(fa).name}: {list(a)[:4]}..., "
            f"{Path(fb).name}: {list(b)[:4]}...); rank checkpoints of one task only"
        )


@dataclass
class RecommendRequest:
    """recommend's validated options and what it needs from each part of a store."""

    st: LogitsStore
    temperature: float
    n_bootstrap: int
    seed: int
    heldout: str | None
    notes: list[str] = field(default_factory=list)

    def _roles(self) -> list[tuple[str, str]]:
        roles = [(self.heldout, "heldout")] if self.heldout else []
        return roles + [(TRANSFER_SPLIT, "transfer")]

    def _fits(self, role: str) -> bool:
        # The NLL after a fit is a held-out signal; on the transfer split only without one.
        return role == "heldout" or self.heldout is None

    def plans(self) -> list[PartPlan]:
        """Held-out and transfer parts: measures at T (similarity on transfer), fit, bootstrap."""
        t, out = self.temperature, []
        for run, ck in self.st.keys():
            have = {p.split: p for p in self.st.find(run, ck)}
            for split, role in self._roles():
                if split not in have:
                    continue
                extras: dict[str, Any] = {}
                if self.n_bootstrap:
                    extras["bootstrap"] = functools.partial(BootstrapExtra, t)  # picklable
                plan = PartPlan(have[split], {t: role == "transfer"}, self._fits(role), extras)
                out.append(plan)
        return out

    def signals(
        self, results: Sequence[PartResult]
    ) -> tuple[pl.DataFrame, dict[str, dict[str, np.ndarray]], list[str]]:
        """The signal frame, the bootstrap replicates and notes from the pass's results."""
        by = {r.plan.key: r for r in results}
        rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        boots: dict[str, dict[str, np.ndarray]] = {}
        weights = replicate_weights(self.n_bootstrap, self.seed) if self.n_bootstrap else None
        unlabeled = 0
        for run, ck in self.st.keys():
            mine = {
                split: by[(run, ck, split)] for split, _ in self._roles() if (run, ck, split) in by
            }
            fits = fitted_temperatures(
                {s: r.tfit for s, r in mine.items() if self._fits(self._role(s))}
            )
            boot: dict[str, np.ndarray] = {}
            for split, r in mine.items():
                unlabeled += r.stats.get("unlabeled", 0)
                rows[(run, ck, split)] = self._part_row(r, fits.get(split))
                if weights is not None:
                    boot.update(self._replicates(r, fits.get(split), weights))
            boots[key_of(run, ck)] = boot
        if unlabeled:
            self.notes.append(
                f"{unlabeled:,} unlabeled rows were skipped (every signal needs the label)"
            )
        ids = [_identity(self.st.find(run, ck)[0]) for run, ck in self.st.keys()]
        frame = signal_frame(
            _signal_rows(ids, rows, self.heldout, _NLL_FIT_COLUMNS[0], self.temperature)
        )
        return frame, _by_signal(boots, self.n_bootstrap), list(self.notes)

    def _role(self, split: str) -> str:
        return "heldout" if split == self.heldout else "transfer"

    def _part_row(self, r: PartResult, fit: Any) -> dict[str, Any]:
        ms = r.sets[self.temperature]
        row = ms.soft.finalize().as_row()
        if ms.sim is not None:
            row["similarity_information"] = ms.sim.finalize(
                warn_absent=False
            ).similarity_information
        if fit is not None:
            row["fitted_temperature"], row["nll_fitted"] = fit.temperature, fit.nll
            row["fitted_temperature_at_bound"] = fit.at_bound
        if r.tfit is not None and r.tfit.n:
            # The smallest class of the fit's sample (the whole split when it is small).
            counts = np.bincount(r.tfit.sample[2], minlength=r.tfit.num_classes)
            row["min_class_count"] = int(counts.min())
        return row

    def _replicates(self, r: PartResult, fit: Any, weights: np.ndarray) -> dict[str, np.ndarray]:
        role = self._role(r.part.split)
        reps = r.extras["bootstrap"].replicates(weights)
        out = {f"{name}_{role}": v for name, v in reps.items()}
        if fit is not None and r.tfit is not None:
            out[f"nll_fit_{role}"] = refit_replicates(
                r.tfit, fit.temperature, weights, TEMPERATURE_BOUNDS
            )
        return out


def recommend_request(
    store: Any, *, temperature: float, n_bootstrap: int, seed: int
) -> RecommendRequest:
    """Validate recommend's options against a store, before any logits are read."""
    _check_options(temperature, n_bootstrap)
    st = store if isinstance(store, LogitsStore) else open_store(store)
    _check_classes(st)
    splits = set(st.splits())
    heldout = next((s for s in HELDOUT_SPLITS if s in splits), None)
    if heldout is None and TRANSFER_SPLIT not in splits:
        raise InputError(
            f"{st.source}: the store has neither a held-out (val/test) nor a transfer "
            f"({TRANSFER_SPLIT}) split: there is nothing to rank on (it has: "
            f"{', '.join(sorted(splits))})"
        )
    notes = []
    if heldout == "test":
        notes.append("no 'val' split: the 'test' split is used as the held-out split")
    return RecommendRequest(st, float(temperature), int(n_bootstrap), int(seed), heldout, notes)


def checkpoint_signals(
    store: LogitsStore | str | os.PathLike[str],
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    n_bootstrap: int = 0,
    seed: int = 0,
    progress: Any = None,
) -> tuple[pl.DataFrame, dict[str, dict[str, np.ndarray]], list[str]]:
    """Per-checkpoint ranking signals of a store, streamed one batch at a time.

    Returns
    -------
    signals : pl.DataFrame
        One row per (run, checkpoint): run, checkpoint, epoch, step, batch_size,
        n_transfer, n_heldout, heldout_split, temperature and the :data:`SIGNALS`
        columns (``nll_fit_transfer`` only without a held-out split); NaN where a split
        is missing.
    boot : dict
        ``{name: {"run/checkpoint": array (n_bootstrap,)}}``: bootstrap replicates
        (:mod:`kdlens.recommend.bootstrap`) of accuracy, NLL, NLL after a refitted
        temperature, entropy, dark mass and OEMC share of each split (suffix
        ``_heldout`` / ``_transfer``); empty when n_bootstrap is 0.
    notes : list of str
        Plain-language notes (missing splits, unlabeled rows).
    """
    req = recommend_request(store, temperature=temperature, n_bootstrap=n_bootstrap, seed=seed)
    results = run_pass(req.st, req.plans(), **pass_options(), progress=progress)
    return req.signals(results)


def pass_options() -> dict[str, Any]:
    """recommend's settings of the pass: the default OEMC threshold and bins, and
    unlabelled rows skipped (every signal needs the label)."""
    from kdlens._internal.defaults import N_BINS, OEMC_DELTA

    return {
        "delta": OEMC_DELTA,
        "n_bins": N_BINS,
        "check": CheckOptions(skip_unlabeled=True),
        "description": "recommend",
    }


def _identity(p: Part) -> dict[str, Any]:
    return {
        "run": p.run,
        "checkpoint": p.checkpoint,
        "epoch": p.epoch,
        "step": p.step,
        "batch_size": p.batch_size,
    }


def _by_signal(
    boots: dict[str, dict[str, np.ndarray]], n_bootstrap: int
) -> dict[str, dict[str, np.ndarray]]:
    """``{checkpoint: {signal: reps}}`` -> ``{signal: {checkpoint: reps}}`` (NaN if absent)."""
    if not n_bootstrap:
        return {}
    names = {n for b in boots.values() for n in b}
    nan = np.full(n_bootstrap, np.nan)
    return {n: {k: b.get(n, nan) for k, b in boots.items()} for n in names}


def _signal_rows(
    ids: Sequence[dict[str, Any]],
    by_key: dict[tuple[str, str, str], dict[str, Any]],
    heldout: str | None,
    nll_fit_col: str,
    temperature: float,
) -> list[dict[str, Any]]:
    """One signal row per checkpoint from summary-like rows of its splits."""
    rows = []
    for r in ids:
        parts = {
            "heldout": by_key.get((r["run"], r["checkpoint"], heldout)) if heldout else None,
            "transfer": by_key.get((r["run"], r["checkpoint"], TRANSFER_SPLIT)),
        }
        row = {**r, "temperature": temperature, "heldout_split": heldout}
        for role, d in parts.items():
            row[f"n_{role}"] = 0 if d is None else (None if d.get("n") is None else int(d["n"]))
        row["fitted_temperature"] = _get(parts["heldout"], "fitted_temperature")
        row["fitted_temperature_at_bound"] = _at_bound(parts["heldout"])
        h = parts["heldout"] or {}
        n_lab = h.get("n_labeled", h.get("n"))
        row["n_labeled_heldout"] = None if n_lab is None else int(n_lab)
        mc = h.get("min_class_count")
        row["min_class_heldout"] = None if mc is None else int(mc)
        for s in SIGNALS:
            col = nll_fit_col if s.metric == "nll_fitted" else metric(s.metric).column
            row[s.column] = _get(parts[s.role], col)
        rows.append(row)
    return rows


def _at_bound(d: dict[str, Any] | None) -> bool:
    """The held-out fit's bound flag (analyses before the flag: from the fitted T)."""
    if d is None:
        return False
    flag = d.get("fitted_temperature_at_bound")
    if flag is not None:
        return bool(flag)
    t = d.get("fitted_temperature")
    return t is not None and at_temperature_bound(float(t))


def _get(d: dict[str, Any] | None, col: str) -> float | None:
    v = None if d is None else d.get(col)
    return None if v is None else float(v)


def signal_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Signal rows as a frame with a fixed schema (NaN where a value is missing)."""
    schema: dict[str, Any] = {
        "run": pl.Utf8,
        "checkpoint": pl.Utf8,
        "epoch": pl.Int64,
        "step": pl.Int64,
        "batch_size": pl.Int64,
        "temperature": pl.Float64,
        "heldout_split": pl.Utf8,
        "n_heldout": pl.Int64,
        "n_transfer": pl.Int64,
        "fitted_temperature": pl.Float64,
        "fitted_temperature_at_bound": pl.Boolean,
        "n_labeled_heldout": pl.Int64,
        "min_class_heldout": pl.Int64,
    }
    for s in SIGNALS:
        schema[s.column] = pl.Float64
    full = [{c: r.get(c) for c in schema} for r in rows]
    frame = pl.DataFrame(full, schema=schema, orient="row") if full else pl.DataFrame(schema=schema)
    return frame.with_columns(
        pl.col(pl.Float64).fill_null(float("nan")), pl.col(pl.Boolean).fill_null(False)
    )


# ------------------------------------------------------------------ signals from an analysis


def summary_signals(summary: pl.DataFrame, *, temperature: float) -> tuple[pl.DataFrame, list[str]]:
    """Reduce an ``analyze`` summary (one row per run x checkpoint x split) to signals."""
    need = ("run", "checkpoint", "split", "accuracy", "nll", "dark_mass")
    missing = [c for c in need if c not in summary.columns]
    if missing:
        raise InputError(
            f"summary is missing column(s) {missing}; expected the output of kdlens analyze"
        )
    notes: list[str] = []
    nll_fit_col = next((c for c in _NLL_FIT_COLUMNS if c in summary.columns), None)
    if nll_fit_col is None:
        notes.append(
            "the analysis summary holds no NLL after a temperature fit: the T = 1 held-out NLL "
            "stands in, which ranks worse (run recommend on the store for the exact score)"
        )
        nll_fit_col = "nll"
    if "temperature" in summary.columns:
        temps = sorted({float(t) for t in summary["temperature"].drop_nulls().to_list()})
        if temps and not any(math.isclose(t, temperature) for t in temps):
            notes.append(
                f"the analysis was computed at T={temps[0]:g}, not {temperature:g}: the collapse "
                "term is left out (measured at another T it misranks; see "
                "examples/VALIDATION.md), so this ranks by held-out NLL after a temperature "
                f"fit alone; for the full score run `kdlens analyze -T {temperature:g}` or "
                "recommend on the store"
            )
            temperature = temps[0]
    splits = set(summary["split"].unique().to_list())
    heldout = next((s for s in HELDOUT_SPLITS if s in splits), None)
    if heldout == "test":
        notes.append("no 'val' split: the 'test' split is used as the held-out split")
    cols = [c for c in ("run", "checkpoint", "epoch", "step", "batch_size") if c in summary]
    ids = summary.select(cols).unique(
        subset=["run", "checkpoint"], keep="first", maintain_order=True
    )
    by_key = {(r["run"], r["checkpoint"], r["split"]): r for r in summary.iter_rows(named=True)}
    ident = [
        {c: r.get(c) for c in ("run", "checkpoint", "epoch", "step", "batch_size")}
        for r in ids.iter_rows(named=True)
    ]
    frame = signal_frame(_signal_rows(ident, by_key, heldout, nll_fit_col, temperature))
    return frame.sort(["run", "epoch", "step", "checkpoint"], nulls_last=True), notes


def as_summary(source: Any) -> pl.DataFrame | None:
    """An analysis summary when ``source`` is one (frame, directory or file), else None."""
    if isinstance(source, pl.DataFrame):
        return source
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir() and (p / "summary.parquet").is_file():
            return pl.read_parquet(p / "summary.parquet")
        if p.is_file() and p.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                names = pq.ParquetFile(p).schema_arrow.names
            except Exception:  # let open_store produce the one-line error
                return None
            if "logits" not in names and {"split", "accuracy", "dark_mass"} <= set(names):
                return pl.read_parquet(p)
    return None
