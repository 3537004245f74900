"""Command-line interface: each command parses, calls one library function, renders.

Commands live in one module per concept and register themselves on ``app``.
"""

from __future__ import annotations

from kdlens.cli import (  # noqa: F401  (imported for their @app.command side effects)
    analyze_cmd,
    harness_cmd,
    recommend_cmd,
    report_cmd,
    similarity_cmd,
    store_cmd,
)
from kdlens.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
