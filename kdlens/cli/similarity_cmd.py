"""CLI commands (placeholder until implemented)."""

from __future__ import annotations

from kdlens.cli._app import app  # noqa: F401
