"""Rank teacher checkpoints for distillation and recommend the sweet spot.

The raw ingredients come from two splits of a logits store (``science.md``,
"Recommending the sweet spot"):

* the **held-out** split (``val``, else ``test``): accuracy, NLL (also after a
  temperature fit) and entropy of the teacher on examples it never trained on;
* the **transfer** split (``train``): what the student actually sees. A teacher
  that memorises its training examples becomes one-hot there, so its dark mass,
  OEMC share and similarity information on the transfer split collapse even
  when its held-out accuracy keeps rising.

The score (:data:`SCORE_DEFINITION`) is the held-out log-loss of the teacher's
temperature-calibrated probabilities, penalised by the *collapse* of its
transfer-split soft labels relative to held-out ones, both in nats::

    collapse = max(0, log(dark_mass_heldout / dark_mass_transfer))   # at T
    score    = -(nll_heldout_after_temperature_fit + collapse_weight * collapse)

The first term asks how close the teacher's probabilities are to the truth on
examples it never saw (Menon et al. 2021); the second how much less non-target
mass it puts on the examples the student will actually see. T should be the
distillation temperature: at T = 1 every well-trained teacher looks collapsed,
at T = 4 only one that memorised its transfer set does. ``collapse_weight`` and
the choice of NLL over accuracy were fixed on one benchmark and checked on others
(``examples/VALIDATION.md``), where the evidence is also reported honestly.

Uncertainty: a Poisson bootstrap over examples. Each example id gets a
deterministic Poisson(1) weight per replicate from a hash of (seed, replicate,
id), so the same example carries the same weight in every checkpoint (paired
comparison) and every signal is a weighted streaming sum: memory is
``n_bootstrap x (signals + K^2)`` per checkpoint, never ``N x K``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.special import log_softmax, logsumexp

from kdlens._internal.defaults import (
    BOOTSTRAP_SEED,
    COLLAPSE_WEIGHT,
    HELDOUT_SPLITS,
    N_BOOTSTRAP,
    RECOMMEND_TEMPERATURE,
    TRANSFER_SPLIT,
)
from kdlens._internal.hashing import poisson_weights
from kdlens.errors import InputError, StoreError
from kdlens.store.reader import LogitsStore, open_store

__all__ = [
    "DEFAULT_COLLAPSE_WEIGHT",
    "DEFAULT_TEMPERATURE",
    "SCORE_DEFINITION",
    "Recommendation",
    "checkpoint_signals",
    "recommend",
    "score_checkpoints",
]

#: Weight of the transfer-split collapse (nats of score per nat of lost dark mass).
DEFAULT_COLLAPSE_WEIGHT = COLLAPSE_WEIGHT
#: The distillation temperature most recipes use; signals are measured at it by default.
DEFAULT_TEMPERATURE = RECOMMEND_TEMPERATURE
#: Summary columns holding the NLL at the fitted temperature, if an analysis provides one.
_NLL_FIT_COLUMNS = ("nll_fitted", "nll_at_fitted_temperature", "nll_fit")
#: Dark-mass threshold of an OEMC example (science.md default), at the analysis temperature.
OEMC_DELTA = 0.05
#: Temperatures searched for the held-out temperature fit (log grid; exact on the grid).
_T_GRID = np.exp(np.linspace(math.log(0.05), math.log(20.0), 81))
#: Above this many floats the bootstrap of the similarity matrix is skipped (K too large).
_MAX_SIM_BOOT = 20_000_000


def _score_definition(temperature: float, collapse_weight: float) -> str:
    """The score with this ranking's numbers filled in (stated in every output)."""
    return (
        f"score = -(held-out NLL after a temperature fit + {collapse_weight:g} * max(0, "
        f"log(dark_mass_heldout / dark_mass_transfer))); dark mass at T = {temperature:g}"
    )


SCORE_DEFINITION = (
    "score = -(heldout NLL after a temperature fit + w * max(0, log(dark_mass_heldout / "
    "dark_mass_transfer))); dark mass at the temperature T, w = collapse_weight"
)

# Signal columns every source is reduced to (one value per run x checkpoint).
_SIGNALS = (
    "accuracy_heldout",
    "nll_heldout",
    "nll_fit_heldout",
    "entropy_heldout",
    "dark_mass_heldout",
    "accuracy_transfer",
    "nll_fit_transfer",
    "dark_mass_transfer",
    "oemc_share_transfer",
    "similarity_information_transfer",
)


# --------------------------------------------------------------------------- results


