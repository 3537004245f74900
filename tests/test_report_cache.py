"""The report's Vega bundle is built once and then read from the cache directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlens.report import render


def test_bundle_is_cached_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vl_convert as vlc

    monkeypatch.setenv("KDLENS_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def bundle(vl_version: str | None = None) -> str:
        calls.append(vl_version)
        return "var vega = 1; // </script> inside"

    monkeypatch.setattr(vlc, "javascript_bundle", bundle)
    first = render._vega_bundle.__wrapped__("5.20")  # past the in-process cache
    second = render._vega_bundle.__wrapped__("5.20")
    assert calls == ["5.20"] and first == second
    assert "</script" not in first  # escaped before it is cached
    (cached,) = (tmp_path / "cache").iterdir()
    assert cached.read_text() == first


def test_unwritable_cache_still_renders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vl_convert as vlc

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("KDLENS_CACHE_DIR", str(blocker / "cache"))  # under a regular file
    monkeypatch.setattr(vlc, "javascript_bundle", lambda vl_version=None: "var v;")
    assert render._vega_bundle.__wrapped__(None) == "var v;"
