"""Maps: `map_aiter` and `map_filter_aiter`, and the engine that `parallel_map` (``_fork``) runs on.

With one worker `map_aiter` is a plain sequential map in the reader's task. With more, calls
run concurrently and are started by the reader itself, inside ``__anext__``: it starts calls
for the items the source has ready, up to the limits, and waits for whichever comes first, a
finished call or the next item, so there is no driver task and a finished result never waits
for a slow source. The source is read through a `Puller` (its own small tasks, one context),
so a cancelled read loses nothing. Two limits hold at every moment::

    calls running                          <= workers
    calls started and not yet yielded      <= window  (ordered: results wait for their turn)

The window lets later items start while an early one is slow (an ordered map that only
started item ``n + workers`` after item ``n`` was *yielded* would stall behind every slow item).

`parallel_map` (in ``_fork``) is this engine with a forked child per call: its "call" is a
`TaskFuture` seen through `to_asyncio` (`asyncio.wrap_future`, safe for a StopIteration), and
cancelling that (on an early exit, `aclose`, or when the reader is cancelled and leaves) kills
the child.

A `StopIteration` or `StopAsyncIteration` that ``map_f``, ``fn`` or ``on_error`` raises is a
`RuntimeError` at its item's place (caused by it), never the end of the stream: raised from
``__anext__`` as it is, the reader would take it for the end and lose the items after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Literal, TypeVar, overload

from .._checks import count, function
from ._base import (
    END,
    Stream,
    adopt,
    call,
    call_hook,
    cancel_soon,
    close_source,
    consume_outcome,
    killed,
    next_of,
    running_loop,
)
from ._pull import EAGER, Puller
from ._transform import flatten_aiter

__all__ = ("Mapped", "OnError", "check_on_error", "make_window", "map_aiter", "map_filter_aiter")

T = TypeVar("T")
R = TypeVar("R")

OnError = Literal["raise", "skip"] | Callable[[Any, Exception], object]
Start = Callable[[Any], "asyncio.Future[Any]"]


class Mapped(Stream[R]):
    """The engine behind the maps (see the module docstring)."""

    def __init__(
        self,
        start: Start,
        source: AsyncIterator[Any],
        *,
        workers: int,
        ordered: bool,
        window: int,
        on_error: OnError,
        kill: Callable[[], object] | None = None,
        head_start: float = 0.0,
    ) -> None:
        self._start = start
        self._kill = kill  # stops the calls without the loop (forked children), for finalizers
        self._head_start = head_start
        self._alone = head_start > 0  # the first call runs alone for up to head_start seconds
        # The source is read through a Puller: a read cancelled while the source is slow
        # leaves that pull running for the next read, and results never wait for it.
        self._puller = Puller(source)
        self._workers, self._ordered, self._window = workers, ordered, window
        self._on_error = on_error
        self._started: deque[tuple[Any, asyncio.Future[Any]]] = deque()  # in input order
        self._running: set[asyncio.Future[Any]] = set()
        self._finished: deque[tuple[Any, asyncio.Future[Any]]] = deque()  # unordered mode
        self._source_error: BaseException | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __anext__(self) -> R:
        try:
            self._loop = running_loop(self, self._loop)
            while True:
                if self._closed:
                    raise StopAsyncIteration
                # During the head start the first result goes out before any other call starts.
                ready = self._ready() if self._alone else None
                if ready is None:
                    await self._fill(1 if self._alone else self._workers)
                    ready = self._ready()
                if ready is not None:
                    self._alone = False
                    delivered, value = self._outcome(*ready)
                    if delivered:
                        return value  # type: ignore[no-any-return]
                    continue
                waits: set[asyncio.Future[Any]] = set(self._running)
                if self._puller.pending is not None:
                    waits.add(self._puller.pending)
                if not waits:
                    break
                # Wait for whichever comes first, a call or the source: a result never waits
                # for an item the source does not have yet (a producer may be waiting for it).
                timeout = self._head_start if self._alone and self._running else None
                done, _ = await asyncio.wait(
                    waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    self._alone = False  # the first call is slow: start the others now
            error = self._source_error
            await self.aclose()
            if error is not None:
                raise error
            raise StopAsyncIteration
        except asyncio.CancelledError:
            raise  # the reader may read on: a cancelled wait loses nothing
        except BaseException:
            await self.aclose()
            raise

    def _ready(self) -> tuple[Any, asyncio.Future[Any]] | None:
        if self._ordered:
            if self._started and self._started[0][1].done():
                return self._started.popleft()
            return None
        return self._finished.popleft() if self._finished else None

    def _outcome(self, item: Any, fut: asyncio.Future[Any]) -> tuple[bool, Any]:
        """Return (True, result) for a call that succeeded; apply ``on_error`` otherwise."""
        if fut.cancelled():  # not by us: we forget the calls we cancel
            self._failed(item, RuntimeError(f"the call for {item!r} was cancelled"))
        elif fut.exception() is None:
            return True, fut.result()
        else:
            self._failed(item, fut.exception())  # type: ignore[arg-type]
        return False, None

    def _failed(self, item: Any, exc: BaseException) -> None:
        if not isinstance(exc, Exception) or self._on_error == "raise":
            raise exc
        if self._on_error != "skip":
            call_hook("on_error", self._on_error, item, exc)

    async def _fill(self, workers: int) -> None:
        """Start calls for the items the source has ready, up to the limits; never blocks."""
        puller = self._puller
        while (
            puller.source is not None
            and len(self._running) < workers
            and len(self._started) + len(self._finished) < self._window
        ):
            fresh = puller.pending is None
            pull = puller.start()
            if fresh and not pull.done() and not EAGER:
                await asyncio.sleep(0)  # one turn: a source with the item ready has run
                if self._closed or puller.pending is not pull:
                    return  # closed meanwhile (by another task)
            if not pull.done():
                return
            try:
                item = puller.take()
            except Exception as exc:  # delivered after the calls already started
                self._source_error = exc
                await puller.aclose()
                return
            if item is END:
                await puller.aclose()
                return
            fut = self._start(item)
            fut.add_done_callback(consume_outcome)
            self._running.add(fut)
            self._started.append((item, fut))
            # Callbacks hold the containers, never the stream: a dropped stream is collected
            # (and its finalizer cancels the calls) even while calls are running.
            fut.add_done_callback(self._running.discard)
            if not self._ordered:
                fut.add_done_callback(functools.partial(_move, self._started, self._finished))

    async def aclose(self) -> None:
        """Cancel the calls in flight (killing forked children), wait for them, close the source.

        Idempotent; the results not yet read are dropped.
        """
        self._closed = True
        running = list(self._running)
        for fut in running:
            fut.cancel()
        if self._kill is not None:
            self._kill()
        self._started.clear()
        self._finished.clear()
        try:
            if running:
                await asyncio.wait(running)
        finally:
            await self._puller.aclose()

    def __del__(self) -> None:
        kill = getattr(self, "_kill", None)
        if kill is not None:  # first, and also when the loop is already closed
            with contextlib.suppress(Exception):
                kill()
        for fut in list(getattr(self, "_running", ())):
            cancel_soon(fut)
        puller = getattr(self, "_puller", None)
        if puller is not None:
            with contextlib.suppress(Exception):  # a finalizer must not raise
                puller.drop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._running)} running>"


class _Sequential(Stream[R]):
    """``workers=1``: one call at a time in the reader's task; no task is made."""

    def __init__(self, fn: Callable[[Any], Any], source: AsyncIterator[Any], on_error: OnError):
        self._fn, self._source, self._on_error = fn, source, on_error
        self._done = False
        self._killed: BaseException | None = None

    async def __anext__(self) -> R:
        try:
            while True:
                if self._killed is not None:
                    raise self._killed
                if self._done:
                    raise StopAsyncIteration
                try:
                    item = await next_of(self._source)
                except asyncio.CancelledError:
                    self._killed = killed(self._source)
                    raise
                try:
                    return await call(self._fn, item)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self._on_error == "raise":
                        raise
                    if self._on_error != "skip":
                        call_hook("on_error", self._on_error, item, exc)
        except asyncio.CancelledError:
            raise
        except BaseException:
            await self.aclose()
            raise

    def _open_sources(self) -> list[object]:
        return [] if getattr(self, "_done", True) else [self._source]

    async def aclose(self) -> None:
        """Close the source; idempotent."""
        if not self._done:
            self._done = True
            await close_source(self._source)


