"""The machinery behind `StreamExecutor.map`: a feeder thread, its state, and the iterator.

Data flow::

    map() ------- starts -------> feeder thread (daemon)
                                    waits for room (at most ``buffer_size`` items ahead)
                                    pulls a chunk of the zipped inputs
                                    _submit_mapped(fn, ...) ---> executor: a future
    next(iterator) <-- futures --   appends the future to ``futures``, in input order
      waits on the oldest future;
      consuming it makes room

The feeder is a daemon thread: a map nobody reads never blocks interpreter exit, and a feeder
stuck inside ``next()`` of its input is abandoned safely (it submits nothing once it comes
back). An abandoned map (closed, garbage-collected, timed out, or ended by an error) stops its
feeder and cancels the calls it submitted ahead (killing the children of running ones).

A `StopIteration` raised by the mapped function is that item's error, like any other: raised
from ``__next__`` as it is, it would end the iteration in silence and lose every later result,
so it arrives as a `RuntimeError` caused by it, as PEP 479 does for generators.

Locks: a map's ``cond`` is never held while the executor's lock is taken. Both are
re-entrant, because a map's finalizer may run (garbage collection of a cycle) in a thread that
already holds one of them.
"""

from __future__ import annotations

import contextvars
import os
import pickle
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, wait
from itertools import islice
from typing import Any, Protocol

from ._checks import HEAD_START
from ._core._channel import load_error, pack_error, pack_values, unpack_values
from ._core._errors import stray_stop
from ._core._interrupts import atomic
from ._core._thread import start as start_thread

__all__ = ("Host", "MapIterator", "MapState", "cut_off", "run_chunk", "unpack_chunk")


class Host(Protocol):
    """What a map needs of a `StreamExecutor`."""

    forks: bool  # calls run in forked children (a chunk's error then travels packed)

    def _submit_mapped(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        """Submit one call of a map (accepted after ``shutdown()`` unless it cancelled)."""

    def _map_settled(self) -> None:
        """Tell a waiting ``shutdown(wait=True)`` that a map may have settled."""


def run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]], pack: bool) -> tuple[Any, Any]:
    """Run a chunk of calls; return the values up to the first error, and that error.

    A plain loop, not ``itertools.starmap``: a `StopIteration` from ``fn`` would end starmap in
    silence and lose the rest of the chunk; here it is the item's error like any other. In a
    child (``pack``) values and error travel packed, as a map worker's do (`pack_values`,
    `pack_error`), so that the values before a value or an exception that will not pickle
    still arrive; `unpack_chunk` undoes it.
    """
    values: list[Any] = []
    append = values.append
    error: BaseException | None = None
    try:
        for args in chunk:
            append(fn(*args))
    except BaseException as exc:  # belongs to the item after the last value
        error = exc
    if not pack:
        return values, error
    packed = pack_values(values, "the mapped function returned")
    if packed.error is not None:  # an earlier item than the function's error, if any
        error = packed.error
    # Out-of-band buffers travel as such again (PickleBuffer), not copied into the pickle.
    parts = [p if isinstance(p, bytes) else pickle.PickleBuffer(p) for p in packed.parts]
    return (packed.whole, packed.layout, parts), None if error is None else pack_error(error)


def unpack_chunk(result: tuple[Any, Any]) -> tuple[list[Any], BaseException | None]:
    """Rebuild `run_chunk`'s outcome in the parent: the values, and the error after them."""
    values, error = result
    if isinstance(values, tuple):  # packed in a child
        whole, layout, parts = values
        values, failure = unpack_values(whole, layout, [memoryview(p) for p in parts])
        if failure is not None:  # a value that will not load here fails at its position
            return values, failure
    return values, load_error(error) if isinstance(error, tuple) else error


def cut_off() -> CancelledError:
    """Return the error that ends a map cut off by ``shutdown(cancel_futures=True)``."""
    return CancelledError(
        "StreamExecutor.shutdown(cancel_futures=True) cut this map off before its input ended"
    )


