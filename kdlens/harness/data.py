"""Datasets for the harness: loaders (no downloads, no torchvision) and the split.

A dataset *spec* is a string, recorded in every store's metadata so that
``kdlens distill`` can re-create exactly the same examples:

- ``digits``: scikit-learn's embedded 8x8 digits (1,797 images, 10 classes);
- ``idx:IMAGES,LABELS`` or ``idx:DIR``: MNIST / Fashion-MNIST IDX files, gzipped or not
  (a directory holds ``train-*`` and optionally ``t10k-*`` files);
- ``cifar:DIR`` (also ``cifar10:`` / ``cifar100:``): the CIFAR python batches;
- ``npz:FILE`` (or a path ending in ``.npz``): arrays ``X`` (N, ...) and ``y`` (N,),
  optional ``class_names``.

``example_id`` is the row index in the source dataset (its own test set, when it
has one, follows the training rows), so the same example has the same id in every
run and checkpoint. :func:`split_dataset` makes a seeded, stratified split into
``train`` (the transfer set), ``val`` (held out) and ``test``.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdlens.errors import InputError

__all__ = [
    "SourceData",
    "Splits",
    "SplitArrays",
    "load_source",
    "read_idx",
    "read_cifar_batch",
    "safe_unpickle",
    "split_dataset",
    "prepare_data",
]

SPLITS = ("train", "val", "test")


@dataclass
class SourceData:
    """A whole dataset as arrays; rows ``[n_train_rows:]`` are its own test set, if any."""

    x: np.ndarray  # (N, C, H, W) or (N, D); any real dtype
    y: np.ndarray  # (N,) int64
    class_names: list[str]
    spec: str
    #: Number of leading rows that form the dataset's training part; None = no own test set.
    n_train_rows: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4


@dataclass
class SplitArrays:
    x: np.ndarray  # float32, normalised
    y: np.ndarray  # int64
    ids: np.ndarray  # int64, row index in the source


@dataclass
class Splits:
    """The three splits, normalised with the transfer set's statistics."""

    splits: dict[str, SplitArrays]
    class_names: list[str]
    spec: str
    input_shape: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __getitem__(self, split: str) -> SplitArrays:
        return self.splits[split]


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
    if spec.endswith(".npz"):
        return _load_npz(Path(spec), spec)
    p = Path(spec)
    if p.is_dir():
        if list(p.glob("data_batch_*")) or (p / "train").is_file():
            return _load_cifar(p, spec)
        if list(p.glob("*idx*")):
            return _load_idx(spec, spec)
    raise InputError(
        f"unknown dataset {spec!r}: use digits, idx:IMAGES,LABELS, idx:DIR, cifar:DIR or npz:FILE"
    )


# --------------------------------------------------------------------------- split


def _size(value: float | int | None, n: int, name: str) -> int | None:
    if value is None:
        return None
    if value < 0:
        raise InputError(f"--{name}-size must be positive, got {value}")
    if isinstance(value, float) and value < 1.0:
        return int(round(value * n))
    if float(value) != int(value):
        raise InputError(f"--{name}-size must be a fraction below 1 or a count, got {value}")
    return int(value)


