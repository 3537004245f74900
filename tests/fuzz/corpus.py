"""A corpus of malformed stores and array files, each built in a directory at test time.

A store case writes ``<dir>/store/...`` and returns nothing; an import case writes input
files into ``<dir>`` and returns the ``kdlens import`` arguments after ``import``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdlens.store.format import METADATA_KEY, arrow_schema
from kdlens.store.writer import write_logits

K, N = 5, 40


def good_arrays(n: int = N, k: int = K, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(0, 2, (n, k)).astype(np.float32)
    z[np.arange(n), y] += 3
    return z, y


def good_store(d: Path, checkpoints: tuple[str, ...] = ("ep1", "ep2")) -> Path:
    for i, c in enumerate(checkpoints):
        z, y = good_arrays(seed=i)
        write_logits(
            d / "store" / "r" / f"{c}.parquet", z, split="test", run="r", checkpoint=c, labels=y
        )
    return d / "store"


def _table(
    z: np.ndarray,
    y: np.ndarray,
    k: int,
    meta: object = None,
    run: str = "r",
    checkpoint: str = "ep1",
) -> pa.Table:
    n = len(y)
    schema = arrow_schema(k)
    if meta is not None:
        schema = schema.with_metadata({METADATA_KEY: json.dumps(meta).encode()})
    return pa.table(
        {
            "run": pa.array([run] * n),
            "checkpoint": pa.array([checkpoint] * n),
            "epoch": pa.array([None] * n, pa.int32()),
            "step": pa.array([None] * n, pa.int64()),
            "batch_size": pa.array([None] * n, pa.int32()),
            "split": pa.array(["test"] * n),
            "example_id": pa.array(np.arange(n)),
            "label": pa.array(y.astype(np.int32)),
            "logits": pa.FixedSizeListArray.from_arrays(pa.array(z.ravel(), pa.float32()), k),
        },
        schema=schema,
    )


def _meta(**kw: object) -> dict[str, object]:
    """Metadata as kdlens writes it (data_schema/metadata.schema.json), then the case's change."""
    return {
        "format_version": "1.0",
        "num_classes": K,
        "class_names": None,
        "producer": "kdlens-fuzz",
        "producer_version": "0",
        **kw,
    }


def _write(d: Path, table: pa.Table, name: str = "ep1.parquet") -> None:
    p = d / "store" / "r" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, p)


def _bytes(d: Path, name: str, data: bytes) -> None:
    p = d / "store" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


# ------------------------------------------------------------------ stores


def random_bytes_parquet(d: Path) -> None:
    _bytes(d, "r/ep1.parquet", np.random.default_rng(1).bytes(3000))


def empty_parquet(d: Path) -> None:
    _bytes(d, "r/ep1.parquet", b"")


def truncated_parquet(d: Path) -> None:
    good_store(d, ("ep1",))
    p = d / "store" / "r" / "ep1.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def magic_only_parquet(d: Path) -> None:
    _bytes(d, "r/ep1.parquet", b"PAR1" + b"\0" * 64 + b"PAR1")


def logits_as_strings(d: Path) -> None:
    z, y = good_arrays()
    t = _table(z, y, K, _meta())
    t = t.set_column(
        t.schema.get_field_index("logits"), "logits", pa.array([str(list(r)) for r in z])
    )
    _write(d, t)


def label_as_string(d: Path) -> None:
    z, y = good_arrays()
    t = _table(z, y, K, _meta())
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array([str(v) for v in y]))
    _write(d, t)


def variable_list_size(d: Path) -> None:
    z, y = good_arrays()
    t = _table(z, y, K, _meta())
    rows = [list(map(float, r[: (K if i % 2 else K - 2)])) for i, r in enumerate(z)]
    t = t.set_column(
        t.schema.get_field_index("logits"), "logits", pa.array(rows, pa.list_(pa.float32()))
    )
    _write(d, t)


def missing_logits_column(d: Path) -> None:
    z, y = good_arrays()
    _write(d, _table(z, y, K, _meta()).drop(["logits"]))


def k_disagrees_with_metadata(d: Path) -> None:
    z, y = good_arrays()
    _write(d, _table(z, y, K, _meta(num_classes=K + 3)))


def two_files_two_k(d: Path) -> None:
    good_store(d, ("ep1",))
    z, y = good_arrays(k=K + 1)
    _write(d, _table(z, y, K + 1, _meta(num_classes=K + 1), checkpoint="ep2"), "ep2.parquet")


def nan_logits(d: Path) -> None:
    z, y = good_arrays()
    z[3, 1] = np.nan
    _write(d, _table(z, y, K, _meta()))


def inf_logits(d: Path) -> None:
    z, y = good_arrays()
    z[:, 0] = np.inf
    _write(d, _table(z, y, K, _meta()))


def huge_k_claim(d: Path) -> None:
    """8 rows with K = 1,000,000: analyze must refuse before allocating K x K."""
    k = 1_000_000
    rng = np.random.default_rng(0)
    z = rng.normal(size=(8, k)).astype(np.float32)
    _write(d, _table(z, rng.integers(0, k, 8), k, _meta(num_classes=k)))


def empty_store_dir(d: Path) -> None:
    (d / "store").mkdir(parents=True)


def zero_rows(d: Path) -> None:
    z, y = good_arrays(n=0)
    _write(d, _table(z, y, K, _meta()))


