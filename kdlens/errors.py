"""Exceptions raised on bad input.

Every public function validates its arguments and raises a subclass of
:class:`KdlensError` with a one-line message naming the file, column or value at
fault; the CLI turns these into that line on stderr and a non-zero exit code.
"""

from __future__ import annotations

__all__ = ["KdlensError", "StoreError", "InputError"]


class KdlensError(Exception):
    """Base class of every error kdlens raises on bad input."""

    exit_code = 2


class StoreError(KdlensError):
    """A logits store is unreadable, malformed or inconsistent."""


class InputError(KdlensError, ValueError):
    """An argument or an input file has a bad value."""