def _move(
    started: deque[tuple[Any, asyncio.Future[Any]]],
    finished: deque[tuple[Any, asyncio.Future[Any]]],
    fut: asyncio.Future[Any],
) -> None:
    for entry in started:  # at most ``window`` entries
        if entry[1] is fut:
            started.remove(entry)
            finished.append(entry)
            return


def check_on_error(where: str, on_error: object) -> None:
    """Raise `ValueError` unless ``on_error`` is "raise", "skip" or a callable."""
    if on_error not in ("raise", "skip") and not callable(on_error):
        raise ValueError(
            f'{where}: on_error must be "raise", "skip" or a callable(item, exc), not {on_error!r}'
        )


def make_window(where: str, workers: int, window: int | None) -> int:
    """Return the window (default ``2 * workers``), checked to be at least ``workers``."""
    if window is None:
        return 2 * workers
    return count(where, "window", window, minimum=workers, hint=" (at least the worker count)")


@overload
def map_aiter(  # an async map_f: its result is awaited
    map_f: Callable[[T], Awaitable[R]],
    aiter: AsyncIterable[T] | Iterable[T],
    worker_count: int = 1,
    *,
    ordered: bool = False,
    window: int | None = None,
    on_error: OnError = "raise",
) -> Stream[R]: ...