class MapState:
    """What the feeder thread and the consumer share (the iterator itself is not shared).

    Fields change under ``cond``; the executor reads `settled` without it (see `_room`).
    """

    def __init__(
        self, executor: Host, fn: Callable[..., Any], chunksize: int, limit: int | None
    ) -> None:
        self.cond = threading.Condition()  # re-entrant: see the module docstring
        self.futures: deque[tuple[Future[Any], int]] = deque()
        self.ahead = 0  # items pulled (or being pulled) and not yet consumed
        self.limit = limit
        self.chunksize = chunksize
        self.chunked = chunksize > 1  # each future holds a list of values
        name = getattr(getattr(fn, "__wrapped__", fn), "__qualname__", None)
        self.name = (
            f"the mapped function {name}()" if isinstance(name, str) else "the mapped function"
        )
        self.fed = False  # the feeder has ended
        self.idle = False  # the feeder waits for the consumer to make room
        self.stopped = False  # abandoned: nothing more is submitted or delivered
        self.halted = False  # cut off by shutdown(cancel_futures=True): nothing more submitted
        self.end: BaseException | None = None  # raised after the futures (the first one wins)
        self._executor = executor

    @property
    def over(self) -> bool:
        """Whether no future will be added any more."""
        return self.fed or self.stopped or self.halted

    @property
    def settled(self) -> bool:
        """Whether the feeder is over or waits for the consumer (``shutdown(wait=True)``)."""
        return self.idle or self.over

    def start(self, fn: Callable[..., Any], items: Iterator[tuple[Any, ...]]) -> None:
        """Start the feeder thread.

        Raises:
            RuntimeError: No thread could be started.
        """
        feeder = threading.Thread(
            # In a copy of the caller's context: the engine selected by inparallel.use()
            # around map() is the one the feeder submits to.
            target=contextvars.copy_context().run,
            args=(self._feed, fn, items),
            name="inparallel-stream-feeder",
            daemon=True,
        )
        start_thread(feeder)

    def _feed(self, fn: Callable[..., Any], items: Iterator[tuple[Any, ...]]) -> None:
        error: BaseException | None = None
        try:
            first = True
            while (take := self._room()) and self._feed_chunk(fn, items, take, first):
                first = False
                # Let the supervisor and the consumer in: filling a big buffer would otherwise
                # hold the GIL for tens of ms at a time and delay the first results.
                os.sched_yield()
        except BaseException as exc:  # submit refused (shutdown cancelled) or could not fork
            error = exc
        finally:
            self._finish(error)

    def _room(self) -> int:
        """Wait until there is room ahead; return how many items to pull (0: feed no more)."""
        while True:
            with self.cond:
                while self._full() and self.idle:
                    self.cond.wait()
                if not self._full():
                    self.idle = False
                    if self.stopped or self.halted:
                        return 0
                    limit, size = self.limit, self.chunksize
                    take = size if limit is None else min(size, limit - self.ahead)
                    self.ahead += take
                    return take
                self.idle = True
            # Set before the executor reads its shutdown flag in there, so a shutdown that
            # began meanwhile has either seen `settled` or is woken now.
            self._executor._map_settled()

    def _full(self) -> bool:
        limit = self.limit
        return limit is not None and self.ahead >= limit and not (self.stopped or self.halted)

    def _feed_chunk(
        self, fn: Callable[..., Any], items: Iterator[tuple[Any, ...]], take: int, first: bool
    ) -> bool:
        """Pull up to ``take`` items and submit them as one call; return whether to go on.

        Its locals die when it returns: neither the chunk nor the future (nor so the result)
        stays referenced while the feeder waits for room or for its input.
        """
        chunk: list[tuple[Any, ...]] = []
        complete = True
        try:
            chunk.extend(islice(items, take))
        except BaseException as exc:  # the input's error: raised after the results before it
            self._record(exc)  # (the items pulled before it still go out below)
            complete = False
        if not chunk:
            return False
        executor = self._executor
        if self.chunked:
            future = executor._submit_mapped(run_chunk, (fn, chunk, executor.forks))
        else:
            future = executor._submit_mapped(fn, chunk[0])
        entry = (future, len(chunk))  # allocated before the lock: a finalizer run by the
        with self.cond:  # collector in there could otherwise miss this future (see `stop`)
            self.ahead -= take - len(chunk)
            stopped = self.stopped
            if not stopped:
                self.futures.append(entry)
                self.cond.notify_all()
        if stopped:  # stop() ran while we pulled or submitted
            future.cancel()
            return False
        if first:
            wait([future], timeout=HEAD_START)
        return complete and len(chunk) == take

    def _record(self, error: BaseException) -> None:
        with self.cond:
            if self.end is None and not self.stopped:
                self.end = error

    def _finish(self, error: BaseException | None) -> None:
        with self.cond:
            if error is not None and self.end is None and not self.stopped:
                self.end = error
            self.fed = True
            self.cond.notify_all()
        self._executor._map_settled()

    def release(self, n: int) -> None:
        """``n`` items were consumed (or will never be): the feeder may pull that many more."""
        if n:
            with self.cond:
                self.ahead -= n
                self.cond.notify_all()

    def stop(self) -> None:
        """Abandon the map: the feeder stops, every call submitted ahead is cancelled."""
        with self.cond:
            self.stopped = True
            self.end = None  # an error not yet raised: the map is over anyway
            futures = [f for f, _ in self.futures]
            self.futures.clear()
            self.cond.notify_all()
        # Latest first: the queued calls are cancelled before a killed running one frees a
        # slot that the dispatcher could give them.
        for future in reversed(futures):
            future.cancel()
        self._executor._map_settled()

    def cut(self) -> None:
        """Submit nothing more; the map ends with `CancelledError` after what was submitted."""
        with self.cond:
            if self.fed or self.stopped:
                return
            self.halted = True
            if self.end is None:
                self.end = cut_off()
            self.cond.notify_all()


