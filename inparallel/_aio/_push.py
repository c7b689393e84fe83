"""`push_aiter`: a linked-list async queue with cheap broadcast forks.

::

    producer --push(x)--> [x0] -> [x1] -> [x2] -> [ ] (tail: the next push fills it)
                            ^              ^
                   cursor A (slowest)   cursor B (a fork)

The producer side is synchronous. Each reader is a *cursor*: a position in the shared list.
`fork` makes a new cursor at the same position (broadcast: both read every later item); tasks
that share one cursor split the items between them (each item to one task). Cells behind the
slowest cursor are referenced by nobody and freed.

**Waiting.** A reader with nothing to read waits on a future of its own, so cancelling it
cancels nothing shared (the original signalled end of stream by cancelling a shared future:
one cancelled reader closed the queue for all). End of stream is a flag, optionally with an
error that every cursor raises after the items before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .._checks import bound, function
from .._core._errors import InParallelError
from ._base import Stream, call_hook, running_loop

__all__ = ("Cursor", "QueueFull", "QueueStopped", "Shared", "push_aiter")

T = TypeVar("T")


class QueueStopped(InParallelError, ValueError):
    """`push_aiter.push` was called after `push_aiter.stop` (a `ValueError`, as it was)."""


class QueueFull(InParallelError):
    """`push_aiter.push` would put the slowest open cursor more than ``maxsize`` behind."""


class _Cell:
    """One list cell: empty while it is the tail; ``push`` fills it and links a new tail."""

    __slots__ = ("next", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.next: _Cell | None = None  # set (after ``value``) when the cell is filled


class Shared:
    """The state one queue's cursors share: the tail, the end flag, the waiters."""

    def __init__(self, maxsize: float) -> None:
        self.tail = _Cell()
        self.pushed = 0  #: items ever pushed (the tail's position)
        self.maxsize = maxsize
        self.stopped = False
        self.error: BaseException | None = None
        self.closed = False  #: the whole family was closed: every cursor ends now
        self.cursors: weakref.WeakSet[Cursor[Any]] = weakref.WeakSet()
        self.on_empty: Callable[[], None] | None = None  #: run when the last cursor detaches
        self.demand = 0  #: (`aiter_forker`) how many items the active forks want pulled
        self.loop: asyncio.AbstractEventLoop | None = None
        self._readers: list[asyncio.Future[None]] = []  # waiting for an item or the end
        self._movers: list[asyncio.Future[None]] = []  # waiting for a cursor to advance

    def slowest(self) -> int:
        """Return the position of the slowest open cursor (the tail's if none is open)."""
        return min((c.position for c in self.cursors), default=self.pushed)

    def append(self, items: tuple[Any, ...]) -> None:
        """Link ``items`` at the tail and wake the waiting readers.

        Raises:
            RuntimeError: Readers wait in a loop that is not this thread's (nothing added).
        """
        self.check_thread()
        for item in items:
            cell = self.tail
            cell.value = item
            self.tail = _Cell()
            cell.next = self.tail
        self.pushed += len(items)
        self.wake_readers()

    def end(self, error: BaseException | None) -> None:
        """Mark the end of stream (first call wins) and wake everyone."""
        if not self.stopped:
            self.stopped, self.error = True, error
        self.wake_readers()
        self.wake_movers()

    def wake_readers(self) -> None:
        self._wake(self._readers)

    def wake_movers(self) -> None:
        self._wake(self._movers)

    def check_thread(self) -> None:
        """Refuse to wake readers of a loop that does not run in this thread."""
        waiting = self._readers or self._movers
        if waiting and self.loop is not None and _running() is not self.loop:
            raise RuntimeError(
                "push_aiter was used from outside its event loop's thread; from another"
                " thread call loop.call_soon_threadsafe(queue.push, item)"
            )

    def _wake(self, waiters: list[asyncio.Future[None]]) -> None:
        if not waiters:
            return
        self.check_thread()
        pending = waiters[:]
        waiters.clear()
        for fut in pending:
            if not fut.done():
                fut.set_result(None)

    async def wait_reader(self, owner: object) -> None:
        """Wait until something is pushed or the stream ends (cancellation is private)."""
        await self._wait(owner, self._readers)

    async def wait_mover(self, owner: object) -> None:
        """Wait until some cursor advances or detaches, or the stream ends."""
        await self._wait(owner, self._movers)

    async def _wait(self, owner: object, waiters: list[asyncio.Future[None]]) -> None:
        self.loop = loop = running_loop(owner, self.loop)
        fut = loop.create_future()
        waiters.append(fut)
        try:
            await fut
        finally:
            if fut in waiters:  # cancelled: forget our own waiter, and only ours
                waiters.remove(fut)


