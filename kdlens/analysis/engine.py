"""``analyze``: every soft-label measure of every checkpoint of a store, in one pass per part.

For each part (run x checkpoint x split) the logits are read one bounded batch at
a time; each batch goes through one log-softmax pass
(:func:`kdlens.measures.softlabels._compute_per_example`) whose per-example columns feed
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
when the analysis covers one (``fitted_temperature_split`` says which split);
``nll_fitted`` is each split's NLL at that temperature (on the fit's id-hashed sample
of at most ``max(2000, 2e6 / K)`` examples, the whole split when smaller).
``reference_kl`` is ``KL(p_ref || p_T)`` averaged over examples.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.special import log_softmax

from kdlens._internal.atomic import atomic_path, commit_temp, new_temp
from kdlens._internal.defaults import FIT_SPLIT, N_PERMUTATIONS, TOP_K
from kdlens._internal.progress import as_progress
from kdlens.errors import InputError
from kdlens.measures.calibration import DEFAULT_N_BINS, TemperatureFitAccumulator
from kdlens.measures.softlabels import (
    DEFAULT_OEMC_DELTA,
    _check_temperature,
    _Core,
    _per_example_core,
    _Target,
)
from kdlens.measures.summary import SoftLabelAccumulator
from kdlens.store.format import Batch, Part
from kdlens.store.reader import LogitsStore, open_store

__all__ = [
    "AnalysisResult",
    "analyze",
    "read_reference_probs",
]

#: Neighbours kept per class in the ``edges`` table.
DEFAULT_TOP_K = TOP_K
#: The split used for the temperature fit when present.
HELD_OUT_SPLIT = FIT_SPLIT
_LABEL_NEEDERS = (
    "accuracy",
    "nll",
    "ece",
    "target_prob",
    "dark_mass",
    "nontarget_entropy",
    "oemc_share",
    "similarity_information",
    "instance_information",
)


# --------------------------------------------------------------------------- result


@dataclass
class AnalysisResult:
    """The tables of one analysis; :meth:`write` saves them as Parquet."""

    summary: pl.DataFrame
    classes: pl.DataFrame
    similarity: pl.DataFrame
    edges: pl.DataFrame
    temperature: float
    examples_path: Path | None = None
    calibration: pl.DataFrame = field(default_factory=pl.DataFrame)

    TABLES = ("summary", "classes", "similarity", "edges", "calibration")

    def write(self, directory: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``<table>.parquet`` for each table into ``directory`` (tmp file, then rename)."""
        out = Path(directory)
        if out.exists() and not out.is_dir():
            raise InputError(f"{out}: exists and is not a directory; choose another directory")
        paths = {}
        for name in self.TABLES:
            df: pl.DataFrame = getattr(self, name)
            target = out / f"{name}.parquet"
            with atomic_path(target) as tmp:
                df.write_parquet(tmp)
            paths[name] = target
        return paths


# --------------------------------------------------------------------------- side inputs


class _Reference:
    """Reference class probabilities looked up by example id."""

    def __init__(self, path: Path, probs: np.ndarray, ids: np.ndarray | None) -> None:
        self.path, self.probs = path, probs
        self._order = None if ids is None else np.argsort(ids, kind="stable")
        self._sorted = None if ids is None else ids[self._order]

    def rows(self, example_ids: np.ndarray) -> np.ndarray:
        if self._sorted is None:
            bad = (example_ids < 0) | (example_ids >= self.probs.shape[0])
            if bad.any():
                raise InputError(
                    f"{self.path}: has {self.probs.shape[0]} rows (row = example_id) but the store "
                    f"has example_id {int(example_ids[bad][0])}"
                )
            idx = example_ids
        else:
            pos = np.searchsorted(self._sorted, example_ids)
            pos = np.minimum(pos, self._sorted.shape[0] - 1)
            bad = self._sorted[pos] != example_ids
            if bad.any():
                raise InputError(f"{self.path}: no row for example_id {int(example_ids[bad][0])}")
            idx = self._order[pos]  # type: ignore[index]
        # Sorted access keeps a memory-mapped file read sequentially.
        order = np.argsort(idx, kind="stable")
        out = np.empty((idx.shape[0], self.probs.shape[1]))
        out[order] = np.asarray(self.probs[idx[order]], dtype=np.float64)
        if not np.isfinite(out).all() or (out < 0).any():
            raise InputError(f"{self.path}: probabilities must be finite and non-negative")
        sums = out.sum(axis=1)
        if np.any(np.abs(sums - 1.0) > 1e-3):
            raise InputError(
                f"{self.path}: rows must sum to 1, found a row summing to "
                f"{float(sums[np.argmax(np.abs(sums - 1))]):.4g}"
            )
        return out / sums[:, None]