@dataclass
class Recommendation:
    """What :func:`recommend` found.

    ``ranking`` has one row per (run, checkpoint), best first; ``recommended`` is
    its top row as a dict (``None`` when nothing can be ranked, with ``reason``
    saying why); ``sweet_spot`` is the batch size x epoch grid in long form with
    ``missing`` marking cells without a checkpoint.
    """

    ranking: pl.DataFrame
    recommended: dict[str, Any] | None
    reason: str
    pareto: pl.DataFrame
    sweet_spot: pl.DataFrame
    probability_best: dict[str, float]
    advice: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    distinguishable: bool | None = None
    temperature: float = DEFAULT_TEMPERATURE
    collapse_weight: float = DEFAULT_COLLAPSE_WEIGHT
    n_bootstrap: int = 0
    basis: str = "held-out + transfer"
    score_definition: str = SCORE_DEFINITION
    source: str = ""

    @property
    def ok(self) -> bool:
        return self.recommended is not None

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` payload: recommended, ranking, probability_best (+ context)."""
        rec = None
        if self.recommended is not None:
            rec = {
                k: self.recommended.get(k)
                for k in ("run", "checkpoint", "batch_size", "epoch", "score")
            }
        return {
            "recommended": rec,
            "ranking": _jsonable(self.ranking.to_dicts()),
            "probability_best": dict(self.probability_best),
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        out.append(
            {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in r.items()
            }
        )
    return out


def _key(run: str, checkpoint: str) -> str:
    return f"{run}/{checkpoint}"


# --------------------------------------------------------------------------- bootstrap weights


# --------------------------------------------------------------------------- per-split accumulator


class _SplitAccumulator:
    """Streaming sums of per-example signals of one (run, checkpoint, split).

    update(batch) / merge(other) / finalize(); memory is bounded by
    ``(1 + n_bootstrap) x (signals + K^2)``.
    """

    # Per-example columns, in order: correct, nll, entropy, dark mass, OEMC, nll on the T grid.
    _BASE = 5

    def __init__(
        self,
        k: int,
        *,
        temperature: float,
        n_bootstrap: int,
        seed: int,
        similarity: bool,
        fit_temperature: bool = True,
    ) -> None:
        self.k = k
        self.temperature = float(temperature)
        self.n_bootstrap = int(n_bootstrap)
        self.seed = int(seed)
        self.grid = _T_GRID if fit_temperature else _T_GRID[:0]
        m = self._BASE + len(self.grid)
        self.n = 0.0
        self.unlabeled = 0
        self.sums = np.zeros(m)
        self.boot_n = np.zeros(self.n_bootstrap)
        self.boot_sums = np.zeros((self.n_bootstrap, m))
        self.class_n = np.zeros(k)
        self.sim = np.zeros((k, k))
        self.sim_boot = similarity and self.n_bootstrap * k * k <= _MAX_SIM_BOOT
        self.boot_class_n = np.zeros((self.n_bootstrap, k)) if self.sim_boot else None
        self.boot_sim = np.zeros((self.n_bootstrap, k, k)) if self.sim_boot else None

    def update(self, logits: np.ndarray, labels: np.ndarray, example_ids: np.ndarray) -> None:
        keep = labels >= 0
        self.unlabeled += int((~keep).sum())
        if not keep.any():
            return
        z = logits[keep].astype(np.float64)
        y = labels[keep].astype(np.int64)
        ids = example_ids[keep]
        n = z.shape[0]
        rows = np.arange(n)
        ls1 = log_softmax(z, axis=1)
        correct = (z.argmax(axis=1) == y).astype(np.float64)
        nll = -ls1[rows, y]
        entropy = -(np.exp(ls1) * ls1).sum(axis=1)
        lsT = log_softmax(z / self.temperature, axis=1)
        off = lsT.copy()
        off[rows, y] = -np.inf
        # Dark mass in log space: never 1 - p_y by subtraction.
        log_dm = logsumexp(off, axis=1)
        dm = np.exp(log_dm)
        oemc = (log_dm >= math.log(OEMC_DELTA)).astype(np.float64)
        # q = softmax over the K-1 non-target classes: exact even when p_y rounds to 1.
        zo = z / self.temperature
        zo[rows, y] = -np.inf
        q = np.exp(log_softmax(zo, axis=1))
        grid = (
            np.stack([-log_softmax(z / t, axis=1)[rows, y] for t in self.grid], axis=1)
            if len(self.grid)
            else np.empty((n, 0))
        )
        v = np.column_stack([correct, nll, entropy, dm, oemc, grid])
        onehot = np.zeros((n, self.k))
        onehot[rows, y] = 1.0
        self.n += n
        self.sums += v.sum(axis=0)
        self.class_n += onehot.sum(axis=0)
        self.sim += onehot.T @ q
        if self.n_bootstrap:
            w = poisson_weights(ids, self.n_bootstrap, self.seed)
            self.boot_n += w.sum(axis=1)
            self.boot_sums += w @ v
            if self.boot_sim is not None and self.boot_class_n is not None:
                self.boot_class_n += w @ onehot
                self.boot_sim += np.einsum("bn,nc,nk->bck", w, onehot, q, optimize=True)

    def merge(self, other: _SplitAccumulator) -> _SplitAccumulator:
        self.n += other.n
        self.unlabeled += other.unlabeled
        self.sums += other.sums
        self.boot_n += other.boot_n
        self.boot_sums += other.boot_sums
        self.class_n += other.class_n
        self.sim += other.sim
        if (
            self.boot_sim is not None
            and other.boot_sim is not None
            and self.boot_class_n is not None
        ):
            self.boot_class_n += other.boot_class_n  # type: ignore[arg-type]
            self.boot_sim += other.boot_sim
        return self

    def finalize(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Point estimates and bootstrap replicates (arrays of shape (n_bootstrap,))."""
        nan = float("nan")
        if self.n == 0:
            return {
                s: nan
                for s in (
                    "accuracy",
                    "nll",
                    "nll_fit",
                    "entropy",
                    "dark_mass",
                    "oemc_share",
                    "similarity_information",
                    "fitted_temperature",
                )
            }, {}
        mean = self.sums / self.n
        g = mean[self._BASE :]
        best_t = int(np.argmin(g)) if len(g) else -1
        point = {
            "accuracy": float(mean[0]),
            "nll": float(mean[1]),
            "nll_fit": float(g[best_t]) if len(g) else nan,
            "entropy": float(mean[2]),
            "dark_mass": float(mean[3]),
            "oemc_share": float(mean[4]),
            "similarity_information": _similarity_information(self.sim, self.class_n),
            "fitted_temperature": float(self.grid[best_t]) if len(g) else nan,
        }
        boot: dict[str, np.ndarray] = {}
        if self.n_bootstrap:
            bn = np.maximum(self.boot_n, 1e-12)[:, None]
            bm = self.boot_sums / bn
            boot = {
                "accuracy": bm[:, 0],
                "nll": bm[:, 1],
                # Refit T in every replicate: the minimum over the grid of the replicate's NLL.
                "nll_fit": bm[:, self._BASE :].min(axis=1)
                if len(self.grid)
                else np.full(self.n_bootstrap, np.nan),
                "entropy": bm[:, 2],
                "dark_mass": bm[:, 3],
                "oemc_share": bm[:, 4],
            }
            if self.boot_sim is not None and self.boot_class_n is not None:
                boot["similarity_information"] = np.array(
                    [
                        _similarity_information(self.boot_sim[b], self.boot_class_n[b])
                        for b in range(self.n_bootstrap)
                    ]
                )
        return point, boot


def _similarity_information(sim_sums: np.ndarray, class_n: np.ndarray) -> float:
    """Mean over present classes of KL(S[c] || uniform over the K-1 other classes)."""
    k = sim_sums.shape[0]
    present = class_n > 0
    if not present.any():
        return float("nan")
    s = sim_sums[present] / class_n[present][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(s > 0, s * np.log(s * (k - 1)), 0.0)
    return float(terms.sum(axis=1).mean())


# --------------------------------------------------------------------------- signals from a store


def checkpoint_signals(
    store: LogitsStore | str | os.PathLike[str],
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> tuple[pl.DataFrame, dict[str, dict[str, np.ndarray]], list[str]]:
    """Per-checkpoint ranking signals of a store, streamed one batch at a time.

    Returns
    -------
    signals : pl.DataFrame
        One row per (run, checkpoint): run, checkpoint, epoch, step, batch_size,
        n_transfer, n_heldout, heldout_split, temperature and the signal columns
        (``accuracy_heldout``, ``nll_heldout``, ``nll_fit_heldout``,
        ``fitted_temperature``, ``entropy_heldout``, ``dark_mass_heldout``,
        ``accuracy_transfer``, ``nll_fit_transfer`` (only without a held-out split),
        ``dark_mass_transfer``, ``oemc_share_transfer``,
        ``similarity_information_transfer``); NaN where a split is missing.
    boot : dict
        ``{signal: {"run/checkpoint": array (n_bootstrap,)}}``: the Poisson-bootstrap
        replicates of each signal, empty when n_bootstrap is 0.
    notes : list of str
        Plain-language notes (missing splits, unlabeled rows, skipped bootstrap).
    """
    _check_options(temperature, n_bootstrap)
    st = store if isinstance(store, LogitsStore) else open_store(store)
    _check_classes(st)
    return _compute_store_signals(
        st, temperature=float(temperature), n_bootstrap=int(n_bootstrap), seed=int(seed)
    )


def _check_options(temperature: float, n_bootstrap: int) -> None:
    if not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    ):
        raise InputError(f"temperature must be a positive finite number, got {temperature!r}")
    if int(n_bootstrap) < 0:
        raise InputError(f"n_bootstrap must be >= 0, got {n_bootstrap}")


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


def _compute_store_signals(
    st: LogitsStore, *, temperature: float, n_bootstrap: int, seed: int
) -> tuple[pl.DataFrame, dict[str, dict[str, np.ndarray]], list[str]]:
    notes: list[str] = []
    splits = set(st.splits())
    heldout = next((s for s in HELDOUT_SPLITS if s in splits), None)
    if heldout == "test":
        notes.append("no 'val' split: the 'test' split is used as the held-out split")
    k = st.num_classes
    info = {p.key: p for p in st.parts}
    rows: list[dict[str, Any]] = []
    boots: list[dict[str, np.ndarray]] = []
    unlabeled = 0
    sim_boot_skipped = False
    for run, ck in st.keys():
        part = info[(run, ck)]
        row: dict[str, Any] = {
            "run": run,
            "checkpoint": ck,
            "epoch": part.epoch,
            "step": part.step,
            "batch_size": part.batch_size,
            "temperature": temperature,
            "heldout_split": heldout,
        }
        boot: dict[str, np.ndarray] = {}
        for split, suffix, sim in ((heldout, "heldout", False), (TRANSFER_SPLIT, "transfer", True)):
            present = split is not None and any(p.split == split for p in st.find(run, ck))
            # The temperature fit (81 log-softmaxes per row) is needed on the transfer split
            # only when there is no held-out split to fit on.
            acc = _SplitAccumulator(
                k,
                temperature=temperature,
                n_bootstrap=n_bootstrap,
                seed=seed,
                similarity=sim,
                fit_temperature=suffix == "heldout" or heldout is None,
            )
            if present and split is not None:
                for b in st.iter_batches(run, ck, split):
                    acc.update(b.logits, b.labels, b.example_ids)
            unlabeled += acc.unlabeled
            sim_boot_skipped |= sim and n_bootstrap > 0 and acc.boot_sim is None
            point, rep = acc.finalize()
            row[f"n_{suffix}"] = int(acc.n)
            for name, value in point.items():
                if name == "fitted_temperature":
                    if suffix == "heldout":
                        row["fitted_temperature"] = value
                    continue
                row[f"{name}_{suffix}"] = value
            for name, arr in rep.items():
                boot[f"{name}_{suffix}"] = arr
        rows.append(row)
        boots.append(boot)
    if unlabeled:
        notes.append(f"{unlabeled:,} unlabeled rows were skipped (every signal needs the label)")
    if sim_boot_skipped:
        notes.append(
            f"K={k} is too large to bootstrap the similarity matrix; its interval is omitted"
        )
    frame = _signal_frame(rows)
    boot_arrays: dict[str, dict[str, np.ndarray]] = {}
    if n_bootstrap:
        for name in {n for b in boots for n in b}:
            boot_arrays[name] = {
                _key(r["run"], r["checkpoint"]): b.get(name, np.full(n_bootstrap, np.nan))
                for r, b in zip(rows, boots, strict=False)
            }
    return frame, boot_arrays, notes


def _signal_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
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
    }
    for s in _SIGNALS:
        schema[s] = pl.Float64
    full = [{c: r.get(c) for c in schema} for r in rows]
    return pl.DataFrame(full, schema=schema, orient="row") if full else pl.DataFrame(schema=schema)


# ------------------------------------------------------------------ signals from an analysis


def _summary_signals(
    summary: pl.DataFrame, *, temperature: float
) -> tuple[pl.DataFrame, list[str]]:
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
    ids = summary.select(
        "run", "checkpoint", *[c for c in ("epoch", "step", "batch_size") if c in summary.columns]
    )
    ids = ids.unique(subset=["run", "checkpoint"], keep="first", maintain_order=True)
    rows: list[dict[str, Any]] = []
    by_key = {(r["run"], r["checkpoint"], r["split"]): r for r in summary.iter_rows(named=True)}
    for r in ids.iter_rows(named=True):
        h = by_key.get((r["run"], r["checkpoint"], heldout)) if heldout else None
        t = by_key.get((r["run"], r["checkpoint"], TRANSFER_SPLIT))

        def g(d: dict[str, Any] | None, col: str) -> float | None:
            v = None if d is None else d.get(col)
            return None if v is None else float(v)

        rows.append(
            {
                "run": r["run"],
                "checkpoint": r["checkpoint"],
                "epoch": r.get("epoch"),
                "step": r.get("step"),
                "batch_size": r.get("batch_size"),
                "temperature": temperature,
                "heldout_split": heldout,
                "n_heldout": int(h["n"])
                if h is not None and h.get("n") is not None
                else (0 if h is None else None),
                "n_transfer": int(t["n"])
                if t is not None and t.get("n") is not None
                else (0 if t is None else None),
                "fitted_temperature": g(h, "fitted_temperature"),
                "accuracy_heldout": g(h, "accuracy"),
                "nll_heldout": g(h, "nll"),
                "nll_fit_heldout": g(h, nll_fit_col),
                "entropy_heldout": g(h, "entropy"),
                "dark_mass_heldout": g(h, "dark_mass"),
                "accuracy_transfer": g(t, "accuracy"),
                "nll_fit_transfer": g(t, nll_fit_col),
                "dark_mass_transfer": g(t, "dark_mass"),
                "oemc_share_transfer": g(t, "oemc_share"),
                "similarity_information_transfer": g(t, "similarity_information"),
            }
        )
    frame = _signal_frame(rows).with_columns(pl.col(pl.Float64).fill_null(float("nan")))
    return _sort_signals(frame), notes


def _sort_signals(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(["run", "epoch", "step", "checkpoint"], nulls_last=True)


# --------------------------------------------------------------------------- scoring


def score_checkpoints(
    signals: pl.DataFrame | dict[str, np.ndarray],
    *,
    collapse_weight: float = DEFAULT_COLLAPSE_WEIGHT,
) -> np.ndarray:
    """kdlens's score from signal columns (arrays of any shape broadcast together).

    ``score = -(nll_fit_heldout + w * max(0, log(dark_mass_heldout / dark_mass_transfer)))``,
    higher is better. Without a transfer split the collapse term is 0. Without a
    held-out split the score falls back to ``-(nll_fit_transfer + w * max(0,
    log(0.05 / dark_mass_transfer)))`` (collapse below the OEMC threshold), which
    cannot see memorisation; :func:`recommend` marks such rankings.
    """

    def col(name: str) -> np.ndarray:
        v = signals[name]
        return np.asarray(v.to_numpy() if isinstance(v, pl.Series) else v, dtype=np.float64)

    nll_h = col("nll_fit_heldout")
    dm_t = col("dark_mass_transfer")
    collapse = _collapse(col("dark_mass_heldout"), dm_t)
    score = -(nll_h + collapse_weight * np.where(np.isnan(collapse), 0.0, collapse))
    fallback = -(
        col("nll_fit_transfer")
        + collapse_weight * np.maximum(0.0, math.log(OEMC_DELTA) - _safe_log(dm_t))
    )
    return np.where(np.isfinite(nll_h), score, fallback)


def _safe_log(x: np.ndarray) -> np.ndarray:
    # A one-hot teacher's mean dark mass underflows to 0; floor it so its collapse is huge, not NaN.
    return np.log(np.maximum(x, np.finfo(np.float64).tiny))


def _collapse(dm_heldout: np.ndarray, dm_transfer: np.ndarray) -> np.ndarray:
    """``max(0, log(dm_heldout / dm_transfer))`` in nats; NaN where either split is missing."""
    dm_h = np.asarray(dm_heldout, dtype=np.float64)
    dm_t = np.asarray(dm_transfer, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        c = np.maximum(0.0, _safe_log(dm_h) - _safe_log(dm_t))
    return np.where(np.isnan(dm_h) | np.isnan(dm_t), np.nan, c)


def _baseline_scores(frame: pl.DataFrame) -> pl.DataFrame:
    """The scores a user would otherwise rank by (higher is better for each)."""
    last = frame.with_columns(
        pl.col("epoch").cast(pl.Float64).fill_null(pl.col("step").cast(pl.Float64)).alias("_e")
    )["_e"].to_numpy()
    return frame.with_columns(
        baseline_accuracy=pl.col("accuracy_heldout"),
        baseline_nll=-pl.col("nll_fit_heldout"),
        # "The last checkpoint": later is better; held-out accuracy breaks ties between runs.
        baseline_last=pl.Series(np.nan_to_num(last, nan=-1.0) * 1e3)
        + pl.col("accuracy_heldout").fill_nan(0.0),
        baseline_entropy=pl.col("entropy_heldout"),
    )


# --------------------------------------------------------------------------- entry point


def recommend(
    source: LogitsStore | pl.DataFrame | str | os.PathLike[str] | Sequence[str],
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    top: int | None = None,
    collapse_weight: float = DEFAULT_COLLAPSE_WEIGHT,
) -> Recommendation:
    """Rank every (run, checkpoint) of a store or an analysis and recommend one.

    Parameters
    ----------
    source
        A logits store (object, file, directory or glob), an analysis directory
        holding ``summary.parquet`` (no bootstrap: it has no per-example values),
        a ``summary.parquet`` file, or such a summary frame.
    temperature
        Temperature of the soft-label signals (dark mass, OEMC, similarity).
    n_bootstrap
        Poisson bootstrap replicates over examples (0 = none); store sources only.
    seed
        Seed of the bootstrap; the same seed gives the same probabilities.
    top
        Keep only the best ``top`` rows of ``ranking`` (the map and front use all).
    collapse_weight
        ``w`` in :data:`SCORE_DEFINITION`.
    """
    _check_options(temperature, n_bootstrap)
    if top is not None and int(top) < 1:
        raise InputError(f"top must be >= 1, got {top}")
    if not (math.isfinite(collapse_weight) and collapse_weight >= 0):
        raise InputError(f"collapse_weight must be >= 0, got {collapse_weight!r}")
    boot: dict[str, dict[str, np.ndarray]] = {}
    notes: list[str] = []
    label = source if isinstance(source, str) else getattr(source, "source", type(source).__name__)
    summary = _as_summary(source)
    if summary is not None:
        score_t = float(temperature)
        signals, notes = _summary_signals(summary, temperature=score_t)
        if signals.height and not math.isclose(float(signals["temperature"][0]), score_t):
            collapse_weight = 0.0
        if n_bootstrap:
            notes.append("an analysis summary has no per-example values: no bootstrap, no P(best)")
        n_bootstrap = 0
    else:
        st = open_store(source)  # type: ignore[arg-type]
        _check_classes(st)
        signals, boot, notes = _compute_store_signals(
            st, temperature=float(temperature), n_bootstrap=int(n_bootstrap), seed=int(seed)
        )
    rec = _compute_recommendation(
        signals,
        boot,
        notes,
        temperature=float(signals["temperature"][0]) if signals.height else temperature,
        collapse_weight=float(collapse_weight),
        n_bootstrap=int(n_bootstrap),
        top=top,
    )
    rec.source = str(label)
    return rec


def _as_summary(source: Any) -> pl.DataFrame | None:
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


def _compute_recommendation(
    signals: pl.DataFrame,
    boot: dict[str, dict[str, np.ndarray]],
    notes: list[str],
    *,
    temperature: float,
    collapse_weight: float,
    n_bootstrap: int,
    top: int | None,
) -> Recommendation:
    notes = list(notes)
    has_heldout = bool(signals.height) and bool(
        np.isfinite(signals["accuracy_heldout"].to_numpy()).any()
    )
    has_transfer = bool(signals.height) and bool(
        np.isfinite(signals["dark_mass_transfer"].to_numpy()).any()
    )
    basis = "held-out + transfer"
    if not has_heldout:
        basis = "transfer split only"
        notes.append(
            "no held-out split (val/test): held-out accuracy, NLL, entropy and the collapse "
            "term are missing; ranked on transfer-split NLL and dark mass only (weaker: a "
            "memorising teacher looks perfect)"
        )
    elif not has_transfer:
        basis = "held-out only"
        notes.append(
            f"no transfer split ({TRANSFER_SPLIT!r}): dark mass, OEMC share and similarity "
            "information on the examples the student sees are missing; ranked on held-out NLL "
            "(after a temperature fit) alone"
        )
    if not has_heldout and not has_transfer:
        raise InputError(
            "the store has neither a held-out (val/test) nor a transfer (train) split with labels"
        )

    score = score_checkpoints(signals, collapse_weight=collapse_weight)
    frame = signals.with_columns(
        score=pl.Series(score),
        collapse=pl.Series(
            _collapse(
                signals["dark_mass_heldout"].to_numpy(), signals["dark_mass_transfer"].to_numpy()
            )
        ),
    )
    frame = _baseline_scores(frame)
    keys = [_key(r, c) for r, c in zip(frame["run"], frame["checkpoint"], strict=False)]
    n = frame.height

    # Bootstrap: score replicates -> P(best), rank interval, score interval.
    prob = {k: float("nan") for k in keys}
    rank_lo = np.full(n, np.nan)
    rank_hi = np.full(n, np.nan)
    score_lo = np.full(n, np.nan)
    score_hi = np.full(n, np.nan)
    if n_bootstrap and boot and n >= 2:
        reps = {name: np.stack([boot[name][k] for k in keys]) for name in boot}
        for name in (
            "nll_fit_heldout",
            "dark_mass_heldout",
            "dark_mass_transfer",
            "nll_fit_transfer",
        ):
            reps.setdefault(name, np.full((n, n_bootstrap), np.nan))
        sb = score_checkpoints(reps, collapse_weight=collapse_weight)  # (n, B)
        sb = np.where(np.isfinite(sb), sb, -np.inf)
        best = sb.max(axis=0)
        winners = sb == best[None, :]
        p = (winners / winners.sum(axis=0, keepdims=True)).mean(axis=1)  # ties share the win
        prob = {k: float(v) for k, v in zip(keys, p, strict=False)}
        ranks = _ranks_desc(sb)
        rank_lo, rank_hi = np.percentile(ranks, [2.5, 97.5], axis=1)
        finite = np.where(np.isfinite(sb), sb, np.nan)
        score_lo, score_hi = np.nanpercentile(finite, [2.5, 97.5], axis=1)
    order = np.lexsort((np.arange(n), -np.nan_to_num(score, nan=-np.inf)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    frame = frame.with_columns(
        rank=pl.Series(rank),
        rank_low=pl.Series(rank_lo),
        rank_high=pl.Series(rank_hi),
        score_low=pl.Series(score_lo),
        score_high=pl.Series(score_hi),
        probability_best=pl.Series([prob[k] for k in keys], dtype=pl.Float64),
    ).sort("rank")

    sweet, grid_notes = _sweet_spot(frame)
    notes.extend(grid_notes)
    pareto = _pareto(frame)
    columns = [
        "rank",
        "run",
        "checkpoint",
        "batch_size",
        "epoch",
        "step",
        "score",
        "score_low",
        "score_high",
        "rank_low",
        "rank_high",
        "probability_best",
        "accuracy_heldout",
        "nll_heldout",
        "nll_fit_heldout",
        "fitted_temperature",
        "entropy_heldout",
        "dark_mass_heldout",
        "accuracy_transfer",
        "nll_fit_transfer",
        "dark_mass_transfer",
        "oemc_share_transfer",
        "similarity_information_transfer",
        "collapse",
        "baseline_accuracy",
        "baseline_nll",
        "baseline_last",
        "baseline_entropy",
        "temperature",
        "heldout_split",
        "n_heldout",
        "n_transfer",
    ]
    ranking = frame.select(columns)
    rec = Recommendation(
        ranking=ranking,
        recommended=None,
        reason="",
        pareto=pareto,
        sweet_spot=sweet,
        probability_best=prob,
        notes=notes,
        temperature=temperature,
        collapse_weight=collapse_weight,
        n_bootstrap=n_bootstrap,
        basis=basis,
        score_definition=_score_definition(temperature, collapse_weight),
    )
    if n < 2:
        only = f"{keys[0]}" if keys else "none"
        rec.ranking = ranking.with_columns(pl.lit(None, dtype=pl.Int64).alias("rank"))
        rec.probability_best = {}
        rec.reason = (
            f"only one checkpoint ({only}): there is nothing to rank. Dump several checkpoints "
            "(e.g. kdlens dump with more epochs or batch sizes) and run recommend again"
        )
        return rec
    if top is not None:
        rec.ranking = ranking.head(int(top))
    best = frame.row(0, named=True)
    rec.distinguishable, rec.reason = _reason(
        frame, best, basis=basis, bootstrapped=bool(n_bootstrap and boot)
    )
    rec.recommended = dict(best)
    rec.advice = _edge_advice(frame, best)
    return rec


def _ranks_desc(sb: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of each row in every column; ties get the average rank."""
    from scipy.stats import rankdata

    return rankdata(-sb, axis=0, method="average")


def _fmt_ck(r: dict[str, Any]) -> str:
    parts = []
    if r.get("batch_size") is not None:
        parts.append(f"batch size {r['batch_size']}")
    if r.get("epoch") is not None:
        parts.append(f"epoch {r['epoch']}")
    where = ", ".join(parts)
    return f"{r['run']}/{r['checkpoint']}" + (f" ({where})" if where else "")


def _reason(
    frame: pl.DataFrame, best: dict[str, Any], *, basis: str, bootstrapped: bool
) -> tuple[bool | None, str]:
    acc = frame["accuracy_heldout"].to_numpy()
    bits = [f"{_fmt_ck(best)} has the highest score {best['score']:.4f}"]
    if basis != "transfer split only":
        top_acc = np.nanmax(acc)
        bits.append(
            f"held-out accuracy {100 * best['accuracy_heldout']:.2f}% "
            f"(best of all {100 * top_acc:.2f}%), "
            f"held-out NLL after a temperature fit {best['nll_fit_heldout']:.4f} nats "
            f"(best of all {np.nanmin(frame['nll_fit_heldout'].to_numpy()):.4f})"
        )
        most = frame.filter(pl.col("accuracy_heldout") == top_acc).row(0, named=True)
        same = (most["run"], most["checkpoint"]) == (best["run"], best["checkpoint"])
        if not same:
            dm_b, dm_m = best["dark_mass_transfer"], most["dark_mass_transfer"]
            why = (
                f"the most accurate checkpoint {most['run']}/{most['checkpoint']} has held-out "
                f"NLL {most['nll_fit_heldout']:.4f}"
            )
            if dm_m and np.isfinite(dm_m) and abs(math.log(max(dm_b, 1e-300) / dm_m)) > 0.1:
                why += (
                    f" and {dm_b / dm_m:.2g}x less transfer-split dark mass than this one "
                    f"(collapse {most['collapse']:.2f} vs {best['collapse']:.2f} nats)"
                    if dm_b > dm_m
                    else f" (collapse {most['collapse']:.2f} vs {best['collapse']:.2f} nats)"
                )
            bits.append(why)
        elif np.isfinite(best["collapse"]):
            bits.append(
                "it is also the most accurate; its transfer-split collapse is "
                f"{best['collapse']:.2f} nats"
            )
    else:
        bits.append(f"transfer accuracy {100 * best['accuracy_transfer']:.2f}% (no held-out split)")
    text = "; ".join(bits)
    if not bootstrapped:
        return None, text + ". No bootstrap: the uncertainty of this choice is unknown."
    p = best["probability_best"]
    second = frame.row(1, named=True)
    overlap = second["rank_low"] <= best["rank_high"] and best["score_high"] >= second["score_low"]
    contenders = frame.filter(pl.col("probability_best") >= 0.05)
    if p < 0.5 or (overlap and p < 0.8):
        names = ", ".join(
            f"{r['run']}/{r['checkpoint']} ({r['probability_best']:.2f})"
            for r in contenders.iter_rows(named=True)
        )
        return False, (
            f"{text}. The top choices cannot be told apart: P(best) of the top is {p:.2f}; "
            f"plausible best: {names or 'several'}"
        )
    return True, f"{text}. P(best) = {p:.2f} over the bootstrap."


def _grid_axes(frame: pl.DataFrame) -> tuple[str, str]:
    row = "batch_size" if frame["batch_size"].null_count() < frame.height else "run"
    col = "epoch" if frame["epoch"].null_count() < frame.height else "step"
    return row, col


def _sweet_spot(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """The batch size x epoch grid in long form: best score per cell, gaps marked."""
    row, col = _grid_axes(frame)
    notes: list[str] = []
    cells = (
        frame.filter(pl.col(row).is_not_null() & pl.col(col).is_not_null())
        .sort("score", descending=True, nulls_last=True)
        .group_by([row, col], maintain_order=True)
        .agg(
            pl.col("score").first(),
            pl.col("run").first().alias("cell_run"),
            pl.col("checkpoint").first(),
            pl.col("rank").first(),
            pl.len().alias("n_checkpoints"),
        )
    )
    rows_v = sorted(cells[row].unique().to_list())
    cols_v = sorted(cells[col].unique().to_list())
    full = pl.DataFrame(
        {row: [r for r in rows_v for _ in cols_v], col: [c for _ in rows_v for c in cols_v]},
        schema={row: cells.schema[row], col: cells.schema[col]},
    )
    out = (
        full.join(cells, on=[row, col], how="left")
        .with_columns(missing=pl.col("score").is_null(), recommended=pl.col("rank") == 1)
        .with_columns(pl.col("recommended").fill_null(False))
    )
    gaps = out.filter(pl.col("missing"))
    if gaps.height:
        shown = ", ".join(
            f"{row}={r[row]} {col}={r[col]}" for r in gaps.head(6).iter_rows(named=True)
        )
        notes.append(
            f"the grid has {gaps.height} missing cell(s) "
            f"({shown}{' ...' if gaps.height > 6 else ''}): "
            "the map shows gaps"
        )
    return out.rename({row: "row", col: "column", "cell_run": "run"}).with_columns(
        pl.lit(row).alias("row_axis"), pl.lit(col).alias("column_axis")
    ), notes


def _pareto(frame: pl.DataFrame) -> pl.DataFrame:
    """Checkpoints no other beats on both held-out accuracy and transfer similarity information."""
    a = frame["accuracy_heldout"].to_numpy()
    s = frame["similarity_information_transfer"].to_numpy()
    if not np.isfinite(a).any() or not np.isfinite(s).any():
        s = frame["dark_mass_transfer"].to_numpy()
    a = np.nan_to_num(a, nan=-np.inf)
    s = np.nan_to_num(s, nan=-np.inf)
    keep = np.ones(len(a), dtype=bool)
    for i in range(len(a)):
        dominated = (a >= a[i]) & (s >= s[i]) & ((a > a[i]) | (s > s[i]))
        keep[i] = not dominated.any()
    return (
        frame.filter(pl.Series(keep))
        .select(
            "run",
            "checkpoint",
            "batch_size",
            "epoch",
            "accuracy_heldout",
            "similarity_information_transfer",
            "dark_mass_transfer",
            "score",
            "rank",
        )
        .sort("accuracy_heldout", descending=True)
    )


def _edge_advice(frame: pl.DataFrame, best: dict[str, Any]) -> list[str]:
    """What to add to the grid when the best cell lies on its edge."""
    advice: list[str] = []
    bs = sorted({int(b) for b in frame["batch_size"].drop_nulls().to_list()})
    b = best.get("batch_size")
    if b is not None and len(bs) >= 2:
        if b == bs[0]:
            advice.append(
                f"the best batch size {b} is the smallest in the grid: "
                f"add a smaller one (e.g. {max(1, b // 2)})"
            )
        elif b == bs[-1]:
            advice.append(
                f"the best batch size {b} is the largest in the grid: "
                f"add a larger one (e.g. {2 * b})"
            )
    elif b is not None and len(bs) == 1:
        advice.append(
            f"the grid has one batch size ({b}): add others (e.g. {max(1, b // 4)} and {4 * b}) "
            "to locate the sweet spot in batch size"
        )
    axis = "epoch" if best.get("epoch") is not None else "step"
    e = best.get(axis)
    if e is not None:
        same_run = frame.filter(pl.col("run") == best["run"])[axis].drop_nulls().to_list()
        if len(same_run) >= 2:
            if e == min(same_run):
                advice.append(
                    f"the best checkpoint is the first one dumped for {best['run']} ({axis} {e}): "
                    f"dump earlier checkpoints ({axis} < {e})"
                )
            elif e == max(same_run):
                advice.append(
                    f"the best checkpoint is the last one of {best['run']} ({axis} {e}): "
                    f"train longer (more {axis}s, e.g. up to {2 * int(e)})"
                )
        else:
            advice.append(f"{best['run']} has a single checkpoint: dump several along training")
    return advice
