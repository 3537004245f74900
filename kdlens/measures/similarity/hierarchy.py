"""Similarity against known structure: a reference matrix from probabilities (human soft
labels), agreement with it, superclass recovery, class -> superclass files, and the
store-level class graph."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kdlens._internal.checks import check_labels, check_square
from kdlens.errors import InputError
from kdlens.measures.similarity.graph import cluster_classes, similarity_graph
from kdlens.measures.similarity.matrix import SimilarityAccumulator, SimilarityResult

__all__ = [
    "ClassGraph",
    "read_hierarchy",
    "reference_agreement",
    "similarity_from_probs",
    "store_class_graph",
    "superclass_recovery",
]


def similarity_from_probs(probs: Any, labels: Any, *, weighting: str = "example") -> np.ndarray:
    """A reference similarity matrix from probability rows (e.g. human soft labels).

    Parameters
    ----------
    probs : (n, K) array of probabilities (rows sum to 1), **not** logits.
    labels : (n,) int array in ``[0, K)``, every row labelled.
    weighting : {"example", "mass"}
        ``"example"``: ``S[c]`` is the class mean of the renormalised non-target
        distribution ``q`` (the definition of ``science.md``); examples with no
        non-target mass at all (every annotator chose the label) carry no
        non-target information and are skipped. ``"mass"``: ``S[c]`` is the class
        sum of the non-target probabilities, normalised once per row (examples
        weighted by their non-target mass).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise InputError(f"probs must be 2-D (n, K), got shape {p.shape}")
    if (p < 0).any() or not np.isfinite(p).all():
        raise InputError("probs must be finite and non-negative (are these logits?)")
    rowsum = p.sum(axis=1)
    if p.size and np.abs(rowsum - 1.0).max() > 1e-3:
        raise InputError(
            f"probs rows must sum to 1 (max deviation {np.abs(rowsum - 1.0).max():.3g}); "
            "pass logits to similarity_matrix instead"
        )
    if weighting not in ("example", "mass"):
        raise InputError(f"weighting must be 'example' or 'mass', got {weighting!r}")
    y = check_labels(labels, p.shape[0], p.shape[1])
    k = p.shape[1]
    nt = p.copy()
    nt[np.arange(y.shape[0]), y] = 0.0
    mass = nt.sum(axis=1)
    S = np.full((k, k), np.nan)
    for c in range(k):
        rows = nt[(y == c) & (mass > 0)]
        if rows.shape[0] == 0:
            continue
        if weighting == "example":
            S[c] = (rows / rows.sum(axis=1, keepdims=True)).mean(axis=0)
        else:
            S[c] = rows.sum(axis=0) / rows.sum()
        S[c, c] = 0.0
    return S


