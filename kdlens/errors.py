"""Exceptions raised on bad input, and the exit codes of the command line.

Every public function validates its arguments and raises a subclass of
:class:`KdlensError` with a one-line message naming the file, column or value at
fault; the CLI turns these into that line on stderr and a non-zero exit code.

Exit codes of ``kdlens`` (one line on stderr for every non-zero code, never a traceback):

====  ==================================================================================
code  meaning
====  ==================================================================================
0     success
1     a finding, not a failure: ``validate`` found problems, ``recommend`` could not
      recommend a checkpoint
2     bad input: a bad argument, option or input file (:class:`KdlensError`; also
      command-line usage errors)
3     the operating system refused: an ``OSError`` such as disk full (ENOSPC), permission
      denied (EACCES), read-only file system (EROFS), not a directory (ENOTDIR), or
      out of memory; the line names the path and the reason
4     the output is locked: another kdlens process (its pid is named) is writing it
130   interrupted (Ctrl-C / SIGINT); nothing partial is left behind
====  ==================================================================================
"""

from __future__ import annotations

__all__ = ["KdlensError", "StoreError", "InputError", "LockedError", "EXIT_CODES"]

#: Exit code -> meaning, as documented above.
EXIT_CODES = {
    0: "success",
    1: "a finding: validate found problems, recommend could not recommend",
    2: "bad input (argument, option or input file)",
    3: "the operating system refused (OSError: disk full, permission, not a directory, ...)",
    4: "the output is locked by another kdlens process",
    130: "interrupted (Ctrl-C)",
}

#: The exit code of an OSError (and of MemoryError) at the command line.
EXIT_OS_ERROR = 3
#: The exit code of an interrupt.
EXIT_INTERRUPTED = 130


class KdlensError(Exception):
    """Base class of every error kdlens raises on bad input."""

    exit_code = 2


class StoreError(KdlensError):
    """A logits store is unreadable, malformed or inconsistent."""


class InputError(KdlensError, ValueError):
    """An argument or an input file has a bad value."""


class LockedError(KdlensError):
    """Another kdlens process holds the lock on an output (the message names its pid)."""

    exit_code = 4
