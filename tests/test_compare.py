"""Student comparison: known differences are found, no difference gives no verdict."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from kdlens.errors import InputError
from kdlens.hypotheses.compare import (
    KNOWLEDGE_DISTILLATION,
    REGULARIZATION_EFFECT,
    compare_stores,
    compare_students,
)
from kdlens.store.writer import write_logits


def _students(n, k, acc, n_seeds, seed, shared=None):
    """Predictions with accuracy ~acc; `shared` makes the seeds' errors correlated."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    out = []
    for _ in range(n_seeds):
        right = rng.random(n) < acc if shared is None else shared(rng)
        wrong = (y + rng.integers(1, k, n)) % k
        out.append(np.where(right, y, wrong))
    return y, out


def test_known_difference_is_knowledge_distillation():
    rng = np.random.default_rng(0)
    n, k = 4000, 10
    y = rng.integers(0, k, n)
    base = rng.random(n)
    a = [np.where(base < 0.80 + 0.01 * s, y, (y + 1) % k) for s in range(3)]
    b = [np.where(base < 0.74 + 0.01 * s, y, (y + 1) % k) for s in range(3)]
    r = compare_students(a, b, labels=y, n_bootstrap=2000)
    assert r.verdict == KNOWLEDGE_DISTILLATION
    assert r.difference == pytest.approx(0.06, abs=0.02)
    assert 0 < r.ci_low < r.difference < r.ci_high
    assert r.mcnemar_p < 1e-6 and r.seed_test == "paired t-test" and r.seed_p < 0.05
    assert r.n_seeds_a == 3 and len(r.seed_accuracies_b) == 3
    assert r.reason == "the real teacher's students are significantly better on every test"


def test_no_difference_is_regularization_effect():
    y, a = _students(3000, 10, 0.7, 1, seed=1)
    rng = np.random.default_rng(2)
    b = [np.where(rng.random(3000) < 0.7, y, (y + 1) % 10)]
    r = compare_students(a[0], b[0], labels=y, n_bootstrap=2000)
    assert r.verdict == REGULARIZATION_EFFECT
    assert r.ci_low < 0 < r.ci_high
    assert r.seed_test is None
    assert "CI includes 0" in r.reason and "few seeds" in r.reason


def test_control_better_is_not_knowledge_distillation():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 2000)
    base = rng.random(2000)
    r = compare_students(
        np.where(base < 0.6, y, (y + 1) % 5),
        np.where(base < 0.7, y, (y + 1) % 5),
        labels=y,
        n_bootstrap=500,
    )
    assert r.verdict == REGULARIZATION_EFFECT and r.ci_high < 0
    assert r.reason.startswith("the control's students are significantly better")


def test_mcnemar_and_bootstrap_match_references():
    rng = np.random.default_rng(4)
    n = 500
    y = rng.integers(0, 3, n)
    a = np.where(rng.random(n) < 0.8, y, (y + 1) % 3)
    b = np.where(rng.random(n) < 0.75, y, (y + 2) % 3)
    r = compare_students(a, b, labels=y, n_bootstrap=4000, seed=9)
    ca, cb = a == y, b == y
    n10, n01 = int((ca & ~cb).sum()), int((~ca & cb).sum())
    assert (r.a_only_correct, r.b_only_correct) == (n10, n01)
    assert r.mcnemar_p == pytest.approx(binomtest(n10, n10 + n01, 0.5).pvalue)
    # bootstrap CI close to the normal-approximation CI of a paired difference
    d = ca.astype(float) - cb
    se = d.std(ddof=1) / np.sqrt(n)
    assert r.ci_low == pytest.approx(d.mean() - 1.96 * se, abs=0.01)
    assert r.ci_high == pytest.approx(d.mean() + 1.96 * se, abs=0.01)
    # logits give the same as their argmax
    la = np.eye(3)[a] * 5.0
    assert compare_students(la, b, labels=y, n_bootstrap=4000, seed=9) == r


def test_bad_inputs():
    y = np.array([0, 1, 2])
    with pytest.raises(InputError, match="same length"):
        compare_students(np.array([0, 1]), y, labels=y)
    with pytest.raises(InputError, match="integer"):
        compare_students(np.array([0.0, 1.0, 2.0]), y, labels=y)
    with pytest.raises(InputError, match="n_bootstrap"):
        compare_students(y, y, labels=y, n_bootstrap=0)


