"""The one rule that turns a run or checkpoint name into a file-name component.

Run and checkpoint names come from the command line and from data (the ``run`` and
``checkpoint`` columns of a store someone else wrote). Every writer that builds a path
from one passes it through :func:`path_component` first, so a name can never climb out
of the output directory (``..``, ``/``, ``\\``), hide its file from the store (a
leading ``.``: dot-files are not read), carry a terminal escape or a NUL (control
characters) or exceed what a file system accepts (:data:`MAX_NAME_BYTES`).
Names are refused, never rewritten: two names mapping to one file would silently
overwrite each other.
"""

from __future__ import annotations

import unicodedata

from kdlens.errors import InputError

__all__ = ["MAX_NAME_BYTES", "path_component"]

#: Longest name accepted, in UTF-8 bytes. File systems allow 255 bytes per component;
#: writers add up to ~50 (``student-<run>-<checkpoint>``, ``+class-mean``, ``.parquet``,
#: the ``.tmp`` suffix of an atomic write), so one name keeps 100 to leave room for two.
MAX_NAME_BYTES = 100


def path_component(value: object, *, field: str) -> str:
    """``value`` as a safe single path component; :class:`InputError` naming ``field`` if not.

    Refused: a non-string, the empty string, ``.`` and ``..`` or any name starting with
    ``.``, a ``/`` or ``\\``, a control character (Unicode category ``Cc``, NUL and
    newlines included) and more than :data:`MAX_NAME_BYTES` bytes of UTF-8.
    """
    if not isinstance(value, str):
        raise InputError(f"`{field}` must be a string, got {value!r}")
    why = _problem(value)
    if why is not None:
        raise InputError(f"`{field}` {value[:120]!r} cannot name a file: {why}")
    return value


def _problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if name in (".", ".."):
        return "it is a relative directory"
    if name.startswith("."):
        return "it starts with '.' (dot-files are not read as part of a store)"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        return "it holds a control character"
    if any(unicodedata.category(ch) == "Cs" for ch in name):
        return "it holds an unpaired surrogate (not valid text)"
    size = len(name.encode("utf-8", errors="surrogatepass"))
    if size > MAX_NAME_BYTES:
        return f"it is {size} bytes long (at most {MAX_NAME_BYTES})"
    return None