def read_reference_probs(path: str | os.PathLike[str], num_classes: int) -> _Reference:
    """Open reference probabilities: ``.npy`` (N, K), row = example_id, or ``.npz`` with
    ``probs`` (N, K) and optional ``example_id`` (N,)."""
    p = Path(path)
    try:
        if p.suffix == ".npz":
            with np.load(p) as f:
                if "probs" not in f:
                    raise InputError(f"{p}: .npz must hold an array named 'probs'")
                probs = np.asarray(f["probs"])
                ids = np.asarray(f["example_id"], np.int64) if "example_id" in f else None
        else:
            probs = np.load(p, mmap_mode="r")
            ids = None
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: cannot read reference probabilities ({exc})") from None
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise InputError(
            f"{p}: reference probabilities must be (N, {num_classes}), got {probs.shape}"
        )
    if ids is not None and ids.shape != (probs.shape[0],):
        raise InputError(
            f"{p}: 'example_id' has shape {ids.shape} but 'probs' has {probs.shape[0]} rows"
        )
    if ids is not None and np.unique(ids).size != ids.size:
        raise InputError(f"{p}: 'example_id' holds duplicates")
    return _Reference(p, probs, ids)


# --------------------------------------------------------------------------- per-example file


class _ExamplesWriter:
    """Streams per-example rows to ``path`` through a tmp file renamed on close."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tmp = new_temp(self.path)
        self._w: pq.ParquetWriter | None = None

    def write(
        self,
        part: Part,
        ids: np.ndarray,
        y: np.ndarray,
        temperature: float,
        cols: dict[str, np.ndarray],
    ) -> None:
        n = ids.shape[0]
        arrays: dict[str, Any] = {
            "run": pa.repeat(pa.scalar(part.run), n),  # type: ignore[attr-defined]
            "checkpoint": pa.repeat(pa.scalar(part.checkpoint), n),  # type: ignore[attr-defined]
            "split": pa.repeat(pa.scalar(part.split), n),  # type: ignore[attr-defined]
            "example_id": pa.array(ids, pa.int64()),
            "label": pa.array(y.astype(np.int32), pa.int32()),
            "temperature": pa.repeat(pa.scalar(temperature), n),  # type: ignore[attr-defined]
        }
        for name, v in cols.items():
            arrays[name] = pa.array(v.astype(np.int32) if v.dtype.kind in "iu" else v)
        table = pa.table(arrays)
        if self._w is None:
            self._w = pq.ParquetWriter(self.tmp, table.schema, compression="snappy")
        self._w.write_table(table)

    def close(self) -> Path:
        if self._w is None:  # nothing written: still leave a valid (empty) file
            pq.write_table(pa.table({"example_id": pa.array([], pa.int64())}), self.tmp)
        else:
            self._w.close()
        commit_temp(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._w is not None:
            self._w.close()
        self.tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- analysis


@dataclass
class _PartOut:
    row: dict[str, Any]
    classes: pl.DataFrame
    similarity: pl.DataFrame
    edges: pl.DataFrame
    calibration: pl.DataFrame
    tfit: TemperatureFitAccumulator


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
    """
    t = _check_temperature(temperature)
    delta = float(oemc_delta)
    if not 0.0 <= delta <= 1.0:
        raise InputError(f"oemc_delta must lie in [0, 1], got {oemc_delta}")
    if int(n_bins) < 1:
        raise InputError(f"n_bins must be a positive integer, got {n_bins}")
    if int(n_permutations) < 0:
        raise InputError(f"n_permutations must be >= 0, got {n_permutations}")
    st = open_store(store)
    k = st.num_classes
    parts = _select_parts(st, splits)
    from kdlens.measures.similarity import read_hierarchy

    sup = read_hierarchy(hierarchy, k, st.class_names)[0] if hierarchy is not None else None
    ref = read_reference_probs(reference_probs, k) if reference_probs is not None else None
    prog = as_progress(progress)
    # A part may span several files: count the rows of every file it lives in.
    chosen = {(p.run, p.checkpoint, p.split) for p in parts}
    total = sum(p.num_rows for p in st.parts if (p.run, p.checkpoint, p.split) in chosen)
    task = prog.add_task("analyze", total=total)
    writer = _ExamplesWriter(per_example_path) if per_example_path is not None else None
    outs: list[_PartOut] = []
    try:
        for part in parts:
            prog.update(task, description=f"{part.run} {part.checkpoint} {part.split}")
            outs.append(
                _analyze_part(
                    st,
                    part,
                    temperature=t,
                    delta=delta,
                    n_bins=int(n_bins),
                    sup=sup,
                    ref=ref,
                    n_permutations=int(n_permutations),
                    drop_nonfinite=drop_nonfinite,
                    use_predicted_labels=use_predicted_labels,
                    top_k=int(top_k),
                    batch_rows=batch_rows,
                    writer=writer,
                    advance=lambda n: prog.advance(task, n),
                )
            )
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    examples_path = writer.close() if writer is not None else None
    _fill_fitted_temperature(outs)
    return AnalysisResult(
        summary=pl.DataFrame([o.row for o in outs], infer_schema_length=None),
        classes=_concat([o.classes for o in outs]),
        similarity=_concat([o.similarity for o in outs]),
        edges=_concat([o.edges for o in outs]),
        calibration=_concat([o.calibration for o in outs]),
        temperature=t,
        examples_path=examples_path,
    )


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _select_parts(st: LogitsStore, splits: Sequence[str] | None) -> list[Part]:
    if splits is not None:
        wanted = [str(s) for s in splits]
        unknown = [s for s in wanted if s not in st.splits()]
        if unknown:
            raise InputError(
                f"split {unknown[0]!r} is not in the store (it has: {', '.join(st.splits())})"
            )
    out: list[Part] = []
    order = {s: i for i, s in enumerate(("train", "val", "test"))}
    for run, ck in st.keys():
        seen: dict[str, Part] = {}
        for p in st.find(run, ck):
            if splits is None or p.split in splits:
                seen.setdefault(p.split, p)
        out.extend(seen[s] for s in sorted(seen, key=lambda s: (order.get(s, 9), s)))
    if not out:
        raise InputError("no part of the store matches the requested splits")
    return out


