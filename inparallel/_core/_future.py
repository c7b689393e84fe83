"""`TaskFuture`: a `concurrent.futures.Future` bound to one child process.

It is a `LocalFuture` (see ``_localfuture``: a fork's copy refuses to wait, state changes
in one place), finished by the supervisor (see ``_supervisor``), and waited for by driving the
supervisor's loop where no thread runs it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any, NamedTuple, Protocol, TypeVar

from ._bridge import to_asyncio
from ._errors import InParallelError
from ._localfuture import FINISHED, RUNNING, UNFINISHED, LocalFuture

__all__ = ("Driver", "LocalFuture", "Rusage", "TaskFuture")

R = TypeVar("R")

#: ``on_supervisor.active`` is True on the supervisor thread (set by the supervisor). Lets
#: `result()` refuse to block where blocking can only deadlock.
on_supervisor = threading.local()


class Rusage(NamedTuple):
    """Resources the child used, from ``wait4``: peak RSS in bytes, CPU seconds."""

    maxrss: int
    utime: float
    stime: float


class Driver(Protocol):
    """Who finishes a task's future: the supervisor (see ``_supervisor``)."""

    def drive(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Watch the children from this thread until ``done()``; False if someone else does."""

    def watch(self) -> None:
        """Have a thread watch the children, for what waits without driving."""

    def wake(self) -> None:
        """Wake whoever watches the children now."""


class TaskFuture(LocalFuture[R]):
    """The future result of one ``@task`` call, computed in a forked child.

    It is RUNNING from the start (the child exists before the call returns). Beyond the
    `concurrent.futures.Future` API it knows its child:

    Attributes:
        pid: The child's process id.
        name: The call's label: its task's ``name=`` (a string, or what a callable gave for
            this call's arguments), else ``qualname:pid``.
        exitcode: The child's exit status once it has been reaped (negative: killed by that
            signal), else None. Always set before the future is marked done, except after
            `cancel`, which resolves the future at once.
        rusage: A `Rusage` once the child has been reaped, else None.
        stdout: With ``output="capture"``, what the task wrote to its stdout (decoded like
            ``sys.stdout``, ``errors="backslashreplace"``; the last ``max_output`` bytes),
            once the child has been reaped, whatever its outcome; else None.
        stderr: The same for its stderr.

    Done-callbacks run on the supervisor thread (adding one starts it): keep them short, and
    do not block in them on another task (`result` raises `InParallelError` there instead of
    deadlocking). ``result()``, ``exception()`` and ``done()`` look at the child from the
    calling thread while no supervisor thread runs, so a call waited for at once starts none.
    A forked child's copy of an unfinished task refuses to be waited for (`LocalFuture`):
    pass a child the task's value, not its future.
    """

    def __init__(
        self, pid: int, name: str, send_signal: Callable[[int], bool], driver: Driver
    ) -> None:
        super().__init__()
        self._state = RUNNING
        self._send_signal = send_signal
        self._driver = driver
        # Whether something waits for it (or has): the supervisor starts its thread rather
        # than leave a second child that nothing waits for unwatched.
        self._claimed = False
        self.pid = pid
        self.name = name
        self.exitcode: int | None = None
        self.rusage: Rusage | None = None
        self.stdout: str | None = None
        self.stderr: str | None = None

    def __repr__(self) -> str:
        # Without the lock: a fork's copy's may be held for ever (see ``_localfuture``). The
        # outcome is set before the state says FINISHED, so what is read here agrees.
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
        sent = self._send_signal(sig)
        if sent:
            self._driver.watch()  # its death is reported whether anyone waits or not
        return sent

    def cancel(self) -> bool:
        """Cancel the task, killing its child if it is running.

        Unlike `concurrent.futures.Future.cancel`, this also works on a RUNNING future: the
        child is SIGKILLed (its ``finally`` blocks do not run) and the future is CANCELLED at
        once; the supervisor reaps the child shortly after.

        Returns:
            False if the future had already finished, or if this is a forked child's copy
            of it (see `LocalFuture`); True otherwise.
        """
        return self._cancel(lambda state: True, self._stop)

    def _stop(self) -> None:
        if self._send_signal(signal.SIGKILL):
            self._driver.watch()  # the child is reaped whether anyone waits or not

    def result(self, timeout: float | None = None) -> R:
        """Return the task's value, waiting up to ``timeout`` seconds (None: for ever).

        Raises:
            The task's own exception, rebuilt with the child's traceback; `WorkerDied`,
            `TaskTimeout`, `RemoteError` or `ResultNotPicklable` as the case may be;
            `concurrent.futures.CancelledError` if cancelled; `TimeoutError` if ``timeout``
            passes first; `InParallelError` if called, unfinished, from a done-callback;
            `InheritedFutureError` in a forked child, for a copy of a task that had not
            finished at the fork (pass the value to the child, not the future).
        """
        if self._state in UNFINISHED:
            self._refuse_wait()
            timeout = self._drive(timeout)
        try:
            return super().result(timeout)
        finally:
            # As the stdlib does: a raised exception's traceback holds this frame, which must
            # not hold the future (a cycle that keeps both until the garbage collector runs).
            self = None  # type: ignore[assignment]  # noqa: PLW0642

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Return the task's exception (None if it succeeded), waiting like `result`."""
        if self._state in UNFINISHED:
            self._refuse_wait()
            timeout = self._drive(timeout)
        return super().exception(timeout)

    def done(self) -> bool:
        """Return whether the task has finished (looking at its child first, without waiting)."""
        self._look()
        return super().done()

    def running(self) -> bool:
        """Return whether the task still runs (looking at its child first, without waiting)."""
        self._look()
        return super().running()

    def _look(self) -> None:
        # A poll (``done()``, ``running()``) watches the children for a moment if nobody else
        # does, so that a loop polling it ends (else the thread or the caller that does
        # finishes it).
        if self._state in UNFINISHED and not self._inherited():
            self._claimed = True
            self._driver.drive(self._finished, 0.0)

    def _finished(self) -> bool:
        return self._state not in UNFINISHED

    def _drive(self, timeout: float | None) -> float | None:
        # The waiting thread watches the children itself while no thread does; when it cannot
        # (a thread or another caller does), it makes sure a thread does, and waits as usual.
        # Returns what is left of ``timeout``.
        self._claimed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._driver.drive(self._finished, timeout) and not self._finished():
            self._driver.watch()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _watched(self) -> None:
        if self._state in UNFINISHED:
            self._driver.watch()

    def _add_driven_callback(self, fn: Callable[[Future[R]], object]) -> None:
        """`add_done_callback` for a caller that will `drive` until the future is done."""
        self._refuse_inherited()
        self._claimed = True
        Future.add_done_callback(self, fn)

    def _refuse_wait(self) -> None:
        super()._refuse_wait()
        if getattr(on_supervisor, "active", False) and not self._finished():
            raise InParallelError(
                f"{self!r} is not finished, and waiting for it here would deadlock: done-callbacks"
                " run on inparallel's supervisor thread, which is the thread that would finish it."
                " Hand the work to another thread, or chain it with add_done_callback"
            )

    def __await__(self) -> Generator[Any, None, R]:
        """Await the result in a running asyncio loop; cancelling the awaiter kills the child.

        A `StopIteration` or `StopAsyncIteration` from the task is raised as a `RuntimeError`
        caused by it (see `to_asyncio`); ``result()`` raises it as it is.

        Raises:
            InheritedFutureError: As `result` does, at once.
        """
        if self._state in UNFINISHED:
            self._refuse_wait()
        import asyncio  # only when awaited: importing inparallel does not import asyncio

        loop = asyncio.get_running_loop()
        return to_asyncio(self, loop, f"task {self.name} (pid {self.pid})").__await__()

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
