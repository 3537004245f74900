"""`kdlens import` streams `.npy` / `.npz` inputs in blocks of rows: the store it writes is
the one an import of the whole array in memory writes, and so is every refusal."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, softmax

from kdlens import InputError, import_files
from kdlens.store.arraystream import open_npy, open_npz

_STORAGE = ("npy", "npy-fortran", "npz", "npz-compressed")


def _save(tmp: Path, arr: np.ndarray, y: np.ndarray, storage: str) -> Path:
    if storage.startswith("npy"):
        p = tmp / "in.npy"
        np.save(p, np.asfortranarray(arr) if storage == "npy-fortran" else arr)
    else:
        p = tmp / "in.npz"
        save = np.savez_compressed if storage == "npz-compressed" else np.savez
        save(p, logits=arr, labels=y)
    return p


def _import(src: Path, out: Path, kind: str, labels: Path | None, rows: int | None) -> Path:
    done = import_files(
        [src], out, kind=kind, labels=str(labels) if labels else None, chunk_rows=rows
    )
    return Path(str(done[0].path))


def _data(n: int, k: int, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, k)) * 3).astype(np.float64)
    if kind == "probs":
        return softmax(z, axis=1)
    if kind == "log-probs":
        return log_softmax(z, axis=1).astype(np.float32)
    return z.astype(np.float32)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 40),
    k=st.integers(2, 6),
    kind=st.sampled_from(["logits", "probs", "log-probs"]),
    storage=st.sampled_from(_STORAGE),
    rows=st.integers(1, 9),
    seed=st.integers(0, 1000),
)
def test_streamed_import_equals_the_in_memory_import(
    tmp_path_factory: pytest.TempPathFactory,
    n: int,
    k: int,
    kind: str,
    storage: str,
    rows: int,
    seed: int,
) -> None:
    tmp = tmp_path_factory.mktemp("s")
    arr = _data(n, k, kind, seed)
    y = np.random.default_rng(seed).integers(0, k, n)
    src = _save(tmp, arr, y, storage)
    lab = None
    if storage.startswith("npy"):
        lab = tmp / "y.npy"
        np.save(lab, y)
    small = pq.read_table(_import(src, tmp / "a", kind, lab, rows))
    whole = pq.read_table(_import(src, tmp / "b", kind, lab, None))  # one block: in memory
    assert small.num_rows == whole.num_rows == n
    for col in ("logits", "label", "example_id", "split", "run", "checkpoint"):
        assert small[col].to_pylist() == whole[col].to_pylist(), col
    stored = np.asarray(whole["logits"].combine_chunks().flatten()).reshape(n, k)
    x = arr.astype(np.float64)
    expect = {
        "logits": x,
        "probs": np.log(np.maximum(x, 1e-12)),
        "log-probs": np.maximum(x, np.log(1e-12)),
    }[kind].astype(np.float32)
    assert np.array_equal(stored, expect)


def test_default_blocks_write_the_same_bytes_as_one_block(tmp_path: Path) -> None:
    z = _data(3000, 3, "logits", 0)  # default block: 2,796,202 rows at K = 3
    np.save(tmp_path / "z.npy", z)
    a = _import(tmp_path / "z.npy", tmp_path / "a", "logits", None, None)
    b = _import(tmp_path / "z.npy", tmp_path / "b", "logits", None, 10**7)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("rows", [1, 3, 100])
@pytest.mark.parametrize(
    ("kind", "spoil", "match"),
    [
        (
            "logits",
            lambda a: a.__setitem__((5, 1), np.nan),
            r"2 rows would store non-finite "
            r"logits \(first at row 5: NaN or Inf",
        ),
        ("probs", lambda a: a.__setitem__((7, 0), -0.5), r"must lie in \[0, 1\]"),
        (
            "probs",
            lambda a: a.__setitem__(4, a[4] * 0.5),
            r"2 rows do not sum to 1 "
            r"within 0.001 \(row 4 sums to 0.5\)",
        ),
        (
            "log-probs",
            lambda a: a.__setitem__(6, a[6] + 1),
            r"2 rows are not normalised "
            r"log-probabilities \(row 6",
        ),
    ],
)
def test_refusals_name_every_failing_row_whatever_the_block(
    tmp_path: Path, rows: int, kind: str, spoil, match: str
) -> None:
    arr = _data(12, 4, kind, 1).astype(np.float64)
    spoil(arr)
    if "non-finite" in match:
        arr[9, 2] = np.inf
    elif "sum to 1" in match:
        arr[10] *= 0.5
    elif "normalised" in match:
        arr[11] += 1
    if "[0, 1]" in match:
        arr[2] *= 0.5  # rows off in an earlier block: the range check still wins
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(InputError, match=match):
        import_files([tmp_path / "bad.npy"], tmp_path / "s", kind=kind, chunk_rows=rows)
    assert not (tmp_path / "s").exists()


def test_members_are_read_by_offset_or_stream_not_whole(tmp_path: Path) -> None:
    z = _data(50, 7, "logits", 2)
    np.savez(tmp_path / "u.npz", logits=z, labels=np.arange(50))
    np.savez_compressed(tmp_path / "c.npz", logits=z)
    stored, packed = open_npz(tmp_path / "u.npz")["logits"], open_npz(tmp_path / "c.npz")["logits"]
    with zipfile.ZipFile(tmp_path / "u.npz") as zf:
        assert zf.getinfo("logits.npy").compress_type == zipfile.ZIP_STORED
    assert stored._offset is not None and packed._offset is None
    for a in (stored, packed, open_npy(_save(tmp_path, z, z[:, 0], "npy"))):
        assert np.array_equal(a.rows(10, 20), z[10:20])
        assert np.array_equal(np.vstack([b for _, b in a.chunks(8)]), z)
        assert np.array_equal(np.asarray(a), z)


def test_truncated_and_object_inputs_are_one_line_refusals(tmp_path: Path) -> None:
    np.save(tmp_path / "z.npy", _data(100, 4, "logits", 0))
    data = (tmp_path / "z.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) - 40])
    with pytest.raises(InputError, match=r"t.npy: not a plain numeric .npy array \(truncated"):
        import_files([tmp_path / "t.npy"], tmp_path / "s", kind="logits")
    np.save(tmp_path / "o.npy", np.array([[{"a": 1}, 2]], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="o.npy: not a plain numeric .npy array"):
        import_files([tmp_path / "o.npy"], tmp_path / "s", kind="logits")
    np.savez_compressed(tmp_path / "c.npz", logits=_data(400, 4, "logits", 0))
    raw = bytearray((tmp_path / "c.npz").read_bytes())
    raw[300:340] = bytes(40)  # damage the deflated data of the member
    (tmp_path / "c.npz").write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"c.npz: not a readable .npz"):
        import_files([tmp_path / "c.npz"], tmp_path / "s", kind="logits")
    assert not (tmp_path / "s").exists()
