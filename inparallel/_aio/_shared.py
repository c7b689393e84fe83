"""Streams fed by a `Pump`: read-ahead, eager draining, shared readers and broadcast forks.

=================  ===============================================  =====================
stream             the pump may start another pull while            readers
=================  ===============================================  =====================
`preload_aiter`    pulled < read + preload_size (+1 for a waiter)   one (or tasks sharing)
`active_aiter`     pulled < read + maxsize                          one (or tasks sharing)
`sharable_aiter`   pulled < read + readers waiting                  many tasks, one item each
`aiter_forker`     an active fork wants an item nobody has          forks, every item each
=================  ===============================================  =====================
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from .._checks import bound, count
from ._base import Stream, adopt
from ._pump import Pump
from ._push import Cursor, Shared

__all__ = ("Fork", "Pumped", "active_aiter", "aiter_forker", "preload_aiter", "sharable_aiter")

T = TypeVar("T")


class Pumped(Stream[T]):
    """A stream read from a queue that a `Pump` fills (`preload_aiter`, `sharable_aiter`)."""

    def __init__(self, source: AsyncIterator[T], ahead: float, *, per_reader: bool) -> None:
        shared = Shared(math.inf)
        self._cursor: Cursor[T] = Cursor(shared, shared.tail, 0)
        self._waiting = [0]  # readers waiting now (a list: shared with the rule, not self)
        self._pump = Pump(source, shared, _rule(self._cursor, self._waiting, ahead, per_reader))

    async def __anext__(self) -> T:
        self._waiting[0] += 1
        try:
            self._pump.poke()
            item = await self._cursor.__anext__()
        except BaseException:
            self._waiting[0] -= 1
            self._pump.poke()
            raise
        self._waiting[0] -= 1
        self._pump.poke()  # one more read: one more pull is allowed
        return item

    async def aclose(self) -> None:
        """Stop the pump (cancelled and awaited: it closes the source) and end the stream."""
        self._cursor._detach()
        await self._pump.aclose()

    def __del__(self) -> None:
        pump = getattr(self, "_pump", None)  # None: __init__ failed
        if pump is not None:
            pump.cancel()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._cursor)} buffered, {self._pump.pulls} pulled>"


def _rule(
    cursor: Cursor[Any], waiting: list[int], ahead: float, per_reader: bool
) -> Callable[[], bool]:  # a closure over the cursor, not over the stream
    shared = cursor._shared

    def allowed() -> bool:
        if cursor._detached:
            return False
        buffered = shared.pushed - cursor.position
        if per_reader:
            return buffered < waiting[0]
        return buffered < max(ahead, 1 if waiting[0] else 0)

    return allowed


def preload_aiter(preload_size: int, aiter: AsyncIterable[T] | Iterable[T]) -> Stream[T]:
    """Read ``aiter`` ahead from a background task, keeping up to ``preload_size`` items ready.

    At every moment, items pulled from ``aiter`` <= items read + ``preload_size`` (``0``: a
    pull starts only when a reader asks). A source error arrives after the items before it.
    The background task starts at the first read, and stops (closing ``aiter`` in that task)
    when the source ends, on ``aclose()``, when an ``async with`` block is left, or when the
    stream is dropped.

    Raises:
        TypeError: ``preload_size`` is not an int, or ``aiter`` is not iterable.
        ValueError: ``preload_size`` is negative.
    """
    size = count("preload_aiter()", "preload_size", preload_size, minimum=0)
    return Pumped(adopt(aiter, "preload_aiter()", "aiter"), size, per_reader=False)


def active_aiter(aiter: AsyncIterable[T] | Iterable[T], *, maxsize: float = 10_000) -> Stream[T]:
    """Drain ``aiter`` eagerly from a background task, so its producer is never held up.

    Like `preload_aiter` with ``maxsize`` as the read-ahead. The original was unbounded; that
    is still there for the asking (``maxsize=math.inf``), at the price of memory growing as
    long as the reader falls behind.

    Raises:
        TypeError: ``aiter`` is not iterable, or ``maxsize`` is not a number.
        ValueError: ``maxsize`` is below 1.
    """
    size = bound("active_aiter()", "maxsize", maxsize)
    return Pumped(adopt(aiter, "active_aiter()", "aiter"), size, per_reader=False)


def sharable_aiter(aiter: AsyncIterable[T] | Iterable[T]) -> Stream[T]:
    """Let several tasks read one iterator at once; each item goes to exactly one of them.

    An async generator refuses concurrent ``__anext__`` calls; through this, readers queue up
    in the order they asked, one background task pulls one item per waiting reader, and a
    reader cancelled while waiting leaves its item to the next one (the generator is not
    finalized). The end and any error reach every reader. ``aclose()`` closes the source.

    Raises:
        TypeError: ``aiter`` is not iterable.
    """
    return Pumped(adopt(aiter, "sharable_aiter()", "aiter"), 0, per_reader=True)


class Fork(Cursor[T]):
    """One reader of a broadcast made by `aiter_forker`; `fork` makes more.

    Every fork reads every item from its position on. Only *active* forks cause pulls, and only
    when they want an item no fork has pulled yet; a passive fork reads what active ones
    pulled. ``aclose()`` detaches one fork; the source is closed when the last open fork is
    closed or dropped. Leaving an ``async with`` block closes the whole family. A passive fork
    left alone (every active fork closed) reads what was pulled and then waits for more that
    nobody will pull: close the family, or the passive fork, when the active ones are done.
    """

    def __init__(self, at: Cursor[T], pump: Pump, *, lag: int | None, active: bool) -> None:
        super().__init__(at._shared, *at._place())
        self._pump, self._lag, self._active = pump, lag, active

    def fork(self, is_active: bool = True) -> Fork[T]:
        """Return a new fork at this fork's position (passive: it never causes a pull)."""
        return Fork(self, self._pump, lag=self._lag, active=is_active)

    async def __anext__(self) -> T:
        shared = self._shared
        while (
            self._lag is not None
            and not (self._detached or shared.closed or shared.stopped)
            and self.position - shared.slowest() >= self._lag
        ):
            await shared.wait_mover(self)  # max_lag: wait for the slowest fork to catch up
        return await super().__anext__()

    async def _wait(self) -> None:
        if self._pump.closing and not self._shared.stopped:
            raise StopAsyncIteration  # the family's source was closed: nothing will come
        self._preflight()  # ask again: another task on this fork may have taken the item
        await super()._wait()

    def _preflight(self) -> None:
        if self._active and not self._detached and self._cell.next is None:
            self._shared.demand = max(self._shared.demand, self.position + 1)
            self._pump.poke()

    async def aclose(self) -> None:
        """Detach this fork; if it was the last open one, stop the pump and close the source."""
        self._detach()
        if not self._shared.cursors:
            await self._pump.aclose()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose_all()

    async def aclose_all(self) -> None:
        """Close every fork of the family and the source (the pull in flight is cancelled)."""
        self._shared.closed = True
        self._shared.wake_readers()
        self._shared.wake_movers()
        await self._pump.aclose()


