"""Ensemble teachers: a mixture of checkpoints chosen by greedy forward selection.

``select_ensemble`` reads the held-out parts of every checkpoint once (the pass engine,
:mod:`kdlens.analysis.passes`; under ``recommend --ensemble`` the same pass as the
single-checkpoint ranking) and holds them as float32 arrays, bounded in advance
(:func:`memory_needed`, checked against :func:`kdlens._internal.resources.memory_limit`).
Selection (:mod:`kdlens.recommend.ensemble_select`) uses the ``val`` split only (``test``
when there is no ``val``, with a note), on its temperature-fit sample; every held-out
split (``val``, ``test``) is then evaluated at the temperature fitted on ``val``
(:func:`kdlens.analysis.parts.fitted_temperatures`, the rule ``recommend`` uses). The
comparison with the best single checkpoint (the first greedy pick: the lowest NLL after
the fit on the selection split) carries a paired bootstrap over the id-hashed buckets of
:mod:`kdlens.recommend.bootstrap`. On the selection split the mixture's advantage is
optimistic (it was chosen there); ``test``, when present, is the honest estimate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from kdlens._internal.checks import check_positive_int, check_temperature
from kdlens._internal.defaults import (
    BOOTSTRAP_SEED,
    ENSEMBLE_MAX_MEMBERS,
    ENSEMBLE_RULE,
    HELDOUT_SPLITS,
    N_BOOTSTRAP,
    RECOMMEND_TEMPERATURE,
    TEMPERATURE_BOUNDS,
)
from kdlens._internal.defaults import (
    COLLAPSE_WEIGHT as DEFAULT_COLLAPSE_WEIGHT,
)
from kdlens._internal.resources import ENV, human, memory_limit
from kdlens.analysis.parts import fitted_temperatures
from kdlens.analysis.passes import PartPlan, PartResult, run_pass
from kdlens.errors import InputError, StoreError
from kdlens.measures.calibration import TemperatureFitAccumulator
from kdlens.recommend.bootstrap import N_BUCKETS, bucket_of, refit_replicates, replicate_weights
from kdlens.recommend.ensemble_result import EnsembleRecommendation
from kdlens.recommend.ensemble_select import (
    check_rule,
    combine,
    greedy_select,
    member_array,
)
from kdlens.recommend.signals import pass_options
from kdlens.store.format import Batch
from kdlens.store.reader import LogitsStore, open_store

__all__ = [
    "EnsembleRecommendation",
    "EnsembleRequest",
    "recommend_with_ensemble",
    "select_ensemble",
]

_EXTRA = "ensemble"


class _Capture:
    """Pass extra: keeps a part's labelled rows (ids, labels, float32 logits)."""

    temperature = None

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, batch: Batch, cols: dict[str, np.ndarray]) -> None:
        keep = batch.labels >= 0
        z = np.asarray(batch.logits[keep], np.float32)
        self.chunks.append((batch.example_ids[keep], batch.labels[keep].astype(np.int64), z))

    def merge(self, other: _Capture) -> _Capture:
        self.chunks.extend(other.chunks)
        return self

    def arrays(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, labels, logits), sorted by example id."""
        if not self.chunks:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, k), np.float32)
        ids, y, z = (np.concatenate(c) for c in zip(*self.chunks, strict=True))
        order = np.argsort(ids, kind="stable")
        return ids[order], y[order], z[order]


def memory_needed(st: LogitsStore, splits: Sequence[str]) -> int:
    """Bytes held at the peak: the float32 rule-space array of every checkpoint and split
    (raw logits while reading, then the transformed copy) and a float32 candidate chunk."""
    rows = sum(p.num_rows for p in st.parts if p.split in splits)
    return 4 * st.num_classes * rows * 2 + (1 << 28)


class EnsembleRequest:
    """select_ensemble's validated options and the parts it reads (before any logits)."""

    def __init__(
        self,
        store: Any,
        *,
        max_members: int,
        rule: str,
        temperature: float,
        n_bootstrap: int,
        seed: int,
    ) -> None:
        self.st = store if isinstance(store, LogitsStore) else open_store(store)
        self.max_members = check_positive_int(max_members, name="max_members")
        self.rule = check_rule(rule)
        self.temperature = check_temperature(temperature)
        self.n_bootstrap = check_positive_int(n_bootstrap, name="n_bootstrap", minimum=0)
        self.seed = int(seed)
        self.notes: list[str] = []
        have = set(self.st.splits())
        self.splits = [s for s in HELDOUT_SPLITS if s in have]
        if not self.splits:
            raise InputError(
                f"{self.st.source}: an ensemble is selected on a held-out split "
                f"({' or '.join(HELDOUT_SPLITS)}); the store has {', '.join(sorted(have))}"
            )
        self.selection = self.splits[0]
        if self.selection != HELDOUT_SPLITS[0]:
            self.notes.append(
                f"no '{HELDOUT_SPLITS[0]}' split: the ensemble is selected and evaluated on "
                f"'{self.selection}' (optimistic: no split is left for an honest estimate)"
            )
        self.memory_bytes = memory_needed(self.st, self.splits)
        limit = memory_limit()
        if self.memory_bytes > limit:
            raise InputError(
                f"{self.st.source}: ensemble selection holds the held-out logits of every "
                f"checkpoint in memory, ~{human(self.memory_bytes)}; the limit is "
                f"{human(limit)} (set {ENV} to change it)"
            )

    def plans(self) -> list[PartPlan]:
        return [
            PartPlan(p, extras={_EXTRA: _Capture})
            for run, ck in self.st.keys()
            for p in self.st.find(run, ck)
            if p.split in self.splits
        ]

    def result(self, results: Sequence[PartResult]) -> EnsembleRecommendation:
        """The ensemble from a pass that ran (at least) :meth:`plans`."""
        from kdlens.recommend.ensemble_eval import evaluate

        data = self._aligned(results)
        cands = [key for key in self.st.keys() if (*key, self.selection) in data]
        base = EnsembleRecommendation(
            ok=False,
            reason=None,
            rule=self.rule,
            temperature=self.temperature,
            selection_split=self.selection,
            max_members=self.max_members,
            n_candidates=len(cands),
            n_bootstrap=self.n_bootstrap,
            n_buckets=N_BUCKETS if self.n_bootstrap else 0,
            seed=self.seed,
            memory_bytes=self.memory_bytes,
            notes=self.notes,
        )
        if not cands:
            base.reason = f"no checkpoint has labelled rows in the '{self.selection}' split"
            return base
        splits = [s for s in self.splits if all((*c, s) in data for c in cands)]
        for s in self.splits:
            if s not in splits:
                self.notes.append(f"'{s}' is missing from some checkpoints: not evaluated")
        arrays = {
            s: np.stack(
                [member_array(data[(*c, s)][2], self.rule, self.temperature) for c in cands]
            )
            for s in splits
        }
        ids = {s: data[(*cands[0], s)][0] for s in splits}
        labels = {s: data[(*cands[0], s)][1] for s in splits}
        del data
        sample = _fit_sample(ids[self.selection], labels[self.selection], arrays[self.selection])
        greedy = greedy_select(
            arrays[self.selection][:, sample],
            labels[self.selection][sample],
            max_members=self.max_members,
            rule=self.rule,
        )
        return evaluate(self, base, cands, greedy, arrays, ids, labels)

    def _aligned(
        self, results: Sequence[PartResult]
    ) -> dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per (run, checkpoint, split): rows on the ids common to every checkpoint."""
        k = self.st.num_classes
        raw: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for r in results:
            if _EXTRA in r.extras and r.plan.key not in raw:
                got = r.extras[_EXTRA].arrays(k)
                if got[0].size:
                    raw[r.plan.key] = got
        out = {}
        for s in self.splits:
            keys = [key for key in raw if key[2] == s]
            if not keys:
                continue
            common = raw[keys[0]][0]
            for key in keys[1:]:
                common = np.intersect1d(common, raw[key][0], assume_unique=True)
            dropped = max(raw[key][0].size for key in keys) - common.size
            if dropped:
                self.notes.append(
                    f"'{s}': {dropped:,} example id(s) are not in every checkpoint and are left out"
                )
            for key in keys:
                i, y, z = raw[key]
                pos = np.searchsorted(i, common)
                out[key] = (common, y[pos], z[pos])
            y0 = out[keys[0]][1]
            for key in keys[1:]:
                if not np.array_equal(out[key][1], y0):
                    raise StoreError(
                        f"{self.st.source}: run {key[0]!r} checkpoint {key[1]!r} split {s!r} "
                        "labels the same example ids differently from the other checkpoints"
                    )
        return out


def _fit_sample(ids: np.ndarray, labels: np.ndarray, arrays: np.ndarray) -> np.ndarray:
    """Row indices of the temperature-fit sample (the same rows for every checkpoint)."""
    acc = TemperatureFitAccumulator(arrays.shape[-1]).update(arrays[0], labels, ids)
    return np.searchsorted(ids, np.sort(acc.sample[0]))


def select_ensemble(
    store: LogitsStore | str | os.PathLike[str] | Sequence[str],
    *,
    max_members: int = ENSEMBLE_MAX_MEMBERS,
    rule: str = ENSEMBLE_RULE,
    temperature: float = RECOMMEND_TEMPERATURE,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    progress: Any = None,
) -> EnsembleRecommendation:
    """Choose an ensemble teacher from a store's checkpoints (module docstring).

    Parameters
    ----------
    store
        A logits store (object, file, directory or glob) with a ``val`` (else ``test``) split.
    max_members
        Greedy steps (selections with replacement); the path reports every step and the
        kept prefix is the shortest one reaching the lowest NLL on the selection split.
    rule
        Combination rule: ``mean_prob`` (probabilities at T = 1), ``mean_prob_t``
        (probabilities at ``temperature``) or ``mean_logit``.
    temperature
        The distillation temperature (used by ``mean_prob_t`` only).
    n_bootstrap, seed
        Replicates and seed of the paired bootstrap of the comparison (0 = none).
    """
    req = EnsembleRequest(
        store,
        max_members=max_members,
        rule=rule,
        temperature=temperature,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    opts = pass_options() | {"description": "ensemble"}
    results = run_pass(req.st, req.plans(), **opts, progress=progress)
    rec = req.result(results)
    rec.source = str(getattr(req.st, "source", store))
    return rec


def split_fits(
    arrays: dict[str, np.ndarray], ids: dict[str, np.ndarray], labels: dict[str, np.ndarray]
) -> tuple[dict[str, Any], dict[str, TemperatureFitAccumulator]]:
    """The fit of one mixture on every split (rule of ``analyze``: T from ``val``)."""
    accs = {
        s: TemperatureFitAccumulator(a.shape[-1]).update(a, labels[s], ids[s])
        for s, a in arrays.items()
    }
    return fitted_temperatures(accs), accs  # type: ignore[arg-type]


def nll_replicates(
    acc: TemperatureFitAccumulator, fit: Any, selection: bool, weights: np.ndarray
) -> np.ndarray:
    """Bootstrap replicates of the NLL after the fit: refitted on the selection split (as
    ``recommend``), at the fixed selection-split temperature elsewhere."""
    if selection:
        return refit_replicates(acc, fit.temperature, weights, TEMPERATURE_BOUNDS)
    from scipy.special import log_softmax

    ids, z, y = acc.sample
    nll = -log_softmax(z.astype(np.float64) / fit.temperature, axis=1)[np.arange(y.size), y]
    return bucket_means(ids, nll, weights)


def bucket_means(ids: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Replicate means of per-example values under the id-hashed bucket weights."""
    m = weights.shape[1]
    b = bucket_of(ids, m)
    s = np.bincount(b, weights=values.astype(np.float64), minlength=m)
    n = np.bincount(b, minlength=m).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ s) / (weights @ n)