def _running() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Cursor(Stream[T], Generic[T]):
    """The read side of a queue: a position in the shared list (see the module docstring)."""

    def __init__(self, shared: Shared, cell: _Cell, position: int) -> None:
        self._shared = shared
        self._cell = cell
        self.position = position  #: items this cursor has read or skipped
        self._detached = False
        shared.cursors.add(self)

    # -- reading ------------------------------------------------------------------------------

    async def __anext__(self) -> T:
        self._preflight()
        shared = self._shared
        while True:
            cell = self._cell
            if cell.next is not None and not self._detached and not shared.closed:
                self._cell, self.position = cell.next, self.position + 1
                shared.wake_movers()
                return cell.value  # type: ignore[no-any-return]
            if self._detached or shared.closed:
                raise StopAsyncIteration
            if shared.stopped:
                if shared.error is not None:
                    raise shared.error
                raise StopAsyncIteration
            await self._wait()

    def _preflight(self) -> None:
        """Run before every read (subclasses: demand-driven producers)."""

    async def _wait(self) -> None:
        await self._shared.wait_reader(self)

    def _place(self) -> tuple[_Cell, int]:
        """Where a fork of this cursor starts: here, or at the tail if this one is closed."""
        if self._detached:
            return self._shared.tail, self._shared.pushed
        return self._cell, self.position

    # -- queries ------------------------------------------------------------------------------

    def available_iter(self) -> Iterator[T]:
        """Return a sync iterator over the items this cursor could read now, without reading."""
        cell = self._cell
        while cell.next is not None:
            yield cell.value
            cell = cell.next

    def is_item_available(self) -> bool:
        """Return whether an item can be read without waiting."""
        return self._cell.next is not None

    def is_len_at_least(self, n: int) -> bool:
        """Return whether at least ``n`` items can be read without waiting."""
        return len(self) >= n

    def __len__(self) -> int:
        """Return the number of items this cursor can read without waiting."""
        return 0 if self._detached else self._shared.pushed - self.position

    def is_stopped(self) -> bool:
        """Return whether the queue was stopped (items pushed before may still be unread)."""
        return self._shared.stopped

    # -- closing ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Detach this cursor: it reads nothing more, and no longer holds items in memory."""
        self._detach()

    def _detach(self) -> None:
        if self._detached:
            return
        self._detached = True
        shared = self._shared
        shared.cursors.discard(self)
        self._cell = _Cell()  # drop the reference into the list
        if shared.loop is None or _running() is shared.loop:
            shared.wake_readers()  # tasks waiting on this very cursor end now
            shared.wake_movers()
        if not shared.cursors and shared.on_empty is not None:
            shared.on_empty()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # a finalizer must not raise
            self._detach()

    def __repr__(self) -> str:
        state = "stopped" if self._shared.stopped else "open"
        return f"<{type(self).__name__} {state}, {len(self)} available>"