def _write_students(dir_, name, y, preds, seeds, k=4):
    for i, (p, s) in enumerate(zip(preds, seeds, strict=True)):
        z = np.eye(k, dtype=np.float32)[p] * 3.0
        ids = np.arange(y.shape[0])
        order = np.random.default_rng(i).permutation(y.shape[0])  # rows in any order
        write_logits(
            dir_ / f"{name}-{i}.parquet",
            z[order],
            split="test",
            run=f"{name}-s{s}",
            checkpoint="final",
            labels=y[order],
            example_ids=ids[order],
            config={"seed": s},
        )


def test_compare_stores_pairs_by_seed(tmp_path):
    rng = np.random.default_rng(5)
    n, k = 3000, 4
    y = rng.integers(0, k, n)
    base = rng.random(n)
    real = [np.where(base < 0.85 + 0.01 * s, y, (y + 1) % k) for s in range(3)]
    ctrl = [np.where(base < 0.75 + 0.01 * s, y, (y + 1) % k) for s in range(3)]
    (tmp_path / "real").mkdir()
    (tmp_path / "ctrl").mkdir()
    _write_students(tmp_path / "real", "real", y, real, [0, 1, 2])
    _write_students(tmp_path / "ctrl", "ctrl", y, ctrl[::-1], [2, 1, 0])
    frame, r = compare_stores(tmp_path / "real", tmp_path / "ctrl", n_bootstrap=500)
    assert frame.height == 6 and set(frame["side"]) == {"real", "control"}
    assert r.verdict == KNOWLEDGE_DISTILLATION
    # paired by seed: seed s of real with seed s of control, difference 0.10 each
    np.testing.assert_allclose(np.array(r.seed_accuracies_a) - r.seed_accuracies_b, 0.10, atol=0.03)
    direct = compare_students(real, ctrl, labels=y, n_bootstrap=500)
    assert r.difference == pytest.approx(direct.difference)
    assert r.mcnemar_p == pytest.approx(direct.mcnemar_p)


def test_cli_compare_and_graph(tmp_path):
    import json as _json

    import inputs
    from typer.testing import CliRunner

    from kdlens.cli import app

    rng = np.random.default_rng(6)
    n, k = 1500, 4
    y = rng.integers(0, k, n)
    base = rng.random(n)
    (tmp_path / "real").mkdir()
    (tmp_path / "ctrl").mkdir()
    _write_students(tmp_path / "real", "real", y, [np.where(base < 0.9, y, (y + 1) % k)], [0])
    _write_students(tmp_path / "ctrl", "ctrl", y, [np.where(base < 0.6, y, (y + 1) % k)], [0])
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "compare",
            str(tmp_path / "real"),
            str(tmp_path / "ctrl"),
            "--json",
            "--bootstrap",
            "300",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = _json.loads(r.stdout)
    assert doc["verdict"] == KNOWLEDGE_DISTILLATION and len(doc["students"]) == 2
    r = runner.invoke(app, ["compare", str(tmp_path / "real"), str(tmp_path / "missing")])
    assert r.exit_code != 0 and "no such file" in r.output

    z, yy, sup = inputs.superclass_teacher(n_per_class=10)
    write_logits(tmp_path / "t.parquet", z, split="test", run="r", checkpoint="c", labels=yy)
    (tmp_path / "h.json").write_text(_json.dumps({"fine_to_coarse": sup.tolist()}))
    out = tmp_path / "g.graphml"
    r = runner.invoke(
        app,
        [
            "graph",
            str(tmp_path / "t.parquet"),
            "--run",
            "r",
            "--checkpoint",
            "c",
            "--hierarchy",
            str(tmp_path / "h.json"),
            "-o",
            str(out),
            "--top-k",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert out.exists() and "ARI = 1.000" in r.output
    r = runner.invoke(
        app,
        [
            "graph",
            str(tmp_path / "t.parquet"),
            "--run",
            "r",
            "--checkpoint",
            "c",
            "-o",
            str(tmp_path / "g.txt"),
        ],
    )
    assert r.exit_code != 0
