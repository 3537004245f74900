"""Ctrl-C at any moment ends the command line with exit 130 within 3 seconds.

Python's own handler raises KeyboardInterrupt wherever the main thread happens to be.
Where that is a weakref callback or a ``__del__`` (importlib's ``_get_module_lock`` during
an import, for one), the exception is "ignored" and the program carries on: a dump went
on training for a minute after Ctrl-C. :func:`install` makes such a swallowed interrupt
be delivered again, and a watchdog ends the process if it still runs 2 s after the
first Ctrl-C. Light: imported before anything else by ``python -m kdlens``.
"""

from __future__ import annotations

import _thread
import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__: list[str] = []

#: Seconds after the first Ctrl-C at which the watchdog ends the process.
GRACE_SECONDS = 2.0
#: Seconds a swallowed interrupt waits before it is delivered again (the hook has returned).
REDELIVER_DELAY = 0.05
EXIT_INTERRUPTED = 130  # kdlens.errors.EXIT_INTERRUPTED, restated to keep this module light

_state = {"interrupted": False, "exiting": False}
#: Run by the watchdog before its hard exit, which skips every ``finally`` and atexit
#: handler: what must not outlive the process (an output's lock file) is undone here.
_hard_exit_cleanups: list[Callable[[], None]] = []
_previous_hook: Any = None


def interrupted() -> bool:
    """Whether a Ctrl-C arrived since :func:`install`."""
    return _state["interrupted"]


def exit_interrupted() -> None:
    """Say "interrupted" and exit 130, ignoring any further Ctrl-C from here on.

    A second interrupt (a repeated Ctrl-C, or one re-delivered by :func:`_unraisable`
    while the interpreter shuts down) would otherwise replace the exit with an uncaught
    KeyboardInterrupt: the process then dies by SIGINT (-2), not 130. With SIGINT
    ignored, Python also drops a delivery that is already pending.
    """
    _state["exiting"] = True
    # Only our own handler is replaced (a host process's, e.g. a test runner's, stays).
    if signal.getsignal(signal.SIGINT) is _on_sigint:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread: nothing to change there
            pass
    print("interrupted", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)


def on_hard_exit(fn: Callable[[], None]) -> None:
    """Have the watchdog call ``fn`` before it ends the process (see above)."""
    _hard_exit_cleanups.append(fn)


def install() -> None:
    """Handle SIGINT as described above (main thread only; a no-op elsewhere)."""
    global _previous_hook
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return  # started with Ctrl-C ignored (nohup, `cmd &` in a script): keep it so
    signal.signal(signal.SIGINT, _on_sigint)
    if _previous_hook is None:  # the first install: hooks are set once
        # Registered early, so it runs after every other atexit handler (LIFO).
        atexit.register(_end_interrupted)
        _previous_hook = sys.unraisablehook
        sys.unraisablehook = _unraisable


def _on_sigint(signum: int, frame: Any) -> None:
    if not _state["interrupted"]:
        _state["interrupted"] = True
        threading.Thread(target=_watchdog, name="kdlens-interrupt", daemon=True).start()
    raise KeyboardInterrupt


def _end_interrupted() -> None:
    # CPython remembers any KeyboardInterrupt that once went unhandled through a C-level
    # eval (a library's own run of code, caught later by Python code) and, after a clean
    # sys.exit(130), kills the process by SIGINT (-2) at the very end of finalization.
    # Once the exit is decided, the rest of finalization is skipped: the code is 130.
    if _state["exiting"]:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed or broken stream: nothing more to say
                pass
        os._exit(EXIT_INTERRUPTED)


def _watchdog() -> None:
    # The normal path (KeyboardInterrupt -> clean-up -> exit 130) takes well under a
    # second; this one is for an interrupt lost where Python cannot raise it.
    threading.Event().wait(GRACE_SECONDS)
    try:
        for fn in _hard_exit_cleanups:
            try:
                fn()
            except Exception:  # noqa: BLE001 - the exit must happen whatever a clean-up does
                pass
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    finally:
        os._exit(EXIT_INTERRUPTED)


def _unraisable(u: Any) -> None:
    if isinstance(u.exc_value, KeyboardInterrupt):
        if not _state["exiting"]:
            # Not interrupt_main() here: the main thread runs the handler at its next
            # bytecode, still inside this hook, where the new KeyboardInterrupt would be
            # "ignored" once more (with a traceback). Another thread asks once the hook
            # has returned.
            threading.Thread(target=_redeliver, name="kdlens-interrupt", daemon=True).start()
        return
    _previous_hook(u)


def _redeliver() -> None:
    threading.Event().wait(REDELIVER_DELAY)
    if not _state["exiting"]:
        _thread.interrupt_main()  # raise it again where it can propagate
