"""The validation benchmarks' datasets: full MNIST, EMNIST-letters and CIFAR-10 as JPEG bytes.

Real files come from KDLENS_EXTERNAL (skipped only when absent); malformed files are
synthetic, in tmp_path. Also runs ``examples/validate_recommend.py --smoke`` once.
"""

from __future__ import annotations

import io
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_harness_data import write_idx  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from kdlens.cli import app  # noqa: E402
from kdlens.errors import InputError  # noqa: E402
from kdlens.harness.benchdata import CIFAR10_CLASSES  # noqa: E402
from kdlens.harness.data import prepare_data, split_dataset  # noqa: E402
from kdlens.harness.sources import SourceData, load_source  # noqa: E402
from kdlens.store.reader import open_store  # noqa: E402
from kdlens.store.validate import validate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _need(external_dir: Path, name: str) -> Path:
    d = external_dir / name
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    return d


# --------------------------------------------------------------------------- real files


def test_full_mnist_has_60000_train_and_10000_test_rows(external_dir: Path) -> None:
    d = _need(external_dir, "mnist")
    if not (d / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("full MNIST train images not present")
    src = load_source(f"idx:{d}")
    assert src.x.shape == (70_000, 1, 28, 28) and src.n_train_rows == 60_000
    assert src.y.min() == 0 and src.y.max() == 9 and src.num_classes == 10
    assert np.bincount(src.y[:60_000]).tolist()[:2] == [5923, 6742]  # published train counts


def test_emnist_letters_real_files(external_dir: Path) -> None:
    d = _need(external_dir, "emnist_letters")
    src = load_source(f"emnist-letters:{d}")
    assert src.x.shape == (145_600, 1, 28, 28) and src.x.dtype == np.uint8
    assert src.n_train_rows == 124_800 and src.num_classes == 26
    assert src.class_names[0] == "a" and src.class_names[-1] == "z"
    assert src.y.min() == 0 and src.y.max() == 25
    assert set(np.bincount(src.y[:124_800]).tolist()) == {4800}
    assert set(np.bincount(src.y[124_800:]).tolist()) == {800}


def test_cifar10_jpeg_real_files(external_dir: Path) -> None:
    d = _need(external_dir, "cifar10_jpeg")
    src = load_source(f"cifar10-jpeg:{d}")
    assert src.x.shape == (60_000, 3, 32, 32) and src.n_train_rows == 50_000
    assert src.class_names == list(CIFAR10_CLASSES)
    assert set(np.bincount(src.y[:50_000]).tolist()) == {5000}
    # The test file is in official order: its labels are the official test labels.
    official = external_dir / "cleanlab_label_errors" / "cifar10_test_set_original_labels.npy"
    if official.is_file():
        np.testing.assert_array_equal(src.y[50_000:], np.load(official).astype(np.int64))
    img = src.x[np.array([0, 59_999])]
    assert img.shape == (2, 3, 32, 32) and img.dtype == np.uint8 and 60 < img.mean() < 200


def test_cifar10_jpeg_subset_is_stratified_and_deterministic(external_dir: Path) -> None:
    spec = f"cifar10-jpeg:{_need(external_dir, 'cifar10_jpeg')}"
    kw = {"train_size": 300, "val_size": 100, "test_size": 100}
    a, b = prepare_data(spec, **kw), prepare_data(spec, **kw)
    other = prepare_data(spec, seed=1, **kw)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a[split].ids, b[split].ids)
        np.testing.assert_array_equal(a[split].x, b[split].x)
    # The train file is sorted by class; the subset still has every class equally.
    assert set(np.bincount(a["train"].y).tolist()) == {30}
    assert set(np.bincount(a["val"].y).tolist()) == {10}
    assert a["test"].ids.min() >= 50_000  # the own test set
    assert not np.array_equal(a["train"].ids, other["train"].ids)


