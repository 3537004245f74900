"""Control teachers: LS-equivalent, permuted and class-mean, as arrays and as stores."""

from __future__ import annotations

import inputs
import numpy as np
import pytest
from scipy.special import softmax

from kdlens.errors import InputError
from kdlens.hypotheses.controls import control_log_probs, make_controls
from kdlens.measures import softlabels as sl
from kdlens.measures.similarity import SimilarityAccumulator
from kdlens.store.reader import open_store
from kdlens.store.writer import CheckpointWriter


def _sim(z, y, t=1.0):
    return SimilarityAccumulator(z.shape[1], temperature=t).update(z, y).finalize()


@pytest.mark.parametrize("kind", ["ls", "permuted", "class-mean"])
@pytest.mark.parametrize("t", [1.0, 2.0])
def test_every_control_keeps_the_target_probability(kind, t):
    z, y = inputs.random_teacher(n=300, k=8)
    lp = control_log_probs(z, y, kind=kind, temperature=t)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, rtol=1e-12)
    # logits = T log p reproduce the control distribution at T
    np.testing.assert_allclose(softmax((t * lp) / t, axis=1), np.exp(lp), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(
        sl.target_prob(t * lp, y, temperature=t), sl.target_prob(z, y, temperature=t), rtol=1e-12
    )
    np.testing.assert_allclose(
        sl.log_dark_mass(t * lp, y, temperature=t),
        sl.log_dark_mass(z, y, temperature=t),
        rtol=1e-10,
    )


def test_ls_control_has_no_similarity_information():
    z, y = inputs.random_teacher(n=400, k=9)
    lp = control_log_probs(z, y, kind="ls")
    res = _sim(lp, y)
    assert res.similarity_information == pytest.approx(0.0, abs=1e-12)
    assert res.instance_information == pytest.approx(0.0, abs=1e-12)
    assert _sim(z, y).similarity_information > 0.01


def test_permuted_control_keeps_entropy_and_dark_mass_but_not_structure():
    z, y, _ = inputs.superclass_teacher(n_per_class=60)
    lp = control_log_probs(z, y, kind="permuted", seed=3)
    np.testing.assert_allclose(sl.entropy(lp), sl.entropy(z), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sl.dark_mass(lp, y), sl.dark_mass(z, y), rtol=1e-9)
    np.testing.assert_allclose(
        sl.nontarget_entropy(lp, y), sl.nontarget_entropy(z, y), rtol=1e-9, atol=1e-12
    )
    assert _sim(lp, y).similarity_information < 0.2 * _sim(z, y).similarity_information
    again = control_log_probs(z, y, kind="permuted", seed=3)
    np.testing.assert_array_equal(lp, again)
    assert not np.array_equal(lp, control_log_probs(z, y, kind="permuted", seed=4))


def test_class_mean_control_keeps_S_and_has_no_instance_information():
    z, y = inputs.random_teacher(n=400, k=6)
    lp = control_log_probs(z, y, kind="class-mean")
    a, b = _sim(z, y), _sim(lp, y)
    np.testing.assert_allclose(b.matrix, a.matrix, rtol=1e-9, atol=1e-12)
    assert b.instance_information == pytest.approx(0.0, abs=1e-9)
    assert a.instance_information > 0.05


def test_two_classes_controls_are_the_teacher():
    z, y = inputs.random_teacher(n=50, k=2)
    ref = sl.log_probs(z)
    for kind in ("ls", "permuted", "class-mean"):
        np.testing.assert_allclose(control_log_probs(z, y, kind=kind), ref, rtol=1e-9, atol=1e-12)


def test_one_hot_teacher_gives_finite_logits():
    z, y = inputs.one_hot_teacher(n=40, k=5)
    for kind in ("ls", "permuted", "class-mean"):
        assert np.isfinite(control_log_probs(z, y, kind=kind)).all()


def _store(path, z, y, **kw):
    with CheckpointWriter(
        path,
        run="bs64",
        checkpoint="ep3",
        num_classes=z.shape[1],
        epoch=3,
        batch_size=64,
        class_names=[f"c{i}" for i in range(z.shape[1])],
        config={"lr": 0.1},
        **kw,
    ) as w:
        w.write(z, split="train", labels=y, example_ids=np.arange(len(y)) + 10)
        w.write(z[:50], split="test", labels=y[:50], example_ids=np.arange(50) + 900)


@pytest.mark.parametrize("kind", ["ls", "permuted", "class-mean"])
def test_make_controls_writes_an_ordinary_store(tmp_path, kind):
    z, y = inputs.random_teacher(n=300, k=7)
    _store(tmp_path / "src" / "a.parquet", z, y)
    paths = make_controls(
        tmp_path / "src", tmp_path / "out", kind=kind, temperature=2.0, seed=1, batch_rows=64
    )
    assert len(paths) == 1
    st = open_store(paths[0])
    assert st.keys() == [(f"bs64+{kind}", "ep3")] and st.splits() == ["test", "train"]
    assert st.class_names == [f"c{i}" for i in range(7)]
    cfg = st.metadata["config"]
    assert cfg["control"] == kind and cfg["temperature"] == 2.0 and cfg["source_run"] == "bs64"
    assert cfg["source_config"] == {"lr": 0.1}
    b = st.load(f"bs64+{kind}", "ep3", "train")
    np.testing.assert_array_equal(b.example_ids, np.arange(300) + 10)
    np.testing.assert_allclose(
        sl.target_prob(b.logits, b.labels, temperature=2.0),
        sl.target_prob(z, y, temperature=2.0),
        rtol=1e-5,
    )
    if kind == "ls":
        assert _sim(b.logits, b.labels, 2.0).similarity_information == pytest.approx(0, abs=1e-9)
    with pytest.raises(InputError, match="already exists"):
        make_controls(tmp_path / "src", tmp_path / "out", kind=kind, temperature=2.0)


def test_make_controls_refuses_bad_input(tmp_path):
    z, y = inputs.random_teacher(n=30, k=4)
    with CheckpointWriter(tmp_path / "s.parquet", run="r", checkpoint="c", num_classes=4) as w:
        w.write(z, split="train")  # no labels
    with pytest.raises(InputError, match="no label"):
        make_controls(tmp_path / "s.parquet", tmp_path / "o", kind="ls")
    with pytest.raises(InputError, match="kind"):
        make_controls(tmp_path / "s.parquet", tmp_path / "o", kind="uniform")
