"""`TaskFuture`: a `concurrent.futures.Future` bound to one child process."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Generator
from concurrent.futures import Future
from concurrent.futures._base import (  # the stdlib's state names; stable since 3.2
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    LOGGER,
    RUNNING,
)
from typing import Any, NamedTuple, TypeVar

from ._errors import InParallelError

__all__ = ("Rusage", "TaskFuture")

R = TypeVar("R")

#: ``on_supervisor.active`` is True on the supervisor thread (set by the supervisor). Lets
#: `result()` refuse to block where blocking can only deadlock.
on_supervisor = threading.local()


class Rusage(NamedTuple):
    """Resources the child used, from ``wait4``: peak RSS in bytes, CPU seconds."""

    maxrss: int
    utime: float
    stime: float


class TaskFuture(Future[R]):
    """The future result of one ``@task`` call, computed in a forked child.

    It is RUNNING from the start (the child exists before the call returns). Beyond the
    `concurrent.futures.Future` API it knows its child:

    Attributes:
        pid: The child's process id.
        name: The task's name (its ``name=`` option or the function's qualified name).
        exitcode: The child's exit status once it has been reaped (negative: killed by that
            signal), else None. Always set before the future is marked done, except after
            `cancel`, which resolves the future at once.
        rusage: A `Rusage` once the child has been reaped, else None.

    Done-callbacks run on the supervisor thread: keep them short, and do not block in them on
    another task (`result` raises `InParallelError` there instead of deadlocking).
    """

    def __init__(self, pid: int, name: str, send_signal: Callable[[int], bool]) -> None:
        super().__init__()
        self._state = RUNNING
        self._send_signal = send_signal
        self.pid = pid
        self.name = name
        self.exitcode: int | None = None
        self.rusage: Rusage | None = None

    def __repr__(self) -> str:
        with self._condition:
            state = self._state
            status = ""
            if state == FINISHED:
                status = " raised " + type(self._exception).__name__ if self._exception else " ok"
        exit_part = "" if self.exitcode is None else f" exitcode={self.exitcode}"
        return f"<TaskFuture {self.name} pid={self.pid} state={state.lower()}{status}{exit_part}>"

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` to the child if it is still alive; return whether it was sent.

        A fatal signal makes the future fail with `WorkerDied`, unless the child had already
        delivered its result. Never blocks.
        """
        return self._send_signal(sig)

    def cancel(self) -> bool:
        """Cancel the task, killing its child if it is running.

        Unlike `concurrent.futures.Future.cancel`, this also works on a RUNNING future: the
        child is SIGKILLed (its ``finally`` blocks do not run) and the future is CANCELLED at
        once; the supervisor reaps the child shortly after.

        Returns:
            False if the future had already finished, True otherwise.
        """
        with self._condition:
            if self._state == FINISHED:
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._send_signal(signal.SIGKILL)
        self._invoke_callbacks()
        return True

    def result(self, timeout: float | None = None) -> R:
        """Return the task's value, waiting up to ``timeout`` seconds (None: for ever).

        Raises:
            The task's own exception, rebuilt with the child's traceback; `WorkerDied`,
            `TaskTimeout`, `RemoteError` or `ResultNotPicklable` as the case may be;
            `concurrent.futures.CancelledError` if cancelled; `TimeoutError` if ``timeout``
            passes first; `InParallelError` if called, unfinished, from a done-callback.
        """
        self._refuse_deadlock()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Return the task's exception (None if it succeeded), waiting like `result`."""
        self._refuse_deadlock()
        return super().exception(timeout)

    def _refuse_deadlock(self) -> None:
        if getattr(on_supervisor, "active", False) and not self.done():
            raise InParallelError(
                f"{self!r} is not finished, and waiting for it here would deadlock: done-callbacks"
                " run on inparallel's supervisor thread, which is the thread that would finish it."
                " Hand the work to another thread, or chain it with add_done_callback"
            )

    def __await__(self) -> Generator[Any, None, R]:
        """Await the result in a running asyncio loop; cancelling the awaiter kills the child."""
        import asyncio  # only when awaited: importing inparallel does not import asyncio

        return asyncio.wrap_future(self).__await__()

    def _resolve(self, ok: bool, outcome: Any) -> None:
        """Finish the future from the supervisor; a no-op if it was cancelled meanwhile."""
        with self._condition:
            if self._state != RUNNING:
                return
            if ok:
                self._result = outcome
            else:
                self._exception = outcome
            self._state = FINISHED
            for waiter in self._waiters:
                if ok:
                    waiter.add_result(self)
                else:
                    waiter.add_exception(self)
            self._condition.notify_all()
        self._invoke_callbacks()

    def _invoke_callbacks(self) -> None:
        # The stdlib logs an Exception from a callback and goes on; a BaseException (SystemExit
        # from a callback) would otherwise escape and kill the supervisor thread.
        for callback in self._done_callbacks:  # type: ignore[attr-defined]
            try:
                callback(self)
            except BaseException:
                LOGGER.exception("exception calling callback for %r", self)