class push_aiter(Cursor[T]):
    """An async queue you push into and read with ``async for``; ``stop()`` ends it.

    ``q.push(1, 2)`` appends items (synchronously, from the loop's thread, or before the loop
    runs); ``q.stop()`` ends the stream once the pushed items are read, and ``q.stop(exc)``
    makes readers raise ``exc`` there instead. ``q.fork()`` returns another reader at the
    current position that reads every later item too (broadcast); tasks sharing one reader
    split the items. Can be built outside a running loop.

    Args:
        tail: Another `push_aiter` to read from (a fork at its position), or None for a new
            queue. (The historical "tail" of the queue.)
        next_preflight: Called at the start of every read of an active reader, before it
            waits, with the reader as its argument (or with none, if it takes none, as the
            original documented it). It may push just in time; its exceptions reach the
            reader (a `StopIteration` or `StopAsyncIteration` as a `RuntimeError` caused by
            it: it does not end the stream).
        maxsize: How far behind the slowest open reader may fall: `push` raises `QueueFull`
            and `put` waits beyond it. Unbounded (``math.inf``) by default. The queue
            object is itself a reader: a producer that reads only through forks should
            ``aclose()`` it, or it holds the count at its own position.

    Raises:
        TypeError: ``tail`` is not a `push_aiter`, or ``next_preflight`` is not callable.
        ValueError: ``maxsize`` is below 1.
    """

    def __init__(
        self,
        tail: push_aiter[T] | None = None,
        next_preflight: Callable[[push_aiter[T]], object] | Callable[[], object] | None = None,
        *,
        maxsize: float = math.inf,
    ) -> None:
        if next_preflight is not None:
            function("push_aiter()", "next_preflight", next_preflight, hint=" (or None)")
        if tail is None:
            shared = Shared(bound("push_aiter()", "maxsize", maxsize))
            super().__init__(shared, shared.tail, 0)
        elif isinstance(tail, push_aiter):
            super().__init__(tail._shared, *tail._place())
        else:
            raise TypeError(
                f"push_aiter(): tail must be a push_aiter or None, not {type(tail).__name__}"
            )
        self._next_preflight = next_preflight
        self._preflight_args = _takes_reader(next_preflight)
        self._active = True

    def push(self, *items: T) -> None:
        """Append ``items`` and wake the readers.

        Raises:
            QueueStopped: `stop` was called.
            QueueFull: The slowest open reader would fall more than ``maxsize`` behind.
            RuntimeError: Readers wait in an event loop of another thread (nothing added).
        """
        shared = self._shared
        if shared.stopped:
            raise QueueStopped("push() after stop(): this queue is closed to new items")
        if shared.pushed + len(items) - shared.slowest() > shared.maxsize:
            raise QueueFull(
                f"the slowest reader is {shared.pushed - shared.slowest()} items behind"
                f" (maxsize={shared.maxsize}); await put(item) waits for room instead"
            )
        shared.append(items)

    async def put(self, item: T) -> None:
        """Append ``item``, first waiting while the slowest open reader is ``maxsize`` behind.

        Raises:
            QueueStopped: `stop` was called (also while waiting).
        """
        shared = self._shared
        while not shared.stopped and shared.pushed + 1 - shared.slowest() > shared.maxsize:
            await shared.wait_mover(self)
        self.push(item)

    def stop(self, exc: BaseException | None = None) -> None:
        """End the stream once the items pushed so far are read; idempotent.

        Args:
            exc: Raised by every reader at the end instead of `StopAsyncIteration`.
        """
        if exc is not None and not isinstance(exc, BaseException):
            raise TypeError(
                f"push_aiter.stop(): exc must be an exception instance or None, not {exc!r}"
            )
        self._shared.end(exc)

    def fork(self, is_active: bool = True) -> push_aiter[T]:
        """Return a new reader at this reader's position; it reads every later item too.

        Args:
            is_active: A passive fork (False) never calls ``next_preflight``, so it never
                asks the producer for items: it reads what others cause to be pushed.
        """
        clone: push_aiter[T] = push_aiter(self, self._next_preflight)
        clone._active = is_active  # a passive fork keeps the hook for active forks of it
        return clone

    def _preflight(self) -> None:
        if self._next_preflight is not None and self._active and not self._detached:
            if self._preflight_args:
                call_hook("next_preflight", self._next_preflight, self)
            else:
                call_hook("next_preflight", self._next_preflight)


def _takes_reader(fn: Callable[..., object] | None) -> bool:
    """Whether ``fn`` accepts one positional argument (else it is called with none)."""
    if fn is None:
        return False
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): assume the documented one
        return True
    return True
