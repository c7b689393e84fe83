"""Flow control without background tasks: `gated_aiter` (credits) and `stoppable_aiter`.

Both read their source through a `Puller`, one reader at a time (a FIFO lock), so they work
with a plain ``async for``: a read cancelled while the source is slow leaves the pull for the
next read, and ``aclose()`` (or ``stop()`` on the stoppable one) ends a read in progress at
once, with `StopAsyncIteration`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, TypeVar

from .. import _checks as checks
from ._base import END, Stream, adopt, running_loop
from ._pull import Puller

__all__ = ("gated_aiter", "stoppable_aiter")

T = TypeVar("T")


class _Switched(Stream[T]):
    """A stream read through a `Puller`, ended early by `_end` (wakes a waiting reader)."""

    def __init__(self, source: AsyncIterator[T]) -> None:
        self._puller = Puller(source)
        self._ended = False
        self._lock = asyncio.Lock()  # FIFO; binds a loop only when first contended
        self._change: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _changed(self) -> None:
        change, self._change = self._change, None
        if change is not None and not change.done():
            change.set_result(None)

    async def _wait_change(self, *also: asyncio.Future[Any]) -> None:
        self._loop = loop = running_loop(self, self._loop)
        change = self._change
        if change is None or change.done():
            change = self._change = loop.create_future()
        if not also:
            await asyncio.shield(change)  # readers take turns: one waits on it at a time
            return
        await asyncio.wait((change, *also), return_when=asyncio.FIRST_COMPLETED)

    async def _read(self) -> T:
        """Read one item, or end if `_end` is called meanwhile (the pull is then cancelled)."""
        pull = self._puller.start()
        while not pull.done() and not self._ended:
            await self._wait_change(pull)
        if self._ended:
            await self.aclose()
            raise StopAsyncIteration
        try:
            item = self._puller.take()
        except BaseException:
            await self.aclose()
            raise
        if item is END:
            await self.aclose()
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    def _end(self) -> None:
        self._ended = True
        self._changed()

    async def aclose(self) -> None:
        """End the stream, a read in progress included, and close the source; idempotent."""
        self._end()
        await self._puller.aclose()

    def __del__(self) -> None:
        puller = getattr(self, "_puller", None)
        if puller is not None:
            with contextlib.suppress(Exception):  # a finalizer must not raise
                puller.drop()


class gated_aiter(_Switched[T]):
    """A gate over ``aiter``: ``push(n)`` lets ``n`` more items through; ``stop()`` ends it.

    A read waits until there is credit, spends one and only then reads the source, so the
    source is read exactly as many times as credit was granted (the original read one extra
    item, which ``stop()`` then lost). A read cancelled while it waits for the source keeps
    its credit spent on that pull, whose item goes to the next read. ``stop()`` ends the
    stream once the credit already granted is used; readers waiting without credit end at
    once. ``push()`` after ``stop()`` is ignored.

    Raises:
        TypeError: ``aiter`` is not iterable.
    """

    def __init__(self, aiter: AsyncIterable[T] | Iterable[T]) -> None:
        super().__init__(adopt(aiter, "gated_aiter()", "aiter"))
        self._credit = 0
        self._stopped = False

    def push(self, count: int) -> None:
        """Let ``count`` more items through (ignored after `stop`).

        Raises:
            TypeError: ``count`` is not an int.
            ValueError: ``count`` is negative.
        """
        checks.count("gated_aiter.push()", "count", count, minimum=0)
        if not self._stopped:
            self._credit += count
            self._changed()

    def stop(self) -> None:
        """End the stream once the credit granted so far is used up; idempotent."""
        self._stopped = True
        self._changed()

    async def __anext__(self) -> T:
        async with self._lock:
            if self._puller.pending is None:  # else: a cancelled read's pull, already paid
                while self._credit <= 0 and not self._ended:
                    if self._stopped:
                        await self.aclose()
                        raise StopAsyncIteration
                    await self._wait_change()
                if self._ended:
                    raise StopAsyncIteration
                self._credit -= 1
            return await self._read()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "open"
        return f"<gated_aiter {state}, credit {self._credit}>"


class stoppable_aiter(_Switched[T]):
    """``aiter`` with an off switch: after ``stop()`` the stream ends at once.

    A reader waiting for the source when `stop` is called ends right away (the pull in
    progress is cancelled and the source closed), so ``stop()`` also ends an idle stream.
    Readers queue up in order.

    Raises:
        TypeError: ``aiter`` is not iterable.
    """

    def __init__(self, aiter: AsyncIterable[T] | Iterable[T]) -> None:
        super().__init__(adopt(aiter, "stoppable_aiter()", "aiter"))

    def stop(self) -> None:
        """End the stream now; a waiting reader gets `StopAsyncIteration`. Idempotent."""
        self._end()

    def is_stopped(self) -> bool:
        """Return whether `stop` (or ``aclose()``) was called."""
        return self._ended

    async def __anext__(self) -> T:
        async with self._lock:
            if self._ended:
                await self.aclose()
                raise StopAsyncIteration
            return await self._read()

    def __repr__(self) -> str:
        return f"<stoppable_aiter {'stopped' if self._ended else 'open'}>"