def _fill_fitted_temperature(outs: list[_PartOut]) -> None:
    """Fit T per checkpoint on its ``val`` split when analysed, else per split."""
    fitted: dict[tuple[str, str, str], float] = {}
    by_key: dict[tuple[str, str], dict[str, _PartOut]] = {}
    for o in outs:
        by_key.setdefault((o.row["run"], o.row["checkpoint"]), {})[o.row["split"]] = o
    for key, per_split in by_key.items():
        held = per_split.get(HELD_OUT_SPLIT)
        held_t = held.tfit.finalize() if held is not None else None
        for split, o in per_split.items():
            if held_t is not None:
                o.row["fitted_temperature"], o.row["fitted_temperature_split"] = (
                    held_t,
                    HELD_OUT_SPLIT,
                )
            else:
                if (key + (split,)) not in fitted:
                    fitted[key + (split,)] = o.tfit.finalize()
                o.row["fitted_temperature"] = fitted[key + (split,)]
                o.row["fitted_temperature_split"] = split
            # NLL after the temperature fit (what `recommend` ranks by), on the same
            # id-hashed sample the fit uses.
            o.row["nll_fitted"] = o.tfit.nll_at(o.row["fitted_temperature"])


def _iter_checked(
    st: LogitsStore,
    part: Part,
    *,
    drop_nonfinite: bool,
    use_predicted_labels: bool,
    batch_rows: int | None,
    advance: Callable[[int], None],
    stats: dict[str, int],
) -> Iterator[Batch]:
    """Yield validated batches; on a refusal, count through the rest of the part and raise."""
    where = f"run {part.run!r} checkpoint {part.checkpoint!r} split {part.split!r}"
    bad_rows = unlabeled = rows = 0
    first_bad: int | None = None
    failing = False
    for b in st.prefetch_batches(part.run, part.checkpoint, part.split, batch_rows=batch_rows):
        advance(len(b))
        rows += len(b)
        finite = np.isfinite(b.logits).all(axis=1)
        nbad = int(finite.size - np.count_nonzero(finite))
        if nbad:
            if first_bad is None:
                first_bad = int(b.example_ids[np.argmin(finite)])
            bad_rows += nbad
            if drop_nonfinite:
                b = Batch(b.logits[finite], b.labels[finite], b.example_ids[finite])
            else:
                failing = True
        missing = b.labels < 0
        nmiss = int(np.count_nonzero(missing))
        if nmiss:
            unlabeled += nmiss
            if use_predicted_labels:
                labels = b.labels.copy()
                labels[missing] = np.argmax(b.logits[missing], axis=1)
                b = Batch(b.logits, labels, b.example_ids)
            else:
                failing = True
        if failing or len(b) == 0:
            continue
        yield b
    stats.update(rows=rows, nonfinite=bad_rows, unlabeled=unlabeled)
    if bad_rows and not drop_nonfinite:
        raise InputError(
            f"{where}: {bad_rows} rows hold NaN/Inf logits (first example_id {first_bad}); "
            "pass `drop_nonfinite=True` to skip them"
        )
    if unlabeled and not use_predicted_labels:
        raise InputError(
            f"{where}: {unlabeled} of {rows} rows have no label; {', '.join(_LABEL_NEEDERS)} "
            "need labels (pass `use_predicted_labels=True` to use the "
            "teacher's top-1 prediction instead)"
        )


