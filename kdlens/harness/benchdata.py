"""Readers of two published benchmark formats, for :func:`kdlens.harness.sources.load_source`.

- ``emnist-letters:DIR``: the EMNIST "letters" split as IDX files
  (``emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte``, gzipped or not; the
  test pair is optional). EMNIST numbers the letters 1..26 (label 0 is unused), so label
  ``l`` becomes class ``l - 1`` and the classes are named ``a`` .. ``z``. Images keep
  EMNIST's raw (transposed) orientation, byte for byte: (1, 28, 28).
- ``cifar10-jpeg:DIR``: CIFAR-10 stored as JPEG bytes in ``cifar10_train_jpeg.npz`` and
  optionally ``cifar10_test_jpeg.npz``, each with ``jpeg_bytes`` (uint8, every file
  concatenated), ``offsets`` (int64, N + 1: image i is ``jpeg_bytes[offsets[i]:offsets[i+1]]``)
  and ``labels`` (0..9). Images are decoded with Pillow to RGB (3, H, W) **on demand**: only
  the rows a split takes are decoded (:class:`JpegImages`), so a 2,000-image subset of the
  50,000 does not decode them all. A train file sorted by class needs no care here: the
  harness's split (:func:`kdlens.harness.data.split_dataset`) is a seeded, stratified,
  shuffled draw, so every subset has every class in proportion.

Full MNIST needs no reader of its own: ``idx:DIR`` on a directory holding
``train-*`` (60,000) and ``t10k-*`` (10,000) files reads both.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from kdlens.errors import InputError
from kdlens.harness.sources import SourceData, read_idx

__all__ = ["CIFAR10_CLASSES", "JpegImages", "load_cifar10_jpeg", "load_emnist_letters"]

#: CIFAR-10's class names in label order (the dataset's ``batches.meta``).
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_LETTERS = [chr(ord("a") + i) for i in range(26)]


# --------------------------------------------------------------------------- EMNIST


def _emnist_file(d: Path, part: str, kind: str) -> Path | None:
    pat = re.compile(rf"emnist-letters-{part}-{kind}-idx\d-ubyte(\.gz)?$")
    found = sorted(p for p in d.iterdir() if pat.match(p.name))
    return found[0] if found else None


def _emnist_pair(d: Path, part: str) -> tuple[np.ndarray, np.ndarray] | None:
    img, lab = _emnist_file(d, part, "images"), _emnist_file(d, part, "labels")
    if img is None and lab is None:
        return None
    if img is None or lab is None:
        have, miss = (img, "labels") if img is not None else (lab, "images")
        raise InputError(f"{have}: the matching emnist-letters-{part}-{miss} file is missing")
    x, y = read_idx(img), read_idx(lab).reshape(-1).astype(np.int64)
    if x.ndim != 3 or x.shape[0] != y.shape[0]:
        raise InputError(
            f"{img}: images must be (N, H, W) with one label each in {lab.name}, got "
            f"{x.shape} and {y.shape[0]} labels"
        )
    if len(y) and (y.min() < 1 or y.max() > 26):
        bad = int(y.min()) if y.min() < 1 else int(y.max())
        raise InputError(f"{lab}: EMNIST-letters labels must lie in 1..26, found {bad}")
    return x[:, None], y - 1


def load_emnist_letters(directory: str | Path, spec: str) -> SourceData:
    """The EMNIST-letters IDX files of ``directory`` as 26 classes ``a`` .. ``z``."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: EMNIST-letters directory not found")
    train = _emnist_pair(d, "train")
    if train is None:
        raise InputError(
            f"{d}: no emnist-letters-train-images-idx3-ubyte[.gz] + "
            "emnist-letters-train-labels-idx1-ubyte[.gz]"
        )
    test = _emnist_pair(d, "test")
    if test is None:
        return SourceData(train[0], train[1], list(_LETTERS), spec)
    if test[0].shape[1:] != train[0].shape[1:]:
        raise InputError(
            f"{d}: test images are {test[0].shape[2:]} but train images {train[0].shape[2:]}"
        )
    x = np.concatenate([train[0], test[0]])
    y = np.concatenate([train[1], test[1]])
    return SourceData(x, y, list(_LETTERS), spec, n_train_rows=len(train[1]))