@overload
def map_aiter(
    map_f: Callable[[T], R],
    aiter: AsyncIterable[T] | Iterable[T],
    worker_count: int = 1,
    *,
    ordered: bool = False,
    window: int | None = None,
    on_error: OnError = "raise",
) -> Stream[R]: ...


def map_aiter(
    map_f: Callable[[T], Any],
    aiter: AsyncIterable[T] | Iterable[T],
    worker_count: int = 1,
    *,
    ordered: bool = False,
    window: int | None = None,
    on_error: OnError = "raise",
) -> Stream[Any]:
    """Apply ``map_f`` (sync or async) to every item of ``aiter``.

    ``map_f``'s result is awaited when it is awaitable (decided per call, so lambdas that
    return coroutines and objects with an async ``__call__`` work). With ``worker_count > 1``
    up to that many calls run at once, as tasks started by the reader; the stream's
    ``aclose()`` (or leaving ``async with``, or dropping it) cancels and awaits them.

    Args:
        map_f: The function.
        aiter: The input (async or sync iterable); owned and closed.
        worker_count: Calls running at once.
        ordered: Yield as calls finish (False, the default, as the original ``aiter`` did: its
            pipelines rely on it) or in input order (True).
        window: With ``worker_count > 1``: calls started and not yet yielded, at least
            ``worker_count`` (default twice it), so one slow item does not hold up the start
            of the next ones.
        on_error: ``"raise"``: an error stops the map (the calls in flight are cancelled)
            and is raised at its place: after the results before it when ordered. ``"skip"``
            drops the item; a callable ``on_error(item, exc)`` is called and the item dropped.

    Raises:
        TypeError: ``map_f`` is not callable, ``aiter`` is not iterable, or a count is not
            an int.
        ValueError: ``worker_count`` < 1, ``window`` < ``worker_count``, or a bad ``on_error``.
    """
    function("map_aiter()", "map_f", map_f)
    workers = count("map_aiter()", "worker_count", worker_count)
    span = make_window("map_aiter()", workers, window)
    check_on_error("map_aiter()", on_error)
    source = adopt(aiter, "map_aiter()", "aiter")
    if workers == 1:
        return _Sequential(map_f, source, on_error)

    def start(item: Any) -> asyncio.Future[Any]:
        # The stream holds its running tasks, and a finalizer that drops it cancels them.
        return asyncio.get_running_loop().create_task(call(map_f, item))

    return Mapped(start, source, workers=workers, ordered=ordered, window=span, on_error=on_error)


def map_filter_aiter(
    map_f: Callable[[T], Iterable[R] | Awaitable[Iterable[R]]],
    aiter: AsyncIterable[T] | Iterable[T],
    worker_count: int = 1,
    *,
    ordered: bool = False,
    window: int | None = None,
    on_error: OnError = "raise",
) -> Stream[R]:
    """Like `map_aiter`, but ``map_f`` returns an iterable whose items are yielded in order.

    An empty result filters the item out. The options are those of `map_aiter`.

    Raises:
        TypeError: As `map_aiter`; also, lazily, when ``map_f`` returns a non-iterable.
        ValueError: As `map_aiter`.
    """
    each: Callable[[T], Any] = map_f  # sync or async: map_aiter decides per call
    mapped: Stream[Iterable[R]] = map_aiter(
        each, aiter, worker_count, ordered=ordered, window=window, on_error=on_error
    )
    return flatten_aiter(mapped)