def test_cli_dump_and_validate_on_small_real_subsets(tmp_path: Path, external_dir: Path) -> None:
    for name, spec, k in (
        ("emnist", f"emnist-letters:{_need(external_dir, 'emnist_letters')}", 26),
        ("cifar", f"cifar10-jpeg:{_need(external_dir, 'cifar10_jpeg')}", 10),
    ):
        out = tmp_path / name
        args = ["dump", "--dataset", spec, "--model", "mlp", "--hidden", "16"]
        args += ["--batch-sizes", "64", "--epochs", "1", "--checkpoints", "1"]
        args += ["--train-size", str(10 * k), "--val-size", str(2 * k), "--test-size", str(2 * k)]
        res = runner.invoke(app, [*args, "--device", "cpu", "--quiet", "-o", str(out)])
        assert res.exit_code == 0, res.output
        report = validate(out)
        assert report.ok, report.problems
        store = open_store(out)
        assert store.num_classes == k
        test = store.load("bs64-seed0", "ep001", "test")
        assert len(test.labels) == 2 * k and set(np.bincount(test.labels).tolist()) == {2}
        # distill re-creates the inputs from the spec the store recorded
        args = ["distill", str(out), "--checkpoint", "ep001", "--seeds", "0"]
        args += ["--student-hidden", "8", "--student-epochs", "3", "--json"]
        res = runner.invoke(app, [*args, "-o", str(tmp_path / f"{name}-students")])
        assert res.exit_code == 0, res.output
        assert '"student_test_acc"' in res.stdout


# --------------------------------------------------------------------------- synthetic, malformed


def _emnist_dir(tmp_path: Path, labels: np.ndarray, *, n_images: int | None = None) -> Path:
    d = tmp_path / "em"
    d.mkdir(exist_ok=True)
    n = len(labels) if n_images is None else n_images
    x = np.random.default_rng(0).integers(0, 255, (n, 28, 28), dtype=np.uint8)
    write_idx(d / "emnist-letters-train-images-idx3-ubyte.gz", x, gz=True)
    write_idx(d / "emnist-letters-train-labels-idx1-ubyte", labels.astype(np.uint8))
    return d


def test_emnist_synthetic_offset_and_no_test_set(tmp_path: Path) -> None:
    y = np.arange(52) % 26 + 1
    src = load_source(f"emnist-letters:{_emnist_dir(tmp_path, y)}")
    np.testing.assert_array_equal(src.y, y - 1)
    assert src.n_train_rows is None and src.num_classes == 26
    assert len(split_dataset(src, val_size=26, test_size=0.0)["train"].y) == 26


@pytest.mark.parametrize(
    ("labels", "n_images", "match"),
    [
        (np.arange(26), None, r"labels must lie in 1\.\.26, found 0"),
        (np.arange(26) + 2, None, r"labels must lie in 1\.\.26, found 27"),
        (np.arange(26) + 1, 20, r"one label each"),
    ],
)
def test_emnist_bad_labels_and_shapes(tmp_path: Path, labels, n_images, match) -> None:
    with pytest.raises(InputError, match=match):
        load_source(f"emnist-letters:{_emnist_dir(tmp_path, labels, n_images=n_images)}")


def test_emnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="directory not found"):
        load_source(f"emnist-letters:{tmp_path / 'nope'}")
    with pytest.raises(InputError, match="no emnist-letters-train-images"):
        load_source(f"emnist-letters:{tmp_path}")
    d = _emnist_dir(tmp_path, np.arange(26) + 1)
    (d / "emnist-letters-train-labels-idx1-ubyte").unlink()
    with pytest.raises(InputError, match="labels file is missing"):
        load_source(f"emnist-letters:{d}")


def _jpeg(color: tuple[int, int, int], size: int = 32) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG")
    return buf.getvalue()


def _jpeg_npz(path: Path, images: list[bytes], y: list[int], **override) -> Path:
    off = np.cumsum([0] + [len(b) for b in images]).astype(np.int64)
    arrays = {
        "jpeg_bytes": np.frombuffer(b"".join(images), np.uint8),
        "offsets": off,
        "labels": np.asarray(y, np.uint8),
    }
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.fixture(scope="module")
def jpeg_source(tmp_path_factory: pytest.TempPathFactory) -> SourceData:
    """Five one-colour JPEGs (module scope: hypothesis refuses function-scoped fixtures)."""
    d = tmp_path_factory.mktemp("jpeg")
    colors = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (90, 90, 90), (250, 250, 0)]
    _jpeg_npz(d / "cifar10_train_jpeg.npz", [_jpeg(c) for c in colors], [0, 1, 2, 3, 4])
    return load_source(f"cifar10-jpeg:{d}")


