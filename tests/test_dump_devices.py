"""`kdlens dump --devices`: grid cells trained in parallel, one process per device.

On CPU the same code path runs with ``--devices cpu,cpu``: the store equals a sequential
dump's bit for bit, and a run interrupted in a worker resumes to the same store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from kdlens.cli import app  # noqa: E402
from kdlens.errors import InputError  # noqa: E402
from kdlens.harness import DumpConfig, dump  # noqa: E402
from kdlens.harness.parallel import parse_devices  # noqa: E402
from kdlens.store.reader import open_store  # noqa: E402

runner = CliRunner()
TINY = dict(
    dataset="digits",
    hidden=(32,),
    batch_sizes=(32, 128),
    epochs=3,
    checkpoints=(1, 3),
    train_size=300,
    val_size=100,
    test_size=100,
    device="cpu",
)
CLI = (
    "--hidden 32 --batch-sizes 32,128 --epochs 3 --checkpoints 1,3 --train-size 300 "
    "--val-size 100 --test-size 100 --device cpu -q"
).split()


class Crash(RuntimeError):
    pass


def crash_in_bs128(run: str, epoch: int) -> None:
    """Runs in a worker process (module level: it is pickled by reference)."""
    if run == "bs128-seed0" and epoch == 1:
        raise Crash(f"simulated crash of {run} after epoch {epoch}")


def _logits(store: Path) -> dict[tuple[str, str, str], bytes]:
    st = open_store(store)
    out = {}
    for p in st.parts:
        b = st.load(p.run, p.checkpoint, p.split)
        order = np.argsort(b.example_ids)
        out[(p.run, p.checkpoint, p.split)] = b.logits[order].tobytes() + b.labels[order].tobytes()
    return out


def test_parallel_dump_equals_sequential_and_resumes_after_a_crash(tmp_path: Path) -> None:
    seq, par = tmp_path / "seq", tmp_path / "par"
    dump(seq, DumpConfig(**TINY))  # type: ignore[arg-type]
    with pytest.raises(Crash):
        dump(par, DumpConfig(**TINY, devices="cpu,cpu"), on_epoch_end=crash_in_bs128)  # type: ignore[arg-type]
    # The crashed run stopped after its first epoch: its first checkpoint is on disk.
    assert (par / "bs128-seed0" / "ep001.parquet").is_file()
    assert not (par / "bs128-seed0" / "ep003.parquet").exists()
    res = runner.invoke(app, ["dump", "-o", str(par), "--devices", "cpu,cpu", *CLI])
    assert res.exit_code == 0, res.output
    want, got = _logits(seq), _logits(par)
    assert sorted(got) == sorted(want) and len(want) == 2 * 2 * 3
    assert all(got[k] == want[k] for k in want)  # bit for bit
    assert not list(par.rglob(".*.tmp"))


def test_devices_are_checked_before_any_work(tmp_path: Path) -> None:
    assert parse_devices("cpu, cpu") == ["cpu", "cpu"]
    assert parse_devices("auto") == (
        [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
    )
    for bad in ("cpu,,cpu", "gpu", "auto,cpu"):
        with pytest.raises(InputError, match="devices"):
            parse_devices(bad)
    res = runner.invoke(app, ["dump", "-o", str(tmp_path / "x"), "--devices", "tpu", *CLI])
    assert res.exit_code == 2 and "tpu" in res.stderr
    assert not (tmp_path / "x").exists()