class MapIterator(Iterator[Any]):
    """The results of one `StreamExecutor.map`, in input order; use it from one thread."""

    def __init__(self, state: MapState, deadline: float | None) -> None:
        self._state, self._deadline = state, deadline
        self._values: deque[Any] = deque()
        self._error: BaseException | None = None
        self._pid = os.getpid()
        self._finalizer = weakref.finalize(self, _stop, state, self._pid)

    def __iter__(self) -> MapIterator:
        return self

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def __next__(self) -> Any:
        if self._pid != os.getpid():  # its feeder and its futures are not this process's
            raise RuntimeError(
                "this StreamExecutor map was started in another process (a fork inherited"
                " it); start the map in the process that reads it"
            )
        try:
            return self._next()
        except BaseException:
            # Whatever leaves here ends the map: its end, an item's error, a timeout, or a
            # Ctrl-C (which may come after an item was taken: that item must not be skipped
            # in silence by the next call).
            self.close()
            raise

    def _next(self) -> Any:
        if self._values:
            self._state.release(1)
            return self._values.popleft()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        state = self._state
        future, count = self._head()
        try:
            result = future.result(self._remaining())
        except StopIteration as exc:  # raised by fn: this item's error, not the end
            raise stray_stop(exc, state.name) from exc
        with state.cond:
            state.futures.popleft()
            if not state.chunked:
                state.ahead -= count
                state.cond.notify_all()
        if not state.chunked:
            return result
        values, loaded = unpack_chunk(result)
        state.release(count - len(values))  # items after an error are never delivered
        self._values.extend(values)
        if loaded is not None:  # the values before it first, then the error; then the end
            if isinstance(loaded, StopIteration):
                loaded = stray_stop(loaded, state.name)
            self._error = loaded
            self._finalizer()
        return self._next()  # a value, or the error: a chunk holds at least one item

    def _head(self) -> tuple[Future[Any], int]:
        """Wait for the oldest future; when none will come, raise what ends the map."""
        state = self._state
        with state.cond:
            while not state.futures and not state.over:
                remaining = self._remaining()
                if remaining == 0.0:
                    break
                state.cond.wait(remaining)
            if state.futures:
                return state.futures[0]
            end, state.end = state.end, None
            over = state.over
        if not over:
            raise TimeoutError("StreamExecutor.map timed out waiting for its input")
        if isinstance(end, StopIteration):  # not the input's (islice ends on those): an engine's
            raise stray_stop(end, "the engine running a StreamExecutor.map") from end
        if end is not None:
            raise end
        raise StopIteration

    @atomic
    def close(self) -> None:
        """Stop the feeder and cancel every call submitted ahead; the map ends here.

        A Ctrl-C meanwhile is held until every call is cancelled (see `_core._interrupts`).
        """
        self._values.clear()
        self._error = None
        self._finalizer()


def _stop(state: MapState, pid: int) -> None:
    if pid == os.getpid():  # in a fork that inherited it, nothing of it is ours to stop
        state.stop()
