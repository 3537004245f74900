"""What a run tells its caller: progress callbacks and a :class:`RunResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["QuietReporter", "Reporter", "RunResult", "dump_cost_line"]


class Reporter(Protocol):
    """Progress callbacks the harness calls; the CLI passes rich bars, quiet mode none."""

    def message(self, text: str) -> None: ...
    def run_started(self, run: str, *, epochs: int, start_epoch: int) -> None: ...
    def epoch_done(self, run: str, epoch: int, metrics: dict[str, float]) -> None: ...
    def run_done(self, run: str, result: RunResult) -> None: ...


class QuietReporter:
    """Reports nothing."""

    def message(self, text: str) -> None:
        pass

    def run_started(self, run: str, *, epochs: int, start_epoch: int) -> None:
        pass

    def epoch_done(self, run: str, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def run_done(self, run: str, result: RunResult) -> None:
        pass


@dataclass
class RunResult:
    run: str
    directory: Path
    status: str  # "trained", "resumed", "skipped"
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    dump_seconds: float = 0.0
    eval_seconds: float = 0.0
    #: Time the writer thread spent computing (on CPU) and writing dumps, in parallel.
    dump_worker_seconds: float = 0.0

    @property
    def dump_overhead(self) -> float:
        """Time the training loop waited for dumps / time training."""
        return self.dump_seconds / self.train_seconds if self.train_seconds > 0 else float("nan")


def dump_cost_line(train_seconds: float, wait_seconds: float, work_seconds: float) -> str:
    """The dump's cost in one sentence, with the same labelled figure as the summary table.

    ``wait``: time the training loop stood still for dumps (the table's "dump cost"
    column); ``work``: time the writer thread spent on them beside training, which
    overlaps training and so is no cost to it unless training waited.
    """
    if train_seconds <= 0:
        return f"dump cost: - (no training time); dump work {work_seconds:.2f} s"
    return (
        f"dump cost: {100 * wait_seconds / train_seconds:.2f} % of training time "
        f"(training waited {wait_seconds:.2f} s of {train_seconds:.2f} s for dumps; "
        f"the dump work itself took {work_seconds:.2f} s on a writer thread beside training)"
    )
