"""Dataset sources for the harness: loaders (no downloads, no torchvision).

A dataset *spec* is a string, recorded in every store's metadata so that
``kdlens distill`` can re-create exactly the same examples:

- ``digits``: scikit-learn's embedded 8x8 digits (1,797 images, 10 classes);
- ``idx:IMAGES,LABELS`` or ``idx:DIR``: MNIST / Fashion-MNIST IDX files, gzipped or not
  (a directory holds ``train-*`` and optionally ``t10k-*`` files);
- ``cifar:DIR`` (also ``cifar10:`` / ``cifar100:``): the CIFAR python batches;
- ``emnist-letters:DIR`` and ``cifar10-jpeg:DIR``: EMNIST-letters IDX files (labels
  1..26 become classes 0..25) and CIFAR-10 as JPEG bytes in npz files
  (:mod:`kdlens.harness.benchdata`);
- ``npz:FILE`` (or a path ending in ``.npz``): arrays ``X`` (N, ...) and ``y`` (N,),
  optional ``class_names``;
- ``folder:DIR`` or ``folder:DIR,HxW``: class sub-folders of images
  (:mod:`kdlens.harness.folder`);
- ``module:function`` or ``path/to/file.py:function``: the user's own arrays or
  ``torch.utils.data.Dataset`` (:mod:`kdlens.harness.userdata`).

``example_id`` is the row index in the source dataset (its own test set, when it
has one, follows the training rows), so the same example has the same id in every
run and checkpoint. :mod:`kdlens.harness.data` splits a source into train/val/test.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kdlens.errors import InputError

if TYPE_CHECKING:
    from kdlens.harness.benchdata import JpegImages

__all__ = ["SourceData", "load_source", "read_cifar_batch", "read_idx", "safe_unpickle"]


@dataclass
class SourceData:
    """A whole dataset as arrays; rows ``[n_train_rows:]`` are its own test set, if any."""

    #: (N, C, H, W) or (N, D), any real dtype; or images decoded when indexed.
    x: np.ndarray | JpegImages
    y: np.ndarray  # (N,) int64
    class_names: list[str]
    spec: str
    #: Number of leading rows that form the dataset's training part; None = no own test set.
    n_train_rows: int | None = None
    #: Rows ``[n_train_rows : n_train_rows + n_val_rows]`` are the dataset's own
    #: validation set (used whole); None = val is split off the training rows.
    n_val_rows: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --------------------------------------------------------------------------- safe pickle

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # Python 3 pickles of bytes made under protocol 2 call _codecs.encode(str, 'latin1').
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global but what plain containers, bytes and numpy arrays need."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden")


def safe_unpickle(data: bytes, *, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` allowing only containers, bytes, str, numbers and numpy arrays."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise InputError(f"{source}: refused to unpickle ({exc})") from None
    except Exception as exc:  # a truncated or non-pickle file raises many types
        raise InputError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------- readers


def _open_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    return raw


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format: big-endian magic, dims, then data)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such IDX file")
    buf = _open_maybe_gz(p)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise InputError(f"{p}: not an IDX file (bad magic number {buf[:4].hex()})")
    ndim = buf[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(buf) < header:
        raise InputError(f"{p}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(buf, ">u4", count=ndim, offset=4))
    dt = np.dtype(_IDX_DTYPES[buf[2]])
    need = int(np.prod(dims)) * dt.itemsize
    if len(buf) - header != need:
        raise InputError(
            f"{p}: IDX header says {dims} ({need} bytes of data) but the file has "
            f"{len(buf) - header} bytes after the header"
        )
    return np.frombuffer(buf, dt, offset=header).reshape(dims).astype(dt.newbyteorder("="))


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10/100 python batch: images (n, 3, 32, 32) uint8 and labels (n,)."""
    p = Path(path)
    d = safe_unpickle(p.read_bytes(), source=str(p))
    if not isinstance(d, dict):
        raise InputError(f"{p}: a CIFAR batch must be a dict, got {type(d).__name__}")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d:
        raise InputError(f"{p}: CIFAR batch has no 'data' entry")
    key = next((k for k in ("labels", "fine_labels") if k in d), None)
    if key is None:
        raise InputError(f"{p}: CIFAR batch has neither 'labels' nor 'fine_labels'")
    x = np.asarray(d["data"], dtype=np.uint8)
    y = np.asarray(d[key], dtype=np.int64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or x.shape[0] != y.shape[0]:
        raise InputError(
            f"{p}: CIFAR 'data' must be (n, 3072) with one label per row, got {x.shape} "
            f"and {y.shape[0]} labels"
        )
    return x.reshape(-1, 3, 32, 32), y


def _cifar_names(directory: Path, k: int) -> list[str]:
    for meta_name, key in (("batches.meta", "label_names"), ("meta", "fine_label_names")):
        mp = directory / meta_name
        if mp.is_file():
            m = safe_unpickle(mp.read_bytes(), source=str(mp))
            if isinstance(m, dict):
                m = {(a.decode() if isinstance(a, bytes) else a): b for a, b in m.items()}
                names = m.get(key)
                if isinstance(names, list) and len(names) == k:
                    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return [str(i) for i in range(k)]


def _load_cifar(directory: Path, spec: str) -> SourceData:
    if not directory.is_dir():
        raise InputError(f"{directory}: CIFAR directory not found")
    c10 = sorted(directory.glob("data_batch_*"))
    if c10:
        train = [read_cifar_batch(f) for f in c10]
        test_files = [directory / "test_batch"]
    elif (directory / "train").is_file():
        train = [read_cifar_batch(directory / "train")]
        test_files = [directory / "test"]
    else:
        raise InputError(
            f"{directory}: no CIFAR batches (expected data_batch_* / test_batch or train / test)"
        )
    x = np.concatenate([a for a, _ in train])
    y = np.concatenate([b for _, b in train])
    n_train = len(y)
    tests = [read_cifar_batch(f) for f in test_files if f.is_file()]
    if tests:
        x = np.concatenate([x] + [a for a, _ in tests])
        y = np.concatenate([y] + [b for _, b in tests])
    k = int(y.max()) + 1
    k = 100 if k > 10 else 10
    return SourceData(x, y, _cifar_names(directory, k), spec, n_train if tests else None)


def _find_idx(directory: Path, prefix: str, kind: str) -> Path | None:
    for pat in (f"{prefix}-{kind}-idx*", f"{prefix}*{kind}*idx*"):
        found = sorted(directory.glob(pat))
        if found:
            return found[0]
    return None


def _load_idx(arg: str, spec: str) -> SourceData:
    parts = [s for s in arg.split(",") if s]
    if len(parts) == 1 and Path(parts[0]).is_dir():
        d = Path(parts[0])
        img, lab = _find_idx(d, "train", "images"), _find_idx(d, "train", "labels")
        timg, tlab = _find_idx(d, "t10k", "images"), _find_idx(d, "t10k", "labels")
        pairs = [(img, lab)] if img and lab else []
        if timg and tlab:
            pairs.append((timg, tlab))
        if not pairs:
            raise InputError(f"{d}: no IDX image + label files (train-images-idx3-ubyte ...)")
    elif len(parts) == 2:
        pairs = [(Path(parts[0]), Path(parts[1]))]
    else:
        raise InputError(f"idx:{arg}: expected idx:IMAGES,LABELS or idx:DIRECTORY")
    xs, ys = [], []
    for ip, lp in pairs:
        assert ip is not None and lp is not None  # narrowed above
        xi, yi = read_idx(ip), read_idx(lp).astype(np.int64).reshape(-1)
        if xi.ndim not in (2, 3) or xi.shape[0] != yi.shape[0]:
            raise InputError(
                f"{ip}: images have shape {xi.shape} but {lp} holds {yi.shape[0]} labels"
            )
        xs.append(xi.reshape(xi.shape[0], 1, *xi.shape[1:]) if xi.ndim == 3 else xi)
        ys.append(yi)
    x, y = np.concatenate(xs), np.concatenate(ys)
    k = max(int(y.max()) + 1, 2)
    return SourceData(x, y, [str(i) for i in range(k)], spec, len(ys[0]) if len(ys) == 2 else None)


def _load_npz(path: Path, spec: str) -> SourceData:
    if not path.is_file():
        raise InputError(f"{path}: no such .npz file")
    with np.load(path, allow_pickle=False) as z:
        for key in ("X", "y"):
            if key not in z.files:
                raise InputError(f"{path}: .npz needs arrays 'X' and 'y', found {sorted(z.files)}")
        x, y = np.asarray(z["X"]), np.asarray(z["y"]).reshape(-1)
        names = [str(n) for n in z["class_names"]] if "class_names" in z.files else None
    if x.shape[0] != y.shape[0]:
        raise InputError(f"{path}: X has {x.shape[0]} rows but y has {y.shape[0]}")
    if not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise InputError(f"{path}: y must hold non-negative integer class indices")
    if x.ndim == 3:  # (N, H, W) grey images
        x = x[:, None]
    k = int(y.max()) + 1
    if names is not None and len(names) < k:
        raise InputError(f"{path}: class_names has {len(names)} names but y goes up to {k - 1}")
    return SourceData(x, y.astype(np.int64), names or [str(i) for i in range(k)], spec)


def load_source(spec: str) -> SourceData:
    """Load a dataset from its spec string (see the module docstring)."""
    if not spec:
        raise InputError("dataset spec is empty")
    kind, _, arg = spec.partition(":")
    if spec == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.images.astype(np.float32)[:, None]  # (N, 1, 8, 8), values 0..16
        return SourceData(x, d.target.astype(np.int64), [str(int(t)) for t in d.target_names], spec)
    if kind == "idx" and arg:
        return _load_idx(arg, spec)
    if kind in ("cifar", "cifar10", "cifar100") and arg:
        return _load_cifar(Path(arg), spec)
    if kind == "npz" and arg:
        return _load_npz(Path(arg), spec)
    if kind in ("emnist-letters", "cifar10-jpeg") and arg:
        from kdlens.harness import benchdata

        if kind == "emnist-letters":
            return benchdata.load_emnist_letters(arg, spec)
        return benchdata.load_cifar10_jpeg(arg, spec)
    if spec.endswith(".npz"):
        return _load_npz(Path(spec), spec)
    if kind == "folder" and arg:
        from kdlens.harness.folder import load_folder

        return load_folder(arg, spec)
    p = Path(spec)
    if p.is_dir():
        if list(p.glob("data_batch_*")) or (p / "train").is_file():
            return _load_cifar(p, spec)
        if list(p.glob("*idx*")):
            return _load_idx(spec, spec)
    from kdlens.harness.userdata import is_factory_spec, load_user_dataset

    if is_factory_spec(spec):
        return load_user_dataset(spec)
    raise InputError(
        f"unknown dataset {spec!r}: use digits, idx:IMAGES,LABELS, idx:DIR, cifar:DIR, "
        "emnist-letters:DIR, cifar10-jpeg:DIR, npz:FILE, folder:DIR or module:function"
    )