def test_cifar10_jpeg_synthetic_decodes_rows_in_order(tmp_path: Path) -> None:
    colors = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 250)]
    _jpeg_npz(tmp_path / "cifar10_train_jpeg.npz", [_jpeg(c) for c in colors[:3]], [0, 1, 2])
    _jpeg_npz(tmp_path / "cifar10_test_jpeg.npz", [_jpeg(colors[3])], [9])
    src = load_source(f"cifar10-jpeg:{tmp_path}")
    assert src.x.shape == (4, 3, 32, 32) and src.n_train_rows == 3 and src.num_classes == 10
    x = src.x[np.array([3, 0, 2])]
    assert x.shape == (3, 3, 32, 32)
    means = x.mean(axis=(2, 3))
    assert means[0].min() > 200 and means[1].argmax() == 0 and means[2].argmax() == 2
    np.testing.assert_array_equal(np.asarray(src.x)[1], src.x[1])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"labels": None}, r"missing \['labels'\]"),
        ({"offsets": np.array([0, 5], np.int64)}, "offsets must be N"),
        ({"offsets": np.array([0, 10, 5], np.int64)}, "offsets must rise"),
        ({"labels": np.array([0, 10], np.uint8)}, r"labels must be integers in 0\.\.9"),
        ({"jpeg_bytes": np.zeros((2, 3), np.uint8)}, "jpeg_bytes must be 1-d uint8"),
    ],
)
def test_cifar10_jpeg_malformed_npz(tmp_path: Path, override, match) -> None:
    _jpeg_npz(tmp_path / "cifar10_train_jpeg.npz", [_jpeg((1, 2, 3))] * 2, [0, 1], **override)
    with pytest.raises(InputError, match=match):
        load_source(f"cifar10-jpeg:{tmp_path}")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=8))
def test_jpeg_rows_decode_as_the_whole_array_indexed(
    jpeg_source: SourceData, index: list[int]
) -> None:
    whole = np.asarray(jpeg_source.x)
    assert whole.shape == (5, 3, 32, 32)
    idx = np.array(index, dtype=np.int64)
    np.testing.assert_array_equal(jpeg_source.x[idx], whole[idx])
    np.testing.assert_array_equal(jpeg_source.x[1:4], whole[1:4])
    np.testing.assert_array_equal(jpeg_source.x[-1], whole[4])


