"""``folder:DIR``: a folder of images, one sub-folder per class (the ImageFolder convention).

- The classes are the sorted names of DIR's sub-folders; each holds its images (in
  nested folders too). Files whose suffix is not an image suffix and hidden entries
  (names starting with ``.``) are skipped; an image file Pillow cannot read stops the
  load with one line naming it.
- When DIR has a ``train/`` sub-folder, DIR holds splits instead: ``train/`` and,
  optionally, ``val/`` and ``test/``, each with class sub-folders. The classes are
  ``train/``'s; ``val/`` and ``test/`` are used as those splits (``val/`` whole,
  ``test/`` subsampled by ``test_size``); a missing one is split off ``train/`` by the
  seeded stratified split, as for every other dataset. Any other sub-folder is refused.
- Every image must have the same size, unless the spec names one, ``folder:DIR,HxW``
  (or ``folder:DIR,S`` for S x S): then each is resized to it with Pillow's bilinear
  filter (antialiased when shrinking). The size is part of the spec, so it is recorded
  in the store and ``kdlens distill`` re-creates the same inputs.
- Channels: (1, H, W) when every image is greyscale (Pillow modes 1, L, LA, I, I;16, F),
  else (3, H, W): colour, palette and alpha images are converted to RGB (alpha is dropped).

Rows are ordered split by split, class by class, file path by file path, so the row
index (the ``example_id``) names the same image in every run. Images are decoded
straight into one preallocated uint8 array: no decoded copy is held twice.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from kdlens.errors import InputError
from kdlens.harness.sources import SourceData

__all__ = ["IMAGE_SUFFIXES", "load_folder"]

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_SPLIT_DIRS = ("train", "val", "test")
_SIZE_RE = re.compile(r"^(\d+)(?:x(\d+))?$")


def parse_folder_arg(arg: str) -> tuple[Path, tuple[int, int] | None]:
    """``DIR`` or ``DIR,HxW`` / ``DIR,S`` -> (DIR, (H, W) or None)."""
    head, sep, tail = arg.rpartition(",")
    m = _SIZE_RE.match(tail) if sep else None
    if m is None:
        return Path(arg), None
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) else h
    if h < 1 or w < 1 or h * w > 4096 * 4096:
        raise InputError(f"`dataset` folder:{arg}: image size {h}x{w} is out of range")
    return Path(head), (h, w)


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _class_dirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and _visible(d)), key=lambda d: d.name)


def _images(d: Path) -> list[Path]:
    """Image files under ``d`` (recursively), sorted by their path below ``d``."""
    found = [
        p
        for p in d.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(d).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(d).parts)


def _layout(root: Path) -> list[tuple[str, Path]]:
    """The (split, folder) pairs DIR holds: [("all", DIR)] or train / val / test."""
    if not (root / "train").is_dir():
        return [("all", root)]
    extra = [d.name for d in _class_dirs(root) if d.name not in _SPLIT_DIRS]
    if extra:
        raise InputError(
            f"{root}: has a train/ folder, so it holds splits, but also {extra[0]!r}/: "
            "only train/, val/ and test/ may sit beside it"
        )
    return [(s, root / s) for s in _SPLIT_DIRS if (root / s).is_dir()]


def _listing(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names and, per split, its (file, class index) pairs in row order."""
    layout = _layout(root)
    names = [d.name for d in _class_dirs(layout[0][1])]
    if not names:
        raise InputError(f"{layout[0][1]}: no class sub-folders (expected DIR/CLASS/IMAGE)")
    index = {n: i for i, n in enumerate(names)}
    files: dict[str, list[tuple[Path, int]]] = {}
    for split, folder in layout:
        rows: list[tuple[Path, int]] = []
        for d in _class_dirs(folder):
            if d.name not in index:  # a name from the listing is compared, never joined
                raise InputError(
                    f"{d}: class {d.name!r} is not one of train/'s {len(names)} classes"
                )
            imgs = _images(d)
            if not imgs:
                raise InputError(f"{d}: no images (suffixes {', '.join(sorted(IMAGE_SUFFIXES))})")
            rows += [(p, index[d.name]) for p in imgs]
        if not rows:
            raise InputError(f"{folder}: no class sub-folders with images")
        files[split] = rows
    if len(names) < 2:
        raise InputError(f"{layout[0][1]}: one class folder only; a classifier needs two or more")
    return names, files


def _why(exc: Exception) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _scan(paths: list[Path]) -> tuple[list[tuple[int, int]], bool]:
    """Each image's (width, height) from its header, and whether every one is greyscale."""
    from PIL import Image

    sizes: list[tuple[int, int]] = []
    grey = True
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes.append(im.size)
                grey = grey and im.mode in _GREY_MODES
        except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, ...
            raise InputError(f"{p}: not a readable image ({_why(exc)})") from None
    return sizes, grey


def load_folder(arg: str, spec: str) -> SourceData:
    """Read ``folder:DIR[,HxW]`` (see the module docstring) into uint8 (N, C, H, W)."""
    from PIL import Image

    root, size = parse_folder_arg(arg)
    if not root.is_dir():
        raise InputError(f"`dataset` {spec!r}: {root} is not a directory")
    names, files = _listing(root)
    rows = [r for split in ("all", *_SPLIT_DIRS) for r in files.get(split, [])]
    paths = [p for p, _ in rows]
    sizes, grey = _scan(paths)
    if size is None:
        w0, h0 = sizes[0]
        for p, s in zip(paths, sizes, strict=True):
            if s != (w0, h0):
                raise InputError(
                    f"{p}: is {s[1]}x{s[0]} (HxW) but {paths[0]} is {h0}x{w0}; images must "
                    f"share one size, or name one to resize to: folder:{root},{h0}x{w0}"
                )
        size = (h0, w0)
    h, w = size
    mode, c = ("L", 1) if grey else ("RGB", 3)
    x = np.empty((len(paths), c, h, w), np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                img = im.convert(mode)
                if img.size != (w, h):
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # a header that parses but pixel data that does not
            raise InputError(f"{p}: not a readable image ({_why(exc)})") from None
        x[i] = a[None] if c == 1 else a.transpose(2, 0, 1)
    y = np.fromiter((k for _, k in rows), np.int64, count=len(rows))
    n_all, n_tr, n_val = (len(files.get(s, [])) for s in ("all", "train", "val"))
    if n_all:
        return SourceData(x, y, names, spec)
    return SourceData(
        x,
        y,
        names,
        spec,
        n_train_rows=n_tr if len(rows) > n_tr else None,
        n_val_rows=n_val if "val" in files else None,
    )
