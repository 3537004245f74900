"""Benchmark: ``kdlens import`` of a large ``.npy`` / ``.npz`` in bounded memory.

A script, not a test. For each ``--n`` it writes one ``N x --k`` float32 ``.npy`` (in
blocks, so writing it needs no memory either; ``--npz`` also a stored ``.npz`` with labels)
and runs, each in a fresh subprocess so that its peak RSS is its own:

- ``floor``: read the file in 32 MiB blocks and write the same logits with pyarrow
  (snappy, one ``fixed_size_list<float32>`` column, one row group per block): the I/O
  an import cannot avoid;
- ``import``: :func:`kdlens.import_files` (``kind="logits"``), which streams the rows.

Reported: wall time and peak RSS (``ru_maxrss`` of the process) of each, and
import / floor. Goal: the import's peak RSS does not grow with N and stays <= 1.5 GiB
at 1,281,167 x 1,000 (5.1 GB).

    nice -n 10 python tests/benchmarks/bench_import.py --n 200000 400000 --k 1000
    nice -n 10 python tests/benchmarks/bench_import.py --n 1281167 --k 1000 --dir /var/tmp
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

FLOOR = r"""
import resource, sys, time, json
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
t0 = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    version = np.lib.format.read_magic(f)
    fmt = np.lib.format
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(f)
    n, k = shape
    rows = max(1024, (1 << 23) // k)
    schema = pa.schema([("logits", pa.list_(pa.float32(), k))])
    with pq.ParquetWriter(sys.argv[2], schema, compression="snappy") as w:
        for start in range(0, n, rows):
            z = np.fromfile(f, dtype=dtype, count=min(rows, n - start) * k)
            col = pa.FixedSizeListArray.from_arrays(pa.array(z, pa.float32()), k)
            w.write_table(pa.table({"logits": col}, schema=schema), row_group_size=rows)
wall = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall": wall, "rss_mib": rss}))
"""

IMPORT = r"""
import resource, sys, time, json
from kdlens import import_files
t0 = time.perf_counter()
done = import_files([sys.argv[1]], sys.argv[2], kind="logits", labels=sys.argv[3] or None)
wall = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall": wall, "rss_mib": rss, "rows": done[0].rows}))
"""


def write_npy(path: Path, n: int, k: int, seed: int = 0) -> None:
    """An (n, k) float32 .npy with class structure, written block by block."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, k)).astype(np.float32)
    rows = max(1024, (1 << 22) // k)
    header = {"descr": "<f4", "fortran_order": False, "shape": (n, k)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, header)
        for start in range(0, n, rows):
            m = min(rows, n - start)
            y = np.arange(start, start + m) % k
            z = centres[y] + rng.standard_normal((m, k), dtype=np.float32)
            z[np.arange(m), y] += 6.0
            f.write(np.ascontiguousarray(z, np.float32).tobytes())


def _run(code: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[200_000, 400_000])
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="where to write the inputs (default: a tmp dir)")
    ap.add_argument("--labels", action="store_true", help="also import N labels from a .npy")
    args = ap.parse_args()
    print(
        "| N x K | file | floor (read + write) | import | import / floor | floor peak RSS "
        "| import peak RSS |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in args.n:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            src = Path(tmp) / "logits.npy"
            t0 = time.perf_counter()
            write_npy(src, n, args.k)
            lab = ""
            if args.labels:
                lab = str(Path(tmp) / "labels.npy")
                np.save(lab, np.arange(n) % args.k)
            print(
                f"<!-- wrote {src.stat().st_size / 1e9:.2f} GB in "
                f"{time.perf_counter() - t0:.0f} s -->",
                flush=True,
            )
            floor = _run(FLOOR, str(src), str(Path(tmp) / "floor.parquet"))
            (Path(tmp) / "floor.parquet").unlink()
            imp = _run(IMPORT, str(src), str(Path(tmp) / "store"), lab)
            gb = src.stat().st_size / 1e9
            print(
                f"| {n:,} x {args.k:,} | {gb:.2f} GB | {floor['wall']:.1f} s | "
                f"{imp['wall']:.1f} s | {imp['wall'] / floor['wall']:.2f} | "
                f"{floor['rss_mib']:.0f} MiB | {imp['rss_mib']:.0f} MiB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
