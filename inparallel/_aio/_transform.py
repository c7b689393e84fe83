"""Sequential transforms: no tasks, every input closed when the stream ends or is closed.

`iter_to_aiter` and `aiter_to_iter` cross between sync and async iteration; `azip` and
`flatten_aiter` combine streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, TypeVar

from .._checks import count
from .._core._thread import start as start_thread
from ._base import END, Stream, adopt, close_source, killed, next_of, next_or_end, next_sync

__all__ = ("aiter_to_iter", "azip", "flatten_aiter", "iter_to_aiter")

T = TypeVar("T")


class iter_to_aiter(Stream[T]):
    """An async iterator over a sync iterable.

    Args:
        iter: The iterable; its iterator is closed (``close()``) when the stream is.
        checkpoint_every: Yield to the event loop every this many items, so a long, cheap
            iterable does not starve other tasks (by default it never suspends).
        to_thread: Run each ``next()`` in a worker thread (``asyncio.to_thread``), for
            iterators that block. A read cancelled meanwhile leaves its item for the next.

    Raises:
        TypeError: ``iter`` is not iterable, or ``checkpoint_every`` is not an int.
        ValueError: ``checkpoint_every`` is below 1.
    """

    def __init__(
        self,
        iter: Iterable[T],
        *,
        checkpoint_every: int | None = None,
        to_thread: bool = False,
    ) -> None:
        if not hasattr(iter, "__iter__"):
            raise TypeError(f"iter_to_aiter(): iter must be an iterable, not {type(iter).__name__}")
        if checkpoint_every is not None:
            count("iter_to_aiter()", "checkpoint_every", checkpoint_every, optional=True)
        self._it: Iterator[T] | None = iter.__iter__()
        self._every = checkpoint_every
        self._to_thread = to_thread
        self._read = 0
        self._pending: asyncio.Future[Any] | None = None

    async def __anext__(self) -> T:
        it = self._it
        if it is None:
            raise StopAsyncIteration
        try:
            if self._to_thread:
                if self._pending is None:
                    loop = asyncio.get_running_loop()
                    self._pending = loop.run_in_executor(None, next_sync, it)
                item = await asyncio.shield(self._pending)
                self._pending = None
            else:
                item = next_sync(it)
        except asyncio.CancelledError:
            raise
        except BaseException:
            await self.aclose()
            raise
        if item is END:
            await self.aclose()
            raise StopAsyncIteration
        self._read += 1
        if self._every is not None and self._read % self._every == 0:
            await asyncio.sleep(0)
        return item  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Close the iterator (after a ``next()`` still running in a thread); idempotent."""
        it, self._it = self._it, None
        pending, self._pending = self._pending, None
        if pending is not None:
            await asyncio.wait((pending,))
        if it is not None:
            await close_source(it)

    def _open_sources(self) -> list[object]:
        if getattr(self, "_pending", None) is not None:
            return []  # a thread is inside next(): the iterator cannot be closed now
        return [getattr(self, "_it", None)]


class _SyncView(Iterator[T]):
    def __init__(
        self, source: AsyncIterator[T], runner: asyncio.Runner | None, loop: Any, owned: bool
    ) -> None:
        self._source: AsyncIterator[T] | None = source
        self._runner, self._loop, self._owned = runner, loop, owned
        self._context = contextvars.copy_context()  # one for every step, as a Runner keeps

    def _run(self, coro: Any) -> Any:
        if self._loop is not None:
            task = self._loop.create_task(coro, context=self._context)
            try:
                return self._loop.run_until_complete(task)
            except BaseException:
                # Ctrl-C (or anything) stopped the loop mid-step: finish the step, cancelled,
                # as asyncio.Runner does, so that the source can be closed afterwards.
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        self._loop.run_until_complete(task)
                raise
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(coro)

    def __next__(self) -> T:
        if self._source is None:
            raise StopIteration
        try:
            item = self._run(next_or_end(self._source))
        except BaseException:
            self.close()
            raise
        if item is END:
            self.close()
            raise StopIteration
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the async iterator on its loop, then an owned runner; idempotent."""
        source, self._source = self._source, None
        try:
            if source is not None:
                self._run(close_source(source))
        finally:
            runner, self._runner = self._runner, None
            if runner is not None and self._owned:
                runner.close()

    def __del__(self) -> None:
        if getattr(self, "_source", None) is None and getattr(self, "_runner", None) is None:
            return
        with contextlib.suppress(Exception):  # a finalizer must not raise
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                self.close()
                return
            # Dropped inside another running loop: this thread cannot run ours, one that
            # runs no loop can (for the few steps that closing takes).
            closer = threading.Thread(target=self.close, name="inparallel.aio closer")
            start_thread(closer)
            closer.join()


def aiter_to_iter(
    aiter: AsyncIterable[T],
    loop: asyncio.AbstractEventLoop | None = None,
    *,
    runner: asyncio.Runner | None = None,
) -> Iterator[T]:
    """Return a sync iterator over ``aiter``, for code that runs no event loop.

    Each ``next()`` runs the loop until the next item: on ``runner`` if given, on ``loop``
    (a loop that is not running) if given, else on a runner of its own, closed with the
    iterator. Closing the iterator (``close()``, or dropping it) closes ``aiter`` on the same
    loop first. Background tasks of ``aiter`` only run during ``next()``.

    Raises:
        RuntimeError: An event loop is running in this thread (``await`` the stream there).
        TypeError: ``aiter`` is not async iterable, or both ``loop`` and ``runner`` given.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "aiter_to_iter() cannot drive a stream inside a running event loop;"
            " use 'async for' there instead"
        )
    if loop is not None and runner is not None:
        raise TypeError("aiter_to_iter(): give loop= or runner=, not both")
    if not hasattr(aiter, "__aiter__"):
        raise TypeError(
            f"aiter_to_iter(): aiter must be an async iterable, not {type(aiter).__name__}"
        )
    return _SyncView(aiter.__aiter__(), runner, loop, owned=runner is None)


