"""`folder:DIR` and `module:function` datasets, `timm:NAME` models, and the model probe."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from typer.testing import CliRunner  # noqa: E402

import kdlens  # noqa: E402
from kdlens.cli import app  # noqa: E402
from kdlens.errors import InputError  # noqa: E402
from kdlens.harness import build_model, load_source, prepare_data  # noqa: E402
from kdlens.store.reader import open_store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "eel")


def write_folder(root: Path, per_class: int = 8, size: int = 8, mode: str = "RGB") -> Path:
    """``per_class`` PNGs per class, each class a different mean brightness plus noise."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            a = rng.normal(60 + 70 * k, 30, size=shape).clip(0, 255).astype(np.uint8)
            Image.fromarray(a).convert(mode).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("imgs") / "imgs")


def test_folder_reads_classes_in_order_as_uint8_images(folder: Path, tmp_path: Path) -> None:
    (folder / "cat" / "notes.txt").write_text("not an image")  # skipped: not an image suffix
    src = load_source(f"folder:{folder}")
    assert src.class_names == list(CLASSES) and src.x.shape == (24, 3, 8, 8)
    assert src.x.dtype == np.uint8 and src.y.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    first = np.asarray(Image.open(folder / "cat" / "00.png")).transpose(2, 0, 1)
    assert np.array_equal(src.x[0], first)  # row 0 is cat/00.png, pixel for pixel
    grey = load_source(f"folder:{write_folder(tmp_path / 'grey', 2, mode='L')}")
    assert grey.x.shape == (6, 1, 8, 8)  # every image greyscale: one channel
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "grey" / "dog" / "c.png")
    assert load_source(f"folder:{tmp_path / 'grey'}").x.shape == (7, 3, 8, 8)  # one colour: RGB
    d = prepare_data(f"folder:{folder}", seed=0)
    assert d.input_shape == (3, 8, 8) and sum(len(d[s].y) for s in ("train", "val", "test")) == 24


def test_folder_sizes_must_agree_unless_the_spec_names_one(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", 2)
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(root / "eel" / "odd.png")
    with pytest.raises(InputError, match=r"odd.png: is 5x7 \(HxW\).*folder:.*,8x8"):
        load_source(f"folder:{root}")
    assert load_source(f"folder:{root},4x6").x.shape == (7, 3, 4, 6)
    assert load_source(f"folder:{root},4").x.shape == (7, 3, 4, 4)


def test_folder_with_train_val_test_subtrees(tmp_path: Path) -> None:
    root = tmp_path / "splits"
    write_folder(root / "train", 6)
    write_folder(root / "val", 2)
    d = prepare_data(f"folder:{root}", seed=0, val_size=0.5)  # own val/: val_size unused
    assert len(d["val"].y) == 6 and d["val"].ids.tolist() == list(range(18, 24))
    assert len(d["test"].y) + len(d["train"].y) == 18  # no test/: split off train/
    write_folder(root / "test", 1)
    d = prepare_data(f"folder:{root}", seed=0)
    assert d["test"].ids.tolist() == [24, 25, 26] and len(d["train"].y) == 18
    (root / "validation").mkdir()
    with pytest.raises(InputError, match="'validation'/: only train/, val/ and test/"):
        load_source(f"folder:{root}")
    (root / "validation").rmdir()
    (root / "test" / "fox").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "test" / "fox" / "a.png")
    with pytest.raises(InputError, match="class 'fox' is not one of train/'s 3 classes"):
        load_source(f"folder:{root}")


