"""Display labels shared by the report's tables and charts (no altair: the pass's side
of the report imports this without the chart stack)."""

from __future__ import annotations

from typing import Any


def teacher_label(run: Any, checkpoint: Any) -> str:
    """The display label of one (run, checkpoint)."""
    return f"{run} / {checkpoint}"