class azip(Stream[tuple[Any, ...]]):
    """Zip async (or sync) iterables: tuples of one item from each, as slow as the slowest.

    The inputs are read one after another in argument order (so zipping an iterator with
    itself works) and every one is closed at the end, the longer ones included.

    Args:
        aiters: The inputs.
        strict: Raise `ValueError` when the inputs have different lengths.

    Raises:
        TypeError: An input is not iterable.
    """

    def __init__(self, *aiters: AsyncIterable[Any] | Iterable[Any], strict: bool = False):
        self._sources: list[AsyncIterator[Any]] | None = []
        for n, source in enumerate(aiters, 1):
            self._sources.append(adopt(source, "azip()", f"argument {n}"))
        self._strict = strict
        self._values: list[Any] = []  # the tuple being filled, kept across a cancelled read
        self._broken: BaseException | None = None

    async def __anext__(self) -> tuple[Any, ...]:
        sources = self._sources
        if self._broken is not None:
            await self.aclose()
            raise self._broken
        if not sources:
            await self.aclose()
            raise StopAsyncIteration
        values = self._values
        try:
            for n, source in enumerate(sources[len(values) :], len(values) + 1):
                try:
                    values.append(await next_of(source))
                except StopAsyncIteration:
                    if self._strict:
                        await self._check_all_ended(n)
                    raise
                except asyncio.CancelledError:
                    self._broken = killed(source)
                    raise
        except asyncio.CancelledError:
            raise  # the items already read wait for the next read
        except BaseException:
            await self.aclose()
            raise
        self._values = []
        return tuple(values)

    async def _check_all_ended(self, ended: int) -> None:
        assert self._sources is not None
        if ended > 1:
            raise ValueError(f"azip() argument {ended} is shorter than argument 1")
        for n, source in enumerate(self._sources[1:], 2):
            try:
                await next_of(source)
            except StopAsyncIteration:
                continue
            raise ValueError(f"azip() argument {n} is longer than argument 1")

    def _open_sources(self) -> list[object]:
        return list(getattr(self, "_sources", None) or ())

    async def aclose(self) -> None:
        """Close every input; idempotent."""
        sources, self._sources = self._sources, None
        errors = []
        for source in sources or ():
            try:
                await close_source(source)
            except Exception as exc:  # close the others first, then report it
                errors.append(exc)
        if errors:
            raise errors[0]


class flatten_aiter(Stream[T]):
    """Yield the items of each iterable (sync or async) that ``aiter`` produces, in order.

    One level only. An element that is not iterable raises `TypeError` (the original skipped
    it silently). Closing the stream closes the current inner async iterable and ``aiter``.

    Raises:
        TypeError: ``aiter`` is not iterable.
    """

    def __init__(self, aiter: AsyncIterable[Iterable[T] | AsyncIterable[T]] | Iterable[Any]):
        self._outer: AsyncIterator[Any] | None = adopt(aiter, "flatten_aiter()", "aiter")
        self._inner: AsyncIterator[T] | Iterator[T] | None = None
        self._broken: BaseException | None = None

    async def __anext__(self) -> T:
        try:
            while True:
                if self._broken is not None:
                    raise self._broken
                if self._outer is None:
                    raise StopAsyncIteration
                inner = self._inner
                if inner is None:
                    self._inner = inner = _open(await self._awaited(self._outer))
                if isinstance(inner, Iterator):
                    item = next_sync(inner)
                else:
                    try:
                        item = await self._awaited(inner)
                    except StopAsyncIteration:
                        item = END
                if item is not END:
                    return item
                self._inner = None
                await close_source(inner)
        except asyncio.CancelledError:
            raise  # nothing read is lost: the next read goes on where this one was
        except BaseException:
            await self.aclose()
            raise

    async def _awaited(self, source: AsyncIterator[Any]) -> Any:
        try:
            return await next_of(source)
        except asyncio.CancelledError:
            self._broken = killed(source)
            raise

    def _open_sources(self) -> list[object]:
        return [getattr(self, "_inner", None), getattr(self, "_outer", None)]

    async def aclose(self) -> None:
        """Close the current inner iterable and the outer one; idempotent."""
        inner, self._inner = self._inner, None
        outer, self._outer = self._outer, None
        try:
            if inner is not None:
                await close_source(inner)
        finally:
            if outer is not None:
                await close_source(outer)


def _open(element: Any) -> AsyncIterator[Any] | Iterator[Any]:
    if hasattr(element, "__aiter__"):
        it: AsyncIterator[Any] = element.__aiter__()
        return it
    if hasattr(element, "__iter__"):
        sync: Iterator[Any] = iter(element)
        return sync
    raise TypeError(
        f"flatten_aiter: an element is not iterable: {element!r} ({type(element).__name__});"
        " each element must be an iterable or an async iterable"
    )
