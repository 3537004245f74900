"""The typer application every command module registers on."""

from __future__ import annotations

import errno
import functools
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import typer
from typer.core import TyperGroup

from kdlens.cli._render import console, err_console, labelled
from kdlens.errors import EXIT_OS_ERROR, KdlensError


class _Group(TyperGroup):
    """kdlens's command group: click's own errors (an unknown option, a missing argument,
    a value of the wrong type) are one ``error:`` line like every other error, with the
    command's ``--help`` named, instead of click's usage block; exit codes are click's
    (2 for a usage error)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        forward = (args, prog_name, complete_var, False, windows_expand_args)
        if not standalone_mode:
            return super().main(*forward, **extra)
        try:
            code = super().main(*forward, **extra)
        except typer.TyperException as exc:  # click's errors, as typer (>= 0.29) raises them
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `kdlens`: the help text
                exc.show()  # type: ignore[attr-defined]
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            labelled("error", exc.format_message() + hint, style="bold red", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err_console.print("Aborted!")
            sys.exit(1)
        # A command's ``raise typer.Exit(n)`` comes back as n; a finished command as None.
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_Group,
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


#: Parameters that name a command's output: directories the command created are
#: removed again (when empty) if it fails.
OUTPUT_PARAMETERS = ("out", "output")


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the path(s), the reason and the errno name."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = errno.errorcode.get(exc.errno or 0)
    if code == "EEXIST" and exc.filename is not None and os.path.isfile(exc.filename):
        # mkdir(parents=True) says "File exists" for a file where a directory should be
        reason, code = f"{os.strerror(errno.ENOTDIR)}, a file is in the way", "ENOTDIR"
    if code and code not in reason:
        reason = f"{reason} ({code})"
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    if not paths:
        return reason
    return f"{' -> '.join(paths)}: {reason}"


def handle_errors(fn: F | None = None, *, flags: dict[str, str] | None = None) -> Any:
    """The one error boundary: every failure is one line on stderr and an exit code.

    Library errors exit with their ``exit_code`` (2 bad input, 4 locked); an OSError
    (disk full, permission, read-only, not a directory, ...) or MemoryError exits 3;
    Ctrl-C exits 130 (codes: :mod:`kdlens.errors`). On failure, output directories the
    command created and left empty are removed. Library messages that name a parameter
    in backticks are said with this command's flags; ``flags`` adds names the signature
    does not have (``student.epochs``).
    """
    if fn is None:
        return functools.partial(handle_errors, flags=flags)
    words = {**cli_flags(fn), **(flags or {})}
    signature = inspect.signature(fn)

    def show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        # One line on stderr, as for errors: no source line or Python location.
        text = cli_words(str(message), words)
        labelled("warning", text, style="bold yellow", err=True)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        shown = warnings.showwarning
        warnings.showwarning = show_warning
        created = _absent_outputs(signature, args, kwargs)
        ok = False
        try:
            result = fn(*args, **kwargs)
            ok = True
            return result
        except (KeyboardInterrupt, Exception) as exc:
            _end(exc, words)
        finally:
            warnings.showwarning = shown
            if not ok:
                _remove_empty(created)

    return wrapper


def _end(exc: BaseException, words: dict[str, str]) -> None:
    """Say ``exc`` in one line and exit with its code; re-raise what is not ours."""
    from click.exceptions import ClickException, Exit

    from kdlens._internal.interrupt import exit_interrupted, interrupted

    if isinstance(exc, (Exit, ClickException)):  # the command's own exit
        raise exc
    if isinstance(exc, KeyboardInterrupt) or interrupted():
        # After a Ctrl-C, what it broke (an import, a writer thread) is not the story.
        exit_interrupted()
    if isinstance(exc, KdlensError):
        fail(cli_words(str(exc), words), exc.exit_code)
    if isinstance(exc, OSError):
        fail(os_error_line(exc), EXIT_OS_ERROR)
    if isinstance(exc, MemoryError):
        fail("out of memory (MemoryError); see KDLENS_MEMORY_LIMIT", EXIT_OS_ERROR)
    raise exc


def _absent_outputs(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[tuple[Path, Path]]:
    """(output, its first missing ancestor-or-self) for each output that does not exist yet."""
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:
        return []
    out = []
    for name in OUTPUT_PARAMETERS:
        value = bound.arguments.get(name)
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            continue
        path = Path(os.path.abspath(value))
        top = None
        for p in (path, *path.parents):
            if os.path.lexists(p):
                break
            top = p
        if top is not None:
            out.append((path, top))
    return out


def _remove_empty(created: list[tuple[Path, Path]]) -> None:
    """Remove the empty directories in and above each output, up to the first one that was
    absent (the command made them all)."""
    for path, top in created:
        if path.is_dir():
            for sub, _, _ in os.walk(path, topdown=False):
                try:
                    os.rmdir(sub)  # only ever removes an empty directory
                except OSError:
                    pass
        for p in (path, *path.parents):
            try:
                p.rmdir()  # only ever removes an empty directory
            except OSError:
                pass
            if p == top:
                break


# The engine options of the commands that read a whole store (analyze, recommend, report):
# one definition, so the three say the same; kdlens.analysis.executors checks the values.
def engine_option() -> Any:
    return typer.Option(
        "local",
        "--engine",
        help="Where the pass runs: local (this machine) or dask (Dask's distributed "
        'scheduler; pip install "kdlens[dask]"). Results are bit-identical.',
    )


def workers_option() -> Any:
    return typer.Option(
        None,
        "--workers",
        min=1,
        help="Processes: local default 1 (this process, two threads); dask default 2 "
        "(a LocalCluster on 127.0.0.1 started and closed by kdlens).",
    )


def scheduler_option() -> Any:
    return typer.Option(
        None,
        "--scheduler",
        help="Address of a running Dask scheduler (tcp://HOST:PORT), with --engine dask.",
    )
