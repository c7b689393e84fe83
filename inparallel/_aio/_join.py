"""`join_aiters`: merge sub-iterators that keep arriving, each read by a task of its own.

::

    outer ──(outer task)──> sub 1 ──(sub task)──┐
                            sub 2 ──(sub task)──┼──> one queue ──> reader
                            ...                 ┘

Each task iterates *and closes* its own iterator, so a source's context variables and
``finally`` blocks run in the task that iterated it. Backpressure: a sub task pushes an item
only while fewer than ``buffer`` + 1 merged items wait for the reader (one buffer for all of
them; ``0``: each item waits until the previous one was read), and reads its next item only
then; the outer task takes the next sub-iterable only then too (so an outer that yields for
ever does not run away). The
first error cancels every task; it is raised after the items already queued (several errors
that happened before the reader got there: an `ExceptionGroup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable
from typing import Any, TypeVar

from .._checks import MISSING, count, renamed
from ._base import END as _END
from ._base import (
    Stream,
    adopt,
    cancel_soon,
    close_soon,
    close_source,
    keep_task,
    next_of,
    next_or_end,
)
from ._push import Cursor, Shared

__all__ = ("join_aiters",)


T = TypeVar("T")


class _Join:
    """The state the tasks share (never the stream: a dropped stream is collected)."""

    def __init__(self, outer: AsyncIterator[Any], max_active: int | None, buffer: int) -> None:
        self.shared = Shared(math.inf)
        self.reader: Cursor[Any] = Cursor(self.shared, self.shared.tail, 0)
        self.outer: AsyncIterator[Any] | None = outer
        self.slots = None if max_active is None else asyncio.Semaphore(max_active)
        self.buffer = buffer
        self.tasks: set[asyncio.Task[None]] = set()
        self.errors: list[Exception] = []
        self.outer_done = False
        self.stopping = False  #: `stop` was called: cancellations are ours
        #: Sub-iterators handed to a task that has not run yet (by id): `stop` closes them.
        self.unstarted: dict[int, AsyncIterator[Any]] = {}

    def start(self) -> None:
        outer, self.outer = self.outer, None
        if outer is not None:
            self._spawn(self._read_outer(outer), "outer")

    def _spawn(self, coro: Any, what: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"inparallel.aio join {what}")
        self.tasks.add(keep_task(task))
        task.add_done_callback(self.tasks.discard)
        return task

    def behind(self) -> int:
        """Items merged and not yet read."""
        return self.shared.pushed - self.reader.position

    async def _room(self) -> None:
        """Wait until at most ``buffer`` merged items wait for the reader (or the end)."""
        while not self.shared.stopped and self.behind() > self.buffer:
            await self.shared.wait_mover(self)

    async def _owning(self, it: AsyncIterator[Any], body: Awaitable[None]) -> None:
        """Run a task's ``body`` over ``it``, then close ``it``; any failure fails the merge."""
        try:
            await body
        except Exception as exc:
            self.fail(exc)
        except asyncio.CancelledError:
            self.cancelled()
            raise
        finally:
            try:
                await close_source(it)
            except Exception as exc:
                self.fail(exc)

    async def _read_outer(self, outer: AsyncIterator[Any]) -> None:
        try:
            await self._owning(outer, self._take_subs(outer))
        finally:
            self.outer_done = True
            self.maybe_end()

    async def _take_subs(self, outer: AsyncIterator[Any]) -> None:
        n = 0
        while True:
            await self._room()  # a reader that falls behind holds up new sub-iterables
            sub = await next_or_end(outer)
            if sub is _END or self.shared.stopped:
                return
            n += 1
            it = adopt(sub, "join_aiters()", f"sub-iterable {n}")
            if self.slots is not None:
                await self.slots.acquire()
            self.unstarted[id(it)] = it  # before the task exists: an eager one runs now
            self._spawn(self._read_sub(it), f"sub {n}")
            await asyncio.sleep(0)  # an outer that never suspends must not hold the loop

    async def _read_sub(self, sub: AsyncIterator[Any]) -> None:
        self.unstarted.pop(id(sub), None)
        try:
            await self._owning(sub, self._merge(sub))
        finally:
            if self.slots is not None:
                self.slots.release()
            self.maybe_end()

    async def _merge(self, sub: AsyncIterator[Any]) -> None:
        shared = self.shared
        while True:
            await self._room()  # read the next item only when there is room for it
            if shared.stopped:  # another source failed
                return
            item = await next_or_end(sub)
            if item is _END:
                return
            shared.append((item,))

    def fail(self, exc: Exception) -> None:
        self.errors.append(exc)
        if len(self.errors) == 1:
            self.stopping = True  # the cancellations below are ours
            me = asyncio.current_task()
            for task in list(self.tasks):
                if task is not me:
                    task.cancel()
        self.shared.end(None)

    def cancelled(self) -> None:
        """A task was cancelled: by `stop`, or by someone else (then the stream fails)."""
        if not self.stopping:
            self.fail(RuntimeError("a task of join_aiters was cancelled; the merge is incomplete"))

    def maybe_end(self) -> None:
        me = asyncio.current_task()
        if self.outer_done and not any(t is not me and not t.done() for t in self.tasks):
            self.shared.end(None)

    async def stop(self) -> None:
        """Cancel every task and wait for them (each closes its own iterator)."""
        self.stopping = True
        outer, self.outer = self.outer, None
        if outer is not None:
            await close_source(outer)
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        # A task cancelled before its first step never ran its ``finally``: close its iterator.
        unstarted = list(self.unstarted.values())
        self.unstarted.clear()
        for it in unstarted:
            await close_source(it)


