"""How `kdlens dump` and `kdlens distill` show the harness's progress (rich, on the console)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdlens.cli._app import cli_words, console

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
            console=console,
            transient=True,
            disable=quiet,
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
            self.progress.console.print(cli_words(text, self.flags), highlight=False)

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


class LineReporter:
    """One line per message; nothing per epoch."""

    def message(self, text: str) -> None:
        console.print(text, highlight=False)

    def run_started(self, run: str, *, epochs: int, start_epoch: int) -> None: ...
    def epoch_done(self, run: str, epoch: int, metrics: dict[str, float]) -> None: ...
    def run_done(self, run: str, result: Any) -> None: ...
