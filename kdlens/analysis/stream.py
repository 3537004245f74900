"""The pass's tasks in this process, as one stream over two slot threads.

Each task deals its batches to two accumulator slots (batch i of the task to slot
i mod 2) and returns the merge of slot 0 with slot 1, wherever it runs (a worker
process runs both slots in one thread: :func:`kdlens.analysis.passes.run_task`). Here
one reader thread reads every task's batches in plan order, without a pause between
tasks, and slot ``s`` of every task is run by thread ``s``: a thread that finishes its
share of a task goes on with the next task's while the other finishes, instead of
waiting for it (with a fresh reader per task and three batches per task, one thread
sat idle for a third of each task). The partials, and so the results, are those of
any other engine, bit for bit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kdlens.analysis.tasks import CheckOptions, Task, check_batches
from kdlens.store.reader import part_batches, prefetch

__all__ = ["SLOTS", "stream_tasks"]

#: Accumulator slots of a task (and threads of this process's pass).
SLOTS = 2

_END = object()  # a task's last batch was dealt


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def stream_tasks(
    tasks: Sequence[Task],
    make: Callable[[Task], Any],
    check: CheckOptions,
    k: int,
    batch_rows: int | None,
    advance: Callable[[int], None],
    slots: int = SLOTS,
) -> Iterator[tuple[Any, dict[str, int]]]:
    """Each task's merged slot partials (``make(task)`` makes an accumulator with
    ``update(batch)`` and ``merge(other)``; batch j of a task goes to slot j mod
    ``slots``) and its row counts, in plan order."""
    inboxes: list[queue.Queue[Any]] = [queue.Queue(maxsize=1) for _ in range(slots)]
    outboxes: list[queue.Queue[Any]] = [queue.Queue() for _ in range(slots)]
    stats: list[dict[str, int]] = [{} for _ in tasks]
    stop = threading.Event()

    def read() -> Iterator[tuple[int, int, Any]]:
        for i, task in enumerate(tasks):
            rows = part_batches(task.part, k, row_groups=task.row_groups, batch_rows=batch_rows)
            for j, b in enumerate(check_batches(rows, check, advance, stats[i])):
                yield (i, j, b)
            yield (i, -1, None)

    def deal() -> None:
        try:
            for i, j, b in prefetch(read()):
                if stop.is_set():
                    return
                if j < 0:
                    for inbox in inboxes:
                        inbox.put((i, _END))
                else:
                    inboxes[j % slots].put((i, b))
        except BaseException as exc:  # the reader's error reaches the caller
            for out in outboxes:
                out.put(_Failed(exc))
        finally:
            for inbox in inboxes:
                inbox.put(None)

    def work(slot: int) -> None:
        accs: dict[int, Any] = {}
        failed: _Failed | None = None
        while (item := inboxes[slot].get()) is not None:
            i, b = item
            if b is _END:
                outboxes[slot].put(failed or accs.pop(i, None) or make(tasks[i]))
            elif failed is None:  # after a failure, drain without work: the dealer never blocks
                try:
                    if i not in accs:
                        accs[i] = make(tasks[i])
                    accs[i].update(b)
                except BaseException as exc:
                    failed = _Failed(exc)

    threads = [threading.Thread(target=deal, name="kdlens-deal", daemon=True)] + [
        threading.Thread(target=work, args=(s,), name="kdlens-pass", daemon=True)
        for s in range(slots)
    ]
    for t in threads:
        t.start()
    try:
        for i in range(len(tasks)):
            got = [out.get() for out in outboxes]
            for g in got:
                if isinstance(g, _Failed):
                    raise g.exc
            acc = got[0]
            for other in got[1:]:
                acc = acc.merge(other)
            yield acc, stats[i]
    finally:
        stop.set()
        for inbox in inboxes:  # unblock a dealer waiting on a full inbox
            _drain(inbox)


def _drain(q: queue.Queue[Any]) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass
