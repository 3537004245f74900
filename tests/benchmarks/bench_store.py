"""Store throughput: kdlens's writer and reader against plain pyarrow, same data, same run.

    python tests/benchmarks/bench_store.py            # 1,000,000 x 100 float32 (400 MB)
    python tests/benchmarks/bench_store.py --n 200000 # quicker

Reports MB/s of logits for (a) kdlens ``CheckpointWriter`` vs ``pyarrow.parquet.write_table``
of the same Arrow table, (b) kdlens ``iter_batches`` over the whole part vs
``pyarrow.parquet.read_table`` + conversion to one numpy array, and the peak RSS of each
reader measured in a fresh subprocess (kdlens should be bounded by the batch, not by N).
Goal: kdlens >= 80 % of pyarrow's throughput both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _write_kdlens(path: Path, z: np.ndarray, ids: np.ndarray, y: np.ndarray) -> float:
    from kdlens.store.format import default_batch_rows
    from kdlens.store.writer import CheckpointWriter

    t = time.perf_counter()
    step = default_batch_rows(z.shape[1])
    with CheckpointWriter(
        path, run="bench", checkpoint="c", num_classes=z.shape[1], overwrite=True
    ) as w:
        for s in range(0, z.shape[0], step):
            w.write(
                z[s : s + step],
                split="train",
                example_ids=ids[s : s + step],
                labels=y[s : s + step],
            )
    return time.perf_counter() - t


def _write_pyarrow(path: Path, z: np.ndarray, ids: np.ndarray, y: np.ndarray) -> float:
    from kdlens.store.format import arrow_schema, default_batch_rows

    t = time.perf_counter()
    n, k = z.shape
    table = pa.Table.from_arrays(
        [
            pa.repeat(pa.scalar("bench"), n),
            pa.repeat(pa.scalar("c"), n),
            pa.nulls(n, pa.int32()),
            pa.nulls(n, pa.int64()),
            pa.nulls(n, pa.int32()),
            pa.repeat(pa.scalar("train"), n),
            pa.array(ids),
            pa.array(y),
            pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), k),
        ],
        schema=arrow_schema(k),
    )
    pq.write_table(table, path, row_group_size=default_batch_rows(k))
    return time.perf_counter() - t


def _reader_child(mode: str, path: str) -> None:
    """Runs in a subprocess so that ru_maxrss is this reader's alone."""
    from kdlens.store.reader import open_store  # imports are not part of the timing

    base = _hwm_mb()
    t = time.perf_counter()
    total = 0.0
    if mode == "kdlens":
        store = open_store(path)
        for b in store.iter_batches("bench", "c", "train"):
            total += float(b.logits[:, 0].sum())  # touch the data
    else:
        table = pq.read_table(path, columns=["example_id", "label", "logits"])
        col = table.column("logits").combine_chunks()
        z = col.flatten().to_numpy().reshape(-1, col.type.list_size)
        total = float(z[:, 0].sum())
    dt = time.perf_counter() - t
    print(
        json.dumps({"seconds": dt, "peak_rss_mb": _hwm_mb(), "base_rss_mb": base, "check": total})
    )


def _hwm_mb() -> float:
    """Peak resident memory of this process (VmHWM; reset by exec, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read(mode: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs each")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _reader_child(*args.child)
        return

    rng = np.random.default_rng(0)
    z = rng.normal(size=(args.n, args.k)).astype(np.float32)
    ids = np.arange(args.n, dtype=np.int64)
    y = rng.integers(0, args.k, args.n).astype(np.int32)
    mb = z.nbytes / 2**20
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        pk, pp = Path(d) / "kdlens.parquet", Path(d) / "pyarrow.parquet"
        wk = min(_write_kdlens(pk, z, ids, y) for _ in range(args.repeats))
        wp = min(_write_pyarrow(pp, z, ids, y) for _ in range(args.repeats))
        del z
        rk = min((_read("kdlens", pk) for _ in range(args.repeats)), key=lambda r: r["seconds"])
        rp = min((_read("pyarrow", pp) for _ in range(args.repeats)), key=lambda r: r["seconds"])
    print(
        f"logits: {args.n:,} x {args.k} float32 = {mb:,.0f} MB; best of {args.repeats}; "
        f"{os.cpu_count()} cores"
    )
    print(f"{'':10s}{'kdlens MB/s':>14s}{'pyarrow MB/s':>14s}{'ratio':>8s}")
    print(f"{'write':10s}{mb / wk:14.0f}{mb / wp:14.0f}{wp / wk:8.2f}")
    print(
        f"{'read':10s}{mb / rk['seconds']:14.0f}{mb / rp['seconds']:14.0f}"
        f"{rp['seconds'] / rk['seconds']:8.2f}"
    )
    print(
        f"peak RSS while reading: kdlens {rk['peak_rss_mb']:.0f} MB (iterating batches), "
        f"pyarrow {rp['peak_rss_mb']:.0f} MB (whole table); interpreter+imports "
        f"{rk['base_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
