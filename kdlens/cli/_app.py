"""The typer application every command module registers on."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from kdlens.errors import KdlensError

app = typer.Typer(
    name="kdlens",
    help="Which teacher checkpoint should you distill from? Analyses over dumped logits.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    # One line on stderr, as for errors: no source line or Python location.
    err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def handle_errors(fn: F) -> F:
    """Turn library errors into one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        shown = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            return fn(*args, **kwargs)
        except KdlensError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)
        finally:
            warnings.showwarning = shown

    return wrapper  # type: ignore[return-value]