# --------------------------------------------------------------------------- CIFAR-10 JPEG


class JpegImages:
    """An (N, C, H, W) uint8 image array whose rows are JPEG bytes, decoded when indexed.

    Supports what the harness does with a source's ``x``: ``shape``, ``ndim``, ``dtype``,
    ``len`` and indexing by an integer array, a slice or an integer (rows in that order).
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, parts: list[tuple[Path, np.ndarray, np.ndarray]]) -> None:
        #: (file, jpeg bytes, offsets) per file; rows run through the files in order.
        self._parts = parts
        self._starts = np.cumsum([0] + [len(o) - 1 for _, _, o in parts])
        first = self._decode_one(0)
        self._hwc = first.shape
        self.shape = (int(self._starts[-1]), first.shape[2], first.shape[0], first.shape[1])
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def _decode_one(self, row: int) -> np.ndarray:
        from PIL import Image

        k = int(np.searchsorted(self._starts, row, side="right")) - 1
        path, buf, off = self._parts[k]
        i = row - int(self._starts[k])
        try:
            with Image.open(io.BytesIO(buf[off[i] : off[i + 1]].tobytes())) as im:
                a = np.asarray(im.convert("RGB"))
        except Exception as exc:  # Pillow raises many types on a bad file
            raise InputError(f"{path}: image {i} is not a readable JPEG ({exc})") from None
        if row and a.shape != self._hwc:
            raise InputError(f"{path}: image {i} is {a.shape[:2]}, the first image {self._hwc[:2]}")
        return a

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self[np.array([index])][0]
        rows = np.arange(self.shape[0])[index]
        out = np.empty((len(rows), *self._hwc), np.uint8)
        for j, r in enumerate(rows):
            out[j] = self._decode_one(int(r))
        return out.transpose(0, 3, 1, 2)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype)


def _read_jpeg_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not path.is_file():
        raise InputError(f"{path}: no such CIFAR-10 JPEG .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = sorted({"jpeg_bytes", "offsets", "labels"} - set(z.files))
            if missing:
                raise InputError(
                    f"{path}: needs arrays jpeg_bytes, offsets and labels; missing {missing}"
                )
            buf, off, y = np.asarray(z["jpeg_bytes"]), np.asarray(z["offsets"]), z["labels"]
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    y = np.asarray(y).reshape(-1)
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise InputError(f"{path}: jpeg_bytes must be 1-d uint8, got {buf.dtype} {buf.shape}")
    if off.ndim != 1 or len(off) != len(y) + 1 or not np.issubdtype(off.dtype, np.integer):
        raise InputError(
            f"{path}: offsets must be N + 1 = {len(y) + 1} integers, got {off.dtype} {off.shape}"
        )
    if len(y) == 0:
        raise InputError(f"{path}: holds no images")
    if off[0] != 0 or off[-1] != len(buf) or (np.diff(off) <= 0).any():
        raise InputError(
            f"{path}: offsets must rise from 0 to len(jpeg_bytes) = {len(buf)}, "
            f"got {int(off[0])} .. {int(off[-1])}"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
        raise InputError(f"{path}: CIFAR-10 labels must be integers in 0..9")
    return buf, off.astype(np.int64), y.astype(np.int64)


def load_cifar10_jpeg(directory: str | Path, spec: str) -> SourceData:
    """CIFAR-10 from the JPEG-bytes npz files of ``directory`` (module docstring)."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: CIFAR-10 JPEG directory not found")
    train_path, test_path = d / "cifar10_train_jpeg.npz", d / "cifar10_test_jpeg.npz"
    tb, to, ty = _read_jpeg_npz(train_path)
    parts, ys = [(train_path, tb, to)], [ty]
    if test_path.exists():
        sb, so, sy = _read_jpeg_npz(test_path)
        parts.append((test_path, sb, so))
        ys.append(sy)
    x = JpegImages(parts)
    n_train = len(ty) if len(ys) == 2 else None
    return SourceData(x, np.concatenate(ys), list(CIFAR10_CLASSES), spec, n_train)
