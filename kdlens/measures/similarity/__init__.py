"""Class similarity: what a teacher's non-target mass says about which classes are alike.

Definitions (``science.md``), with ``q = softmax(z_{≠y} / T)`` the non-target
distribution of one example over the K − 1 other classes, computed in log space so
it stays exact when ``p_y`` rounds to 1:

* similarity matrix ``S[c, j] = mean over examples of class c of q(j)``, ``S[c, c] = 0``;
  each row sums to 1. Rows of classes absent from the data are NaN.
* similarity information ``SI_c = KL(S[c] ‖ uniform over K − 1)``; ``SI = mean_c SI_c``
  over the classes present.
* instance information ``II_c = mean_{x in c} KL(q_x ‖ S[c])``; ``II = mean_c II_c``.
* the identity ``mean_{x in c} KL(q_x ‖ uniform) = SI_c + II_c`` holds exactly; the
  accumulator obtains ``II_c`` through it (only per-class sums are kept), while
  :func:`instance_information` computes the KL directly, so a test can compare the two.

K = 2: the non-target distribution is a point mass on the one other class, so no
non-target structure is possible; ``SI = II = 0`` by definition.

**The similarity estimate used for graphs and clustering** (``SimilarityResult.estimate``)
is the degree-normalised symmetrised matrix

    W = (S + Sᵀ) / 2,   E = D^{-1/2} W D^{-1/2},   D = diag(row sums of W)

(zero diagonal, NaN for absent classes). Symmetrising makes "c is mistaken for j" and
"j is mistaken for c" one piece of evidence; the degree normalisation (as in the
normalised cut) stops "hub" classes that attract mass from every class from pulling
unrelated classes into one cluster. It is a function of ``S`` only, so it streams
exactly like ``S``. :func:`cluster_classes` uses average linkage on ``max E − E``.

Evidence (``examples/similarity_cifar.py``; published CIFAR-100 / CIFAR-10 test logits):
superclass recovery (ARI, 20 clusters) over six CIFAR-100 models and agreement
(Spearman over off-diagonal entries) with the CIFAR-10H human similarity over nineteen
CIFAR-10 models, mean/min, at T = 1:

==============================  ===========  ===========
estimate                        ARI          agreement
==============================  ===========  ===========
naive S, affinity linkage       0.542/0.499  0.816/0.793
naive S, both symmetrised       (same)       0.836/0.802
E (this module), symmetrised    0.552/0.503  0.842/0.804
==============================  ===========  ===========

The gain is small: the targets of ARI 0.70 and agreement 0.90 were not reached.
Alternatives tried and rejected for lack of a consistent gain (same data): geometric
class means of ``q`` (0.548 ARI with affinity linkage, 0.384 with row-correlation
distance), temperatures 1.5–8, dark-mass weighting of examples, top-k truncation of
``q``, correct- or wrong-only examples, PMI / column normalisation, mutual ranks,
profile (Hellinger / correlation / cosine) distances, spectral clustering (0.47–0.52),
complete linkage. Even the average ``S`` of all six CIFAR-100 models reaches only
ARI 0.63: the CIFAR-100 superclasses are partly semantic, not visual, so an ARI of
0.7 from one model's test logits looks out of reach for per-class-sum estimates.
"""

from typing import Any

from kdlens.measures.similarity.graph import (
    cluster_classes,
    similarity_graph,
    write_edges_parquet,
    write_graph,
)
from kdlens.measures.similarity.hierarchy import (
    ClassGraph,
    read_hierarchy,
    reference_agreement,
    similarity_from_probs,
    store_class_graph,
    superclass_recovery,
)
from kdlens.measures.similarity.matrix import (
    SimilarityAccumulator,
    SimilarityResult,
    instance_information,
    similarity_estimate,
    similarity_information,
    similarity_matrix,
)
from kdlens.measures.similarity.sparse import (
    SparseSimilarityAccumulator,
    SparseSimilarityResult,
)


def similarity_accumulator(
    num_classes: int, *, temperature: float = 1.0, entries: bool = True
) -> Any:
    """The accumulator analyze uses: dense and exact up to ``SIMILARITY_DENSE_MAX_K``
    classes, the bounded :class:`SparseSimilarityAccumulator` above (see its module)."""
    from kdlens._internal.defaults import SIMILARITY_DENSE_MAX_K

    if int(num_classes) > SIMILARITY_DENSE_MAX_K:
        return SparseSimilarityAccumulator(num_classes, temperature=temperature, entries=entries)
    return SimilarityAccumulator(num_classes, temperature=temperature, entries=entries)


__all__ = [
    "SimilarityAccumulator",
    "SimilarityResult",
    "SparseSimilarityAccumulator",
    "SparseSimilarityResult",
    "similarity_accumulator",
    "similarity_matrix",
    "similarity_information",
    "instance_information",
    "similarity_from_probs",
    "similarity_estimate",
    "similarity_graph",
    "cluster_classes",
    "superclass_recovery",
    "reference_agreement",
    "write_graph",
    "write_edges_parquet",
    "ClassGraph",
    "read_hierarchy",
    "store_class_graph",
]