# H6's items (issue 10 part A): metadata of wrong shapes, labels out of range, names.


def metadata_is_a_list(d: Path) -> None:
    z, y = good_arrays()
    _write(d, _table(z, y, K, [1, 2, 3]))


def metadata_num_classes_text(d: Path) -> None:
    z, y = good_arrays()
    _write(d, _table(z, y, K, {"num_classes": "abc"}))


def metadata_class_names_int(d: Path) -> None:
    z, y = good_arrays()
    _write(d, _table(z, y, K, {"class_names": 5}))


def metadata_deeply_nested(d: Path) -> None:
    z, y = good_arrays()
    t = _table(z, y, K).replace_schema_metadata({METADATA_KEY: b"[" * 100_000 + b"]" * 100_000})
    _write(d, t)


def metadata_not_json(d: Path) -> None:
    z, y = good_arrays()
    _write(d, _table(z, y, K).replace_schema_metadata({METADATA_KEY: b"{not json"}))


def label_out_of_range(d: Path) -> None:
    z, y = good_arrays()
    y[0] = K + 7
    _write(d, _table(z, y, K, _meta()))


def negative_label_below_minus_one(d: Path) -> None:
    z, y = good_arrays()
    y[0] = -5
    _write(d, _table(z, y, K, _meta()))


def run_name_escapes(d: Path) -> None:
    z, y = good_arrays()
    _write(d, _table(z, y, K, _meta(), run="x/../../../../ESCAPE"))


STORES: dict[str, Callable[[Path], None]] = {
    f.__name__: f
    for f in (
        random_bytes_parquet,
        empty_parquet,
        truncated_parquet,
        magic_only_parquet,
        logits_as_strings,
        label_as_string,
        variable_list_size,
        missing_logits_column,
        k_disagrees_with_metadata,
        two_files_two_k,
        nan_logits,
        inf_logits,
        huge_k_claim,
        empty_store_dir,
        zero_rows,
        metadata_is_a_list,
        metadata_num_classes_text,
        metadata_class_names_int,
        metadata_deeply_nested,
        metadata_not_json,
        label_out_of_range,
        negative_label_below_minus_one,
        run_name_escapes,
    )
}

# ------------------------------------------------------------------ import inputs

ImportCase = Callable[[Path], list[str]]


def _file(d: Path, name: str, data: bytes) -> Path:
    p = d / name
    p.write_bytes(data)
    return p


def _random(d: Path, suffix: str) -> list[str]:
    return [str(_file(d, f"junk{suffix}", np.random.default_rng(2).bytes(500))), "--kind", "logits"]


def _npy(d: Path, arr: np.ndarray, kind: str = "logits", name: str = "a.npy") -> list[str]:
    np.save(d / name, arr)
    return [str(d / name), "--kind", kind]


IMPORTS: dict[str, ImportCase] = {
    "random_npy": lambda d: _random(d, ".npy"),
    "random_npz": lambda d: _random(d, ".npz"),
    "random_csv": lambda d: _random(d, ".csv"),
    "random_pt": lambda d: _random(d, ".pt"),
    "random_parquet": lambda d: _random(d, ".parquet"),
    "empty_pt": lambda d: [str(_file(d, "e.pt", b"")), "--kind", "logits"],
    "empty_parquet": lambda d: [str(_file(d, "e.parquet", b"")), "--kind", "logits"],
    "empty_csv": lambda d: [str(_file(d, "e.csv", b"")), "--kind", "logits"],
    "text_csv": lambda d: [str(_file(d, "t.csv", b"a,b\nx,y\n")), "--kind", "logits"],
    "one_d": lambda d: _npy(d, np.arange(5.0)),
    "three_d": lambda d: _npy(d, np.zeros((2, 3, 4))),
    "object_npy": lambda d: [str(_file(d, "o.npy", _object_npy())), "--kind", "logits"],
    "probs_not_summing": lambda d: _npy(d, np.full((4, 3), 0.5), "probs"),
    "bad_kind": lambda d: _npy(d, np.zeros((4, 3)), "logit"),
    "missing_file": lambda d: [str(d / "absent.npy"), "--kind", "logits"],
    "directory_as_input": lambda d: [str(d), "--kind", "logits"],
    "bad_labels_file": lambda d: [
        *_npy(d, np.zeros((4, 3))),
        "--labels",
        str(_file(d, "l.npy", b"garbage")),
    ],
    "k1": lambda d: _npy(d, np.zeros((4, 1))),
    # H6's items
    "empty_npy": lambda d: [str(_file(d, "e.npy", b"")), "--kind", "logits"],
    "nan_npy": lambda d: _npy(d, np.array([[np.nan, 1.0], [0.0, 1.0]])),
    "f64_overflow": lambda d: _npy(d, np.array([[1e300, 0.0], [0.0, 1.0]])),
    "bad_classes_json": lambda d: [
        *_npy(d, np.zeros((4, 3))),
        "--classes",
        str(_file(d, "c.json", b"{oops")),
    ],
    "run_dotdot": lambda d: [*_npy(d, np.zeros((4, 3))), "--run", "../../x"],
    "checkpoint_dotdot": lambda d: [*_npy(d, np.zeros((4, 3))), "--checkpoint", "../../../x"],
}


def _object_npy() -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()
