"""The one way the CLI puts text on the terminal: nothing the user wrote is read as markup.

rich reads ``[word]`` as markup and drops it, so ``pip install 'kdlens[torch]'`` or a path
``runs/[v2]`` would print wrong. Every command prints through these functions: a plain
line is printed with markup off, a styled label is the only markup, and every value
interpolated after it (paths, names, library messages) is escaped.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

from kdlens._internal.progress import NullProgress

__all__ = ["cell", "console", "err_console", "esc", "labelled", "say", "title"]

console = Console()
err_console = Console(stderr=True)


def esc(value: Any) -> str:
    """``value`` as text that rich markup shows verbatim."""
    return escape(str(value))


def say(text: Any, *, err: bool = False, style: str | None = None, wrap: bool = False) -> None:
    """Print one plain line (no markup, no highlighting); ``wrap`` folds it at the width.

    Unwrapped by default, so that a path can be copied whole.
    """
    (err_console if err else console).print(
        str(text), markup=False, highlight=False, style=style, soft_wrap=not wrap
    )


def labelled(label: str, text: Any, *, style: str, err: bool = False) -> None:
    """Print ``label: text`` with the label styled and ``text`` shown verbatim."""
    (err_console if err else console).print(
        f"[{style}]{esc(label)}:[/] {esc(text)}", highlight=False, soft_wrap=True
    )


def cell(value: Any, style: str | None = None) -> Any:
    """A table cell (or title) that shows ``value`` verbatim: rich Text, not markup."""
    from rich.text import Text

    return Text(str(value), style=style or "")


def title(text: Any) -> Any:
    """A table title or caption shown verbatim."""
    return cell(text)


def show(renderable: Any, *, err: bool = False) -> None:
    """Print a rich renderable (a table) whose cells were built with :func:`cell`."""
    (err_console if err else console).print(renderable)


class _Off(NullProgress):
    """What :func:`progress_bar` returns when nothing is shown: a no-op reporter."""

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def progress_bar(quiet: bool, unit: str = "rows") -> Any:
    """A progress display on stderr (off with --quiet and when stderr is not a terminal).

    It has the shape of :mod:`kdlens._internal.progress`'s protocol and is a context
    manager; ``unit`` names what the bar counts. rich is imported here, not at start-up.
    """
    if quiet or not err_console.is_terminal:
        return _Off()
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def status_line(quiet: bool) -> Any:
    """A one-task progress display whose description follows a message callback.

    Returns ``(context, callback)``; the callback shows each stage of a long command.
    """
    bar = progress_bar(quiet)
    if isinstance(bar, _Off):
        return bar, lambda _message: None
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    spin = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    task = spin.add_task("starting", total=None)
    return spin, lambda message: spin.update(task, description=str(message))


def json_rows(frame: Any) -> list[dict[str, Any]]:
    """A polars frame's rows for JSON: NaN and infinities become null (JSON has neither)."""
    import math

    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in frame.iter_rows(named=True)
    ]