def aiter_forker(aiter: AsyncIterable[T] | Iterable[T], *, max_lag: int | None = None) -> Fork[T]:
    """Broadcast ``aiter``: return the first `Fork`; ``fork()`` makes readers of the same items.

    ``async with aiter_forker(source) as root:`` is the safe use: leaving the block closes
    every fork and the source. Pulls are single-flight and done by one background task, so a
    reader cancelled while waiting neither cancels the pull nor finalizes the source: the item
    stays buffered for the others. The end and any error reach every fork, in order.

    Args:
        aiter: The source (async or sync iterable); owned and closed.
        max_lag: If given, an active fork waits while it is this many items ahead of the
            slowest open fork, which bounds the buffer; a fork that is never read then stops
            the others (close it when done with it).

    Raises:
        TypeError: ``aiter`` is not iterable or ``max_lag`` is not an int.
        ValueError: ``max_lag`` is below 1.
    """
    lag = None if max_lag is None else count("aiter_forker()", "max_lag", max_lag)
    shared = Shared(math.inf)
    source = adopt(aiter, "aiter_forker()", "aiter")
    pump = Pump(source, shared, lambda: shared.pushed < shared.demand)
    shared.on_empty = pump.cancel
    start: Cursor[T] = Cursor(shared, shared.tail, 0)
    root = Fork(start, pump, lag=lag, active=True)
    start._detach()
    return root
