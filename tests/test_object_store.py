"""Stores at object-store URLs, against a local S3 server (moto's server mode) the tests start.

The round trip of issue 14: import to ``s3://bucket/store``, ``validate`` and ``analyze``
it (equal to the local result), and an overwrite that fails part-way leaves the old store
readable and unchanged with no visible half-written key.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from inputs import random_teacher
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.errors import InputError
from kdlens.store.fs import Url, filesystem, store_path
from kdlens.store.reader import open_store
from kdlens.store.writer import CheckpointWriter, write_logits

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

runner = CliRunner()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()  # no later test reaches a stopped server


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the local server, with dummy credentials in the environment."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "KDLENS_STORAGE_OPTIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    name = f"kdlens-{uuid.uuid4().hex[:12]}"
    fs, _ = filesystem(f"s3://{name}")
    fs.mkdir(name)
    return name


def _keys(bucket: str) -> list[str]:
    fs, _ = filesystem(f"s3://{bucket}")
    fs.invalidate_cache()
    return sorted(fs.find(bucket))


def _contents(bucket: str) -> dict[str, bytes]:
    fs, _ = filesystem(f"s3://{bucket}")
    return {k: fs.cat_file(k) for k in _keys(bucket)}


def _inputs(tmp_path: Path, seed: int = 0) -> tuple[Path, Path, np.ndarray]:
    z, y = random_teacher(300, 6, seed=seed)
    np.save(tmp_path / f"ep{seed}.npy", z)
    np.save(tmp_path / "labels.npy", y)
    return tmp_path / f"ep{seed}.npy", tmp_path / "labels.npy", z


def _import(files: list[Path], labels: Path, out: str, *extra: str) -> Any:
    args = ["import", *map(str, files), "-o", out, "--kind", "logits", "--labels", str(labels)]
    return runner.invoke(app, [*args, "--quiet", *extra])


def test_round_trip_import_validate_analyze_equal_to_local(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    a, labels, z = _inputs(tmp_path, 0)
    b, _, _ = _inputs(tmp_path, 1)
    url = f"s3://{bucket}/store"
    res = _import([a, b], labels, url)
    assert res.exit_code == 0, res.output
    assert _keys(bucket) == [
        f"{bucket}/store/imported/ep0.parquet",
        f"{bucket}/store/imported/ep1.parquet",
    ]
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())  # no lock dir "s3:/"

    res = runner.invoke(app, ["validate", url, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["ok"] and report["files"] == 2 and report["checkpoints"] == 2

    local = tmp_path / "local"
    assert _import([a, b], labels, str(local)).exit_code == 0
    for src, out in ((url, "remote-analysis"), (str(local), "local-analysis")):
        res = runner.invoke(app, ["analyze", src, "-o", out, "--permutations", "20", "-q"])
        assert res.exit_code == 0, res.output
    remote = pl.read_parquet(tmp_path / "remote-analysis" / "summary.parquet")
    here = pl.read_parquet(tmp_path / "local-analysis" / "summary.parquet")
    assert remote.height == 2
    assert remote.equals(here)

    st = open_store(url)
    assert isinstance(st.files[0], Url) and str(st.files[0]).startswith("s3://")
    np.testing.assert_array_equal(st.load("imported", "ep0", "test").logits, z)


def test_failed_overwrite_leaves_old_store_unchanged_and_no_half_key(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, labels, _ = _inputs(tmp_path, 0)
    b, _, _ = _inputs(tmp_path, 1)
    url = f"s3://{bucket}/store"
    assert _import([a, b], labels, url).exit_code == 0
    before = _contents(bucket)

    # The second upload writes half of its bytes and then the connection "fails".
    fs, _ = filesystem(url)
    real_put = fs.put_file
    calls: list[str] = []

    def failing_put(lpath: str, rpath: str, **kw: Any) -> None:
        calls.append(rpath)
        if len(calls) == 2:
            data = Path(lpath).read_bytes()
            fs.pipe_file(rpath, data[: len(data) // 2])
            raise ConnectionError("injected: connection reset during upload")
        real_put(lpath, rpath, **kw)

    monkeypatch.setattr(fs, "put_file", failing_put)
    c, _, _ = _inputs(tmp_path, 2)
    res = _import([c, b], labels, url, "--overwrite", "--checkpoint", "ep0", "--checkpoint", "ep1")
    assert res.exit_code != 0
    assert "injected" in res.output
    assert len(calls) == 2 and all(Path(r).name.startswith(".") for r in calls)
    monkeypatch.setattr(fs, "put_file", real_put)

    assert _contents(bucket) == before  # no new, half or temporary key; old bytes as they were
    res = runner.invoke(app, ["validate", url, "-q"])
    assert res.exit_code == 0, res.output


def test_failure_while_building_touches_nothing(bucket: str, tmp_path: Path) -> None:
    a, labels, _ = _inputs(tmp_path, 0)
    url = f"s3://{bucket}/store"
    assert _import([a], labels, url).exit_code == 0
    before = _contents(bucket)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((300, 6), np.nan, np.float32))
    res = _import([a, bad], labels, url, "--overwrite")
    assert res.exit_code == 2 and "bad.npy" in res.output
    assert _contents(bucket) == before


def test_writer_to_url_is_whole_or_absent(bucket: str) -> None:
    z, y = random_teacher(50, 4)
    url = f"s3://{bucket}/w/run/ck.parquet"
    with (
        pytest.raises(RuntimeError),
        CheckpointWriter(url, run="run", checkpoint="ck", num_classes=4) as w,
    ):
        w.write(z, split="test", labels=y)
        raise RuntimeError("stop")
    assert _keys(bucket) == []
    assert str(write_logits(url, z, split="test", run="run", checkpoint="ck", labels=y)) == url
    with pytest.raises(InputError, match="already exists"):
        CheckpointWriter(url, run="run", checkpoint="ck", num_classes=4)
    assert _keys(bucket) == [f"{bucket}/w/run/ck.parquet"]
    with pytest.raises(InputError, match="cannot name a file"):  # names.py's rule, as on disk
        CheckpointWriter(f"s3://{bucket}/w/x.parquet", run="../up", checkpoint="c", num_classes=4)


def test_reader_skips_dot_keys_and_reports_missing(bucket: str) -> None:
    z, y = random_teacher(40, 4)
    write_logits(f"s3://{bucket}/s/r/c.parquet", z, split="test", run="r", checkpoint="c", labels=y)
    fs, _ = filesystem(f"s3://{bucket}")
    fs.pipe_file(f"{bucket}/s/r/.c.parquet.abc.tmp", b"half")  # an upload in progress
    fs.pipe_file(f"{bucket}/s/.kdlens-stage.x/r/d.parquet", b"junk")
    st = open_store(f"s3://{bucket}/s")
    assert [str(f) for f in st.files] == [f"s3://{bucket}/s/r/c.parquet"]
    assert len(open_store(f"s3://{bucket}/s/r/*.parquet").files) == 1
    res = runner.invoke(app, ["validate", f"s3://{bucket}/nothing-here"])
    assert res.exit_code == 2 and "no such file or directory" in res.output


def test_storage_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDLENS_STORAGE_OPTIONS", "[1, 2]")
    with pytest.raises(InputError, match="KDLENS_STORAGE_OPTIONS must be a JSON object"):
        filesystem("s3://some-bucket/x")
    monkeypatch.setenv("KDLENS_STORAGE_OPTIONS", json.dumps({"auto_mkdir": True}))
    fs, path = filesystem("memory://x/y")
    assert path == "/x/y" and fs.storage_options == {"auto_mkdir": True}


def test_local_paths_and_file_urls_stay_paths(tmp_path: Path) -> None:
    assert store_path(str(tmp_path)) == tmp_path
    assert store_path(tmp_path.as_uri()) == tmp_path
    assert isinstance(store_path("s3://b/k"), Url)
    assert isinstance(store_path(os.path.join("C:", "x")), Path)
    z, y = random_teacher(40, 4)
    write_logits(tmp_path.as_uri() + "/r/c.parquet", z, split="test", run="r", checkpoint="c")
    assert open_store(tmp_path.as_uri()).files == [tmp_path / "r" / "c.parquet"]
    with pytest.raises(InputError, match="cannot open this URL"):
        open_store("nosuchprotocol://x/y")


def test_import_adds_a_split_to_a_checkpoint_at_a_url(bucket: str, tmp_path: Path) -> None:
    a, labels, _ = _inputs(tmp_path, 0)
    url = f"s3://{bucket}/store"
    assert _import([a], labels, url, "--checkpoint", "ep", "--split", "train").exit_code == 0
    assert _import([a], labels, url, "--checkpoint", "ep", "--split", "val").exit_code == 0
    res = _import([a], labels, url, "--checkpoint", "ep", "--split", "val")
    assert res.exit_code == 2 and "already exists and holds split 'val'" in res.output
    assert open_store(url).splits() == ["train", "val"]


def test_controls_and_analysis_written_to_urls(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    a, labels, _ = _inputs(tmp_path, 0)
    url = f"s3://{bucket}/store"
    assert _import([a], labels, url).exit_code == 0
    res = runner.invoke(app, ["controls", url, "--kind", "permuted", "-o", f"s3://{bucket}/ctl"])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["validate", f"s3://{bucket}/ctl", "-q"]).exit_code == 0
    out = f"s3://{bucket}/analysis"
    res = runner.invoke(app, ["analyze", url, "-o", out, "--permutations", "0", "-q"])
    assert res.exit_code == 0, res.output
    assert f"{bucket}/analysis/summary.parquet" in _keys(bucket)
    assert list(tmp_path.glob("s3*")) == []  # nothing written to a local "s3:" directory
