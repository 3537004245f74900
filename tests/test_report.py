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

from kdlens.errors import InputError
from kdlens.report import (
    build_report,
    collect_report_data,
    export_charts,
    render_report,
    report_charts,
)
from kdlens.report.charts import (
    MAX_NODE_LABELS,
    ChartUnavailable,
    class_layout,
    class_order,
    similarity_graph_chart,
    similarity_heatmap,
    sweet_spot_chart,
    trajectory_chart,
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

    The analysis is the real ``kdlens.analysis.engine.analyze`` output, except that the
    structure-test p-values are set (0.5 / (1 + epoch) on train, 0.004 on test) so
    that both verdicts appear.
    """
    from kdlens.analysis.engine import analyze
    from kdlens.store.writer import CheckpointWriter

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


def write_imported_store(
    root: Path, *, k: int = 6, n: int = 120, models: tuple[str, ...] = ("zeta", "alpha", "mid")
) -> Path:
    """A store as ``kdlens import`` writes it: models with no epoch, step or batch size.

    One ``test`` split, K classes in blocks of ten (or of three for small K) that
    the teachers confuse; the models are named out of quality order.
    """
    from kdlens.store.writer import CheckpointWriter

    block = 10 if k >= 20 else 3
    for i, model in enumerate(models):
        rng = np.random.default_rng(i)
        y = rng.permutation(np.arange(n) % k)
        z = rng.normal(0, 0.4, size=(n, k))
        z += np.where((np.arange(k) // block)[None, :] == (y // block)[:, None], 1.5, 0.0)
        z[np.arange(n), y] += 2.0 + i
        with CheckpointWriter(
            root / f"{model}.parquet", run="imported", checkpoint=model, num_classes=k
        ) as w:
            w.write(z.astype(np.float32), split="test", labels=y, example_ids=np.arange(n))
    return root


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


def _rows(values: Any) -> list[dict[str, Any]]:
    """Inline rows of a dataset: the charts write them as one JSON text (``format: json``)."""
    return json.loads(values) if isinstance(values, str) else list(values)


def _fields_available(spec: dict[str, Any]) -> set[str]:
    cols: set[str] = set()
    for rows in (spec.get("datasets") or {}).values():
        for r in _rows(rows):
            cols |= set(r)

    def walk(s: Any) -> None:
        if isinstance(s, dict):
            data = s.get("data")
            if isinstance(data, dict) and "values" in data:
                for r in _rows(data["values"]):
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
    # ... and how to give one, to CLI and Python users alike
    data = collect_report_data(ana, n_bootstrap=0)
    why = next(s.unavailable for s in report_charts(data) if s.key == "entropy") or ""
    assert "--store STORE" in why and "store=" in why, why
    assert any("--store STORE" in n and "store=" in n for n in data.notes), data.notes


def test_class_names_missing_fall_back_to_indices(tmp_path: Path) -> None:
    store, ana = build_fixture(tmp_path, names=False, batch_sizes=(32,), epochs=(1, 2), n=60)
    data = collect_report_data(ana, store=store, n_bootstrap=0)
    assert data.class_names == [str(i) for i in range(len(NAMES))]
    assert not data.class_names_known
    text = render_report(data)
    assert "class names are not recorded" in text
    assert "--classes" in text and "kdlens import" in text and "class_names=" in text


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


def _chart_data(spec: Any) -> list[dict[str, Any]]:
    """Every inline data row of a spec (top-level datasets, layers, facets)."""
    rows: list[dict[str, Any]] = []
    if isinstance(spec, dict):
        for values in (spec.get("datasets") or {}).values():
            rows += _rows(values)
        data = spec.get("data")
        if isinstance(data, dict) and "values" in data:
            rows += _rows(data["values"])
        for v in spec.values():
            rows += _chart_data(v)
    elif isinstance(spec, list):
        for v in spec:
            rows += _chart_data(v)
    return rows


def test_models_without_epochs_get_no_trajectory_or_map(tmp_path: Path) -> None:
    # imported models: joining them in name order with lines would invent a training run
    store = write_imported_store(tmp_path / "store", n=60)
    data = collect_report_data(store, n_bootstrap=0)
    secs = {s.key: s for s in report_charts(data)}
    for key in ("trajectories", "sweet_spot"):
        why = secs[key].unavailable or ""
        assert secs[key].chart is None, key
        assert "no epoch" in why and "kdlens import" in why and "kdlens dump" in why, why
    assert secs["similarity"].chart is not None and secs["graph"].chart is not None
    # the summary the trajectory chart gets really has no time axis
    assert data.summary["epoch"].null_count() == data.summary.height


def _summary(rows: list[tuple[str, str, int | None, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "run": [r[0] for r in rows],
            "checkpoint": [r[1] for r in rows],
            "split": ["val"] * len(rows),
            "epoch": [r[2] for r in rows],
            "accuracy": [r[3] for r in rows],
        },
        schema_overrides={"epoch": pl.Int64},
    )


def test_trajectories_only_for_runs_with_epochs_and_integer_ticks() -> None:
    summary = _summary(
        [
            ("bs64", "ep1", 1, 0.7),
            ("bs64", "ep2", 2, 0.8),
            ("imported", "resnet56", None, 0.72),
            ("imported", "vgg19", None, 0.74),
            ("single", "ep5", 5, 0.9),
        ]
    )
    spec = trajectory_chart(summary, heldout_split="val", transfer_split=None).to_dict()
    runs = {r["run"] for r in _chart_data(spec)}
    assert runs == {"bs64"}  # no epochs, or a single checkpoint: nothing to join
    assert "Left out" in json.dumps(spec["title"]) and "imported" in json.dumps(spec["title"])
    x = spec["spec"]["layer"][0]["encoding"]["x"]
    # two epochs: ticks 1, 2 (not 1.0, 1.2, ... 2.0, nor a 1.5 printed "2")
    assert x["axis"]["values"] == [1, 2] and x["axis"]["format"] == "d", x
    many = _summary([("r", f"ep{e}", e, 0.5) for e in (1, 8, 60)])
    x = trajectory_chart(many, heldout_split="val", transfer_split=None).to_dict()["spec"]
    axis = x["layer"][0]["encoding"]["x"]["axis"]
    assert axis["tickMinStep"] == 1 and axis["format"] == "d" and "values" not in axis, axis
    with pytest.raises(ChartUnavailable, match="no epoch"):
        trajectory_chart(
            summary.filter(pl.col("run") == "imported"), heldout_split="val", transfer_split=None
        )
    with pytest.raises(ChartUnavailable, match="at least two checkpoints with an epoch"):
        trajectory_chart(
            summary.filter(pl.col("run") != "bs64"), heldout_split="val", transfer_split=None
        )


def test_hundred_classes_fit_and_label_only_the_best_connected() -> None:
    k = 100
    rng = np.random.default_rng(0)
    S = rng.uniform(0.001, 0.01, size=(k, k))
    block = np.arange(k) // 10
    S[block[:, None] == block[None, :]] += 0.05
    S[3, 7] = S[7, 3] = 0.5  # the strongest pair: both must be labelled
    np.fill_diagonal(S, 0)
    names = [f"class{i}" for i in range(k)]
    src, tgt = np.nonzero(~np.eye(k, dtype=bool))
    long = pl.DataFrame({"teacher": "t", "source": src, "target": tgt, "weight": S[src, tgt]})
    heat = similarity_heatmap(
        long, order=list(range(k)), class_names=names, teachers=["t"], default="t"
    ).to_dict()
    # fits a half-width card (~550 px) with its legend: before, 6 px x 100 = 600 px of cells
    assert heat["width"] <= 420 and heat["height"] == heat["width"]
    assert heat["encoding"]["x"]["axis"]["labels"] is False  # 100 names cannot be read

    top = np.argsort(-S, axis=1)[:, :3]
    edges = pl.DataFrame(
        {
            "source": np.repeat(np.arange(k), 3),
            "target": top.ravel(),
            "weight": S[np.repeat(np.arange(k), 3), top.ravel()],
        }
    )
    graph = similarity_graph_chart(
        edges, class_layout(S, iterations=50), class_names=names, clusters=block, title="t"
    ).to_dict()
    nodes = {r["class"]: r["label"] for r in _chart_data(graph) if "label" in r}
    labelled = [label for label in nodes.values() if label]
    assert set(nodes) == set(names)  # every class is a node, its name on the tooltip
    assert len(labelled) == MAX_NODE_LABELS and {"class3", "class7"} <= set(labelled)
    assert "best-connected" in json.dumps(graph["title"])
    legend_sort = graph["layer"][1]["encoding"]["color"]["sort"]
    assert legend_sort[:2] == ["cluster 1", "cluster 2"] and legend_sort[-1] == "cluster 10"


def test_small_k_graph_labels_every_class(sections: Any) -> None:
    _, secs = sections
    graph = next(s for s in secs if s.key == "graph").chart.to_dict()
    labelled = {r["label"] for r in _chart_data(graph) if r.get("label")}
    assert labelled == set(NAMES)


def test_similarity_class_names_map_to_indices_and_an_unknown_name_is_named():
    from types import SimpleNamespace

    from kdlens.report.sections import _class_index

    data = SimpleNamespace(class_names=["cat", "dog", "emu"])
    col = pl.Series(["emu", "cat", "dog", "emu"], dtype=pl.Categorical)
    np.testing.assert_array_equal(_class_index(col, data), [2, 0, 1, 2])
    with pytest.raises(InputError, match="'yak'"):
        _class_index(pl.Series(["cat", "yak"]), data)


def test_chart_data_is_strict_json_with_nulls_for_non_finite() -> None:
    """Inline chart data is one JSON text (polars), strict JSON: NaN and inf become null."""
    from kdlens.report.charts.common import _values

    df = pl.DataFrame(
        {
            "x": [0.1, float("nan"), float("inf"), None, -2.5e-7],
            "k": [1, 2, 3, 4, 5],
            "name": ["a", "b</script>", "c", "d", "é"],
            "flag": [True, False, True, None, False],
        }
    )
    data = _values(df)
    assert data["format"] == {"type": "json"}

    def strict(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    rows = json.loads(data["values"], parse_constant=strict)
    assert [r["x"] for r in rows] == [0.1, None, None, None, -2.5e-7]
    assert [r["k"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["name"] for r in rows] == ["a", "b</script>", "c", "d", "é"]
    assert [r["flag"] for r in rows] == [True, False, True, None, False]
