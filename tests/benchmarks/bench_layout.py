"""Benchmark: the logits column's layout on disk, as write and read time (issue 14, part 6).

A script, not a test. It writes the same ``--n`` x ``--k`` float32 logits (plus ``example_id``
and ``label``) in four layouts, with kdlens's row-group size, then reads each back into numpy
batch by batch (touching the data, computing nothing), each read in a fresh subprocess:

- ``list_snappy``: ``fixed_size_list<float32>[K]``, snappy — the store's schema today (v1);
- ``binary_snappy``: ``fixed_size_binary[4K]`` (each row's logits as raw bytes), snappy;
- ``binary_plain``: the same, uncompressed;
- ``ipc_mmap``: an Arrow IPC file (``fixed_size_list``), memory-mapped, uncompressed.

Reported: size on disk, write time, read time and read time as a ratio to ``list_snappy``.
A layout's read time bounds every command from below; the issue adopts a new layout only if
it makes ``analyze`` ≥ 2x faster end to end.

``--analyze`` measures that instead: it writes a kdlens store (schema v1, class-structured
logits as in ``bench_analyze.py``), copies its row groups into the other three layouts, and
runs ``kdlens.analyze`` on each (fresh process, every default, the structure test included),
the other layouts through a stand-in for the store reader's batch function that reads the
same row groups from their file (kdlens has no reader for them). Every layout feeds the pass
the same batches, so the summaries must be equal (checked); reported: analyze's wall and CPU
time per layout and as a ratio to ``list_snappy``.

    python tests/benchmarks/bench_layout.py --n 1281167 --k 1000 --dir /work/bench
    python tests/benchmarks/bench_layout.py --n 1000000 --k 100
    python tests/benchmarks/bench_layout.py --n 1281167 --k 1000 --analyze --dir /work/bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

LAYOUTS = ("list_snappy", "binary_snappy", "binary_plain", "ipc_mmap")
_CHUNK_ELEMENTS = 1 << 24

READ = r"""
import sys, time, json
import numpy as np, pyarrow as pa, pyarrow.ipc as ipc, pyarrow.parquet as pq
path, layout, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
n, s = 0, 0.0
def logits(col):
    if pa.types.is_fixed_size_binary(col.type):
        return np.frombuffer(col.buffers()[1], np.float32, count=len(col) * k,
                             offset=col.offset * 4 * k).reshape(-1, k)
    return col.values.to_numpy().reshape(-1, k)
if layout == "ipc_mmap":
    with pa.memory_map(path) as src:
        reader = ipc.open_file(src)
        for i in range(reader.num_record_batches):
            rb = reader.get_batch(i)
            z = logits(rb.column("logits"))
            y = rb.column("label").to_numpy(zero_copy_only=False)
            n += z.shape[0]; s += float(z[:, 0].sum())
else:
    pf = pq.ParquetFile(path)
    for rb in pf.iter_batches(batch_size=max(1024, (1 << 23) // k),
                              columns=["example_id", "label", "logits"]):
        z = logits(rb.column("logits"))
        y = rb.column("label").to_numpy(zero_copy_only=False)
        n += z.shape[0]; s += float(z[:, 0].sum())
print(json.dumps({"wall": time.perf_counter() - t0, "n": n}))
"""


ANALYZE = r"""
import sys, time, json, resource
import numpy as np, pyarrow as pa, pyarrow.ipc as ipc, pyarrow.parquet as pq
store, layout, alt, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import kdlens.store.reader as reader
from kdlens.store.format import Batch
from kdlens.analysis.engine import analyze

def batches(part, k_, groups, rows, check_labels):
    # The same row groups as the store's, from the layout's file (one batch per group).
    if layout == "ipc_mmap":
        get = ipc.open_file(pa.memory_map(alt)).get_batch
    else:
        pf = pq.ParquetFile(alt)
        cols = ["example_id", "label", "logits"]
        get = lambda g: pf.read_row_group(g, columns=cols).combine_chunks().to_batches()[0]
    for g in groups:
        rb = get(g)
        col = rb.column("logits")
        if pa.types.is_fixed_size_binary(col.type):
            z = np.frombuffer(col.buffers()[1], np.float32, count=len(col) * k,
                              offset=col.offset * 4 * k).reshape(-1, k)
        else:
            z = reader._numpy(col.flatten()).reshape(-1, k)
        y = reader._numpy(rb.column("label")).astype(np.int32, copy=False)
        yield Batch(z, y, reader._numpy(rb.column("example_id")))

if layout != "list_snappy":
    reader._part_batches = batches
t0, c0 = time.perf_counter(), time.process_time()
res = analyze(store)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
summary = json.dumps(res.summary.to_dicts(), sort_keys=True, default=str)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall": wall, "cpu": cpu, "rss_mib": rss, "summary": summary}))
"""


def _batches(n: int, k: int, seed: int = 0):
    """(ids, labels, logits) chunks of class-structured logits, the same for every layout."""
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_ELEMENTS // k)
    for start in range(0, n, step):
        m = min(step, n - start)
        y = rng.integers(0, k, m)
        z = rng.standard_normal((m, k), dtype=np.float32)
        z[np.arange(m), y] += 4.0
        yield np.arange(start, start + m, dtype=np.int64), y.astype(np.int32), z


def _table(ids: np.ndarray, y: np.ndarray, z: np.ndarray, layout: str) -> pa.Table:
    k = z.shape[1]
    flat = pa.array(z.reshape(-1), pa.float32())
    if layout.startswith("binary"):
        col: pa.Array = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(4 * k), len(ids), [None, flat.buffers()[1]]
        )
    else:
        col = pa.FixedSizeListArray.from_arrays(flat, k)
    return pa.table({"example_id": ids, "label": y, "logits": col})


def write(path: Path, layout: str, n: int, k: int) -> float:
    from kdlens.store.format import default_batch_rows  # imported before the clock starts

    rows = default_batch_rows(k)
    t0 = time.perf_counter()
    _write_tables(path, layout, (_table(ids, y, z, layout) for ids, y, z in _batches(n, k)), rows)
    return time.perf_counter() - t0


def copy_store(store: Path, path: Path, layout: str) -> float:
    """The store file's row groups, one by one, into ``layout`` at ``path``; seconds."""
    pf = pq.ParquetFile(store)
    k = pf.schema_arrow.field("logits").type.list_size

    def tables() -> Iterator[pa.Table]:
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=["example_id", "label", "logits"])
            z = t.column("logits").combine_chunks().flatten().to_numpy().reshape(-1, k)
            yield _table(t.column("example_id").to_numpy(), t.column("label").to_numpy(), z, layout)

    t0 = time.perf_counter()
    _write_tables(path, layout, tables(), None)
    return time.perf_counter() - t0


