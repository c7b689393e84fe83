"""The future of one call submitted to a `StreamExecutor`, and its link to the task it runs as.

A `Call` is created in the submitting thread and finished from the task's done-callback (on the
core's supervisor thread, or the engine's) or by the thread that ran it. In process mode its
`cancel` works while the call runs, too: it kills the child.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Executor, Future, InvalidStateError
from typing import Any

from ._core._future import LocalFuture

__all__ = ("Call",)


class Call(LocalFuture[Any]):
    """A submitted call; in process mode `cancel` also works while it runs (killing the child).

    A `LocalFuture`: a fork's copy of one that had not finished refuses to be waited for.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        killable: bool,
        engine: Executor | None,
        mapped: bool,
    ) -> None:
        super().__init__()
        self.call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None
        self.call = (fn, args, kwargs)  # dropped once started: the arguments are not kept
        self.killable = killable
        self.engine = engine  # None: fork the call here
        self.mapped = mapped  # submitted by a map's feeder, not by submit()
        self.slot = False  # holds a worker slot (changed under the executor's lock)
        self.task: Future[Any] | None = None

    def cancel(self) -> bool:
        # Queued; or running, or being started (no task yet: `attach` stops it when the
        # start returns). A running thread call cannot be stopped.
        return self._cancel(lambda _: self.killable or not self.running(), self._stop_task)

    def _stop_task(self) -> None:
        # After the state changed: a task attached from now on is cancelled by `attach`.
        task = self.task
        if task is not None:
            task.cancel()

    def attach(self, task: Future[Any]) -> None:
        """Record the child (or engine call) just started; cancel it if the call was."""
        with self._condition:
            self.task = task
            cancelled = self.cancelled()
        if cancelled:
            task.cancel()

    def copy_from(self, task: Future[Any]) -> None:
        """Finish with the task's outcome, unless cancelled meanwhile (then nothing)."""
        if task.cancelled():
            return
        error = task.exception()
        with contextlib.suppress(InvalidStateError):  # cancel() won the race: it stands
            if error is None:
                self.set_result(task.result())
            else:
                self.set_exception(error)