#: Threads that analyse the batches of one part. numpy and Parquet decoding release
#: the GIL, so two workers (this project's machines have two cores) roughly halve
#: the compute; their accumulators merge exactly.
_WORKERS = 2


class _PartAccumulators:
    """Everything one worker accumulates over the batches of a part."""

    def __init__(
        self, k: int, temperature: float, delta: float, n_bins: int, ref: _Reference | None
    ) -> None:
        from kdlens.measures.similarity import SimilarityAccumulator

        self.temperature, self.delta, self.ref = temperature, delta, ref
        self.soft = SoftLabelAccumulator(
            k, temperature=temperature, oemc_delta=delta, n_bins=n_bins
        )
        self.sim = SimilarityAccumulator(k, temperature=temperature)
        self.tfit = TemperatureFitAccumulator(k)
        self.ref_sim = SimilarityAccumulator(k, temperature=1.0) if ref is not None else None
        self.ref_kl = 0.0

    def update(self, b: Batch) -> dict[str, np.ndarray]:
        """Add one batch; returns its per-example columns."""
        t = self.temperature
        z, y = b.logits, b.labels.astype(np.int64)
        cols, core, tg, _ = _per_example_core(z, y, t, self.delta)
        self.soft.update_arrays(cols, y)
        _add_similarity(self.sim, z, y, core, tg)
        del core, tg
        self.tfit.update(z, y, b.example_ids)
        if self.ref is not None and self.ref_sim is not None:
            pr = self.ref.rows(b.example_ids)
            with np.errstate(divide="ignore"):
                lr = np.log(pr)
            lt = log_softmax(z.astype(np.float64) / t, axis=1)
            # 0 log 0 = 0: classes without reference mass contribute nothing.
            self.ref_kl += float(np.sum(pr * np.where(pr > 0, lr - lt, 0.0)))
            # log 0 -> a very negative finite logit: the class gets (numerically) no mass.
            self.ref_sim.update(np.maximum(lr, -1e4).astype(np.float32), y)
        return cols

    def merge(self, other: _PartAccumulators) -> _PartAccumulators:
        self.soft.merge(other.soft)
        self.sim.merge(other.sim)
        self.tfit.merge(other.tfit)
        if self.ref_sim is not None and other.ref_sim is not None:
            self.ref_sim.merge(other.ref_sim)
        self.ref_kl += other.ref_kl
        return self


def _run_workers(
    batches: Iterator[Batch], make: Callable[[], _PartAccumulators], workers: int
) -> _PartAccumulators:
    """Deal batches to ``workers`` threads in turn (batch i to worker i mod n) and merge
    their accumulators in worker order, so the result does not depend on timing."""
    import queue
    import threading

    accs = [make() for _ in range(workers)]
    if workers == 1:
        for b in batches:
            accs[0].update(b)
        return accs[0]
    inboxes: list[queue.Queue[Batch | None]] = [queue.Queue(maxsize=1) for _ in accs]
    errors: list[BaseException] = []

    def work(acc: _PartAccumulators, inbox: queue.Queue[Batch | None]) -> None:
        while (b := inbox.get()) is not None:
            if not errors:  # after a failure, drain without work so the dealer never blocks
                try:
                    acc.update(b)
                except BaseException as exc:
                    errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(a, q), name="kdlens-analyze", daemon=True)
        for a, q in zip(accs, inboxes, strict=True)
    ]
    for t in threads:
        t.start()
    try:
        for i, b in enumerate(batches):
            if errors:
                break
            inboxes[i % workers].put(b)
    finally:
        for q in inboxes:
            q.put(None)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    for other in accs[1:]:
        accs[0].merge(other)
    return accs[0]


def _analyze_part(
    st: LogitsStore,
    part: Part,
    *,
    temperature: float,
    delta: float,
    n_bins: int,
    sup: np.ndarray | None,
    ref: _Reference | None,
    n_permutations: int,
    drop_nonfinite: bool,
    use_predicted_labels: bool,
    top_k: int,
    batch_rows: int | None,
    writer: _ExamplesWriter | None,
    advance: Callable[[int], None],
) -> _PartOut:

    k = st.num_classes
    stats: dict[str, int] = {}
    batches = _iter_checked(
        st,
        part,
        drop_nonfinite=drop_nonfinite,
        use_predicted_labels=use_predicted_labels,
        batch_rows=batch_rows,
        advance=advance,
        stats=stats,
    )

    def make() -> _PartAccumulators:
        return _PartAccumulators(k, temperature, delta, n_bins, ref)

    if writer is None:
        acc = _run_workers(batches, make, _WORKERS)
    else:  # per-example rows must reach the file in order: one worker
        acc = make()
        for b in batches:
            cols = acc.update(b)
            writer.write(part, b.example_ids, b.labels.astype(np.int64), temperature, cols)
    soft, sim, tfit, ref_sim, ref_kl = acc.soft, acc.sim, acc.tfit, acc.ref_sim, acc.ref_kl
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
            stacklevel=3,
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
    if sup is not None:
        row.update(_superclass(res, sup, present))
    if ref is not None and ref_sim is not None:
        from kdlens.measures.similarity import reference_agreement

        s_ref = ref_sim.finalize().matrix
        row["reference_similarity_spearman"] = float(
            reference_agreement(
                _present(res.matrix, present), _present(s_ref, present), symmetric=True
            )
        )
        row["reference_kl"] = ref_kl / soft.n
    keys = {"run": part.run, "checkpoint": part.checkpoint, "split": part.split}
    classes = summ.classes_frame(st.class_names).with_columns(
        pl.Series("si", np.asarray(res.si_per_class, np.float64)).fill_nan(None),
        pl.Series("ii", np.asarray(res.ii_per_class, np.float64)).fill_nan(None),
        pl.lit(temperature).alias("temperature"),
    )
    classes = _with_keys(classes, keys)
    calib = summ.calibration.table if summ.calibration is not None else pl.DataFrame()
    return _PartOut(
        row=row,
        classes=classes,
        similarity=_with_keys(_long_similarity(np.asarray(res.matrix), temperature), keys),
        edges=_with_keys(_edges(res, top_k, present, temperature), keys),
        calibration=_with_keys(calib, keys) if calib.height else calib,
        tfit=tfit,
    )


