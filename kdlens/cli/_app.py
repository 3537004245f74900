"""The typer application every command module registers on."""

from __future__ import annotations

import functools
import inspect
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from kdlens.cli._render import console, err_console, labelled, say
from kdlens.errors import KdlensError

app = typer.Typer(
    name="kdlens",
    help="Which teacher checkpoint should you distill from? Analyses over dumped logits.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
__all__ = ["app", "cli_flags", "cli_words", "console", "err_console", "fail", "handle_errors"]

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit with ``code``."""
    labelled("error", message, style="bold red", err=True)
    raise typer.Exit(code)


#: How library messages name a parameter: `name` or `name=value`, in backticks.
_PARAMETER = re.compile(r"`([A-Za-z_][\w.]*)(?:=([^`]*))?`")


def cli_flags(fn: Callable[..., Any]) -> dict[str, str]:
    """Parameter name -> how the command line spells it: --flag, or ARGUMENT."""
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        decls = [d.split("/")[0] for d in getattr(p.default, "param_decls", ()) or ()]
        longs = [d for d in decls if d.startswith("--")]
        if longs:
            out[name] = longs[0]
        elif type(p.default).__name__ == "ArgumentInfo":
            out[name] = name.upper()
    return out


def cli_words(message: str, flags: dict[str, str]) -> str:
    """Say a library message in the command line's words: `n_bootstrap=0` -> --bootstrap 0.

    Library messages name parameters (the library has no flags); a name this command
    has no option for is left as the library wrote it.
    """

    def say(m: re.Match[str]) -> str:
        flag = flags.get(m.group(1))
        if flag is None:
            return m.group(0)
        value = m.group(2)
        return flag if value in (None, "True") or not flag.startswith("--") else f"{flag} {value}"

    return _PARAMETER.sub(say, message)


def handle_errors(fn: F | None = None, *, flags: dict[str, str] | None = None) -> Any:
    """Turn library errors into one line on stderr and a non-zero exit code.

    Library messages that name a parameter in backticks are said with this command's
    flags; ``flags`` adds names the signature does not have (``student.epochs``).
    """
    if fn is None:
        return functools.partial(handle_errors, flags=flags)
    words = {**cli_flags(fn), **(flags or {})}

    def show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        # One line on stderr, as for errors: no source line or Python location.
        text = cli_words(str(message), words)
        labelled("warning", text, style="bold yellow", err=True)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        shown = warnings.showwarning
        warnings.showwarning = show_warning
        try:
            return fn(*args, **kwargs)
        except KdlensError as exc:
            fail(cli_words(str(exc), words), exc.exit_code)
        except KeyboardInterrupt:
            say("interrupted", err=True)
            sys.exit(130)
        finally:
            warnings.showwarning = shown

    return wrapper