def test_cifar10_jpeg_bad_image_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such CIFAR-10 JPEG .npz file"):
        load_source(f"cifar10-jpeg:{tmp_path}")
    (tmp_path / "cifar10_train_jpeg.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        load_source(f"cifar10-jpeg:{tmp_path}")
    _jpeg_npz(tmp_path / "cifar10_train_jpeg.npz", [_jpeg((9, 9, 9)), b"garbage!"], [0, 1])
    src = load_source(f"cifar10-jpeg:{tmp_path}")  # the first image decodes
    with pytest.raises(InputError, match=r"image 1 is not a readable JPEG"):
        src.x[np.array([1])]
    _jpeg_npz(tmp_path / "cifar10_train_jpeg.npz", [_jpeg((9, 9, 9)), _jpeg((9, 9, 9), 16)], [0, 1])
    with pytest.raises(InputError, match=r"image 1 is \(16, 16\)"):
        load_source(f"cifar10-jpeg:{tmp_path}").x[1]


def test_cli_names_the_bad_file_with_exit_2(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["dump", "--dataset", f"cifar10-jpeg:{tmp_path}", "-o", str(tmp_path / "o")]
    )
    assert res.exit_code == 2
    assert "cifar10_train_jpeg.npz" in res.output and "Traceback" not in res.output


# --------------------------------------------------------------------------- the validation script


def test_validate_recommend_smoke_runs(
    tmp_path: Path, external_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import polars as pl
    import torch

    _need(external_dir, "emnist_letters")
    out = tmp_path / "v"
    script = REPO / "examples" / "validate_recommend.py"
    argv = [str(script), "emnist", "--smoke", "--variant", "noisy", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.syspath_prepend(str(script.parent))
    threads = torch.get_num_threads()
    try:  # in this process: no second torch import; the script sets one thread
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    text = (out / "validation.md").read_text()
    assert "mixture minus best single checkpoint" in text and "Spearman" in text
    assert (out / "mixture").is_dir()  # --smoke writes and distills even a one-member mixture
    mix = pl.read_parquet(out / "mixture.parquet")
    assert {"difference_pp", "ci_low_pp", "ci_high_pp", "versus"} <= set(mix.columns)
    assert mix["versus"][0] == "best single checkpoint"
    assert (mix["ci_low_pp"] <= mix["difference_pp"]).all()
    assert (mix["difference_pp"] <= mix["ci_high_pp"]).all()
    scores = pl.read_parquet(out / "scores.parquet")
    assert {"kdlens", "baseline_nll"} <= set(scores["score"].to_list())
    assert scores["role"][0] == "held-out" and scores["n_seeds"][0] == 2
    # The summary table reads the same files back.
    from validation_summary import markdown, summary_row

    row = summary_row(out)
    assert row["benchmark"] == "emnist-noisy" and row["role"] == "held-out"
    assert row["mix_minus_best_pp"] == pytest.approx(mix["difference_pp"][0])
    kd = scores.filter(pl.col("score") == "kdlens")
    assert row["kdlens_regret_pp"] == pytest.approx(kd["regret_pp"][0])
    assert "| emnist-noisy | held-out |" in markdown([row])
    from validation_summary import dark_mass_markdown, dark_mass_row

    dm = dark_mass_row(out)
    assert dm["best_single"] == mix["reference"][0]
    assert 0.0 <= float(dm["dark_mass_best_single"]) <= 1.0  # type: ignore[arg-type]
    assert 0.0 <= float(dm["dark_mass_mixture"]) <= 1.0  # type: ignore[arg-type]
    assert "| emnist-noisy | 4 |" in dark_mass_markdown([dm])
    # A one-member selection writes no mixture store: its dark mass is its checkpoint's.
    one = mix.with_columns(n_members=pl.lit(1), members=pl.lit(f"{mix['reference'][0]} x1.00"))
    one.write_parquet(out / "mixture.parquet")
    shutil.rmtree(out / "mixture")
    dm1 = dark_mass_row(out)
    assert dm1["dark_mass_mixture"] == dm1["dark_mass_best_single"] == dm["dark_mass_best_single"]


def test_seed_bootstrap_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    from validate_mixture import seed_bootstrap

    assert seed_bootstrap(np.full(4, 1.5)) == (1.5, 1.5, 1.5)
    mean, low, high = seed_bootstrap(np.array([0.0, 0.0, 0.0, 4.0]))
    # 10,000 resamples of 4 seeds: all-zero draws (p = 0.32) put the 2.5 % quantile at 0
    assert mean == 1.0 and low == 0.0 and 3.0 <= high <= 4.0
    assert seed_bootstrap(np.array([1.0, 2.0]), seed=3) == seed_bootstrap(
        np.array([1.0, 2.0]), seed=3
    )


def test_sharpened_mixture_matches_the_single_picks_dark_mass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--sharpen``: the factor puts the mixture's transfer dark mass at the single's, and
    the written store holds the mixture's logits times that factor, every split."""
    from kdlens import dark_mass, open_store, write_ensemble
    from kdlens.store.writer import write_logits

    monkeypatch.syspath_prepend(str(REPO / "examples"))
    from validate_mixture import matched_factor, write_scaled

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    teachers = tmp_path / "teachers"
    for ck, scale in (("ep1", 2.0), ("ep2", 4.0)):
        z = rng.normal(size=(300, 5)) + scale * np.eye(5)[y]
        write_logits(
            teachers / f"a-{ck}.parquet",
            z,
            split="train",
            run="a",
            checkpoint=ck,
            labels=y,
            example_ids=np.arange(300),
        )
    write_ensemble(teachers, ["a/ep1", "a/ep2"], tmp_path / "mixture")
    c, single, mixed = matched_factor(teachers, ("a", "ep2"), tmp_path / "mixture", temperature=4.0)
    assert mixed > single and c > 1.0  # averaging with the softer ep1 softened it
    write_scaled(tmp_path / "mixture", tmp_path / "sharp", c)
    st, mst = open_store(tmp_path / "sharp"), open_store(tmp_path / "mixture")
    b, m = st.load(*st.keys()[0], "train"), mst.load(*mst.keys()[0], "train")
    assert np.array_equal(b.example_ids, m.example_ids) and np.array_equal(b.labels, m.labels)
    np.testing.assert_allclose(b.logits, m.logits * np.float32(c), rtol=1e-6)
    got = float(dark_mass(b.logits, b.labels, temperature=4.0).mean())
    assert got == pytest.approx(single, abs=1e-5)  # float32 storage of the scaled logits
    assert st.checkpoint_metadata(*st.keys()[0])["config"]["sharpen"] == pytest.approx(c)


def test_sharpen_summary_reads_both_comparisons(tmp_path: Path, monkeypatch) -> None:
    import json

    import polars as pl

    monkeypatch.syspath_prepend(str(REPO / "examples"))
    from validation_summary import sharpen_markdown

    def rows(versus: list[str], diffs: list[float]) -> pl.DataFrame:
        return pl.DataFrame({"versus": versus, "difference_pp": diffs}).with_columns(
            ci_low_pp=pl.col("difference_pp") - 1, ci_high_pp=pl.col("difference_pp") + 1
        )

    run = tmp_path / "b"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"benchmark": "b-noisy"}))
    rows(["best single checkpoint", "plain students"], [0.5, 2.0]).write_parquet(
        run / "mixture.parquet"
    )
    sharp = rows(["best single checkpoint", "unsharpened mixture"], [0.25, -0.25])
    sharp.with_columns(
        factor=pl.lit(1.2), dark_mass_mixture=pl.lit(0.8), dark_mass_single=pl.lit(0.7)
    ).write_parquet(run / "mixture-sharp.parquet")
    (tmp_path / "plain").mkdir()  # a run without --sharpen: no row
    text = sharpen_markdown([run, tmp_path / "plain"])
    assert text.splitlines()[2] == (
        "| b-noisy | 1.200 | 0.800 → 0.700 | +0.50 [-0.50, +1.50] | +0.25 [-0.75, +1.25] "
        "| -0.25 [-1.25, +0.75] |"
    )
    assert len(text.splitlines()) == 3