def _stratified_take(
    idx: np.ndarray, y: np.ndarray, count: int, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (taken ``count``, rest), stratified by ``y[idx]``."""
    from sklearn.model_selection import train_test_split

    if count <= 0:
        return idx[:0], idx
    if count >= len(idx):
        if count > len(idx):
            raise InputError(f"{what} asks for {count} examples but only {len(idx)} are left")
        return idx, idx[:0]
    try:
        rest, taken = train_test_split(idx, test_size=count, random_state=seed, stratify=y[idx])
    except ValueError as exc:
        raise InputError(f"cannot make a stratified {what} of {count} examples: {exc}") from None
    return np.sort(taken), np.sort(rest)


def split_dataset(
    src: SourceData,
    *,
    seed: int = 0,
    train_size: float | int | None = None,
    val_size: float | int | None = 0.2,
    test_size: float | int | None = None,
    label_noise: float = 0.0,
) -> Splits:
    """Seeded, stratified split into ``train`` / ``val`` / ``test`` (float32, normalised).

    When the dataset has its own test set, that is ``test`` (``test_size`` then
    subsamples it) and ``val`` comes out of the training rows; otherwise
    ``test_size`` defaults to 0.2. ``train_size=None`` gives ``train`` every remaining row.
    ``label_noise`` flips that seeded fraction of ``train`` labels to another class;
    the flipped labels are the ones stored (the teacher trained on them).
    """
    if not 0.0 <= label_noise < 1.0:
        raise InputError(f"`label_noise` must lie in [0, 1), got {label_noise}")
    y = src.y
    n = len(y)
    # Fractions are of the rows available for training (the whole dataset when it
    # has no own test set), so "--val-size 0.2" means the same thing everywhere.
    base = src.n_train_rows if src.n_train_rows is not None else n
    if src.n_train_rows is not None:
        pool = np.arange(src.n_train_rows)
        test_idx = np.arange(src.n_train_rows, n)
        t = _size(test_size, len(test_idx), "test")
        if t is not None and t < len(test_idx):
            test_idx, _ = _stratified_take(test_idx, y, t, seed, "test split")
    else:
        t = _size(0.2 if test_size is None else test_size, n, "test") or 0
        test_idx, pool = _stratified_take(np.arange(n), y, t, seed, "test split")
    v = _size(val_size, base, "val") or 0
    val_idx, pool = _stratified_take(pool, y, v, seed + 1, "val split")
    tr = _size(train_size, base, "train")
    if tr is not None and tr > len(pool):
        raise InputError(f"train split asks for {tr} examples but only {len(pool)} are left")
    if tr is not None and tr < len(pool):
        train_idx, _ = _stratified_take(pool, y, tr, seed + 2, "train split")
    else:
        train_idx = pool
    if len(train_idx) == 0:
        raise InputError("the train split is empty: lower `val_size` / `test_size`")

    x = src.x.astype(np.float32)
    # Normalise with the transfer set's statistics: per channel for images.
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    mean = x[train_idx].mean(axis=axes, keepdims=True)
    std = x[train_idx].std(axis=axes, keepdims=True)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)

    def arrays(idx: np.ndarray) -> SplitArrays:
        return SplitArrays(
            ((x[idx] - mean) / std).astype(np.float32), y[idx].copy(), idx.astype(np.int64)
        )

    splits = {"train": arrays(train_idx), "val": arrays(val_idx), "test": arrays(test_idx)}
    flipped = 0
    if label_noise > 0:
        rng = np.random.default_rng([seed, 7919])
        ytr = splits["train"].y
        m = int(round(label_noise * len(ytr)))
        which = rng.choice(len(ytr), size=m, replace=False)
        shift = rng.integers(1, src.num_classes, size=m)  # never the same class
        ytr[which] = (ytr[which] + shift) % src.num_classes
        flipped = m
    info = {
        "dataset": src.spec,
        "split_seed": seed,
        "train_size": train_size,
        "val_size": val_size,
        "test_size": test_size,
        "label_noise": label_noise,
        "labels_flipped": flipped,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_test": len(test_idx),
    }
    return Splits(splits, list(src.class_names), src.spec, tuple(x.shape[1:]), info)


def prepare_data(
    spec: str,
    *,
    seed: int = 0,
    train_size: float | int | None = None,
    val_size: float | int | None = 0.2,
    test_size: float | int | None = None,
    label_noise: float = 0.0,
) -> Splits:
    """:func:`load_source` then :func:`split_dataset`; what dump and distill both call."""
    return split_dataset(
        load_source(spec),
        seed=seed,
        train_size=train_size,
        val_size=val_size,
        test_size=test_size,
        label_noise=label_noise,
    )
