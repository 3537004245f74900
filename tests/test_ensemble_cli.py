"""`kdlens recommend --ensemble` and `kdlens ensemble` through typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
from test_ensemble import _sub, make_store
from test_one_pass import reads  # noqa: F401, F811  (the read-counting fixture)
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.store.reader import open_store
from kdlens.store.validate import validate

runner = CliRunner()


def test_recommend_ensemble_json_shape(tmp_path):
    root = make_store(tmp_path)
    res = runner.invoke(
        app, ["recommend", str(root), "--ensemble", "-M", "3", "-B", "20", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"recommended", "ranking", "ensemble"} <= set(out)
    ens = out["ensemble"]
    assert ens["ok"] and ens["max_members"] == 3 and ens["n_bootstrap"] == 20
    assert len(ens["path"]) == 3 and {"members", "added", "inference_multiplier"} <= set(
        ens["path"][0]
    )
    assert abs(sum(ens["weights"]) - 1) < 1e-12
    assert len(ens["member_names"]) == len(ens["weights"]) == ens["inference_multiplier"]
    assert {r["split"] for r in ens["comparison"]} == {"val", "test"}
    assert ens["statement"] and ens["rule"] == "mean_prob"


def test_recommend_ensemble_text(tmp_path):
    res = runner.invoke(app, ["recommend", str(make_store(tmp_path)), "--ensemble", "-B", "10"])
    assert res.exit_code == 0, res.output
    assert "ensemble verdict" in res.output and "gain per added member" in res.output
    plain = runner.invoke(app, ["recommend", str(tmp_path), "-B", "10"])
    assert "ensemble verdict" not in plain.output


def test_ensemble_from_recommendation_round_trip(tmp_path):
    root = make_store(_sub(tmp_path, "s"))
    res = runner.invoke(app, ["recommend", str(root), "--ensemble", "-M", "4", "-B", "0", "--json"])
    rec = tmp_path / "rec.json"
    rec.write_text(res.stdout)
    out = tmp_path / "mix"
    res = runner.invoke(
        app, ["ensemble", str(root), "--from-recommendation", str(rec), "-o", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    want = json.loads(rec.read_text())["ensemble"]
    assert info["members"] == want["member_names"]
    np.testing.assert_allclose(info["weights"], want["weights"])
    assert validate(out).ok
    meta = open_store(out).metadata["config"]["ensemble"]
    assert meta["members"] == want["member_names"] and meta["rule"] == want["rule"]


def test_ensemble_members_and_errors(tmp_path):
    root = make_store(_sub(tmp_path, "s"), c=2)
    ok = runner.invoke(
        app,
        [
            "ensemble",
            str(root),
            "--members",
            "r0/ck0,r1/ck1",
            "--weights",
            "1,3",
            "-o",
            str(tmp_path / "m.parquet"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert open_store(tmp_path / "m.parquet").metadata["config"]["ensemble"]["weights"] == [
        0.25,
        0.75,
    ]
    bad = runner.invoke(
        app, ["ensemble", str(root), "--members", "r0/ck0,r9/nope", "-o", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "'r9/nope'" in bad.output and "--members" in bad.output
    both = runner.invoke(app, ["ensemble", str(root), "-o", str(tmp_path / "x")])
    assert both.exit_code == 2 and "--members" in both.output
    w = runner.invoke(
        app,
        ["ensemble", str(root), "--members", "r0/ck0", "--weights", "a", "-o", str(tmp_path / "x")],
    )
    assert w.exit_code == 2 and "'a'" in w.output
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    j = runner.invoke(
        app, ["ensemble", str(root), "--from-recommendation", str(junk), "-o", str(tmp_path / "x")]
    )
    assert j.exit_code == 2 and "no ensemble" in j.output
    for name, content in (("absent.json", None), ("binary.json", b"\xff\xfe\x00")):
        if content is not None:
            (tmp_path / name).write_bytes(content)
        args = ["ensemble", str(root), "--from-recommendation", str(tmp_path / name)]
        m = runner.invoke(app, [*args, "-o", str(tmp_path / "x")])
        assert m.exit_code == 2 and name in m.output and "Traceback" not in m.output, m.output
    assert not (tmp_path / "x").exists()


def test_missing_heldout_split_exits_2(tmp_path):
    root = make_store(tmp_path, splits=("train",))
    res = runner.invoke(app, ["recommend", str(root), "--ensemble"])
    assert res.exit_code == 2 and "held-out split" in res.output


def test_recommend_and_report_with_ensemble_read_each_part_once(tmp_path, reads):  # noqa: F811
    root = make_store(_sub(tmp_path, "s"), c=3)
    parts = {(p.run, p.checkpoint, p.split) for p in open_store(root).parts}
    res = runner.invoke(app, ["recommend", str(root), "--ensemble", "-B", "5", "-q"])
    assert res.exit_code == 0, res.output
    assert dict(reads) == {p: 1 for p in parts}
    reads.clear()
    out = tmp_path / "r.html"
    res = runner.invoke(app, ["report", str(root), "-o", str(out), "--ensemble", "-B", "5", "-q"])
    assert res.exit_code == 0, res.output
    assert dict(reads) == {p: 1 for p in parts}
    page = out.read_text()
    assert "Ensemble teacher" in page and "Gain per added member" in page
    plain = tmp_path / "p.html"
    assert runner.invoke(app, ["report", str(root), "-o", str(plain), "-q"]).exit_code == 0
    assert "Ensemble teacher" not in plain.read_text()
