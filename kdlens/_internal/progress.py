"""One progress protocol for every long-running function.

A reporter has the shape of ``rich.progress.Progress``: ``add_task(description,
total=...)`` returns a task id, ``advance(task, n)`` and ``update(task, description=...)``
report. Library code always receives a reporter (``as_progress`` turns ``None`` into
:class:`NullProgress`, which does nothing), so it never checks whether to report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kdlens.errors import InputError

__all__ = ["NullProgress", "as_progress"]


class NullProgress:
    """A progress reporter that shows nothing (the default)."""

    def add_task(self, description: str, total: float | None = None, **kwargs: Any) -> int:
        return 0

    def advance(self, task_id: Any, advance: float = 1) -> None:
        return None

    def update(self, task_id: Any, **kwargs: Any) -> None:
        return None


class _CallableProgress(NullProgress):
    """Adapts ``progress(done, total, description)`` to the reporter shape."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.done, self.desc = fn, 0.0, ""
        self.total: float | None = None

    def add_task(self, description: str, total: float | None = None, **kwargs: Any) -> int:
        self.desc, self.total = description, total
        return 0

    def advance(self, task_id: Any, advance: float = 1) -> None:
        self.done += advance
        self.fn(self.done, self.total, self.desc)

    def update(self, task_id: Any, **kwargs: Any) -> None:
        self.desc = kwargs.get("description", self.desc)


def as_progress(progress: Any) -> Any:
    """``None`` -> :class:`NullProgress`; a rich ``Progress``-like object as it is; a callable
    ``(done, total, description)`` adapted."""
    if progress is None:
        return NullProgress()
    if hasattr(progress, "add_task") and hasattr(progress, "advance"):
        return progress
    if callable(progress):
        return _CallableProgress(progress)
    raise InputError("progress must be a rich Progress-like object or a callable")
