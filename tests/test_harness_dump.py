"""`kdlens dump`: end to end on digits, resume, refusals, models, checkpoints, LogitsWriter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from kdlens.cli import app  # noqa: E402
from kdlens.errors import InputError  # noqa: E402
from kdlens.harness import (  # noqa: E402
    DumpConfig,
    LogitsWriter,
    build_model,
    dump,
    dump_checkpoints,
    effective_lr,
    prepare_data,
)
from kdlens.store.reader import open_store  # noqa: E402

TINY = dict(
    dataset="digits",
    hidden=(32,),
    batch_sizes=(64,),
    epochs=4,
    checkpoints=(1, 2, 4),
    train_size=300,
    val_size=100,
    test_size=200,
    device="cpu",
)


def tiny(**kw: object) -> DumpConfig:
    return DumpConfig(**{**TINY, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grid")
    dump(out, tiny(batch_sizes=(32, 128)))
    return out


def test_grid_store_layout_and_metadata(grid: Path) -> None:
    st = open_store(grid)
    assert st.keys() == [
        (r, c) for r in ("bs128-seed0", "bs32-seed0") for c in ("ep001", "ep002", "ep004")
    ]
    df = st.checkpoints()
    assert set(df["split"]) == {"train", "val", "test"}
    sub = df.filter(df["run"] == "bs32-seed0", df["split"] == "train")
    assert sub["epoch"].to_list() == [1, 2, 4]
    assert sub["batch_size"].to_list() == [32] * 3
    assert sub["step"].to_list() == [10, 20, 40]  # ceil(300 / 32) = 10 steps per epoch
    assert sub["n"].to_list() == [300] * 3
    md = st.checkpoint_metadata("bs32-seed0", "ep004")
    assert md["dataset"] == "digits" and md["model"] == "mlp"
    assert md["class_names"] == [str(i) for i in range(10)]
    cfg = md["config"]
    assert cfg["batch_size"] == 32 and cfg["seed"] == 0 and cfg["hidden"] == [32]
    assert cfg["effective_lr"] == pytest.approx(effective_lr(0.1, 32, "linear"))
    assert cfg["data"]["n_train"] == 300 and cfg["data"]["split_seed"] == 0
    # example ids are the same in every checkpoint and run, and are digits rows
    data = prepare_data("digits", train_size=300, val_size=100, test_size=200)
    for key in st.keys():
        b = st.load(*key, "test")
        np.testing.assert_array_equal(np.sort(b.example_ids), np.sort(data["test"].ids))
    man = json.loads((grid / "bs32-seed0" / "manifest.json").read_text())
    assert man["status"] == "complete" and man["epochs_done"] == 4
    assert man["timings"]["dump_overhead"] > 0
    assert [c["checkpoint"] for c in man["checkpoints"]] == ["ep001", "ep002", "ep004"]
    assert not list(grid.rglob(".*.tmp"))
    # what the numbers depend on beyond the configuration: versions and CPU kernels
    env = man["environment"]
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["device"] == "cpu" and env["torch_threads"] == 1  # a small model: one thread
    grid_env = json.loads((grid / "kdlens-dump.json").read_text())["environment"]
    assert grid_env["torch"] == torch.__version__ and grid_env["device"] == "cpu"


def test_checkpoints_load_weights_only_and_reproduce_logits(grid: Path) -> None:
    sd = torch.load(grid / "bs32-seed0" / "ckpt" / "ep004.pt", weights_only=True)
    model = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden=(32,))
    model.load_state_dict(sd)
    model.eval()
    data = prepare_data("digits", train_size=300, val_size=100, test_size=200)
    with torch.inference_mode():
        z = model(torch.from_numpy(data["val"].x)).numpy()
    b = open_store(grid).load("bs32-seed0", "ep004", "val")
    np.testing.assert_allclose(b.logits, z, rtol=1e-5, atol=1e-5)


def test_rerun_skips_and_different_config_is_refused(grid: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in grid.rglob("*.parquet")}
    res = dump(grid, tiny(batch_sizes=(32, 128)))
    assert [r.status for r in res] == ["skipped", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in grid.rglob("*.parquet")} == before
    with pytest.raises(InputError, match="differs in: effective_lr, lr"):
        dump(grid, tiny(batch_sizes=(32,), lr=0.05))


def test_overwrite_replaces(tmp_path: Path) -> None:
    dump(tmp_path, tiny(epochs=2, checkpoints=(2,)))
    res = dump(tmp_path, tiny(epochs=2, checkpoints=(1,)), overwrite=True)
    assert res[0].status == "trained"
    assert sorted(p.name for p in (tmp_path / "bs64-seed0").glob("*.parquet")) == ["ep001.parquet"]


def test_resume_after_interruption_gives_identical_logits(tmp_path: Path) -> None:
    cfg = dict(epochs=5, checkpoints=(2, 5))
    dump(tmp_path / "a", tiny(**cfg))

    class Boom(Exception):
        pass

    def stop_after_3(run: str, epoch: int) -> None:
        if epoch == 3:
            raise Boom

    with pytest.raises(Boom):
        dump(tmp_path / "b", tiny(**cfg), on_epoch_end=stop_after_3)
    assert not (tmp_path / "b" / "bs64-seed0" / "ep005.parquet").exists()
    assert not list((tmp_path / "b").rglob(".*.tmp"))
    res = dump(tmp_path / "b", tiny(**cfg))
    assert res[0].status == "resumed"
    a, b = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    for split in ("train", "test"):
        np.testing.assert_array_equal(
            a.load("bs64-seed0", "ep005", split).logits, b.load("bs64-seed0", "ep005", split).logits
        )
    # the resume file holds only tensors and plain containers
    state = torch.load(tmp_path / "b" / "bs64-seed0" / "resume.pt", weights_only=True)
    assert state["epoch"] == 5
    man = json.loads((tmp_path / "b" / "bs64-seed0" / "manifest.json").read_text())
    assert "resumed_environments" not in man  # the same environment: nothing to say


def test_resume_in_another_environment_is_recorded_and_said(tmp_path: Path) -> None:
    from kdlens.harness.reporting import QuietReporter

    class Boom(Exception):
        pass

    def stop_after_1(run: str, epoch: int) -> None:
        if epoch == 1:
            raise Boom

    cfg = dict(epochs=2, checkpoints=(1, 2))
    with pytest.raises(Boom):
        dump(tmp_path, tiny(**cfg), on_epoch_end=stop_after_1)
    path = tmp_path / "bs64-seed0" / "manifest.json"
    man = json.loads(path.read_text())
    started = man["environment"]
    assert started["torch"] == torch.__version__
    # as if the run had started on a machine whose torch used other CPU kernels
    man["environment"] = {**started, "cpu_capability": "DEFAULT"}
    path.write_text(json.dumps(man))

    class Said(QuietReporter):
        lines: list[str] = []

        def message(self, text: str) -> None:
            self.lines.append(text)

    res = dump(tmp_path, tiny(**cfg), reporter=Said())
    assert res[0].status == "resumed"
    man = json.loads(path.read_text())
    assert man["environment"]["cpu_capability"] == "DEFAULT"  # where it started is kept
    [again] = man["resumed_environments"]
    assert again["epoch"] == 1 and again["cpu_capability"] == started["cpu_capability"]
    [line] = [t for t in Said.lines if "different environment" in t]
    assert "bs64-seed0: resumed at epoch 1" in line
    assert f"cpu_capability: DEFAULT -> {started['cpu_capability']}" in line


def test_lost_store_file_is_redumped_from_its_checkpoint(grid: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "g"
    shutil.copytree(grid, out)
    lost = out / "bs128-seed0" / "ep002.parquet"
    ref = open_store(lost).load("bs128-seed0", "ep002", "test").logits
    lost.unlink()
    dump(out, tiny(batch_sizes=(32, 128)))
    np.testing.assert_allclose(
        open_store(lost).load("bs128-seed0", "ep002", "test").logits, ref, rtol=1e-6, atol=1e-6
    )


def test_same_seed_same_logits_different_seed_differs(tmp_path: Path) -> None:
    cfg = dict(epochs=1, checkpoints=(1,), seeds=(0, 1))
    dump(tmp_path / "a", tiny(**cfg))
    dump(tmp_path / "b", tiny(**cfg))
    a, b = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    z0 = a.load("bs64-seed0", "ep001", "test").logits
    np.testing.assert_array_equal(z0, b.load("bs64-seed0", "ep001", "test").logits)
    assert not np.allclose(z0, a.load("bs64-seed1", "ep001", "test").logits)


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="outside epochs 1..4"):
        dump("/nonexistent/x", tiny(checkpoints=(2, 9)))
    with pytest.raises(InputError, match="mlp, cnn, resnet20"):
        build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(InputError, match="cannot import"):
        build_model("no_such_pkg_xyz.mod:build", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(InputError, match="`lr_scaling`"):
        dump("/nonexistent/x", tiny(lr_scaling="cubic"))


def test_lr_scaling() -> None:
    assert effective_lr(0.1, 256, "linear") == pytest.approx(0.2)
    assert effective_lr(0.1, 512, "sqrt") == pytest.approx(0.2)
    assert effective_lr(0.1, 512, "none") == pytest.approx(0.1)


FACTORY = """
import torch.nn as nn
def build(num_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
def not_a_model(num_classes):
    return "hello"
"""


def test_user_factory_and_from_checkpoints(tmp_path: Path) -> None:
    f = tmp_path / "mymodels.py"
    f.write_text(FACTORY)
    res = dump(
        tmp_path / "out", tiny(model=f"{f}:build", epochs=2, checkpoints=(2,), augment=False)
    )
    assert res[0].checkpoints[0]["val_acc"] > 0.5
    with pytest.raises(InputError, match="must return a torch.nn.Module"):
        build_model(f"{f}:not_a_model", num_classes=10, input_shape=(1, 8, 8))
    # dump the saved state dicts of that run again from their files
    ck = tmp_path / "out" / "bs64-seed0" / "ckpt"
    kw = dict(model=f"{f}:build", dataset="digits", train_size=300, val_size=100, test_size=200)
    written = dump_checkpoints(str(ck / "*.pt"), tmp_path / "imp", device="cpu", **kw)
    st = open_store(written)
    assert st.keys() == [("imported", "ep002")]
    # re-running skips what exists instead of failing
    mtime = written[0].stat().st_mtime_ns
    again = dump_checkpoints(str(ck / "*.pt"), tmp_path / "imp", device="cpu", **kw)
    assert again == written and written[0].stat().st_mtime_ns == mtime
    assert st.parts[0].epoch == 2
    np.testing.assert_allclose(
        st.load("imported", "ep002", "test").logits,
        open_store(tmp_path / "out").load("bs64-seed0", "ep002", "test").logits,
        rtol=1e-5,
        atol=1e-5,
    )
    # a .pt holding a non-tensor object is refused; a wrong state dict names its keys
    import argparse

    torch.save({"w": argparse.Namespace(a=1)}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="refused to load"):
        dump_checkpoints(str(tmp_path / "evil.pt"), tmp_path / "x", model=f"{f}:build")
    torch.save({"1.weight": torch.zeros(10, 64), "extra": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(InputError, match=r"missing keys: 1.bias.*unexpected keys: extra"):
        dump_checkpoints(str(tmp_path / "wrong.pt"), tmp_path / "x", model=f"{f}:build")
    torch.save({"1.weight": torch.zeros(3, 64), "1.bias": torch.zeros(3)}, tmp_path / "shape.pt")
    with pytest.raises(InputError, match="mismatched shapes: 1.weight"):
        dump_checkpoints(str(tmp_path / "shape.pt"), tmp_path / "x", model=f"{f}:build")


@pytest.mark.parametrize("name", ["cnn", "resnet20", "wrn-16-4"])
def test_convnets_build_and_run(name: str) -> None:
    m = build_model(name, num_classes=7, input_shape=(3, 32, 32), shortcut="B")
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_resnet_depths_and_shortcuts() -> None:
    n20 = sum(
        p.numel()
        for p in build_model("resnet20", num_classes=10, input_shape=(3, 32, 32)).parameters()
    )
    n56 = sum(
        p.numel()
        for p in build_model("resnet56", num_classes=10, input_shape=(3, 32, 32)).parameters()
    )
    assert 0.26e6 < n20 < 0.28e6 and 0.84e6 < n56 < 0.87e6  # He et al. 2016: 0.27M, 0.85M
    b = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32), shortcut="B")
    assert sum(p.numel() for p in b.parameters()) > n20


def test_cnn_dump_with_augmentation(tmp_path: Path) -> None:
    res = dump(tmp_path, tiny(model="cnn", epochs=1, checkpoints=(1,)))
    assert res[0].checkpoints[0]["val_acc"] > 0.2
    assert (
        open_store(tmp_path).checkpoint_metadata("bs64-seed0", "ep001")["config"]["augment"] is True
    )


def test_logits_writer_in_own_loop(tmp_path: Path) -> None:
    data = prepare_data("digits", train_size=300, val_size=100, test_size=200)
    x, y = torch.from_numpy(data["test"].x), torch.from_numpy(data["test"].y)
    ids = torch.from_numpy(data["test"].ids)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, ids), batch_size=64)
    model = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden=(16,))
    model.train()
    w = LogitsWriter(tmp_path, run="bs64-seed0", num_classes=10, class_names=list("0123456789"))
    w.dump(model, loader, checkpoint="ep1", epoch=1, split="test")
    assert model.training  # mode restored
    w.dump(model.eval(), loader, checkpoint="ep2", epoch=2, split="test")
    assert not model.training
    st = open_store(tmp_path)
    assert st.keys() == [("bs64-seed0", "ep1"), ("bs64-seed0", "ep2")]
    b = st.load("bs64-seed0", "ep1", "test")
    np.testing.assert_array_equal(b.example_ids, data["test"].ids)
    with torch.inference_mode():
        np.testing.assert_allclose(b.logits, model(x).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="already exists"):
        w.dump(model, loader, checkpoint="ep1", split="test")
    shuffled = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), shuffle=True)
    with pytest.raises(InputError, match="shuffles"):
        w.dump(model, shuffled, checkpoint="ep3", split="test")
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:0], y[:0]))
    with pytest.raises(InputError, match="yielded no examples"):
        w.dump(model, empty, checkpoint="ep4", split="test")
    bad = torch.nn.Sequential(model, torch.nn.Linear(10, 10))
    with torch.no_grad():
        bad[1].bias.fill_(float("nan"))
    with pytest.raises(InputError, match="NaN/Inf logits in loader batch 0"):
        w.dump(bad, loader, checkpoint="ep5", split="test")
    assert not list(tmp_path.rglob("ep4*")) and not list(tmp_path.rglob("ep5*"))


def test_cli_dump_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "dump",
        "-o",
        str(tmp_path),
        "--hidden",
        "16",
        "--batch-sizes",
        "128",
        "--epochs",
        "2",
        "--checkpoints",
        "1,2",
        "--train-size",
        "200",
        "--test-size",
        "100",
        "--device",
        "cpu",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "dump cost" in r.output and "bs128: 0.1" in r.output and "epoch    2" in r.output
    assert len(open_store(tmp_path).keys()) == 2
    r = runner.invoke(app, [*args, "--lr", "0.3"])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = runner.invoke(app, [*args[:-2], "--model", "vgg99"])
    assert r.exit_code == 2 and "unknown model 'vgg99'" in r.output
    r = runner.invoke(
        app, ["dump", "--epochs", "3", "--checkpoints", "5", "-o", str(tmp_path / "z")]
    )
    assert r.exit_code == 2 and "outside epochs" in r.output


def test_importable_factory_and_cli_from_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "userpkg_kdlens_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_model("userpkg_kdlens_test.nets:build", num_classes=10, input_shape=(1, 8, 8))
    torch.save(m.state_dict(), tmp_path / "ep007.pt")
    r = CliRunner().invoke(
        app,
        [
            "dump",
            "--from-checkpoints",
            str(tmp_path / "*.pt"),
            "--model",
            "userpkg_kdlens_test.nets:build",
            "-o",
            str(tmp_path / "out"),
            "--run",
            "mine",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    st = open_store(tmp_path / "out")
    assert st.keys() == [("mine", "ep007")] and st.parts[0].epoch == 7
    r = CliRunner().invoke(
        app, ["dump", "--from-checkpoints", str(tmp_path / "none*.pt"), "--model", "mlp"]
    )
    assert r.exit_code == 2 and "matches no files" in r.output


def test_model_that_does_not_fit_the_data_fails_before_training(tmp_path: Path) -> None:
    f = tmp_path / "bad.py"
    f.write_text(
        "from torch import nn\n"
        "def wrong_out(num_classes):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
        "def wrong_in(num_classes):\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n"
    )
    with pytest.raises(InputError, match=r"expected outputs of shape \(batch, 10\).*got \(2, 3\)"):
        dump(tmp_path / "o1", tiny(model=f"{f}:wrong_out", epochs=1, checkpoints=(1,)))
    with pytest.raises(InputError, match="a forward pass on inputs of shape"):
        dump(tmp_path / "o2", tiny(model=f"{f}:wrong_in", epochs=1, checkpoints=(1,)))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
