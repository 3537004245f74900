"""Dataset loaders (IDX, CIFAR batches, npz, digits), the safe unpickler and the split."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from kdlens.errors import InputError  # noqa: E402
from kdlens.harness.data import prepare_data, split_dataset  # noqa: E402
from kdlens.harness.sources import (  # noqa: E402
    load_source,
    read_cifar_batch,
    read_idx,
    safe_unpickle,
)


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False) -> Path:
    """The exact IDX format: 0, 0, dtype code, ndim, big-endian uint32 dims, data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    a = np.ascontiguousarray(arr)
    code = codes[a.dtype]
    head = bytes([0, 0, code, a.ndim]) + struct.pack(">" + "I" * a.ndim, *a.shape)
    raw = head + a.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_cifar_batch(path: Path, x: np.ndarray, y: np.ndarray, *, fine: bool = False) -> None:
    """A CIFAR python batch: a pickled dict with bytes keys, b'data' (n, 3072) uint8."""
    d = {
        b"batch_label": b"testing batch",
        b"fine_labels" if fine else b"labels": [int(v) for v in y],
        b"data": x.reshape(len(x), -1).astype(np.uint8),
        b"filenames": [f"img{i}.png".encode() for i in range(len(y))],
    }
    path.write_bytes(pickle.dumps(d, protocol=2))


def _images(n: int, k: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.integers(0, 255, size=(n, *shape), dtype=np.uint8)
    return x, y


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    x, y = _images(40, 4, (5, 6))
    ip = write_idx(tmp_path / ("img.gz" if gz else "img"), x, gz=gz)
    lp = write_idx(tmp_path / ("lab.gz" if gz else "lab"), y.astype(np.uint8), gz=gz)
    np.testing.assert_array_equal(read_idx(ip), x)
    src = load_source(f"idx:{ip},{lp}")
    assert src.x.shape == (40, 1, 5, 6)
    np.testing.assert_array_equal(src.y, y)
    assert src.num_classes == 4 and src.n_train_rows is None


def test_idx_directory_with_own_test_set(tmp_path: Path) -> None:
    x, y = _images(30, 3, (4, 4))
    xt, yt = _images(12, 3, (4, 4), seed=1)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y.astype(np.uint8), gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", xt)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", yt.astype(np.uint8))
    src = load_source(f"idx:{tmp_path}")
    assert src.n_train_rows == 30 and len(src.y) == 42
    sp = split_dataset(src, val_size=6)
    # The own test set is the test split; its ids follow the training rows.
    np.testing.assert_array_equal(sp["test"].ids, np.arange(30, 42))
    assert len(sp["val"].ids) == 6 and len(sp["train"].ids) == 24


def test_idx_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04hello")
    with pytest.raises(InputError, match="bad magic"):
        read_idx(bad)
    x, _ = _images(5, 2, (3, 3))
    p = write_idx(tmp_path / "trunc", x)
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(InputError, match="bytes after the header"):
        read_idx(p)


