"""Command-line interface: each command parses, calls one library function, renders.

Commands live in one module per concept and register themselves on ``app``.
"""

from __future__ import annotations

from kdlens.cli import (  # noqa: F401  (imported for their @app.command side effects)
    analyze_cmd,
    ensemble_cmd,
    harness_cmd,
    recommend_cmd,
    report_cmd,
    similarity_cmd,
    store_cmd,
)
from kdlens.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    from kdlens._internal import interrupt

    interrupt.install()
    try:
        app()
    except KeyboardInterrupt:  # before or after a command body: typer building the command
        interrupt.exit_interrupted()
    except SystemExit as exc:
        # click turns a Ctrl-C outside a command body into "Aborted!" and exit 1.
        if interrupt.interrupted() and exc.code not in (0, None, interrupt.EXIT_INTERRUPTED):
            interrupt.exit_interrupted()
        raise
