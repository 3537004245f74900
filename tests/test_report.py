"""The HTML report: specs validate, encodings use real columns, bad input says what to do.

``build_fixture`` writes a small synthetic store (two batch sizes x four epochs,
K = 6 in two superclasses, a teacher that sharpens with training) and the four
analysis tables with the columns ``kdlens analyze`` writes; the browser test and
the CLI test reuse it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from kdlens.charts import ChartUnavailable, class_layout, class_order, sweet_spot_chart
from kdlens.errors import InputError
from kdlens.report import (
    build_report,
    collect_report_data,
    export_charts,
    render_report,
    report_charts,
)

NAMES = ["cat", "dog", "fox", "car", "bus", "van"]
BATCH_SIZES = (32, 256)
EPOCHS = (1, 2, 4, 8)


def _teacher(n: int, epoch: int, bs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = len(NAMES)
    y = rng.permutation(np.arange(n) % k)
    sup = np.arange(k) // 3
    z = rng.normal(0, 0.4, size=(n, k))
    z += np.where(sup[None, :] == sup[y][:, None], 1.5, 0.0)
    # small batches sharpen faster: the one-hot collapse the report should show
    z[np.arange(n), y] += epoch * (2.0 if bs == 32 else 0.8)
    return z.astype(np.float32), y


def build_fixture(
    root: Path,
    *,
    names: bool = True,
    epochs: tuple[int, ...] = EPOCHS,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    n: int = 240,
) -> tuple[Path, Path]:
    """Write the store ``root/store`` and its analysis ``root/analysis``; return both.

    The analysis is the real ``kdlens.analysis.analyze`` output, except that the
    structure-test p-values are set (0.5 / (1 + epoch) on train, 0.004 on test) so
    that both verdicts appear.
    """
    from kdlens.analysis import analyze
    from kdlens.store import CheckpointWriter

    store, ana = root / "store", root / "analysis"
    k = len(NAMES)
    for bs in batch_sizes:
        run = f"bs{bs}"
        for ep in epochs:
            ck = f"ep{ep}"
            with CheckpointWriter(
                store / f"{run}-{ck}.parquet",
                run=run,
                checkpoint=ck,
                num_classes=k,
                epoch=ep,
                step=ep * 10,
                batch_size=bs,
                class_names=NAMES if names else None,
                dataset="toy",
            ) as w:
                for si, split in enumerate(("train", "test")):
                    z, y = _teacher(n, ep if split == "train" else max(1, ep // 2), bs, seed=si)
                    w.write(z, split=split, labels=y, example_ids=np.arange(n) + 10_000 * si)
    result = analyze(store, n_permutations=20)
    result.summary = result.summary.with_columns(
        structure_p_value=pl.when(pl.col("split") == "train")
        .then(0.5 / (1 + pl.col("epoch")))
        .otherwise(0.004)
    )
    result.write(ana)
    return store, ana


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_fixture(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def sections(fixture_dirs: tuple[Path, Path]) -> Any:
    store, ana = fixture_dirs
    data = collect_report_data(ana, store=store)
    return data, report_charts(data)


# --------------------------------------------------------------------------- spec-level checks


def _fields_used(spec: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(spec, dict):
        enc = spec.get("encoding")
        if isinstance(enc, dict):
            for ch in enc.values():
                for c in ch if isinstance(ch, list) else [ch]:
                    if isinstance(c, dict) and isinstance(c.get("field"), str):
                        out.add(c["field"])
        facet = spec.get("facet")
        if isinstance(facet, dict) and isinstance(facet.get("field"), str):
            out.add(facet["field"])
        for key in ("layer", "hconcat", "vconcat", "concat"):
            for sub in spec.get(key, []) or []:
                out |= _fields_used(sub)
        if isinstance(spec.get("spec"), dict):
            out |= _fields_used(spec["spec"])
    return out


def _fields_available(spec: dict[str, Any]) -> set[str]:
    cols: set[str] = set()
    for rows in (spec.get("datasets") or {}).values():
        for r in rows:
            cols |= set(r)

    def walk(s: Any) -> None:
        if isinstance(s, dict):
            data = s.get("data")
            if isinstance(data, dict) and isinstance(data.get("values"), list):
                for r in data["values"]:
                    cols.update(r)
            for t in s.get("transform", []) or []:
                for key in ("as",):
                    v = t.get(key)
                    cols.update([v] if isinstance(v, str) else (v or []))
            for v in s.values():
                walk(v)
        elif isinstance(s, list):
            for v in s:
                walk(v)

    walk(spec)
    return cols


def test_every_chart_builds_and_validates(sections: Any) -> None:
    data, secs = sections
    missing = {s.key: s.unavailable for s in secs if s.chart is None}
    assert missing == {}, missing
    for s in secs:
        spec = s.chart.to_dict(validate=True)  # raises on a spec the Vega-Lite schema rejects
        used, have = _fields_used(spec), _fields_available(spec)
        assert used, s.key
        assert used <= have, (
            f"{s.key}: encodings use {sorted(used - have)}, data has {sorted(have)}"
        )


def test_class_names_are_used_and_stated(sections: Any) -> None:
    data, secs = sections
    assert data.class_names == NAMES and data.class_names_known
    spec = json.dumps({s.key: s.chart.to_dict() for s in secs if s.key in ("similarity", "graph")})
    for name in NAMES:
        assert f'"{name}"' in spec


def test_html_is_self_contained(fixture_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    store, ana = fixture_dirs
    out = build_report(ana, tmp_path / "r.html", store=store)
    text = out.read_text()
    # Scripts are inline: no <script src=...>, no stylesheet or font link, no fetch of a URL.
    assert not re.search(r"<script[^>]+src=", text)
    assert not re.search(r"<link[^>]+href=", text)
    assert "cdn.jsdelivr" not in text and "unpkg.com" not in text
    assert "window.vegaEmbed" in text
    assert "T = 1" in text and "15 equal-width" in text
    specs = json.loads(re.search(r'id="kdlens-specs">(.*?)</script>', text, re.S).group(1))
    assert set(specs) == {
        f"chart-{k}"
        for k in (
            "sweet_spot",
            "trajectories",
            "pareto",
            "similarity",
            "graph",
            "reliability",
            "entropy",
        )
    }
    for spec in specs.values():  # data inline, never a URL
        assert "url" not in json.dumps(spec.get("data", {}))
    assert "Distill from" in text
    assert not list(tmp_path.glob(".r.html.*"))  # atomic: no temporary left behind


def test_structure_verdicts(fixture_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    store, ana = fixture_dirs
    text = build_report(ana, tmp_path / "r.html").read_text()
    assert "regularization effect only" in text  # p = 0.5/(1+ep) >= 0.05 on train at early epochs
    assert "knowledge to distill" in text  # p = 0.004 on test
    assert "needs the logits store" in text  # no store: says so instead of drawing empty charts


def test_class_names_missing_fall_back_to_indices(tmp_path: Path) -> None:
    store, ana = build_fixture(tmp_path, names=False, batch_sizes=(32,), epochs=(1, 2), n=60)
    data = collect_report_data(ana, store=store, n_bootstrap=0)
    assert data.class_names == [str(i) for i in range(len(NAMES))]
    assert not data.class_names_known
    text = render_report(data)
    assert "class names are not recorded" in text


def test_one_checkpoint_says_so(tmp_path: Path) -> None:
    store, ana = build_fixture(tmp_path, batch_sizes=(32,), epochs=(3,), n=60)
    data = collect_report_data(ana, store=store, n_bootstrap=0)
    secs = {s.key: s for s in report_charts(data)}
    for key in ("sweet_spot", "trajectories", "pareto"):
        assert secs[key].chart is None and secs[key].unavailable, key
    assert "one" in (secs["trajectories"].unavailable or "")
    # charts of a single checkpoint still render
    assert secs["similarity"].chart is not None and secs["reliability"].chart is not None
    text = render_report(data, list(secs.values()))
    assert "Not shown" in text


def test_missing_table_names_it_and_the_fix(
    fixture_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    _, ana = fixture_dirs
    broken = tmp_path / "ana"
    broken.mkdir()
    for name in ("summary", "classes", "edges"):
        (broken / f"{name}.parquet").write_bytes((ana / f"{name}.parquet").read_bytes())
    with pytest.raises(InputError, match=r"lacks similarity\.parquet.*kdlens analyze"):
        collect_report_data(broken)


def test_bad_options(fixture_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    _, ana = fixture_dirs
    with pytest.raises(InputError, match="checkpoint 'nope'"):
        collect_report_data(ana, checkpoint="nope", n_bootstrap=0)
    with pytest.raises(InputError, match="temperature"):
        collect_report_data(ana, temperature=0.0)
    with pytest.raises(InputError, match="is a directory"):
        build_report(ana, tmp_path)


def test_students_shown_on_sweet_spot(fixture_dirs: tuple[Path, Path]) -> None:
    _, ana = fixture_dirs
    students = pl.DataFrame(
        {"run": ["bs32", "bs32"], "checkpoint": ["ep1", "ep2"], "student_accuracy": [0.81, 0.835]}
    )
    data = collect_report_data(ana, students=students, n_bootstrap=0)
    spec = json.dumps(
        sweet_spot_chart(data.recommendation.sweet_spot, students=data.students).to_dict()
    )
    assert "83.5%" in spec and "student accuracy" in spec
    with pytest.raises(InputError, match="student_accuracy"):
        collect_report_data(ana, students=pl.DataFrame({"run": ["a"]}), n_bootstrap=0)


def test_sweet_spot_needs_two_cells() -> None:
    one = pl.DataFrame(
        {
            "row": [32],
            "column": [1],
            "score": [0.5],
            "run": ["a"],
            "checkpoint": ["b"],
            "rank": [1],
            "recommended": [True],
        }
    )
    with pytest.raises(ChartUnavailable, match="at least two"):
        sweet_spot_chart(one)


def test_layout_and_order_are_deterministic_and_group_superclasses() -> None:
    # two blocks of three classes: strongly similar inside a block
    k = 6
    S = np.full((k, k), 0.01)
    sup = np.arange(k) // 3
    S[sup[:, None] == sup[None, :]] = 0.3
    np.fill_diagonal(S, 0)
    perm = np.array([0, 3, 1, 4, 2, 5])
    Sp = S[np.ix_(perm, perm)]
    order = class_order(Sp)
    blocks = sup[perm][order]
    assert list(blocks[:3]) in ([0, 0, 0], [1, 1, 1]) and len(set(blocks[:3])) == 1
    X1, X2 = class_layout(Sp), class_layout(Sp.copy())
    np.testing.assert_array_equal(X1, X2)
    d_in = np.linalg.norm(X1[0] - X1[2])  # perm 0 and 2 are classes 0 and 1: same block
    d_out = np.linalg.norm(X1[0] - X1[1])  # classes 0 and 3: different blocks
    assert d_in < d_out


def test_export_png_and_svg(sections: Any, tmp_path: Path) -> None:
    _, secs = sections
    some = [s for s in secs if s.key in ("sweet_spot", "graph")]
    paths = export_charts(some, tmp_path / "png")
    assert sorted(p.name for p in paths) == [
        "graph.png",
        "graph.svg",
        "sweet_spot.png",
        "sweet_spot.svg",
    ]
    png = (tmp_path / "png" / "graph.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert "<svg" in (tmp_path / "png" / "graph.svg").read_text()[:500]