def test_a_rerun_with_more_seeds_trains_only_the_new_ones(tmp_path: Path, monkeypatch) -> None:
    import polars as pl

    monkeypatch.syspath_prepend(str(REPO / "examples"))
    from validate_mixture import missing_seeds, read_students

    res = tmp_path / "results.parquet"
    assert missing_seeds(res, (0, 1)) == (0, 1)  # nothing trained yet
    pl.DataFrame({"seed": [0, 1, 0], "plain": [False, False, True]}).write_parquet(res)
    assert missing_seeds(res, (0, 1, 2, 3)) == (2, 3)
    assert missing_seeds(res, (0, 1, 2), plain=True) == (1, 2)
    assert read_students(res, (1,))["seed"].to_list() == [1]  # other seeds' rows left out


def test_teacher_seed_table_compares_each_seeds_best(tmp_path: Path, monkeypatch) -> None:
    import json

    import polars as pl

    monkeypatch.syspath_prepend(str(REPO / "examples"))
    from validation_summary import teacher_seed_markdown

    run = tmp_path / "r"
    (run / "students").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"benchmark": "b-seeds", "seeds": [0, 1, 2]}))
    acc = {  # teacher run/checkpoint -> student accuracy per student seed (seed 3: not asked)
        ("bs32-seed0", "ep001"): [0.50, 0.52, 0.54, 0.99],
        ("bs32-seed0", "ep002"): [0.60, 0.62, 0.64, 0.99],  # seed 0's best
        ("bs32-seed1", "ep001"): [0.61, 0.64, 0.67, 0.10],  # seed 1's best: +1, +2, +3 pp
        ("bs32-seed1", "ep002"): [0.55, 0.55, 0.55, 0.10],
    }
    rows = [
        {"run": r, "checkpoint": c, "seed": s, "plain": False, "student_test_acc": a}
        for (r, c), accs in acc.items()
        for s, a in enumerate(accs)
    ]
    rows += [
        {"run": "plain", "checkpoint": "plain", "seed": s, "plain": True, "student_test_acc": 0.9}
        for s in range(3)
    ]
    pl.DataFrame(rows).write_parquet(run / "students" / "results.parquet")
    members = "bs32-seed0/ep002 x0.50, bs32-seed1/ep001 x0.25, bs32-seed1/ep002 x0.25"
    pl.DataFrame({"versus": ["best single checkpoint"], "members": [members]}).write_parquet(
        run / "mixture.parquet"
    )
    one = tmp_path / "one"  # a run with one teacher seed gets no rows
    (one / "students").mkdir(parents=True)
    (one / "run.json").write_text(json.dumps({"benchmark": "b-one", "seeds": [0]}))
    pl.DataFrame(rows[:1]).write_parquet(one / "students" / "results.parquet")
    lines = teacher_seed_markdown([run, one]).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| b-seeds | 0 | bs32-seed0/ep002 | 62.00 % | — | 1 of 3 |"
    cells = lines[3].split(" | ")
    assert cells[:4] == ["| b-seeds", "1", "bs32-seed1/ep001", "64.00 %"]
    assert cells[4].startswith("+2.00 [+1.00, +") and cells[5] == "2 of 3 |"