def test_unreadable_image_is_one_line_naming_the_file(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", 2)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    r = CliRunner().invoke(
        app, ["dump", "--dataset", f"folder:{root}", "-o", str(tmp_path / "o"), "--quiet"]
    )
    assert r.exit_code == 2 and "broken.png: not a readable image" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    # A header that parses with pixel data that does not: caught when decoding.
    good = (root / "dog" / "00.png").read_bytes()
    (root / "dog" / "broken.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="broken.png: not a readable image"):
        load_source(f"folder:{root}")
    with pytest.raises(InputError, match="is not a directory"):
        load_source(f"folder:{tmp_path / 'absent'}")


def test_folder_dump_validates_recommends_and_distills(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    runner = CliRunner()
    r = runner.invoke(
        app,
        ["dump", "--dataset", f"folder:{folder}", "--model", "cnn", "--batch-sizes", "8,16"]
        + ["--epochs", "1", "--device", "cpu", "-o", str(out), "--quiet"],
    )
    assert r.exit_code == 0, r.output
    st = open_store(out)
    assert st.num_classes == 3 and st.checkpoint_metadata(*st.keys()[0])["class_names"] == list(
        CLASSES
    )
    assert runner.invoke(app, ["validate", str(out), "--quiet"]).exit_code == 0
    r = runner.invoke(app, ["recommend", str(out), "-B", "0", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["ranking"]) == 2
    # distill re-creates the examples from the recorded spec.
    r = runner.invoke(
        app,
        ["distill", str(out), "--checkpoint", "ep001", "--run", "bs8-seed0", "--seeds", "0"]
        + ["--student-epochs", "2", "-o", str(tmp_path / "st"), "--quiet", "--json"],
    )
    assert r.exit_code == 0, r.output
    assert 0.0 <= json.loads(r.output)["students"][0]["student_test_acc"] <= 1.0


USER_DATA = """
import numpy as np
import torch
from torch.utils.data import Dataset

def _arrays(n, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return rng.normal(y[:, None], 1.0, size=(n, 5)).astype(np.float32), y

def whole():
    x, y = _arrays(60, 0)
    return x, y, ["a", "b", "c"]

class Pairs(Dataset):
    classes = ["a", "b", "c"]
    def __init__(self, n, seed):
        self.x, self.y = _arrays(n, seed)
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), torch.tensor(self.y[i])

def per_split(split):
    return {"train": Pairs(40, 1), "val": Pairs(9, 2)}.get(split)

def bad_item(split):
    return [1, 2, 3] if split == "train" else None

def no_train(split):
    return None

def raises(split):
    if split == "test":
        raise KeyError("no test here")
    return _arrays(10, 0)

def float_labels():
    return np.zeros((4, 2)), np.array([0.0, 1.0, 0.5, 1.0])
"""


def test_module_function_datasets_both_forms(tmp_path: Path) -> None:
    f = tmp_path / "userdata_h4.py"
    f.write_text(USER_DATA)
    src = load_source(f"{f}:whole")  # function(): the whole dataset as (X, y, names)
    assert src.x.shape == (60, 5) and src.class_names == ["a", "b", "c"]
    assert src.n_train_rows is None
    d = prepare_data(f"{f}:whole", seed=0)
    assert sum(len(d[s].y) for s in ("train", "val", "test")) == 60
    src = load_source(f"{f}:per_split")  # function(split): a Dataset per split, no test
    assert src.x.shape == (49, 5) and (src.n_train_rows, src.n_val_rows) == (40, 9)
    assert np.array_equal(src.y[:6], [0, 1, 2, 0, 1, 2])
    d = prepare_data(f"{f}:per_split", seed=0)
    assert d["val"].ids.tolist() == list(range(40, 49)) and len(d["test"].y) == 8
    for name, message in (
        ("bad_item", "split 'train': item 0 is a int; items must be"),
        ("nothing", "has no callable 'nothing'"),
        ("no_train", "split 'train': returned None; the training data is required"),
        ("raises", r"the function raised KeyError: 'no test here'"),
        ("float_labels", "labels must be non-negative integer class indices"),
    ):
        with pytest.raises(InputError, match=message):
            load_source(f"{f}:{name}")


def test_model_shape_mismatch_is_one_line_before_training(folder: Path, tmp_path: Path) -> None:
    f = tmp_path / "nets_h4.py"
    f.write_text(
        "from torch import nn\n"
        "def flat64(num_classes):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
    )
    r = CliRunner().invoke(
        app,
        ["dump", "--dataset", f"folder:{folder}", "--model", f"{f}:flat64", "--epochs", "1"]
        + ["-o", str(tmp_path / "o"), "--quiet"],
    )
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"{f}:flat64" in r.output and "(3, 8, 8) (192 values)" in r.output
    assert "expects 64 input features" in r.output and not (tmp_path / "o").exists()


def test_timm_absent_or_broken_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(InputError, match=r"needs timm: pip install 'kdlens\[timm\]'"):
        build_model("timm:resnet18", num_classes=3, input_shape=(3, 8, 8))
    r = CliRunner().invoke(
        app, ["dump", "--model", "timm:resnet18", "--epochs", "1", "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "pip install 'kdlens[timm]'" in r.output, r.output
    with pytest.raises(InputError, match="expected timm:NAME"):
        build_model("timm:", num_classes=3, input_shape=(3, 8, 8))


def test_timm_model_dumps_a_folder(folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("timm")  # not installable here (no CPU torchvision); runs where it is
    m = build_model("timm:resnet18", num_classes=3, input_shape=(3, 8, 8))
    assert m(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
    with pytest.raises(InputError, match="timm cannot build 'no_such_net'"):
        build_model("timm:no_such_net", num_classes=3, input_shape=(3, 8, 8))
    out = tmp_path / "timm"
    r = CliRunner().invoke(
        app,
        ["dump", "--dataset", f"folder:{folder}", "--model", "timm:resnet18", "--epochs", "1"]
        + ["--batch-sizes", "8,16", "--device", "cpu", "-o", str(out), "--quiet"],
    )
    assert r.exit_code == 0, r.output
    assert kdlens.validate(out).ok
    assert CliRunner().invoke(app, ["recommend", str(out), "-B", "0"]).exit_code == 0


def test_dump_folder_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process (torch is imported already): a fresh interpreter would add ~8 s.
    out = tmp_path / "folder-store"
    monkeypatch.setattr(sys, "argv", ["dump_folder.py", str(out)])
    runpy.run_path(str(REPO / "examples" / "dump_folder.py"), run_name="__main__")
    assert "4 checkpoints, valid=True" in capsys.readouterr().out
    report = kdlens.validate(out)
    assert report.ok and report.checkpoints == 4, report.problems
