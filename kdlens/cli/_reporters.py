"""How `kdlens dump` and `kdlens distill` show the harness's progress (rich, on stderr)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdlens.cli._app import cli_words
from kdlens.cli._render import err_console

if TYPE_CHECKING:
    from kdlens.harness.train import RunResult


class RichReporter:
    """Progress bars for runs and epochs, and one line per epoch."""

    def __init__(self, total_runs: int, quiet: bool, flags: dict[str, str]) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.quiet, self.flags = quiet, flags
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=quiet or not err_console.is_terminal,  # no bare line off a terminal
        )
        self.runs_task = self.progress.add_task("runs", total=total_runs)
        self.epoch_task: Any = None

    def __enter__(self) -> RichReporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def message(self, text: str) -> None:
        if not self.quiet:  # library messages name parameters: say them as flags
            self.progress.console.print(
                cli_words(text, self.flags), markup=False, highlight=False, soft_wrap=True
            )

    def run_started(self, run: str, *, epochs: int, start_epoch: int) -> None:
        if self.epoch_task is not None:
            self.progress.remove_task(self.epoch_task)
        self.epoch_task = self.progress.add_task(
            f"{run} epochs", total=epochs, completed=start_epoch
        )
        if start_epoch and not self.quiet:
            self.message(
                f"{run}: resuming after epoch {start_epoch}"
                if start_epoch < epochs
                else f"{run}: finished, skipped"
            )

    def epoch_done(self, run: str, epoch: int, metrics: dict[str, float]) -> None:
        self.progress.update(self.epoch_task, completed=epoch)
        self.message(
            f"{run} epoch {epoch:>4}  loss {metrics['loss']:.4f}  "
            f"train acc {metrics['train_acc']:.4f}"
            f"  val acc {metrics['val_acc']:.4f}"
        )

    def run_done(self, run: str, result: RunResult) -> None:
        self.progress.advance(self.runs_task)


class StudentsProgress:
    """`kdlens distill`'s progress: a spinner counting students, one line per student."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.completed:,.0f} students trained"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=quiet or not err_console.is_terminal,
        )
        self.task = self.progress.add_task("students", total=None)

    def __enter__(self) -> StudentsProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def message(self, text: str) -> None:
        self.progress.advance(self.task)
        if not self.quiet:
            self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def run_started(self, run: str, *, epochs: int, start_epoch: int) -> None: ...
    def epoch_done(self, run: str, epoch: int, metrics: dict[str, float]) -> None: ...
    def run_done(self, run: str, result: Any) -> None: ...