class _Joined(Stream[T]):
    def __init__(self, state: _Join) -> None:
        self._state = state
        self._started = False

    async def __anext__(self) -> T:
        state = self._state
        if not self._started:
            self._started = True
            state.start()
        try:
            item: T = await next_of(state.reader)
            return item
        except StopAsyncIteration:
            await self.aclose()
            if len(state.errors) == 1:
                error = state.errors[0]
                raise error from error.__cause__  # its own cause stays; not our context
            if state.errors:
                raise ExceptionGroup("join_aiters: several sources failed", state.errors) from None
            raise

    async def aclose(self) -> None:
        """Cancel every task, wait until each has closed its iterator; idempotent."""
        self._state.reader._detach()
        await self._state.stop()

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None:
            for task in list(state.tasks):
                cancel_soon(task)
            with contextlib.suppress(Exception):  # never read: nothing else will close it
                close_soon([state.outer, *state.unstarted.values()])


def join_aiters(
    aiter_of_aiters: AsyncIterable[AsyncIterable[T] | Iterable[T]] | Iterable[Any],
    *,
    max_active: int | None = None,
    buffer_size: int = 0,
    buffer: Any = MISSING,
) -> Stream[T]:
    """Merge the (async or sync) iterables that ``aiter_of_aiters`` yields, as items come.

    Each sub-iterable keeps its own order; the stream ends when the outer one and every
    sub-iterable have ended. Background tasks (one for the outer iterable, one per running
    sub-iterable) start at the first read and are cancelled and awaited by ``aclose()`` or
    leaving ``async with``; dropping the stream cancels them too.

    Args:
        aiter_of_aiters: The iterables to merge; it and each of them are owned and closed.
        max_active: How many sub-iterables run at once (the others wait in arrival order).
        buffer_size: How many merged items may wait for the reader beyond the next one (0:
            a sub-iterable is read once the items before were read). Sub-iterables that found
            room at the same moment may each add one more.
        buffer: The earlier name of ``buffer_size``, still accepted.

    Raises:
        TypeError: An argument has the wrong type (a non-iterable sub-iterable: lazily), or
            ``buffer_size`` and ``buffer`` are both given, differently.
        ValueError: ``max_active`` < 1 or ``buffer_size`` < 0.
    """
    where = "join_aiters()"
    if buffer is not MISSING:
        buffer_size = renamed(
            where,
            "buffer_size",
            buffer_size,
            default=0,
            other="buffer",
            given=buffer,
            note="its earlier name",
        )
    active = None if max_active is None else count(where, "max_active", max_active)
    room = count(where, "buffer_size", buffer_size, minimum=0)
    outer = adopt(aiter_of_aiters, "join_aiters()", "aiter_of_aiters")
    return _Joined(_Join(outer, active, room))
