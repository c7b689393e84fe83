"""The bridge to forked tasks: `parallel_map` runs ``fn`` in one forked child per item.

Awaiting a single `TaskFuture` needs nothing from here (``await fut``; cancelling the
awaiting task kills the child). `parallel_map` uses the map engine of `_map` with a fork as
its "call": the reader forks lazily, at most ``concurrency`` children are alive at once, and
every way out (the end, an error, ``break`` and garbage collection, ``aclose()``, ``async
with``, cancellation of the reader followed by leaving) kills the children still running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from .._checks import HEAD_START, count, function
from .._core._bridge import to_asyncio
from .._core._options import TaskOptions
from .._core._spawn import spawn
from .._executor import portable, selected
from .._task import unwrap_task
from ._base import Stream, adopt, name_of
from ._map import Mapped, OnError, check_on_error, make_window

__all__ = ("parallel_map",)

T = TypeVar("T")
R = TypeVar("R")

_DEFAULTS = TaskOptions()


def parallel_map(
    fn: Callable[[T], R],
    aiterable: AsyncIterable[T] | Iterable[T],
    /,
    *,
    concurrency: int,
    ordered: bool = True,
    window: int | None = None,
    on_error: OnError = "raise",
    executor: Executor | str | None = None,
) -> Stream[R]:
    """Run ``fn(item)`` in a forked child for every item, at most ``concurrency`` at once.

    Each child is a fork of this process at the moment its item is started: ``fn``, the item
    and everything they reach are inherited, not pickled; only the result travels back. A
    ``@task(...)``-decorated ``fn`` keeps its options (timeout, memory limit, ...) and is forked
    once, not twice. Children are forked by the reader, from the loop's thread, as room frees
    up (each fork holds the loop for about a millisecond, more for a big process).

    Args:
        fn: The function, run in the children.
        aiterable: The items (async or sync iterable, may be infinite); owned and closed.
        concurrency: Children alive at once.
        ordered: Yield in input order (True) or as children finish (False).
        window: Items started and not yet yielded (default ``2 * concurrency``, at least
            ``concurrency``): with ``ordered=True`` later items go on starting while an
            early one is slow, and memory stays bounded for infinite inputs.
        on_error: As for `map_aiter` (an error raised by the child, `WorkerDied`, ...). A
            `StopIteration` or `StopAsyncIteration` raised by ``fn`` is a `RuntimeError`
            caused by it, at its item's place.
        executor: Submit each call to this engine instead of forking it (``fn`` and the
            items must then pickle); default: the engine selected where ``parallel_map`` is
            called (fork, unless `inparallel.use` or ``INPARALLEL_EXECUTOR`` says otherwise).

    Returns:
        A stream; use ``async with`` (or ``aclose()``) to kill the children still running
        when you stop early. Dropping it (``break`` in a plain ``async for``) kills them too.

    Raises:
        TypeError: ``fn`` is not callable, ``aiterable`` is not iterable, or a count is not
            an int.
        ValueError: ``concurrency`` < 1, ``window`` < ``concurrency``, or a bad ``on_error``.
    """
    function("parallel_map()", "fn", fn)
    workers = count("parallel_map()", "concurrency", concurrency)
    span = make_window("parallel_map()", workers, window)
    check_on_error("parallel_map()", on_error)
    engine = selected(executor, "parallel_map()")
    target, own = unwrap_task(fn)
    options = own or _DEFAULTS
    source = adopt(aiterable, "parallel_map()", "aiterable")
    alive: set[Future[Any]] = set()

    what = f"parallel_map's fn {name_of(fn)}"

    def start(item: Any) -> asyncio.Future[Any]:
        if engine is None:
            child: Future[Any] = spawn(target, (item,), {}, options)
        else:
            child = engine.submit(portable(fn), item)
        alive.add(child)
        child.add_done_callback(alive.discard)  # on the supervisor thread: one atomic call
        # Not asyncio.wrap_future: a child's StopIteration would never arrive (asyncio
        # refuses to store it), and its StopAsyncIteration would end the stream quietly.
        return to_asyncio(child, asyncio.get_running_loop(), what)

    def kill() -> None:
        for child in list(alive):
            child.cancel()  # kills a running child; thread-safe, needs no loop

    return Mapped(
        start,
        source,
        workers=workers,
        ordered=ordered,
        window=span,
        on_error=on_error,
        kill=kill,
        head_start=HEAD_START,
    )
