"""Memory guards: refuse an analysis whose K x K state would not fit, before allocating it.

The class-similarity state is K x K float64 per worker and per temperature, and finishing
it (the similarity matrices, the structure test, the long similarity table) holds several
more K x K arrays: 8 rows with K = 1,000,000 would need terabytes. :func:`check_memory`
estimates the bytes first and raises :class:`~kdlens.errors.InputError` with the numbers
above the limit: ``KDLENS_MEMORY_LIMIT`` (bytes, or with a K/M/G/T suffix), else
:data:`DEFAULT_LIMIT` or 80% of the machine's memory, whichever is smaller.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from kdlens.errors import InputError

__all__: list[str] = []

# glibc mallopt(3) parameters.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_REUSING = False

DEFAULT_LIMIT = 8 << 30
ENV = "KDLENS_MEMORY_LIMIT"

#: K x K float64 arrays held at the peak besides the accumulators: finishing the
#: similarity holds S, its estimate and one temporary (SI's terms, the affinity); the
#: structure test's null, the similarity table (top entries above K = 2,048) and the
#: graph work on O(K) or blocks of rows. Measured at K = 5,000 (tests/benchmarks/README.md):
#: 1.26 GiB peak for 20,000 x 5,000 with two workers' sums (was 2.74 GiB with ~10 arrays).
FINISH_ARRAYS = 3
#: Up to this K the sparse similarity path is taken without an estimate (its per-class
#: vectors and the temperature fit's 2,000-row sample stay below ~1 GiB); beyond it the
#: dense estimate above still refuses (8 rows with K = 1,000,000: terabytes).
SPARSE_MAX_K = 100_000


def similarity_bytes(k: int, accumulators: int) -> int:
    """Bytes the analysis of K classes holds at its peak with ``accumulators`` similarity
    accumulators (one per worker and temperature)."""
    return 8 * k * k * (accumulators + FINISH_ARRAYS)


def memory_limit() -> int:
    """The limit in bytes (see the module docstring)."""
    text = os.environ.get(ENV, "").strip()
    if text:
        return _parse(text)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return DEFAULT_LIMIT
    return min(DEFAULT_LIMIT, int(physical * 0.8))


def check_memory(k: int, accumulators: int) -> None:
    """Raise InputError if the similarity state of K classes would pass the limit."""
    from kdlens._internal.defaults import SIMILARITY_DENSE_MAX_K

    if accumulators <= 0 or SIMILARITY_DENSE_MAX_K < k <= SPARSE_MAX_K:
        return  # the similarity is sparse there: no K x K state (measures.similarity.sparse)
    need, limit = similarity_bytes(k, accumulators), memory_limit()
    if need > limit:
        raise InputError(
            f"K = {k:,} classes needs ~{human(need)} for the K x K class-similarity state; "
            f"the limit is {human(limit)} (set {ENV} to change it)"
        )


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def _parse(text: str) -> int:
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.upper().removesuffix("IB").removesuffix("B")
    try:
        if t and t[-1] in scale:
            return int(float(t[:-1]) * scale[t[-1]])
        return int(float(t))
    except ValueError:
        raise InputError(f"{ENV}={text!r}: not a size (bytes, or e.g. 8G)") from None


def reuse_freed_memory() -> None:
    """Let the C allocator keep and reuse freed blocks (glibc; elsewhere a no-op). Once per
    process, when the first pass starts.

    The per-batch kernel and the finishing fits allocate and free the same MB-sized
    float64 temporaries thousands of times. glibc serves blocks of that size with fresh
    ``mmap`` pages, or returns them to the system from the top of the heap, so every
    temporary is page-faulted in again: measured at 1,000,000 x 100, more than half of
    ``analyze``'s page faults and ~15% of its CPU time. From then on blocks up to 32 MiB
    come from the heap and freed memory stays with the process for reuse (up to 256 MiB
    at the top of the heap). Python's own small objects are not affected.
    """
    global _REUSING
    if _REUSING:
        return
    _REUSING = True
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)


def _glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    # glibc only: musl's mallopt does nothing.
    return libc if hasattr(libc, "gnu_get_libc_version") else None
