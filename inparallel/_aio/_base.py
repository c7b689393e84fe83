"""What every async stream shares: the `Stream` protocol, owned sources, tasks and loops.

**Ownership.** A stream owns the iterator it reads and closes it (``aclose()``, or ``close()``
for a sync one) exactly once: when it is exhausted, when it fails, on ``aclose()`` and when an
``async with`` block is left. A stream that starts background tasks stops them at those same
moments, and also when it is garbage collected (a plain ``async for`` that ``break``s drops
the last reference at once), so nothing keeps running for a reader that has gone.

**Loops.** Nothing here touches a loop at construction: futures are made from the running
loop on first use, so streams can be built at import time and used inside ``asyncio.run``.

**Stray stops.** A `StopAsyncIteration` raised from ``__anext__`` ends a stream, so one that
user code raises must never get there as it is: a callable's `StopIteration` or
`StopAsyncIteration` (`call`, `call_hook`), and a sync iterator's `StopAsyncIteration`
(`next_sync`; a generator passes it on unchanged), become a `RuntimeError` caused by it, at
their place in the stream, as PEP 479 does for generators.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from .._core._errors import stray_stop

__all__ = (
    "END",
    "Stream",
    "SyncSource",
    "adopt",
    "call",
    "call_hook",
    "cancel_soon",
    "close_soon",
    "close_source",
    "consume_outcome",
    "keep_task",
    "killed",
    "name_of",
    "next_or_end",
    "next_sync",
    "report",
    "running_loop",
    "settle",
)

T = TypeVar("T")
R = TypeVar("R")

#: Background tasks that are still running: the loop holds its tasks only weakly, and a task
#: collected while pending is "destroyed but pending" instead of finishing its cleanup.
_LIVE_TASKS: set[asyncio.Task[Any]] = set()


class Stream(AsyncIterator[T]):
    """An async iterator that owns its sources, usable with ``async for`` and ``async with``.

    Leaving an ``async with`` block, or ``await stream.aclose()``, stops the stream's
    background tasks (cancelled and awaited) and closes its sources. After that, and after the
    stream has ended, ``__anext__`` raises `StopAsyncIteration`. After an error, the streams
    built on a queue (`push_aiter` and its forks, `preload_aiter`, `active_aiter`,
    `sharable_aiter`, `join_aiters`) raise it again on every read, so that every reader sees
    it; the others raise it once and then end.
    """

    def __aiter__(self) -> Stream[T]:
        return self

    async def __aenter__(self) -> Stream[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the stream and close its sources; idempotent."""

    def _open_sources(self) -> list[object]:
        """Return the sources this stream still owns and has not closed (for the finalizer)."""
        return []

    def __del__(self) -> None:
        # Dropped without aclose() (a ``break`` out of a plain ``async for``): close what we
        # own, as the loop does for an abandoned async generator.
        with contextlib.suppress(Exception):  # a finalizer must not raise
            close_soon(self._open_sources())


def adopt(iterable: AsyncIterable[T] | Iterable[T], where: str, label: str) -> AsyncIterator[T]:
    """Return an async iterator over ``iterable`` (a sync one is wrapped, and closed with it).

    ``where`` is the public call and ``label`` the argument, for the message (see ``_checks``).

    Raises:
        TypeError: ``iterable`` is neither async iterable nor iterable.
    """
    if hasattr(iterable, "__aiter__"):
        return iterable.__aiter__()
    if hasattr(iterable, "__iter__"):
        return SyncSource(iter(iterable))
    raise TypeError(
        f"{where}: {label} must be an async iterable (or an iterable), not"
        f" {type(iterable).__name__};"
        " pass an async generator, an aio stream, or a list"
    )


class SyncSource(AsyncIterator[T]):
    """A sync iterator read without yielding to the loop; ``aclose()`` closes it."""

    def __init__(self, it: Iterator[T]) -> None:
        self._it: Iterator[T] | None = it

    async def __anext__(self) -> T:
        item = self.next_now()
        if item is END:
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    def next_now(self) -> Any:
        """Return the next item, or `END` (the iterator is closed then)."""
        if self._it is None:
            return END
        item = next_sync(self._it)
        if item is END:
            self.close()
        return item

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        it, self._it = self._it, None
        close = getattr(it, "close", None)
        if close is not None:
            close()


#: What `SyncSource.next_now` returns at the end.
END: Any = object()


def next_sync(it: Iterator[T]) -> T:
    """Return ``next(it)``, or `END` when ``it`` is exhausted.

    Raises:
        RuntimeError: ``it`` raised `StopAsyncIteration` (the original is its ``__cause__``).
            A sync generator passes one on as it is (PEP 479 converts only StopIteration),
            and raised from ``__anext__`` it would end the stream in silence.
    """
    try:
        return next(it, END)
    except (StopAsyncIteration, GeneratorExit) as exc:
        raise stray_stop(exc, f"the iterator {name_of(it)}") from exc


async def next_of(source: AsyncIterator[T]) -> T:
    """Return ``await source.__anext__()``; how every tool reads a source it was given.

    Raises:
        StopAsyncIteration: ``source`` is exhausted.
        RuntimeError: ``source`` raised `GeneratorExit` (the original is its ``__cause__``):
            passed on as it is, a `BaseException`, it would kill the task reading the
            source and leave the readers waiting, or end the stream in silence.
    """
    try:
        return await source.__anext__()
    except GeneratorExit as exc:
        raise stray_stop(exc, f"the source {name_of(source)}") from exc


