"""Each command reads every part of the store once, and says what it cannot do before reading."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from inputs import balanced_labels
from typer.testing import CliRunner

from kdlens.analysis.engine import analyze
from kdlens.cli import app
from kdlens.errors import InputError
from kdlens.recommend.rank import recommend
from kdlens.report.data import collect_report_data
from kdlens.store import reader
from kdlens.store.reader import open_store
from kdlens.store.writer import CheckpointWriter, write_logits

K = 6
runner = CliRunner()


class _Reads(Counter):
    def __init__(self) -> None:
        super().__init__()
        self.groups: Counter[tuple[str, str, str, str, int]] = Counter()

    def clear(self) -> None:
        super().clear()
        self.groups.clear()


@pytest.fixture
def reads(monkeypatch):
    """Counts how often each (run, checkpoint, split) is read: every logits read
    (iter_batches, prefetch_batches, load, the pass's tasks) goes through
    kdlens.store.reader._part_batches, one call per range of row groups; a part counts
    the reads of its most-read row group (a part split into tasks is still read once)."""
    counts = _Reads()
    per_group = counts.groups
    original = reader._part_batches

    def counting(part, k, groups, rows, check_labels):
        key = (part.run, part.checkpoint, part.split)
        for g in groups:
            per_group[(*key, str(part.file), g)] += 1
            counts[key] = max(counts[key], per_group[(*key, str(part.file), g)])
        return original(part, k, groups, rows, check_labels)

    monkeypatch.setattr(reader, "_part_batches", counting)
    return counts


def _grid(tmp_path, n=120, checkpoints=3, splits=("train", "val")):
    y = balanced_labels(n, K, 0)
    rng = np.random.default_rng(0)
    for ep in range(1, checkpoints + 1):
        with CheckpointWriter(
            tmp_path / f"ep{ep}.parquet",
            run="r",
            checkpoint=f"ep{ep}",
            num_classes=K,
            epoch=ep,
            batch_size=32,
        ) as w:
            for i, split in enumerate(splits):
                z = rng.normal(0, 1, (n, K))
                z[np.arange(n), y] += 1.0 + ep
                w.write(
                    z.astype(np.float32),
                    split=split,
                    labels=y,
                    example_ids=np.arange(n) + 10_000 * i,
                )
    return tmp_path


def _parts(src):
    return {(p.run, p.checkpoint, p.split) for p in open_store(src).parts}


def test_report_reads_each_part_once(tmp_path, reads):
    src = _grid(tmp_path / "s")
    out = tmp_path / "x.html"
    res = runner.invoke(app, ["report", str(src), "-o", str(out), "--bootstrap", "10", "-q"])
    assert res.exit_code == 0, res.output
    assert out.is_file()
    assert dict(reads) == {p: 1 for p in _parts(src)}


def test_report_from_analysis_and_store_reads_each_part_once(tmp_path, reads):
    src = _grid(tmp_path / "s")
    analyze(src, n_permutations=0).write(tmp_path / "an")
    reads.clear()
    data = collect_report_data(tmp_path / "an", store=src, n_bootstrap=5)
    assert dict(reads) == {p: 1 for p in _parts(src)}
    assert data.recommendation is not None and data.recommendation.ok
    assert data.entropy_hist is not None and data.reliability is not None


def test_analyze_and_recommend_read_each_part_once(tmp_path, reads):
    src = _grid(tmp_path / "s")
    res = runner.invoke(app, ["analyze", str(src), "-o", str(tmp_path / "an"), "-q"])
    assert res.exit_code == 0, res.output
    assert dict(reads) == {p: 1 for p in _parts(src)}
    reads.clear()
    res = runner.invoke(app, ["recommend", str(src), "--json", "-B", "10"])
    assert res.exit_code == 0, res.output
    assert dict(reads) == {p: 1 for p in _parts(src)}


def test_recommend_on_one_checkpoint_reads_nothing(tmp_path, reads):
    src = _grid(tmp_path / "s", checkpoints=1)
    rec = recommend(src, n_bootstrap=10)
    assert not rec.ok and "only one checkpoint" in rec.reason
    res = runner.invoke(app, ["recommend", str(src)])
    assert res.exit_code == 1 and "only one checkpoint" in res.output
    assert sum(reads.values()) == 0


def test_recommend_without_usable_split_fails_before_reading(tmp_path, reads):
    y = balanced_labels(30, K, 0)
    for ck in ("a", "b"):
        write_logits(
            tmp_path / f"{ck}.parquet",
            np.zeros((30, K), np.float32),
            split="extra",
            run="r",
            checkpoint=ck,
            labels=y,
        )
    with pytest.raises(InputError, match="neither a held-out"):
        recommend(tmp_path, n_bootstrap=10)
    assert sum(reads.values()) == 0
