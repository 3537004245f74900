"""The class graph and clusters of a similarity matrix, and their export (GraphML, JSON
node-link, Parquet edge list)."""

from __future__ import annotations

import heapq
import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kdlens._internal.atomic import atomic_path, write_text_atomic
from kdlens._internal.checks import check_square
from kdlens.errors import InputError
from kdlens.measures.similarity.matrix import _symmetric_affinity

__all__ = [
    "cluster_classes",
    "similarity_graph",
    "write_edges_parquet",
    "write_graph",
]


def similarity_graph(
    S: Any, *, top_k: int | None = 5, threshold: float | None = None
) -> pl.DataFrame:
    """Sparse undirected class graph from a similarity matrix.

    The matrix is symmetrised, ``W = (S + Sᵀ) / 2``; an edge ``{c, j}`` is kept when
    ``j`` is among the ``top_k`` strongest neighbours of ``c`` or ``c`` among those of
    ``j`` (with ``top_k``), and when ``W[c, j] ≥ threshold`` (with ``threshold``).
    Absent classes (NaN rows) have no edges.

    Returns
    -------
    pl.DataFrame with columns ``source`` (int, the smaller class), ``target`` (int),
    ``weight`` (float64), strongest first.
    """
    m = check_square(S)
    if top_k is None and threshold is None:
        raise InputError("give top_k, threshold, or both to sparsify the graph")
    if top_k is not None and int(top_k) < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    if threshold is not None and not math.isfinite(float(threshold)):
        raise InputError(f"threshold must be finite, got {threshold}")
    k = m.shape[0]
    present = ~np.isnan(m).all(axis=1)
    kk = min(int(top_k), k - 1) if top_k is not None else None
    thr = float(threshold) if threshold is not None else None
    src_l, dst_l, w_l = [], [], []
    # Blocks of rows of W = (S + Sᵀ)/2: memory O(block x K), never a K x K temporary.
    step = max(1, (1 << 21) // k)
    for a in range(0, k, step):
        rows = np.arange(a, min(a + step, k))
        W = _symmetric_affinity_rows(m, rows)
        ok = present[rows][:, None] & present[None, :]
        ok[np.arange(rows.size), rows] = False
        pick = ok if kk is None else _top_mask(np.where(ok, W, -np.inf), kk)
        if thr is not None:
            pick &= W >= thr
        r, c = np.nonzero(pick)
        src_l.append(rows[r])
        dst_l.append(c)
        w_l.append(W[r, c])
    src, dst, w = (np.concatenate(x) for x in (src_l, dst_l, w_l))
    # An edge kept by either end (the top-k union); each pair once, smaller class first.
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    pairs = np.unique(np.stack([lo, hi], axis=1), axis=0, return_index=True)[1]
    df = pl.DataFrame(
        {
            "source": lo[pairs].astype(np.int64),
            "target": hi[pairs].astype(np.int64),
            "weight": w[pairs].astype(np.float64),
        }
    )
    if thr is not None and kk is not None:
        df = df.filter(pl.col("weight") >= thr)
    return df.sort(["weight", "source", "target"], descending=[True, False, False])


def _symmetric_affinity_rows(m: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of :func:`_symmetric_affinity` (m) without forming all of it."""
    W = m[rows] + m[:, rows].T
    W *= 0.5
    np.nan_to_num(W, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    W[np.arange(rows.size), rows] = 0.0
    return W


def _top_mask(Wm: np.ndarray, kk: int) -> np.ndarray:
    """Per row, the ``kk`` largest finite entries, ties taken in index order (what a
    stable argsort of ``-Wm`` would take), as a boolean mask."""
    if kk >= Wm.shape[1]:
        return np.isfinite(Wm)
    cut = -np.partition(-Wm, kk - 1, axis=1)[:, kk - 1 : kk]  # each row's kk-th largest
    above = Wm > cut
    tied = Wm == cut
    need = kk - above.sum(axis=1, keepdims=True)
    take = above | (tied & (np.cumsum(tied, axis=1) <= need))
    return take & np.isfinite(Wm)


def cluster_classes(S: Any, *, n_clusters: int, method: str = "average") -> np.ndarray:
    """Group classes by a similarity matrix (scikit-learn).

    Parameters
    ----------
    S : (K, K) similarity matrix or estimate (``SimilarityResult.estimate``); it is
        symmetrised first. NaN rows (absent classes) are left out.
    n_clusters : int
    method : {"average", "spectral"}
        ``"average"`` (default): agglomerative clustering, average linkage, on the
        distance ``max W − W`` of the symmetrised matrix ``W``. ``"spectral"``:
        spectral clustering on ``W`` as a precomputed affinity (it did worse on real
        data; see :mod:`kdlens.measures.similarity`).

    Returns
    -------
    (K,) int cluster labels; absent classes get -1.
    """
    m = check_square(S)
    if method not in ("average", "spectral"):
        raise InputError(f"method must be 'average' or 'spectral', got {method!r}")
    if np.nanmin(m) < 0 if np.isfinite(m).any() else False:
        raise InputError("S must be non-negative (a similarity, not a distance)")
    k = m.shape[0]
    present = ~np.isnan(m).all(axis=1)
    idx = np.flatnonzero(present)
    nc = int(n_clusters)
    if nc < 1 or nc > idx.size:
        raise InputError(
            f"n_clusters must lie in [1, {idx.size}] (the classes present), got {n_clusters}"
        )
    return _compute_clusters(m, idx, nc, method, k)


def _compute_clusters(m: np.ndarray, idx: np.ndarray, nc: int, method: str, k: int) -> np.ndarray:
    out = np.full(k, -1, np.int64)
    if nc == idx.size:
        out[idx] = np.arange(nc)
        return out
    if nc == 1:
        out[idx] = 0
        return out
    W = _symmetric_affinity(m[np.ix_(idx, idx)])
    if method == "spectral":
        from sklearn.cluster import SpectralClustering

        model = SpectralClustering(n_clusters=nc, affinity="precomputed", random_state=0)
        out[idx] = model.fit_predict(W)
        return out
    D = W.max() - W
    np.fill_diagonal(D, 0.0)
    out[idx] = _average_linkage_labels(D, nc)
    return out


def _average_linkage_labels(D: np.ndarray, nc: int) -> np.ndarray:
    """Labels of scikit-learn's ``AgglomerativeClustering(n_clusters=nc,
    metric="precomputed", linkage="average").fit_predict(D)``, bit for bit.

    scikit-learn builds that tree with :func:`scipy.cluster.hierarchy.linkage` on the
    condensed matrix and cuts it into ``nc`` clusters by splitting the newest merge first;
    both steps are taken here directly, because importing ``sklearn.cluster`` costs
    more CPU than a whole report's charts (tests/test_similarity.py checks the agreement).
    """
    from scipy.cluster.hierarchy import linkage

    n = D.shape[0]
    i, j = np.triu_indices(n, k=1)
    children = linkage(D[i, j], method="average").astype(np.intp)[:, :2]
    # Undo the nc - 1 newest merges, keeping the roots on a heap of negated node numbers
    # (scikit-learn's ``_hc_cut``: the clusters are numbered in the heap's list order).
    heap = [-(2 * n - 2)]
    for _ in range(nc - 1):
        left, right = children[-heap[0] - n]
        heapq.heappush(heap, -int(left))
        heapq.heappushpop(heap, -int(right))
    labels = np.zeros(n, np.int64)
    for number, node in enumerate(heap):
        labels[_leaves(-node, children, n)] = number
    return labels


def _leaves(node: int, children: np.ndarray, n: int) -> list[int]:
    """The leaves under ``node`` of a linkage tree with ``n`` leaves."""
    stack, out = [node], []
    while stack:
        v = stack.pop()
        if v < n:
            out.append(v)
        else:
            stack.extend(int(c) for c in children[v - n])
    return out


def write_graph(
    edges: pl.DataFrame,
    path: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    clusters: Any = None,
    superclasses: Any = None,
    temperature: float | None = None,
) -> Path:
    """Write a similarity graph as GraphML (``.graphml``), JSON node-link (``.json``)
    or an edge-list Parquet (``.parquet``), atomically (temporary file, then rename).

    Nodes are classes ``0..K−1`` with optional ``name``, ``cluster`` and ``superclass``
    attributes; edges carry ``weight``.
    """
    for col in ("source", "target", "weight"):
        if col not in edges.columns:
            raise InputError(f"edges must have a {col!r} column (from similarity_graph)")
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".graphml", ".json", ".parquet"):
        raise InputError(f"{p}: graph output must end in .graphml, .json or .parquet")
    if suffix == ".parquet":
        return write_edges_parquet(edges, p, temperature=temperature)
    k = num_classes
    if k is None:
        if class_names is not None:
            k = len(class_names)
        elif edges.height:
            ends = np.concatenate([edges["source"].to_numpy(), edges["target"].to_numpy()])
            k = int(ends.max()) + 1
        else:
            k = 0
    nodes = []
    for c in range(int(k)):
        node: dict[str, Any] = {"id": c}
        if class_names is not None:
            node["name"] = str(class_names[c])
        if clusters is not None:
            node["cluster"] = int(np.asarray(clusters)[c])
        if superclasses is not None:
            node["superclass"] = int(np.asarray(superclasses)[c])
        nodes.append(node)
    links = [
        {"source": int(s), "target": int(t), "weight": float(w)}
        for s, t, w in edges.select("source", "target", "weight").iter_rows()
    ]
    if suffix == ".json":
        doc: dict[str, Any] = {
            "directed": False,
            "multigraph": False,
            "graph": {"temperature": temperature},
            "nodes": nodes,
            "links": links,
        }
        text = json.dumps(doc, indent=1)
    else:
        text = _graphml(nodes, links, temperature)
    write_text_atomic(p, text)
    return p


def _graphml(nodes: list[dict[str, Any]], links: list[dict[str, Any]], t: float | None) -> str:
    ns = "http://graphml.graphdrawing.org/xmlns"
    root = ET.Element("graphml", {"xmlns": ns})
    keys = [
        ("name", "node", "string"),
        ("cluster", "node", "int"),
        ("superclass", "node", "int"),
        ("weight", "edge", "double"),
        ("temperature", "graph", "double"),
    ]
    for name, dom, typ in keys:
        ET.SubElement(root, "key", {"id": name, "for": dom, "attr.name": name, "attr.type": typ})
    g = ET.SubElement(root, "graph", {"id": "similarity", "edgedefault": "undirected"})
    if t is not None:
        ET.SubElement(g, "data", {"key": "temperature"}).text = repr(float(t))
    for node in nodes:
        el = ET.SubElement(g, "node", {"id": f"n{node['id']}"})
        for attr in ("name", "cluster", "superclass"):
            if attr in node:
                ET.SubElement(el, "data", {"key": attr}).text = str(node[attr])
    for i, e in enumerate(links):
        el = ET.SubElement(
            g, "edge", {"id": f"e{i}", "source": f"n{e['source']}", "target": f"n{e['target']}"}
        )
        ET.SubElement(el, "data", {"key": "weight"}).text = repr(e["weight"])
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def write_edges_parquet(
    edges: pl.DataFrame, path: str | os.PathLike[str], *, temperature: float | None = None
) -> Path:
    """Write an edge list (source, target, weight[, temperature]) to Parquet atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    df = edges
    if temperature is not None:
        df = df.with_columns(pl.lit(float(temperature)).alias("temperature"))
    with atomic_path(p) as tmp:
        df.write_parquet(tmp)
    return p
