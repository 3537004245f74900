from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import inputs`

REPO = Path(__file__).resolve().parents[1]


def _external() -> Path:
    return Path(os.environ.get("KDLENS_EXTERNAL", REPO.parent / "shared" / "external"))


@pytest.fixture(scope="session")
def external_dir() -> Path:
    """Real public data (../shared/external); tests skip only when it is absent."""
    path = _external()
    if not path.is_dir():
        pytest.skip(f"external data not found at {path} (set KDLENS_EXTERNAL)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _kdlens_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests keep kdlens's cache (the report's Vega bundle) in a temporary directory."""
    os.environ["KDLENS_CACHE_DIR"] = str(tmp_path_factory.mktemp("kdlens-cache"))
