"""What kdlens says is true and consistent across analyze, recommend, compare and the report
(issue 12): degenerate temperature fits, P(best score) and the pick, K = 2, students without
a teacher, stated counts, and a JSON that carries the whole text output."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from kdlens._internal.defaults import (
    N_BOOTSTRAP,
    N_PERMUTATIONS,
    RECOMMEND_TEMPERATURE,
    TEMPERATURE_BOUNDS,
)
from kdlens.analysis.engine import analyze
from kdlens.cli import app
from kdlens.recommend.rank import recommend
from kdlens.store.writer import CheckpointWriter

runner = CliRunner()


# --------------------------------------------------------------------------- item 1


def _wine_store(tmp_path):
    """Two logistic regressions on sklearn's wine: on the 54-example held-out split, C = 0.1
    separates every class (its temperature fit runs to the lower bound, its NLL after the
    fit to ~0.0003, raw NLL 0.144); C = 100 misclassifies one example and has the lower raw
    NLL (0.015)."""
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_wine(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    xtr, xv, ytr, yv = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    names = ["class_0", "class_1", "class_2"]
    for ep, c in ((1, 0.1), (2, 100.0)):
        m = LogisticRegression(C=c, max_iter=5000).fit(xtr, ytr)
        with CheckpointWriter(
            tmp_path / f"c{ep}.parquet",
            run="wine",
            checkpoint=f"ep{ep:03d}",
            num_classes=3,
            class_names=names,
            epoch=ep,
            batch_size=16,
        ) as w:
            ids_tr = np.arange(len(ytr))
            ids_v = np.arange(1000, 1000 + len(yv))
            z_tr = m.decision_function(xtr).astype(np.float32)
            w.write(z_tr, split="train", labels=ytr, example_ids=ids_tr)
            z_v = m.decision_function(xv).astype(np.float32)
            w.write(z_v, split="val", labels=yv, example_ids=ids_v)
    return tmp_path


def test_fit_at_bound_is_flagged_and_not_ranked_by_its_degenerate_nll(tmp_path):
    store = _wine_store(tmp_path)
    s = analyze(store, n_permutations=0).summary.filter(pl.col("split") == "val").sort("epoch")
    assert s["fitted_temperature_at_bound"].to_list() == [True, False]
    assert s["fitted_temperature"][0] == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-3)
    # The degenerate NLL after the fit is far below the other's, the raw NLL far above.
    assert s["nll_fitted"][0] < s["nll_fitted"][1] and s["nll"][0] > s["nll"][1]

    rec = recommend(store, n_bootstrap=50)
    assert rec.recommended["checkpoint"] == "ep002", rec.ranking
    row = rec.ranking.filter(pl.col("checkpoint") == "ep001").row(0, named=True)
    assert row["fitted_temperature_at_bound"] is True
    assert row["nll_scored_heldout"] == pytest.approx(row["nll_heldout"])
    assert any("reached the bound" in n and "wine/ep001" in n for n in rec.notes)
    # The held-out split is small: the warning gives its numbers.
    small = [n for n in rec.notes if "held-out split is small" in n]
    assert small and "54 labelled" in small[0] and "smallest class" in small[0]
    # ... and so do the text and the JSON.
    out = runner.invoke(app, ["recommend", str(store), "-B", "20"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "†" in text and "temperature fit at its bound" in text
    js = json.loads(runner.invoke(app, ["recommend", str(store), "--json", "-B", "20"]).stdout)
    flags = {r["checkpoint"]: r["fitted_temperature_at_bound"] for r in js["ranking"]}
    assert flags == {"ep001": True, "ep002": False}


def test_fit_bound_flag_from_an_analysis_summary(tmp_path):
    store = _wine_store(tmp_path / "s")
    res = analyze(store, n_permutations=0, temperature=RECOMMEND_TEMPERATURE)
    rec = recommend(res.summary, n_bootstrap=0)
    assert rec.recommended["checkpoint"] == "ep002"
    # An older summary without the flag: it is derived from the fitted temperature.
    rec = recommend(res.summary.drop("fitted_temperature_at_bound"), n_bootstrap=0)
    assert rec.recommended["checkpoint"] == "ep002"


# --------------------------------------------------------------------------- items 2 and 6


def _split_bootstrap_recommendation():
    """Three checkpoints: ``a`` has the best point score, but ``b`` wins more replicates."""
    from kdlens.recommend.score import compute_recommendation
    from kdlens.recommend.signals import signal_frame

    rows = []
    for ck, nll, ep in (("a", 0.30, 1), ("b", 0.31, 2), ("c", 0.60, 3)):
        rows.append(
            {
                "run": "r",
                "checkpoint": ck,
                "epoch": ep,
                "batch_size": 32,
                "temperature": RECOMMEND_TEMPERATURE,
                "heldout_split": "val",
                "n_heldout": 1000,
                "n_labeled_heldout": 1000,
                "accuracy_heldout": 0.9,
                "nll_heldout": nll,
                "nll_fit_heldout": nll,
                "dark_mass_heldout": 0.2,
            }
        )
    b = 100
    reps = {
        "r/a": np.where(np.arange(b) < 40, 0.29, 0.35),  # best in 40 % of replicates
        "r/b": np.full(b, 0.31),  # best in the other 60 %
        "r/c": np.full(b, 0.60),
    }
    boot = {"nll_fit_heldout": reps}
    return compute_recommendation(
        signal_frame(rows),
        boot,
        [],
        temperature=RECOMMEND_TEMPERATURE,
        collapse_weight=0.1,
        n_bootstrap=b,
        top=None,
        n_buckets=1024,
        seed=0,
    )


def test_a_pick_the_bootstrap_does_not_favour_says_why_everywhere():
    from types import SimpleNamespace

    from kdlens.cli.recommend_cmd import _render
    from kdlens.report.render import _recommendation_html

    rec = _split_bootstrap_recommendation()
    assert rec.recommended["checkpoint"] == "a"
    assert rec.probability_best == pytest.approx({"r/a": 0.4, "r/b": 0.6, "r/c": 0.0})
    why = "r/b has the higher P(best score) (0.60 vs 0.40)"
    assert why in rec.pick_note and "bootstrap is split" in rec.pick_note
    assert why in rec.reason and rec.distinguishable is False
    assert rec.to_dict()["pick_note"] == rec.pick_note
    page = _recommendation_html(SimpleNamespace(recommendation=rec, notes=[]))
    assert page.replace("&#x27;", "'").count(why) == 1  # under the headline, said once
    from kdlens.cli._app import console

    with console.capture() as cap:
        _render(rec)
    assert why in " ".join(cap.get().split())


def test_probability_best_is_named_and_defined_everywhere():
    from types import SimpleNamespace

    from kdlens.report.render import _ranking_html, _recommendation_html

    rec = _split_bootstrap_recommendation()
    d = rec.to_dict()
    assert "probability_best" in d  # the key keeps its name
    definition = d["probability_best_definition"]
    assert definition.startswith("P(best score) is the share of 100 bootstrap replicates")
    assert "not a promise that its students will be the best" in definition
    data = SimpleNamespace(recommendation=rec, notes=[])
    page = _recommendation_html(data) + _ranking_html(data)
    assert "P(best score) = 0.40" in page and definition in page
    assert "P(best)" not in page.replace("P(best score)", "")
    from kdlens.cli._app import console
    from kdlens.cli.recommend_cmd import _render

    with console.capture() as cap:
        _render(rec)
    text = " ".join(cap.get().split())
    assert definition in text and "P(best)" not in text.replace("P(best score", "")


# --------------------------------------------------------------------------- item 4


def _two_class_store(tmp_path):
    from inputs import random_teacher

    for ep in (1, 2):
        z, y = random_teacher(n=200, k=2, seed=ep)
        with CheckpointWriter(
            tmp_path / f"e{ep}.parquet", run="r", checkpoint=f"ep{ep}", num_classes=2, epoch=ep
        ) as w:
            w.write(z, split="train", labels=y, example_ids=np.arange(200))
            w.write(z, split="val", labels=y, example_ids=np.arange(1000, 1200))
    return tmp_path


def test_two_classes_structure_test_is_not_applicable_everywhere(tmp_path):
    from kdlens.hypotheses.structure import NOT_APPLICABLE_K2
    from kdlens.report.build import build_report

    store = _two_class_store(tmp_path / "s")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = analyze(store).summary
        build_report(store, tmp_path / "r.html")
    assert summary["structure_verdict"].to_list() == [NOT_APPLICABLE_K2] * 4
    page = (tmp_path / "r.html").read_text()
    assert page.count(NOT_APPLICABLE_K2) == 4
    assert "regularization effect only" not in page
    out = runner.invoke(app, ["analyze", str(store), "-o", str(tmp_path / "a")])
    assert out.exit_code == 0, out.output
    assert NOT_APPLICABLE_K2 in " ".join(out.output.split())


# --------------------------------------------------------------------------- item 7


def test_every_command_says_the_counts_it_used(tmp_path):
    from kdlens.report.build import build_report

    store = _wine_store(tmp_path / "s")
    out = runner.invoke(app, ["analyze", str(store), "-o", str(tmp_path / "a")])
    assert f"{N_PERMUTATIONS:,} permutations" in " ".join(out.output.split())
    js = json.loads(
        runner.invoke(app, ["analyze", str(store), "-o", str(tmp_path / "b"), "--json"]).stdout
    )
    assert {r["structure_permutations"] for r in js["rows"]} == {N_PERMUTATIONS}
    rec = json.loads(runner.invoke(app, ["recommend", str(store), "--json"]).stdout)
    assert rec["bootstrap"]["replicates"] == N_BOOTSTRAP
    assert f"{N_BOOTSTRAP} bootstrap replicates" in rec["probability_best_definition"]
    build_report(store, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert f"Null draws per test: {N_PERMUTATIONS:,}" in page
    assert f"share of {N_BOOTSTRAP} bootstrap replicates" in page


def test_recommend_at_another_temperature_says_where_the_score_was_validated(tmp_path):
    store = _wine_store(tmp_path)
    said = f"validated at T = {RECOMMEND_TEMPERATURE:g}"
    assert not any(said in n for n in recommend(store, n_bootstrap=0).notes)
    rec = recommend(store, temperature=1.0, n_bootstrap=0)
    assert any(said in n and "ranked at T = 1" in n for n in rec.notes)


# --------------------------------------------------------------------------- item 8


def test_recommend_json_carries_every_fact_of_the_text(tmp_path):
    store = _wine_store(tmp_path)
    text = " ".join(runner.invoke(app, ["recommend", str(store), "-B", "30"]).output.split())
    doc = json.loads(runner.invoke(app, ["recommend", str(store), "--json", "-B", "30"]).stdout)
    facts = [doc["reason"], doc["score_definition"], doc["probability_best_definition"]]
    facts += doc["notes"] + doc["advice"] + [doc["pick_rule"]]
    assert doc["reason"] and doc["notes"] and doc["advice"]
    for fact in facts:
        assert " ".join(fact.split()) in text, fact
    assert f"bootstrap = {doc['bootstrap']['replicates']}" in text
    assert f"basis: {doc['basis']}" in text
    for r in doc["ranking"]:
        assert f"{r['run']}/{r['checkpoint']}" in text and f"{r['score']:.4f}" in text
    for r in doc["pareto"]:
        assert f"{r['accuracy_heldout']:.2%}" in text
    for cell in doc["sweet_spot"]:
        assert cell["missing"] or f"{cell['score']:.4f}" in text


# --------------------------------------------------------------------------- item 5


def _students(root, name, y, accs, *, plain):
    from kdlens.store.writer import write_logits

    root.mkdir(parents=True)
    base = np.random.default_rng(7).random(y.shape[0])
    for s, acc in enumerate(accs):
        pred = np.where(base < acc, y, (y + 1) % 4)
        cfg = {"seed": s, "alpha": 0.0 if plain else 0.9, "plain": plain}
        cfg["teacher_run"] = None if plain else "teacher"
        write_logits(
            root / f"{name}-{s}.parquet",
            np.eye(4, dtype=np.float32)[pred] * 3.0,
            split="test",
            run=f"{name}-s{s}",
            checkpoint="final",
            labels=y,
            example_ids=np.arange(y.shape[0]),
            config=cfg,
        )
    return root


@pytest.mark.parametrize(
    ("real_accs", "verdict"),
    [((0.90, 0.91), "the teacher helps versus no teacher"), ((0.80, 0.80), "does not help")],
)
def test_compare_against_students_with_no_teacher_says_so(tmp_path, real_accs, verdict):
    from kdlens.hypotheses.compare import VERSUS_NO_TEACHER, compare_stores

    y = np.random.default_rng(3).integers(0, 4, 2000)
    real = _students(tmp_path / "real", "kd", y, real_accs, plain=False)
    plain = _students(tmp_path / "plain", "plain", y, (0.80, 0.80), plain=True)
    _, r = compare_stores(real, plain, n_bootstrap=300)
    assert r.comparison == VERSUS_NO_TEACHER and verdict in r.verdict
    assert "regularization" not in r.verdict and "no teacher" in r.reason
    out = runner.invoke(app, ["compare", str(real), str(plain)])
    text = " ".join(out.output.split())
    assert out.exit_code == 0, out.output
    assert "comparison: teacher vs no teacher" in text and verdict in text
    assert "regularization" not in text
    # Two control-teacher sides keep the control wording.
    ctrl = _students(tmp_path / "ctrl", "ls", y, (0.80, 0.80), plain=False)
    _, r = compare_stores(real, ctrl, n_bootstrap=300)
    assert r.comparison == "teacher vs control teacher" and "teacher" not in r.verdict


def test_report_marks_a_fit_at_its_bound(tmp_path):
    from kdlens.report.build import build_report

    store = _wine_store(tmp_path / "s")
    page = build_report(store, tmp_path / "r.html", n_bootstrap=20).read_text()
    assert re.search(r"-0\.\d{4} †", page) and "temperature fit at the bound of its search" in page
    assert "wine/ep001: the temperature fit reached the bound" in page


def test_definitions_state_the_score_once():
    from types import SimpleNamespace

    from kdlens.report.render import _methods_html

    rec = _split_bootstrap_recommendation()
    data = SimpleNamespace(recommendation=rec, temperature=1.0, oemc_delta=0.05, n_bins=15)
    page = _methods_html(data)  # type: ignore[arg-type]
    assert rec.score_definition in page and "Score: score" not in page


def test_no_bootstrap_is_never_described_as_one_over_zero_blocks() -> None:
    from kdlens.recommend.result import probability_best_definition

    assert "0 id-hashed" not in probability_best_definition(200, 0)
    assert "not computed" in probability_best_definition(200, 0)
    assert "1024 id-hashed" in probability_best_definition(200, 1024)
