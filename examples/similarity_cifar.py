"""Class similarity on real published CIFAR logits: naive S versus kdlens's estimate.

Reads the external reference data (``--external DIR`` or ``$KDLENS_EXTERNAL``, default
``../shared/external`` next to the repository; see its ``SOURCES.md``):

* CIFAR-100 test logits of six published models (chenyaofo/pytorch-cifar-models via
  kwekuka/wasscal) and the CIFAR-100 fine → coarse map: how well do 20 clusters of the
  class-similarity graph recover the 20 superclasses (adjusted Rand index, NMI)?
* CIFAR-10 test logits of nineteen published models and the CIFAR-10H human soft labels
  (Peterson et al. 2019, CC BY-NC-SA 4.0, read in place, never copied): how well does a
  model's similarity agree with the human similarity matrix (Spearman over the
  off-diagonal entries)?

Naive = ``S`` (class means of q) with average linkage on ``max W − W``, agreement of
``S`` with the human ``S``; kdlens = ``SimilarityResult.estimate`` (degree-normalised
symmetrised S), agreement taken over unordered pairs against the symmetrised human ``S``.
Also runs the structure test on every CIFAR-100 model and times it on 50,000 × 100.

    python examples/similarity_cifar.py --external /path/to/shared/external
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from kdlens.hypotheses.structure import structure_test, structure_test_from_result
from kdlens.measures.similarity import (
    SimilarityAccumulator,
    reference_agreement,
    similarity_from_probs,
    superclass_recovery,
)


def _default_external() -> Path:
    env = os.environ.get("KDLENS_EXTERNAL")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "external"


def _similarity(npz: Path, temperature: float):
    d = np.load(npz)
    acc = SimilarityAccumulator(d["logits"].shape[1], temperature=temperature)
    # stream in batches, as a store would be read
    for s in range(0, d["labels"].shape[0], 2048):
        acc.update(d["logits"][s : s + 2048], d["labels"][s : s + 2048])
    return acc.finalize(), d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--external",
        type=Path,
        default=_default_external(),
        help="the shared external data directory",
    )
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args()
    ext: Path = args.external
    if not ext.is_dir():
        raise SystemExit(
            f"external data not found at {ext} (pass --external or set KDLENS_EXTERNAL)"
        )
    names = json.loads((ext / "class_names" / "class_names.json").read_text())
    f2c = np.asarray(names["cifar100"]["fine_to_coarse"])

    print(f"CIFAR-100 superclass recovery, 20 clusters, T={args.temperature}")
    print(
        f"{'model':24s} {'acc':>6s} {'ARI naive':>10s} {'ARI kdlens':>11s} "
        f"{'NMI naive':>10s} {'NMI kdlens':>11s} {'SI':>6s} {'SI/logK-1':>9s} {'p':>7s}"
    )
    ari_n, ari_e = [], []
    for f in sorted((ext / "wasscal_chenyaofo_logits" / "cifar100").glob("*.npz")):
        res, d = _similarity(f, args.temperature)
        naive = superclass_recovery(res.matrix, f2c)
        est = superclass_recovery(res.estimate, f2c)
        st = structure_test_from_result(res, n_permutations=1000)
        acc = float((d["logits"].argmax(1) == d["labels"]).mean())
        ari_n.append(naive["ari"])
        ari_e.append(est["ari"])
        print(
            f"{f.stem:24s} {acc:6.3f} {naive['ari']:10.3f} {est['ari']:11.3f} "
            f"{naive['nmi']:10.3f} {est['nmi']:11.3f} {st.statistic:6.3f} "
            f"{st.normalized_effect:9.3f} {st.p_value:7.4f}"
        )
    print(
        f"{'mean / min':24s} {'':6s} {np.mean(ari_n):5.3f}/{np.min(ari_n):.3f} "
        f"{np.mean(ari_e):6.3f}/{np.min(ari_e):.3f}"
    )

    human = np.load(ext / "cifar10h" / "cifar10h-probs.npy")
    print(
        f"\nCIFAR-10 agreement with the CIFAR-10H human similarity (Spearman), T={args.temperature}"
    )
    print(f"{'model':24s} {'naive':>7s} {'kdlens':>7s}")
    ag_n, ag_e = [], []
    ref = None
    for f in sorted((ext / "wasscal_chenyaofo_logits" / "cifar10").glob("*.npz")):
        if f.stem.startswith("extra_"):
            continue
        res, d = _similarity(f, args.temperature)
        if ref is None:
            ref = similarity_from_probs(human, d["labels"])
        a_n = reference_agreement(res.matrix, ref)
        a_e = reference_agreement(res.estimate, ref, symmetric=True)
        ag_n.append(a_n)
        ag_e.append(a_e)
        print(f"{f.stem:24s} {a_n:7.3f} {a_e:7.3f}")
    print(
        f"{'mean / min':24s} {np.mean(ag_n):.3f}/{np.min(ag_n):.3f} "
        f"{np.mean(ag_e):.3f}/{np.min(ag_e):.3f}  ({len(ag_n)} models)"
    )

    print("\nstructure test timing, 50,000 x 100 synthetic logits, 1,000 draws")
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50_000, 100)).astype(np.float32)
    y = rng.integers(0, 100, 50_000)
    z[np.arange(50_000), y] += 5.0
    t0 = time.perf_counter()
    r = structure_test(z, y, n_permutations=1000)
    print(
        f"structure_test: method={r.method} p={r.p_value:.3f} {time.perf_counter() - t0:.2f} s "
        "(includes the similarity pass over the logits)"
    )


if __name__ == "__main__":
    main()