def _write_tables(path: Path, layout: str, tables: Iterable[pa.Table], rows: int | None) -> None:
    """``tables`` into one file of ``layout``, in row groups (IPC batches) of ``rows``
    (None: one per table)."""
    writer: pq.ParquetWriter | ipc.RecordBatchFileWriter | None = None
    for table in tables:
        if writer is None:
            if layout == "ipc_mmap":
                writer = ipc.new_file(str(path), table.schema)
            else:
                comp = "none" if layout == "binary_plain" else "snappy"
                writer = pq.ParquetWriter(str(path), table.schema, compression=comp)
        size = rows or table.num_rows
        if isinstance(writer, pq.ParquetWriter):
            writer.write_table(table, row_group_size=size)
        else:
            for rb in table.combine_chunks().to_batches(max_chunksize=size):
                writer.write_batch(rb)
    assert writer is not None
    writer.close()


def analyze_layouts(a: argparse.Namespace, scratch: Path) -> None:
    """``--analyze``: analyze end to end on every layout (module docstring)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_analyze import run, write_store

    store = scratch / "store.parquet"
    t0 = time.perf_counter()
    write_store(store, a.n, a.k)
    print(f"store: {a.n:,} x {a.k} written in {time.perf_counter() - t0:.1f} s", flush=True)
    paths = {"list_snappy": store}
    for layout in LAYOUTS[1:]:
        paths[layout] = scratch / f"{layout}.{'arrow' if layout == 'ipc_mmap' else 'parquet'}"
        w = copy_store(store, paths[layout], layout)
        print(f"{layout}: copied in {w:.1f} s", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {layout: [] for layout in LAYOUTS}
    summaries = set()
    for _ in range(a.repeats):  # interleaved, so load changes hit every layout alike
        for layout in LAYOUTS:
            got = run(ANALYZE, store, layout, str(paths[layout]), str(a.k))
            summaries.add(got.pop("summary"))
            runs[layout].append(got)
            print(f"  {layout}: {got['wall']:.2f} s", flush=True)
    if len(summaries) != 1:
        raise SystemExit("the layouts' analyze summaries differ: the comparison is void")
    base = statistics.median(r["wall"] for r in runs["list_snappy"])
    print(f"analyze of {a.n:,} x {a.k} per layout (median of {a.repeats}; summaries equal)")
    print("layout          wall s   CPU s   peak MiB   wall / list_snappy")
    for layout in LAYOUTS:
        wall = statistics.median(r["wall"] for r in runs[layout])
        cpu = statistics.median(r["cpu"] for r in runs[layout])
        rss = max(r["rss_mib"] for r in runs[layout])
        print(f"{layout:<14} {wall:7.2f}  {cpu:6.2f}  {rss:8.0f}   {wall / base:.2f}")


def read(path: Path, layout: str, k: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", READ, str(path), layout, str(k)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["wall"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory (default: tmp)")
    ap.add_argument("--repeats", type=int, default=3, help="reads of each layout (median)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--analyze", action="store_true", help="time analyze on each layout")
    a = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kdlens-layout-", dir=a.dir))
    import kdlens.store.format  # noqa: F401  (its import is not part of the first write)

    try:
        if a.analyze:
            analyze_layouts(a, scratch)
            return
        rows = {}
        for layout in LAYOUTS:
            path = scratch / f"{layout}.{'arrow' if layout == 'ipc_mmap' else 'parquet'}"
            w = write(path, layout, a.n, a.k)
            rows[layout] = {"write_s": w, "mib": path.stat().st_size / 2**20, "path": path}
        reads: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        for _ in range(a.repeats):  # interleaved, so load changes hit every layout alike
            for layout in LAYOUTS:
                reads[layout].append(read(rows[layout]["path"], layout, a.k))
        base = statistics.median(reads["list_snappy"])
        out = [
            {
                "layout": layout,
                "mib": round(rows[layout]["mib"]),
                "write_s": round(rows[layout]["write_s"], 2),
                "read_s": round(statistics.median(reads[layout]), 2),
                "read_ratio": round(statistics.median(reads[layout]) / base, 2),
            }
            for layout in LAYOUTS
        ]
        if a.json:
            print(json.dumps({"n": a.n, "k": a.k, "repeats": a.repeats, "rows": out}))
            return
        print(f"{a.n:,} x {a.k} float32 logits; read = median of {a.repeats}, fresh process")
        print("layout          MiB   write s   read s   read / list_snappy")
        for r in out:
            print(
                f"{r['layout']:<14} {r['mib']:>5}  {r['write_s']:7.2f}  {r['read_s']:7.2f}"
                f"   {r['read_ratio']:.2f}"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