def test_cifar10_directory(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    x1, y1 = _images(20, 10, (3, 32, 32))
    x2, y2 = _images(20, 10, (3, 32, 32), seed=2)
    xt, yt = _images(10, 10, (3, 32, 32), seed=3)
    write_cifar_batch(d / "data_batch_1", x1, y1)
    write_cifar_batch(d / "data_batch_2", x2, y2)
    write_cifar_batch(d / "test_batch", xt, yt)
    names = [f"c{i}".encode() for i in range(10)]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    xs, ys = read_cifar_batch(d / "data_batch_1")
    np.testing.assert_array_equal(xs, x1)
    src = load_source(f"cifar:{d}")
    assert src.x.shape == (50, 3, 32, 32) and src.n_train_rows == 40
    assert src.class_names[3] == "c3"
    np.testing.assert_array_equal(src.y, np.concatenate([y1, y2, yt]))


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    x, y = _images(200, 100, (3, 32, 32))
    write_cifar_batch(tmp_path / "train", x, y, fine=True)
    write_cifar_batch(tmp_path / "test", x[:100], y[:100], fine=True)
    src = load_source(f"cifar100:{tmp_path}")
    assert src.num_classes == 100 and src.n_train_rows == 200


class _Evil:
    def __reduce__(self):  # noqa: D105
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    payload = pickle.dumps({b"data": _Evil(), b"labels": [0]})
    with pytest.raises(InputError, match="forbidden"):
        safe_unpickle(payload)
    (tmp_path / "data_batch_1").write_bytes(payload)
    with pytest.raises(InputError, match="refused to unpickle"):
        load_source(f"cifar:{tmp_path}")


def test_npz_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(
        p, X=rng.normal(size=(60, 5)), y=np.arange(60) % 3, class_names=np.array(["a", "b", "c"])
    )
    src = load_source(str(p))
    assert src.x.shape == (60, 5) and src.class_names == ["a", "b", "c"]
    np.savez(tmp_path / "bad.npz", X=np.zeros((3, 2)))
    with pytest.raises(InputError, match="'X' and 'y'"):
        load_source(f"npz:{tmp_path / 'bad.npz'}")
    with pytest.raises(InputError, match="unknown dataset"):
        load_source("imagenet")


def test_split_is_stratified_deterministic_and_indexed() -> None:
    a = prepare_data("digits", seed=3, train_size=200, val_size=0.1, test_size=300)
    b = prepare_data("digits", seed=3, train_size=200, val_size=0.1, test_size=300)
    src = load_source("digits")
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(a[s].ids, b[s].ids)
        np.testing.assert_array_equal(a[s].y, src.y[a[s].ids])  # ids are source rows
    assert (len(a["train"].y), len(a["test"].y), len(a["val"].y)) == (200, 300, 180)
    ids = np.concatenate([a[s].ids for s in ("train", "val", "test")])
    assert len(np.unique(ids)) == len(ids)
    counts = np.bincount(a["train"].y, minlength=10)
    assert counts.min() >= 19 and counts.max() <= 21  # stratified
    c = prepare_data("digits", seed=4, train_size=200, val_size=0.1, test_size=300)
    assert not np.array_equal(a["train"].ids, c["train"].ids)


def test_label_noise_flips_the_stated_fraction_of_train_only() -> None:
    clean = prepare_data("digits", seed=0)
    noisy = prepare_data("digits", seed=0, label_noise=0.25)
    src = load_source("digits")
    flipped = noisy["train"].y != src.y[noisy["train"].ids]
    assert abs(flipped.mean() - 0.25) < 0.01
    np.testing.assert_array_equal(noisy["test"].y, clean["test"].y)
    np.testing.assert_array_equal(noisy["val"].y, clean["val"].y)
    assert noisy.info["labels_flipped"] == flipped.sum()
    with pytest.raises(InputError, match="`label_noise`"):
        prepare_data("digits", label_noise=1.5)


def test_real_mnist_test_images(external_dir: Path) -> None:
    d = external_dir / "mnist"
    spec = f"idx:{d / 't10k-images-idx3-ubyte.gz'},{d / 't10k-labels-idx1-ubyte.gz'}"
    src = load_source(spec)
    assert src.x.shape == (10_000, 1, 28, 28) and src.x.dtype == np.uint8
    assert np.bincount(src.y).tolist()[:2] == [980, 1135]  # the published MNIST test counts


def test_cifar_fixture_dumps_end_to_end(tmp_path: Path) -> None:
    from kdlens.harness import DumpConfig, dump
    from kdlens.store.reader import open_store

    d = tmp_path / "c10"
    d.mkdir()
    x, y = _images(80, 10, (3, 32, 32))
    xt, yt = _images(20, 10, (3, 32, 32), seed=5)
    write_cifar_batch(d / "data_batch_1", x, y)
    write_cifar_batch(d / "test_batch", xt, yt)
    dump(
        tmp_path / "out",
        DumpConfig(
            dataset=f"cifar:{d}",
            model="cnn",
            batch_sizes=(32,),
            epochs=1,
            checkpoints=(1,),
            val_size=20,
            device="cpu",
        ),
    )
    st = open_store(tmp_path / "out")
    test = st.load("bs32-seed0", "ep001", "test")
    np.testing.assert_array_equal(np.sort(test.example_ids), np.arange(80, 100))
    assert st.checkpoint_metadata("bs32-seed0", "ep001")["config"]["augment"] is True