async def next_or_end(source: AsyncIterator[Any]) -> Any:
    """Return the next item of ``source`` (see `next_of`), or `END` when it is exhausted."""
    try:
        return await next_of(source)
    except StopAsyncIteration:
        return END


async def settle(task: asyncio.Future[Any]) -> None:
    """Wait until ``task`` is done and raise its exception, if it failed.

    The caller's own cancellation does not reach ``task``: cleanup it runs goes on.
    """
    await asyncio.wait((task,))
    error = None if task.cancelled() else task.exception()
    if error is not None:
        raise error


async def close_source(source: object) -> None:
    """Close an owned iterator: ``await aclose()``, or ``close()`` for a sync one."""
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()
        return
    close = getattr(source, "close", None)
    if close is not None:
        close()


async def call(fn: Callable[[T], R | Awaitable[R]], item: T) -> R:
    """Call ``fn(item)`` and await the result if it is awaitable (decided per call).

    Raises:
        RuntimeError: ``fn`` raised `StopIteration` or `StopAsyncIteration` (the original is
            its ``__cause__``): raised from a reader's ``__anext__``, either would end the
            stream in silence.
    """
    try:
        result = fn(item)
        if inspect.isawaitable(result):
            return await result
        return result
    except (StopIteration, StopAsyncIteration) as exc:
        raise stray_stop(exc, f"map_f {name_of(fn)}") from exc


def call_hook(what: str, fn: Callable[..., R], *args: Any) -> R:
    """Call a user's callback (``on_error``, ``next_preflight``) from a reader's ``__anext__``.

    Raises:
        RuntimeError: ``fn`` raised `StopIteration` or `StopAsyncIteration`, as in `call`.
    """
    try:
        return fn(*args)
    except (StopIteration, StopAsyncIteration) as exc:
        raise stray_stop(exc, f"{what} {name_of(fn)}") from exc


def name_of(fn: object) -> str:
    """Return a callable's qualified name (its repr if it has none), for messages."""
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def running_loop(
    owner: object, bound: asyncio.AbstractEventLoop | None
) -> asyncio.AbstractEventLoop:
    """Return the running loop, refusing one other than ``bound`` (the loop first used).

    Raises:
        RuntimeError: No loop is running, or ``owner`` was first used in another loop.
    """
    loop = asyncio.get_running_loop()
    if bound is not None and bound is not loop:
        raise RuntimeError(
            f"{owner!r} was first used in another event loop; make a new one for each loop"
            " (asyncio.run call)"
        )
    return loop


def keep_task(task: asyncio.Task[Any]) -> asyncio.Task[Any]:
    """Hold ``task`` strongly until it is done, and mark its outcome as retrieved.

    Our streams read every outcome they care about themselves; a task whose result nobody
    wanted any more (the reader left) must not log "exception was never retrieved".
    """
    _LIVE_TASKS.add(task)
    task.add_done_callback(_LIVE_TASKS.discard)
    task.add_done_callback(consume_outcome)
    return task


def report(task: asyncio.Task[Any]) -> asyncio.Task[Any]:
    """`keep_task` for cleanup nobody awaits: an error is passed to the loop's handler."""
    keep_task(task)
    task.add_done_callback(_report_error)
    return task


def _report_error(task: asyncio.Task[Any]) -> None:
    if task.cancelled() or task.exception() is None:
        return
    task.get_loop().call_exception_handler(
        {
            "message": "inparallel.aio: closing the source of a dropped stream failed",
            "exception": task.exception(),
            "task": task,
        }
    )


def consume_outcome(fut: asyncio.Future[Any]) -> None:
    """Mark a finished future's exception as retrieved (a done-callback)."""
    if not fut.cancelled():
        fut.exception()


def close_soon(sources: list[object]) -> None:
    """From a finalizer: close sync sources now, async ones in a task of this thread's loop.

    Without a running loop in this thread async sources are left to their own finalizers
    (an async generator is closed by its loop's hook).
    """
    sources = [s for s in sources if s is not None]
    if not sources:
        return
    later = []
    for source in sources:
        if hasattr(source, "aclose") and not isinstance(source, SyncSource):
            later.append(source)
        else:
            close = getattr(source, "close", None)
            if close is not None:
                close()
    if not later:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    report(loop.create_task(_close_all(later), name="inparallel.aio: close a dropped stream"))


async def _close_all(sources: list[object]) -> None:
    for source in sources:
        await close_source(source)


def killed(source: object) -> BaseException | None:
    """After a read of ``source`` was cancelled: the error to raise if that finalized it.

    Cancelling an async generator's ``__anext__`` throws the cancellation into it, and one
    that does not catch it is finished: reading on would look like a normal end of stream,
    and silently lose the rest. Queue-backed sources (`push_aiter`, the pumped streams) are
    not harmed by a cancelled read and go on.
    """
    if inspect.isasyncgen(source) and source.ag_frame is None:
        return RuntimeError(
            "a read was cancelled while it awaited this stream's source, an async generator,"
            " which that finalized: the rest of its items are lost. To read on after a"
            " cancelled read, pass the generator through sharable_aiter() or"
            " preload_aiter(), whose reads are safe to cancel"
        )
    return None


def cancel_soon(fut: asyncio.Future[Any]) -> None:
    """Cancel ``fut`` from any thread and at any time (a finalizer), if its loop still runs."""
    if fut.done():
        return
    loop = fut.get_loop()
    if loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fut.cancel()
        else:
            loop.call_soon_threadsafe(fut.cancel)
