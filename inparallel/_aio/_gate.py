"""Flow control without background tasks: `gated_aiter` (credits) and `stoppable_aiter`.

Both read their source in the reader's own task, one reader at a time (a FIFO lock), so they
work with a plain ``async for``. Cancelling a reader while it awaits the source is the
reader's own business: for an async generator source it finalizes the generator, as it would
without the wrapper.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, TypeVar

from ._base import Stream, adopt, cancel_soon, close_source, consume_outcome, running_loop

__all__ = ("gated_aiter", "stoppable_aiter")

T = TypeVar("T")


class gated_aiter(Stream[T]):
    """A gate over ``aiter``: ``push(n)`` lets ``n`` more items through; ``stop()`` ends it.

    A read waits until there is credit, spends one and only then reads the source, so the
    source is read exactly as many times as credit was granted (the original read one extra
    item, which ``stop()`` then lost). A read cancelled while it awaits the source gets its
    credit back. ``stop()`` ends the stream once the credit already granted is used; readers
    waiting without credit end at once. ``push()`` after ``stop()`` is ignored.

    Raises:
        TypeError: ``aiter`` is not iterable.
    """

    def __init__(self, aiter: AsyncIterable[T] | Iterable[T]) -> None:
        self._source: AsyncIterator[T] | None = adopt(aiter, "gated_aiter's aiter")
        self._credit = 0
        self._stopped = False
        self._lock = asyncio.Lock()  # FIFO; binds a loop only when first contended
        self._change: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def push(self, count: int) -> None:
        """Let ``count`` more items through (ignored after `stop`).

        Raises:
            TypeError: ``count`` is not an int.
            ValueError: ``count`` is negative.
        """
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"gated_aiter.push() takes an int count, not {count!r}")
        if count < 0:
            raise ValueError(f"gated_aiter.push() takes a count >= 0, not {count}")
        if not self._stopped:
            self._credit += count
            self._changed()

    def stop(self) -> None:
        """End the stream once the credit granted so far is used up; idempotent."""
        self._stopped = True
        self._changed()

    def _changed(self) -> None:
        change, self._change = self._change, None
        if change is not None and not change.done():
            change.set_result(None)

    async def __anext__(self) -> T:
        async with self._lock:
            while self._credit <= 0:
                if self._stopped or self._source is None:
                    await self.aclose()
                    raise StopAsyncIteration
                self._loop = loop = running_loop(self, self._loop)
                self._change = change = loop.create_future()
                await change
            self._credit -= 1
            source = self._source
            try:
                return await source.__anext__()  # type: ignore[union-attr]
            except asyncio.CancelledError:
                self._credit += 1  # the item was not read: the credit is still there
                raise
            except BaseException:
                await self.aclose()
                raise

    async def aclose(self) -> None:
        """End the stream and close the source; idempotent."""
        self._stopped = True
        source, self._source = self._source, None
        self._changed()
        if source is not None:
            await close_source(source)

    def _open_sources(self) -> list[object]:
        return [getattr(self, "_source", None)]

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "open"
        return f"<gated_aiter {state}, credit {self._credit}>"


class stoppable_aiter(Stream[T]):
    """``aiter`` with an off switch: after ``stop()`` the stream ends at once.

    A reader waiting for the source when `stop` is called ends right away (the pull in
    progress is cancelled and the source closed), so ``stop()`` also ends an idle stream.
    Readers queue up in order. The source is read in tasks that share one context, so its
    context variables stay consistent from item to item.

    Raises:
        TypeError: ``aiter`` is not iterable.
    """

    def __init__(self, aiter: AsyncIterable[T] | Iterable[T]) -> None:
        self._source: AsyncIterator[T] | None = adopt(aiter, "stoppable_aiter's aiter")
        self._stopped = False
        self._lock = asyncio.Lock()
        self._stop_signal: asyncio.Future[None] | None = None
        self._pull: asyncio.Task[T] | None = None  # kept when its reader was cancelled
        self._context = contextvars.copy_context()
        self._loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        """End the stream now; a waiting reader gets `StopAsyncIteration`. Idempotent."""
        self._stopped = True
        signal = self._stop_signal
        if signal is not None and not signal.done():
            signal.set_result(None)

    def is_stopped(self) -> bool:
        """Return whether `stop` was called."""
        return self._stopped

    async def __anext__(self) -> T:
        async with self._lock:
            if self._stopped or self._source is None:
                await self.aclose()
                raise StopAsyncIteration
            self._loop = loop = running_loop(self, self._loop)
            if self._stop_signal is None:
                self._stop_signal = loop.create_future()
            pull = self._pull
            if pull is None:
                pull = loop.create_task(_pull(self._source), context=self._context)
                pull.add_done_callback(consume_outcome)
                self._pull = pull
            await asyncio.wait((pull, self._stop_signal), return_when=asyncio.FIRST_COMPLETED)
            if not pull.done():  # stopped
                await self.aclose()
                raise StopAsyncIteration
            self._pull = None
            if pull.cancelled() or pull.exception() is not None:
                await self.aclose()
            return pull.result()

    async def aclose(self) -> None:
        """End the stream and close the source (cancelling a pull in progress); idempotent."""
        self._stopped = True
        pull, self._pull = self._pull, None
        if pull is not None and not pull.done():
            pull.cancel()
            await asyncio.wait((pull,))
        source, self._source = self._source, None
        if source is not None:
            await close_source(source)

    def _open_sources(self) -> list[object]:
        pull = getattr(self, "_pull", None)
        if pull is not None and not pull.done():
            return []  # cancelled below; the source is mid-step and left to its finalizer
        return [getattr(self, "_source", None)]

    def __del__(self) -> None:
        pull = getattr(self, "_pull", None)
        if pull is not None:
            cancel_soon(pull)
        super().__del__()

    def __repr__(self) -> str:
        return f"<stoppable_aiter {'stopped' if self._stopped else 'open'}>"


async def _pull(source: AsyncIterator[Any]) -> Any:
    return await source.__anext__()
