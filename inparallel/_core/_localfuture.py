"""`LocalFuture`: a `concurrent.futures.Future` that only its own process finishes.

**Futures inherited by fork.** A future is finished by a thread of the process that made it
(a task's by that process's supervisor). A forked child that got a copy of one, say a task
given a parent's future as an argument, has no such thread: waiting for the copy would never
end. So `LocalFuture`, the base of `TaskFuture`, remembers the pid that made it, and its copy
in another process refuses to wait with `InheritedFutureError`: ``result()``,
``exception()``, ``add_done_callback()`` (and so `asyncio.wrap_future`), ``await`` of a task,
and `concurrent.futures.wait` / `as_completed` (which wait on a ``_Waiter`` of their own:
they are stopped where they register it with the future). A future that had finished before
the fork works as usual in the child: its outcome was copied with it.

**State changes in one place.** Our futures leave the stdlib's set of transitions in two spots:
a cancel may be notified at once (`concurrent.futures.wait` and `as_completed` count only
CANCELLED_AND_NOTIFIED as done, and a task is cancelled while RUNNING), and a callback's
``BaseException`` must not escape into the thread that finished the future. `LocalFuture`
holds both (`LocalFuture._cancel`, `LocalFuture._invoke_callbacks`), and this is the one module
that reads the stdlib's state names (``concurrent.futures._base``, stable since 3.2); ``_future``
takes them from here.

**A final state is read without the lock.** A finished or cancelled future never changes
again, so ``result()``, ``exception()``, ``done()``, ``cancelled()``, ``running()``,
``cancel()`` and ``add_done_callback()`` read it as it is. (The stdlib takes the future's lock
for them: in a fork's copy that lock may be held for ever, by a thread of the parent that held
it at the fork. `concurrent.futures.wait` and `as_completed` still take it themselves.)
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures._base import (  # the stdlib's state names; stable since 3.2
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    LOGGER,
    PENDING,
    RUNNING,
)
from typing import Any, TypeVar

from ._errors import InheritedFutureError

__all__ = ("FINISHED", "RUNNING", "UNFINISHED", "LocalFuture")

R = TypeVar("R")

#: The states in which a future may still change.
UNFINISHED = (PENDING, RUNNING)
_CANCELLED = (CANCELLED, CANCELLED_AND_NOTIFIED)


class LocalFuture(Future[R]):
    """A future that only a thread of the process that made it finishes.

    In a forked child, a copy of one that had not finished at the fork refuses to be waited
    for (see the module docstring): ``result()``, ``exception()``, ``add_done_callback()``
    (so `asyncio.wrap_future` too) and `concurrent.futures.wait` / `as_completed` raise
    `InheritedFutureError` at once. ``done()`` and ``running()`` report the state copied at
    the fork, and ``cancel()`` returns False: it cannot stop work that belongs to another
    process. Costs one ``getpid()`` per future made, and per wait on an unfinished one.
    """

    def __init__(self) -> None:
        super().__init__()
        # One getpid() per future (~0.2 us, against a fork of milliseconds) needs neither an
        # at-fork hook (importing inparallel registers none) nor a registry of live futures.
        self._owner = os.getpid()
        waiters = self._waiters = _Waiters()
        waiters.future = weakref.ref(self)  # weak: a cycle would hold the result until gc

    def _inherited(self) -> bool:
        """Whether this is a fork's copy of a future that had not finished at the fork."""
        # Unlocked, and safe either way: in the owner the pid test fails whatever the state
        # read, and in a fork no thread is left to change it (nor to release a lock it held).
        return self._state in UNFINISHED and self._owner != os.getpid()

    def _refuse_inherited(self) -> None:
        """Raise `InheritedFutureError` for a fork's copy of an unfinished future."""
        if self._inherited():
            raise InheritedFutureError(repr(self), self._owner, os.getpid())

    def _refuse_wait(self) -> None:
        """Raise instead of starting a wait that cannot end.

        Called, before any lock is taken, only when the state read was unfinished: a finished
        future (the common case of ``result()``) pays for one comparison.
        """
        self._refuse_inherited()

    def result(self, timeout: float | None = None) -> R:
        """Return the value, waiting up to ``timeout`` seconds (None: for ever).

        Raises:
            InheritedFutureError: In a forked child, for a copy that had not finished at the
                fork.
        """
        state = self._state
        if state == FINISHED:  # final: read without the lock (see the module docstring)
            if self._exception is None:
                return self._result  # type: ignore[return-value]
            try:
                raise self._exception
            finally:
                # As the stdlib does: the traceback holds this frame, which must not hold us.
                self = None  # type: ignore[assignment]  # noqa: PLW0642
        if state in _CANCELLED:
            raise CancelledError
        self._refuse_wait()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Return the exception (None if the call succeeded), waiting like `result`."""
        state = self._state
        if state == FINISHED:
            return self._exception
        if state in _CANCELLED:
            raise CancelledError
        self._refuse_wait()
        return super().exception(timeout)

    def done(self) -> bool:
        """Return whether the future is finished or cancelled."""
        return self._state not in UNFINISHED

    def cancelled(self) -> bool:
        """Return whether the future was cancelled."""
        return self._state in _CANCELLED

    def running(self) -> bool:
        """Return whether the work is under way (not finished, not cancelled)."""
        return self._state == RUNNING

    def add_done_callback(self, fn: Callable[[Future[R]], object]) -> None:
        """Call ``fn(future)`` when the future finishes (at once if it has).

        Raises:
            InheritedFutureError: In a forked child, for a copy that had not finished at the
                fork (``fn`` would never be called).
        """
        if self._state not in UNFINISHED:  # final: call it now, without the lock
            try:  # as the stdlib does here: in the caller's thread, a Ctrl-C goes through
                fn(self)
            except Exception:
                LOGGER.exception("exception calling callback for %r", self)
            return
        self._refuse_inherited()  # not _refuse_wait: registering from a callback is fine
        self._watched()
        super().add_done_callback(fn)

    def _watched(self) -> None:
        """Called when something will wait for this future without calling ``result()``."""

    def cancel(self) -> bool:
        """Cancel the future if it has not started; see `concurrent.futures.Future.cancel`.

        Returns False for a fork's copy of an unfinished future (the work is not this
        process's to stop).
        """
        return self._cancel(lambda state: state == PENDING)

    def _cancel(
        self, cancellable: Callable[[str], bool], stop: Callable[[], object] | None = None
    ) -> bool:
        """Cancel now if unfinished and ``cancellable(state)`` (called under the lock) agrees.

        The future goes straight to CANCELLED_AND_NOTIFIED and its waiters are told at once;
        then ``stop()`` runs (to stop the work itself), then the done-callbacks, both outside
        the lock. Returns whether the future is cancelled, now or before (`stop` ran only if
        now); False for a finished future and for a fork's copy of an unfinished one.
        """
        state = self._state
        if state not in UNFINISHED:  # final: read without the lock
            return state in _CANCELLED
        if self._inherited():
            return False  # the work is another process's to stop; nor may its callbacks run
        with self._condition:
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            if self._state == FINISHED or not cancellable(self._state):
                return False
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        if stop is not None:
            stop()
        self._invoke_callbacks()
        return True

    def set_running_or_notify_cancel(self) -> bool:
        """Mark the future RUNNING before its work starts; False if it was cancelled.

        Unlike the stdlib's, also accepts a cancel that was notified already (see `_cancel`).
        """
        with self._condition:  # re-entrant: the base class takes it again
            if self._state == CANCELLED_AND_NOTIFIED:
                return False
            return super().set_running_or_notify_cancel()

    def _invoke_callbacks(self) -> None:
        # The stdlib logs an Exception from a callback and goes on; a BaseException (SystemExit
        # from a callback) would otherwise escape and kill the thread that finished the future.
        for callback in self._done_callbacks:  # type: ignore[attr-defined]
            try:
                callback(self)
            except BaseException:
                LOGGER.exception("exception calling callback for %r", self)


class _Waiters(list[Any]):
    """A future's list of ``_Waiter`` objects, which refuses a waiter that would never wake.

    `concurrent.futures.wait` and `as_completed` wait on a waiter they append here (under the
    future's lock), not through ``result()``: appending is the one step we can stop. If that
    raises, waiters already appended to the other futures of the call stay on their lists
    until those finish; they are inert.
    """

    __slots__ = ("future",)  # no __init__ of its own: made once per future, keep it cheap

    future: weakref.ref[LocalFuture[Any]]

    def append(self, waiter: Any) -> None:
        future = self.future()
        if future is not None:
            future._refuse_inherited()
            future._watched()
        super().append(waiter)
