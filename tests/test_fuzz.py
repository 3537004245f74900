"""Fuzz every command that reads input with malformed stores, metadata and array files.

Whatever the input, a command ends with an exit code from the documented set
(:data:`kdlens.errors.EXIT_CODES`), never a traceback; it writes nothing outside its
output and changes no file that existed before. The corpus is in :mod:`fuzz.corpus`
(generated at test time); hypothesis adds random bytes and random arrays.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fuzz.corpus import IMPORTS, STORES, good_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.errors import EXIT_CODES

#: (case, command) -> exit code, for the summary at the end.
OUTCOMES: Counter[tuple[str, int]] = Counter()


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def check(root: Path, out: Path, args: list[str], case: str) -> int:
    """Run ``kdlens args`` in ``root`` and check the rules above; returns the exit code."""
    before = snapshot(root)
    result = CliRunner().invoke(app, args)
    where = f"{case}: kdlens {' '.join(args)}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{where}\n{type(result.exception).__name__}: {result.exception}"
    )
    assert "Traceback" not in result.output, where
    assert result.exit_code in EXIT_CODES, where
    after = snapshot(root)
    inside = str(out.relative_to(root))
    new_outside = {p for p in after.keys() - before.keys() if not p.startswith(inside)}
    assert not new_outside, f"{where}\nwritten outside the output: {new_outside}"
    changed = {p for p in before if before[p] != after.get(p)}
    assert not changed, f"{where}\nchanged or removed: {changed}"
    if result.exit_code not in (0, 1):
        assert not [p for p in after if p not in before], f"{where}\nleft behind on failure"
    OUTCOMES[(args[0], result.exit_code)] += 1
    return result.exit_code


def store_commands(store: Path, out: Path) -> list[list[str]]:
    s, o = str(store), str(out)
    return [
        ["validate", s],
        ["analyze", s, "-o", f"{o}/analysis", "-q", "--permutations", "0"],
        ["recommend", s, "--bootstrap", "0"],
        ["graph", s, "--run", "r", "--checkpoint", "ep1", "-o", f"{o}/g.json"],
        ["controls", s, "--kind", "ls", "-o", f"{o}/controls"],
        ["compare", s, s],
    ]


@pytest.mark.parametrize("case", sorted(STORES))
def test_malformed_store(case, tmp_path):
    STORES[case](tmp_path)
    out = tmp_path / "out"
    for args in store_commands(tmp_path / "store", out):
        check(tmp_path, out, args, case)


def test_huge_k_is_refused_before_allocating(tmp_path):
    STORES["huge_k_claim"](tmp_path)
    result = CliRunner().invoke(app, ["analyze", str(tmp_path / "store"), "-o", "x", "-q"])
    assert result.exit_code == 2, result.output
    assert "K = 1,000,000" in result.output and "KDLENS_MEMORY_LIMIT" in result.output


@pytest.mark.parametrize("case", ["truncated_parquet", "metadata_not_json"])
def test_malformed_store_report(case, tmp_path):
    STORES[case](tmp_path)
    out = tmp_path / "out"
    code = check(tmp_path, out, ["report", str(tmp_path / "store"), "-o", f"{out}/r.html"], case)
    assert code != 0


@pytest.mark.parametrize("case", sorted(IMPORTS))
def test_malformed_import(case, tmp_path):
    args = IMPORTS[case](tmp_path)
    out = tmp_path / "out"
    check(tmp_path, out, ["import", *args, "-o", str(out / "s")], case)


@pytest.mark.parametrize("case", sorted(IMPORTS))
def test_failed_overwrite_keeps_the_existing_store(case, tmp_path):
    """--overwrite into a good store: a bad input leaves it as it was."""
    good_store(tmp_path)
    args = IMPORTS[case](tmp_path)
    before = snapshot(tmp_path / "store")
    result = CliRunner().invoke(
        app, ["import", *args, "-o", str(tmp_path / "store"), "--overwrite"]
    )
    assert "Traceback" not in result.output and result.exit_code in EXIT_CODES
    if result.exit_code != 0:
        assert snapshot(tmp_path / "store") == before, result.output


_SUFFIXES = st.sampled_from([".parquet", ".npy", ".npz", ".csv", ".pt"])


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(min_size=1, max_size=2000), suffix=_SUFFIXES)  # empty: see the corpus
def test_random_bytes_never_crash(tmp_path_factory, data, suffix):
    root = tmp_path_factory.mktemp("bytes")
    (root / f"x{suffix}").write_bytes(data)
    out = root / "out"
    check(
        root,
        out,
        ["import", str(root / f"x{suffix}"), "--kind", "logits", "-o", f"{out}/s"],
        "random bytes",
    )
    if suffix == ".parquet":
        check(root, out, ["validate", str(root / "x.parquet")], "random bytes")
        check(
            root, out, ["analyze", str(root / "x.parquet"), "-o", f"{out}/a", "-q"], "random bytes"
        )


_FINITE = st.floats(-1e4, 1e4, width=32)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    z=arrays(np.float32, st.tuples(st.integers(0, 6), st.integers(0, 5)), elements=_FINITE),
    kind=st.sampled_from(["logits", "probs", "log-probs"]),
)
def test_random_arrays_import_then_analyze(tmp_path_factory, z, kind):
    root = tmp_path_factory.mktemp("arrays")
    np.save(root / "z.npy", z)
    out = root / "out"
    code = check(
        root,
        out,
        ["import", str(root / "z.npy"), "--kind", kind, "-o", f"{out}/s"],
        "random arrays",
    )
    if code == 0:
        assert check(root, out, ["validate", f"{out}/s"], "random arrays") in (0, 1)
        check(
            root,
            out,
            ["analyze", f"{out}/s", "-o", f"{out}/a", "-q", "--permutations", "0"],
            "random arrays",
        )


def test_zz_summary(capsys):
    """Print how the cases ended (run with -s to see it)."""
    with capsys.disabled():
        print("\nfuzz outcomes (command, exit code): count")
        for (cmd, code), n in sorted(OUTCOMES.items()):
            print(f"  {cmd:10s} {code:3d}: {n}")
        print(f"  total runs: {sum(OUTCOMES.values())}")