def mixture_of(arrays: np.ndarray, counts: np.ndarray, rule: str) -> np.ndarray:
    """The mixture (rule space) of the candidates with nonzero ``counts``."""
    sel = np.flatnonzero(counts)
    return combine(arrays[sel], counts[sel].astype(np.float64), rule)


def weights_for(n_bootstrap: int, seed: int) -> np.ndarray | None:
    return replicate_weights(n_bootstrap, seed) if n_bootstrap else None


def recommend_with_ensemble(
    store: LogitsStore | str | os.PathLike[str] | Sequence[str],
    *,
    temperature: float = RECOMMEND_TEMPERATURE,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    top: int | None = None,
    max_members: int = ENSEMBLE_MAX_MEMBERS,
    rule: str = ENSEMBLE_RULE,
    progress: Any = None,
    engine: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
) -> tuple[Any, EnsembleRecommendation]:
    """``recommend`` and :func:`select_ensemble` from one read of every part (the plans of
    both merge into one pass), on the engine ``engine`` / ``workers`` / ``scheduler``
    (:func:`~kdlens.analysis.executors.engine_spec`). Returns (Recommendation,
    EnsembleRecommendation)."""
    from kdlens.analysis.executors import engine_spec
    from kdlens.analysis.passes import merge_plans
    from kdlens.recommend.rank import recommend_from_pass, too_few_checkpoints
    from kdlens.recommend.signals import as_summary, recommend_request

    if isinstance(store, (str, os.PathLike)) and as_summary(store) is not None:
        raise InputError(
            f"{store}: an ensemble needs the logits (a store), not an analysis summary"
        )
    req = recommend_request(store, temperature=temperature, n_bootstrap=n_bootstrap, seed=seed)
    ens = EnsembleRequest(
        req.st,
        max_members=max_members,
        rule=rule,
        temperature=temperature,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    if top is not None and int(top) < 1:
        raise InputError(f"top must be >= 1, got {top}")
    early = too_few_checkpoints(req, DEFAULT_COLLAPSE_WEIGHT)
    plans = ens.plans() if early is not None else merge_plans(req.plans(), ens.plans())
    results = run_pass(
        req.st,
        plans,
        **pass_options(),
        progress=progress,
        engine=engine_spec(engine, workers, scheduler),
    )
    rec = early or recommend_from_pass(req, results, top=top)
    rec.source = str(req.st.source)
    out = ens.result(results)
    out.source = rec.source
    return rec, out
