"""Fidelity between checkpoints: agreement and predictive KL, paired by example id."""

from __future__ import annotations

import inputs
import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy as sp_entropy

from kdlens.errors import InputError
from kdlens.measures.fidelity import FidelityAccumulator, fidelity, predictive_kl, top1_agreement
from kdlens.store.writer import CheckpointWriter


def _pair(n=400, k=6):
    za, y = inputs.random_teacher(n=n, k=k, seed=1)
    zb, _ = inputs.random_teacher(n=n, k=k, seed=2)
    return za, zb, y


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_kl_matches_scipy(t):
    za, zb, _ = _pair()
    pa, pb = softmax(za.astype(float) / t, 1), softmax(zb.astype(float) / t, 1)
    np.testing.assert_allclose(
        predictive_kl(za, zb, temperature=t), sp_entropy(pa, pb, axis=1), rtol=1e-9, atol=1e-14
    )
    assert np.all(predictive_kl(za, za, temperature=t) == 0)


def test_agreement():
    za, zb, _ = _pair()
    np.testing.assert_array_equal(top1_agreement(za, zb), za.argmax(1) == zb.argmax(1))


def test_accumulator_pairs_by_id_across_shuffled_batches():
    za, zb, _ = _pair()
    ids = np.arange(400) + 1000
    rng = np.random.default_rng(0)
    pb = rng.permutation(400)
    acc = FidelityAccumulator(temperature=2.0, max_pending=400)
    for s in range(0, 400, 100):
        a, b = slice(s, s + 100), pb[s : s + 100]
        acc.update(za[a], ids[a], zb[b], ids[b])
    r = acc.finalize()
    assert r.n == 400
    assert r.agreement == pytest.approx(np.mean(top1_agreement(za, zb)))
    assert r.kl == pytest.approx(np.mean(predictive_kl(za, zb, temperature=2.0)), rel=1e-12)


def test_unmatched_ids_are_an_error():
    za, zb, _ = _pair(n=10)
    acc = FidelityAccumulator().update(za, np.arange(10), zb, np.arange(10) + 5)
    with pytest.raises(InputError, match="one side only"):
        acc.finalize()
    with pytest.raises(InputError, match="wait for a partner"):
        FidelityAccumulator(max_pending=3).update(za, np.arange(10), zb, np.arange(10) + 5)


def test_fidelity_on_a_store(tmp_path):
    za, zb, y = _pair()
    for name, z in (("a", za), ("b", zb)):
        with CheckpointWriter(
            tmp_path / f"{name}.parquet", run="r", checkpoint=name, num_classes=6
        ) as w:
            w.write(z, split="test", labels=y, example_ids=np.arange(400))
    r = fidelity(tmp_path, ("r", "a"), ("r", "b"), split="test")
    assert r.n == 400 and r.kl == pytest.approx(np.mean(predictive_kl(za, zb)), rel=1e-12)