def superclass_recovery(
    S_or_clusters: Any, superclass_of_class: Any, *, method: str = "average"
) -> dict[str, Any]:
    """How well clusters recover a known class → superclass map.

    Parameters
    ----------
    S_or_clusters : (K, K) similarity matrix (clustered with ``n_clusters`` = number of
        superclasses) or (K,) int cluster labels.
    superclass_of_class : (K,) int

    Returns
    -------
    dict with ``ari`` (adjusted Rand index), ``nmi`` (normalised mutual information),
    ``n_clusters``, ``labels`` (the (K,) cluster labels), over classes present.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    sup = check_labels(superclass_of_class, None, None, name="superclass_of_class")
    arr = np.asarray(S_or_clusters)
    if arr.ndim == 2:
        if arr.shape[0] != sup.shape[0]:
            raise InputError(
                f"S is {arr.shape[0]}x{arr.shape[0]} but superclass_of_class has {sup.shape[0]} "
                "entries"
            )
        present = ~np.isnan(arr.astype(np.float64)).all(axis=1)
        n_sup = int(np.unique(sup[present]).size)
        labels = cluster_classes(arr, n_clusters=n_sup, method=method)
    elif arr.ndim == 1:
        if arr.shape[0] != sup.shape[0]:
            raise InputError(
                f"cluster labels and superclass_of_class must be same length, but they are "
                f"{arr.shape[0]} and {sup.shape[0]}"
            )
        labels = arr.astype(np.int64)
    else:
        raise InputError(f"expected a (K, K) matrix or (K,) labels, got shape {arr.shape}")
    keep = labels >= 0
    return {
        "ari": float(adjusted_rand_score(sup[keep], labels[keep])),
        "nmi": float(normalized_mutual_info_score(sup[keep], labels[keep])),
        "n_clusters": int(np.unique(labels[keep]).size),
        "labels": labels,
    }


def reference_agreement(S: Any, S_ref: Any, *, symmetric: bool = False) -> float:
    """Spearman correlation between two similarity matrices over off-diagonal entries.

    Entries that are NaN in either matrix are left out. With ``symmetric=True`` both
    are symmetrised first and each unordered pair counts once.
    """
    from scipy.stats import spearmanr

    a = check_square(S)
    b = check_square(S_ref, name="S_ref")
    if a.shape != b.shape:
        raise InputError(f"S is {a.shape} but S_ref is {b.shape}")
    k = a.shape[0]
    if symmetric:
        a, b = 0.5 * (a + a.T), 0.5 * (b + b.T)
        mask = np.triu(np.ones((k, k), bool), 1)
    else:
        mask = ~np.eye(k, dtype=bool)
    x, yv = a[mask], b[mask]
    ok = np.isfinite(x) & np.isfinite(yv)
    if ok.sum() < 3:
        return float("nan")
    return float(spearmanr(x[ok], yv[ok]).statistic)


@dataclass
class ClassGraph:
    """The similarity graph of one checkpoint and split, ready to write or render."""

    result: SimilarityResult
    edges: pl.DataFrame
    clusters: np.ndarray | None  #: (K,) when a hierarchy or n_clusters was given
    recovery: dict[str, Any] | None  #: ARI / NMI against the hierarchy
    superclass_of_class: np.ndarray | None
    class_names: list[str] | None


_CLASS_COLUMNS = ("class", "class_id", "fine_id", "class_name", "fine_name")
_SUPER_COLUMNS = ("superclass", "superclass_id", "coarse_id", "superclass_name", "coarse_name")


def read_hierarchy(
    path: str | os.PathLike[str], num_classes: int, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Read a class -> superclass map as ``(superclass_of_class (K,) ints, superclass names)``.

    A CSV with a header names its columns ``class,superclass`` (or the first present of
    ``class_id/fine_id/class_name/fine_name`` and ``superclass_id/coarse_id/...``, as in
    CIFAR-100's ``fine_to_coarse.csv``); a class is an index or, when the store has class
    names, a name, and every class appears exactly once. A ``.json`` file holds a list of
    K superclass ids, or an object with one under ``fine_to_coarse`` or
    ``superclass_of_class`` (at the top or one level down, as in ``class_names.json``).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such hierarchy file")
    if p.suffix.lower() == ".json":
        sup = _json_hierarchy(p, num_classes)
        return sup, [str(s) for s in np.unique(sup)]
    import csv

    with open(p, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    cols = list(rows[0]) if rows else []
    ccol = next((c for c in _CLASS_COLUMNS if c in cols), None)
    scol = next((c for c in _SUPER_COLUMNS if c in cols), None)
    if ccol is None or scol is None:
        raise InputError(f"{p}: hierarchy must be a CSV with columns 'class,superclass'")
    index = {name: i for i, name in enumerate(class_names or [])}
    sup_of = np.full(num_classes, -1, np.int64)
    sup_names: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        raw = (row.get(ccol) or "").strip()
        if raw in index:
            c = index[raw]
        elif raw.lstrip("-").isdigit():
            c = int(raw)
            if not 0 <= c < num_classes:
                raise InputError(f"{p}:{line}: class {c} is outside [0, {num_classes})")
        else:
            raise InputError(
                f"{p}:{line}: class {raw!r} is neither an index nor a class name of the store"
            )
        if sup_of[c] >= 0:
            raise InputError(f"{p}:{line}: class {raw!r} is listed twice")
        s = (row.get(scol) or "").strip()
        if not s:
            raise InputError(f"{p}:{line}: empty superclass")
        sup_of[c] = sup_names.setdefault(s, len(sup_names))
    missing = np.flatnonzero(sup_of < 0)
    if missing.size:
        raise InputError(
            f"{p}: {missing.size} of the store's {num_classes} classes have no superclass "
            f"(first: {int(missing[0])})"
        )
    return sup_of, list(sup_names)


def _json_hierarchy(p: Path, num_classes: int) -> np.ndarray:
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise InputError(f"{p}: not valid JSON") from None
    keys = ("fine_to_coarse", "superclass_of_class")
    found: Any = None
    if isinstance(doc, list):
        found = doc
    elif isinstance(doc, dict):
        found = next((doc[key] for key in keys if key in doc), None)
        if found is None:
            hits = [v[key] for v in doc.values() if isinstance(v, dict) for key in keys if key in v]
            hits = [h for h in hits if len(h) == num_classes]
            found = hits[0] if len(hits) == 1 else None
    if found is None:
        raise InputError(f"{p}: no class → superclass list found (fine_to_coarse)")
    sup = np.asarray(found)
    if sup.ndim != 1 or not np.issubdtype(sup.dtype, np.integer):
        raise InputError(f"{p}: the hierarchy must be a flat list of integers")
    if sup.shape[0] != num_classes:
        raise InputError(
            f"{p}: hierarchy has {sup.shape[0]} classes but the store has {num_classes}"
        )
    return sup.astype(np.int64)


def store_class_graph(
    store: Any,
    run: str,
    checkpoint: str,
    *,
    split: str = "test",
    temperature: float = 1.0,
    top_k: int | None = 5,
    threshold: float | None = None,
    superclass_of_class: Any = None,
    n_clusters: int | None = None,
) -> ClassGraph:
    """Stream one checkpoint's split of a logits store into its class similarity graph.

    Clusters the estimate into ``n_clusters`` (default: the number of superclasses when
    ``superclass_of_class`` is given) and scores them against the hierarchy.
    """
    from kdlens.store.reader import open_store

    st = open_store(store)
    k = st.num_classes
    acc = SimilarityAccumulator(k, temperature=temperature, entries=False)
    for batch in st.iter_batches(run, checkpoint, split):
        acc.update(batch.logits, batch.labels)
    res = acc.finalize()
    edges = similarity_graph(res.estimate, top_k=top_k, threshold=threshold)
    sup = None
    if superclass_of_class is not None:
        sup = np.asarray(superclass_of_class)
        if sup.shape != (k,):
            raise InputError(f"superclass_of_class has shape {sup.shape}, expected ({k},)")
    clusters = None
    recovery = None
    if n_clusters is None and sup is not None:
        n_clusters = int(np.unique(sup).size)
    if n_clusters is not None:
        clusters = cluster_classes(res.estimate, n_clusters=n_clusters)
        if sup is not None:
            recovery = superclass_recovery(clusters, sup)
    return ClassGraph(res, edges, clusters, recovery, sup, st.class_names)