def _add_similarity(acc: Any, z: np.ndarray, y: np.ndarray, core: _Core, tg: _Target) -> None:
    """Add one batch to the similarity accumulator from the soft-label pass's
    intermediates, so the log-softmax is computed once per batch, not twice."""
    if acc.temperature != core.temperature:
        acc.update(z, y)
        return
    # The soft-label columns are computed already: core.e and core.x are reused in place.
    q = tg.nontarget_probs(core, y, inplace=True)
    acc.update_nontarget(q, tg.nt_entropy, y)


def _with_keys(df: pl.DataFrame, keys: dict[str, str]) -> pl.DataFrame:
    if df.height == 0 and not df.columns:
        return df
    return df.select([pl.lit(v).alias(c) for c, v in keys.items()] + [pl.all()])


def _present(m: np.ndarray, present: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return m[np.ix_(present, present)] if not present.all() else m


def _structure(res: Any, n_permutations: int) -> dict[str, float]:
    if n_permutations == 0:
        return {"structure_p_value": float("nan"), "structure_effect": float("nan")}
    from kdlens.hypotheses.structure import structure_test_from_result

    st = structure_test_from_result(res, n_permutations=n_permutations, seed=0)
    return {
        "structure_p_value": float(st.p_value),
        "structure_effect": float(st.effect_size),
        "structure_permutations": int(st.n_permutations),
    }


def _superclass(res: Any, sup: np.ndarray, present: np.ndarray) -> dict[str, float]:
    from kdlens.measures.similarity import superclass_recovery

    est = np.asarray(getattr(res, "estimate", res.matrix), np.float64)
    rec = superclass_recovery(_present(est, present), sup[present])
    return {"superclass_ari": float(rec["ari"]), "superclass_nmi": float(rec["nmi"])}


def _long_similarity(s: np.ndarray, temperature: float) -> pl.DataFrame:
    k = s.shape[0]
    src, tgt = np.divmod(np.arange(k * k), k)
    off = src != tgt
    w = s.reshape(-1)[off]
    keep = ~np.isnan(w)  # rows of absent classes are NaN
    return pl.DataFrame(
        {
            "source": src[off][keep].astype(np.int64),
            "target": tgt[off][keep].astype(np.int64),
            "weight": w[keep],
            "temperature": np.full(int(keep.sum()), temperature),
        }
    )


def _edges(res: Any, top_k: int, present: np.ndarray, temperature: float) -> pl.DataFrame:
    from kdlens.measures.similarity import similarity_graph

    k = present.shape[0]
    if top_k <= 0:
        return pl.DataFrame()
    est = np.asarray(getattr(res, "estimate", res.matrix), np.float64)
    idx = np.flatnonzero(present)
    g = similarity_graph(_present(est, present), top_k=min(top_k, max(int(idx.size) - 1, 1)))
    if g.height == 0:
        return g
    if not present.all() or idx.size != k:
        # Map back from positions among present classes to class indices.
        g = g.with_columns(
            pl.Series("source", idx[g["source"].to_numpy()].astype(np.int64)),
            pl.Series("target", idx[g["target"].to_numpy()].astype(np.int64)),
        )
    return g.with_columns(pl.lit(temperature).alias("temperature"))
