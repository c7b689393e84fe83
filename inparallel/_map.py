"""Parallel map: `thread_map`, `process_map`, and the lazy, indexable `ItemizedMap`.

One *pass* is one parallel run over the input, driven entirely by the consumer's thread: each
``next()`` tops the pool up with chunks (pulling input only then), waits for finished chunks and
yields their values. No background thread of the map's own is ever started, so there is
nothing to leak on an early ``break``, and for the process pool every fork happens from the
consumer's thread. A pass holds at most ``buffer_size`` items that were pulled but not yet
yielded: that bounds both the results computed ahead and the input read ahead, so an infinite
input maps in constant memory.

Chunk size adapts unless given: a pass starts with one item per chunk (the first result comes
back at once) and then aims at `TARGET_CHUNK_SECONDS` of work per chunk, measured by the
workers, within the buffer and, for inputs of known length, small enough that every worker
gets a share of what is left.

Errors belong to their position. In order (the default), a pass yields every earlier value,
then raises the error and ends; with ``ordered=False`` it first yields every value already
computed or in flight, then raises. Either way nothing computed before the error is lost.
"""

from __future__ import annotations

import math
import os
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, overload

from ._pools import Chunk, Done, Indexed, ItemNotPicklable, ProcessPool, ThreadPool
from ._progress import Progress, open_progress

__all__ = ("ItemizedMap", "MapIterator", "is_indexable", "process_map", "thread_map")

R = TypeVar("R")

#: Seconds of work an automatic chunk aims at: long enough that the per-chunk cost (a message
#: each way, about 50 us) is noise, short enough that the consumer sees results steadily.
TARGET_CHUNK_SECONDS = 0.02

#: Largest automatic chunk: bounds the memory one chunk of results takes.
MAX_CHUNK = 4096

Engine = Literal["thread", "process"]


def is_indexable(obj: object) -> bool:
    """Whether ``obj`` has ``__getitem__`` and ``__len__`` and is not a mapping."""
    cls = type(obj)
    return (
        hasattr(cls, "__getitem__")
        and hasattr(cls, "__len__")
        and not hasattr(cls, "keys")  # a dict indexes by key, not by position
    )


class _Failure:
    """An error that takes the place of a value in the output."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


@dataclass(frozen=True, slots=True, kw_only=True)
class _Options:
    engine: Engine
    workers: int
    buffer_size: int | None
    chunksize: int | None
    ordered: bool
    progress: bool


class MapIterator(Iterator[R]):
    """One parallel pass: an iterator over ``fn``'s results, with `close` and ``with``.

    ``next()`` blocks until the next result is computed (in order, or in completion order with
    ``ordered=False``) and raises the error of an item at that item's position; after the end
    or an error it raises `StopIteration` for ever. Use it from one thread. Dropping it (or
    `close`, or leaving a ``with`` block, or ``break`` in a loop that owns the last reference)
    stops the workers at once: worker processes are killed, worker threads stop after their
    current chunk.
    """

    def __init__(
        self,
        fn: Callable[..., R],
        inputs: Indexed | Iterator[tuple[Any, ...]],
        options: _Options,
        name: str,
    ) -> None:
        self._fn, self._options = fn, options
        self._source = inputs if isinstance(inputs, Indexed) else None
        self._items = None if isinstance(inputs, Indexed) else inputs
        self._length = len(inputs) if isinstance(inputs, Indexed) else None
        workers = options.workers
        if self._length is not None:
            workers = max(1, min(workers, self._length))
        self._workers = workers
        if options.engine == "process":
            pool: ThreadPool | ProcessPool = ProcessPool(fn, self._source, workers, name)
        else:
            pool = ThreadPool(fn, self._source, workers)
        self._pool = pool
        self._finalizer = weakref.finalize(self, pool.close, True)
        self._progress: Progress = open_progress(
            options.progress, total=self._length, desc=name, stacklevel=4
        )
        self._pulled = 0  # positions handed to the pool (or found to be past the end)
        self._yielded = 0
        self._limit: int | None = self._length  # no position at or past it is dispatched
        self._chunk = options.chunksize or 1
        self._in_flight = 0  # chunks submitted and not yet returned
        self._finished: dict[int, Done] = {}  # ordered: done chunks by start, not yet yielded
        self._next_start = 0
        self._ready: deque[Any] = deque()
        self._late_errors: list[BaseException] = []  # ordered=False: raised after the values
        self._failed = False  # an error is known: dispatch nothing more
        self._settled = False  # ordered: the error is next in line; later chunks are moot
        self._done = False

    def __repr__(self) -> str:
        state = "done" if self._done else f"{self._yielded} yielded, {self._pulled} pulled"
        return f"<MapIterator {self._options.engine} x{self._workers}: {state}>"

    def __iter__(self) -> MapIterator[R]:
        return self

    def __next__(self) -> R:
        while not self._ready:
            if self._done:
                raise StopIteration
            self._dispatch()
            if self._in_flight == 0:
                self._finish()
                continue
            self._collect(self._pool.wait())
        value = self._ready.popleft()
        if isinstance(value, _Failure):
            self.close()
            raise value.error
        self._yielded += 1
        self._progress.update()
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the pass now: kill worker processes, tell worker threads to stop."""
        if not self._done:
            self._done = True
            self._ready.clear()
            self._finished.clear()
        self._finalizer()
        self._progress.close()

    def __enter__(self) -> MapIterator[R]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- dispatch ----------------------------------------------------------------------------

    def _buffer(self) -> int:
        if self._options.buffer_size is not None:
            return self._options.buffer_size
        return max(16, 4 * self._workers * self._chunk)

    def _chunk_size(self, room: int) -> int:
        size = min(self._chunk, room)
        if self._limit is not None:
            left = self._limit - self._pulled
            if self._options.chunksize is None:  # share the tail among the workers
                size = min(size, math.ceil(left / self._workers))
            size = min(size, left)
        return max(size, 1)

    def _dispatch(self) -> None:
        """Submit chunks while the pool has room, the buffer allows, and input remains."""
        while not self._failed and self._pool.slots() > 0:
            if self._limit is not None and self._pulled >= self._limit:
                return
            room = self._buffer() - (self._pulled - self._yielded)
            if room <= 0:
                return
            size = self._chunk_size(room)
            start = self._pulled
            if self._items is None:
                chunk = Chunk(start, start + size)
            else:
                items = self._pull(size)
                if not items:
                    return
                chunk = Chunk(start, start + len(items), items)
            self._submit(chunk)

    def _pull(self, size: int) -> list[tuple[Any, ...]]:
        assert self._items is not None
        items: list[tuple[Any, ...]] = []
        try:
            items.extend(islice(self._items, size))
        except Exception as exc:  # the input's own error, raised at its position (not Ctrl-C)
            self._fail_at(self._pulled + len(items), exc)
            return items
        if len(items) < size:
            self._limit = self._pulled + len(items)  # the input is exhausted
        return items

    def _submit(self, chunk: Chunk) -> None:
        try:
            self._pool.submit(chunk)
        except ItemNotPicklable as bad:
            error = bad.error
            error.add_note(
                f"process_map could not send input item {chunk.start + bad.index} to a worker:"
                " items of a non-indexable input are pickled; pass a list (or any indexable"
                " input: the workers read it from their inherited memory) or picklable items"
            )
            self._fail_at(chunk.start + bad.index, error)
            if bad.index == 0:
                return
            assert chunk.items is not None
            chunk = Chunk(chunk.start, chunk.start + bad.index, chunk.items[: bad.index])
            self._pool.submit(chunk)
        except Exception as exc:  # SpawnError: no worker; fail this position
            self._fail_at(chunk.start, exc)
            return
        self._pulled = max(self._pulled, chunk.stop)
        self._in_flight += 1

    def _fail_at(self, position: int, error: BaseException) -> None:
        self._failed = True
        self._limit = position if self._limit is None else min(self._limit, position)
        self._pulled = max(self._pulled, position)
        self._record(Done(Chunk(position, position), [], error, 0.0))

    # -- collection --------------------------------------------------------------------------

    def _collect(self, results: list[Done]) -> None:
        for done in results:
            if self._settled:
                return
            self._in_flight -= 1
            if self._options.chunksize is None and done.values and done.elapsed > 0:
                per_item = done.elapsed / len(done.values)
                self._chunk = max(1, min(MAX_CHUNK, int(TARGET_CHUNK_SECONDS / per_item)))
            if done.error is not None:
                self._failed = True
                position = done.chunk.start + len(done.values)
                if self._limit is None or position < self._limit:
                    self._limit = position
            self._record(done)

    def _record(self, done: Done) -> None:
        if not self._options.ordered:
            self._ready.extend(done.values)
            if done.error is not None:
                self._late_errors.append(done.error)
            return
        self._finished[done.chunk.start] = done
        while (head := self._finished.pop(self._next_start, None)) is not None:
            self._ready.extend(head.values)
            if head.error is not None:
                self._ready.append(_Failure(head.error))
                # The error is next in line: what is still in flight comes after it.
                self._finished.clear()
                self._failed = self._settled = True
                self._in_flight = 0
                self._finalizer()
                return
            self._next_start = head.chunk.stop

    def _finish(self) -> None:
        """Nothing is in flight and nothing more will be dispatched: the pass is over."""
        if self._late_errors:  # ordered=False: every computed value went out first
            self._ready.append(_Failure(self._late_errors[0]))
            self._late_errors.clear()
            return
        self._done = True
        self._pool.close(kill=False)
        self._finalizer.detach()
        self._progress.close()


class ItemizedMap(Sequence[R], Generic[R]):
    """``fn`` mapped lazily over indexable inputs: a sequence whose items compute on demand.

    ``len(m)`` is the shortest input's length. ``m[i]`` (negative ``i`` too) calls
    ``fn(*items at i)`` in the calling thread, each time it is asked; ``m[a:b:c]`` is a new
    `ItemizedMap` over those positions (nothing is computed). Each ``iter(m)`` starts a fresh
    parallel pass (a `MapIterator`) that yields every result in order, or in completion
    order when the map was made with ``ordered=False``.
    """

    __slots__ = ("_fn", "_inputs", "_name", "_options")

    def __init__(self, fn: Callable[..., R], inputs: Indexed, options: _Options, name: str) -> None:
        self._fn, self._inputs, self._options, self._name = fn, inputs, options, name

    def __len__(self) -> int:
        return len(self._inputs)

    @overload
    def __getitem__(self, index: int) -> R: ...

    @overload
    def __getitem__(self, index: slice) -> ItemizedMap[R]: ...

    def __getitem__(self, index: int | slice) -> R | ItemizedMap[R]:
        inputs = self._inputs
        if isinstance(index, slice):
            view = Indexed(inputs.sequences, inputs.view[index])
            return ItemizedMap(self._fn, view, self._options, self._name)
        try:
            i = range(len(inputs))[index]  # negative indices, and the IndexError message
        except TypeError:
            raise TypeError(
                f"ItemizedMap indices must be integers or slices, not {type(index).__name__}"
            ) from None
        return self._fn(*inputs.item(i))

    def __iter__(self) -> MapIterator[R]:
        return MapIterator(self._fn, self._inputs, self._options, self._name)

    def __repr__(self) -> str:
        return f"<ItemizedMap {self._name} over {len(self)} items ({self._options.engine})>"


def _check(
    tool: str,
    *,
    fn: object,
    iterables: tuple[Iterable[Any], ...],
    num_workers: int | None,
    buffer_size: int | None,
    chunksize: int | None,
) -> None:
    if not callable(fn):
        raise TypeError(f"{tool}() needs a callable first, not {type(fn).__name__} {fn!r}")
    if not iterables:
        raise TypeError(f"{tool}() needs at least one iterable: {tool}(fn, items, ...)")
    for value in iterables:
        if not hasattr(value, "__iter__") and not is_indexable(value):
            raise TypeError(f"{tool}() arguments after fn must be iterable, not {value!r}")
    for label, size in (
        ("num_workers", num_workers),
        ("buffer_size", buffer_size),
        ("chunksize", chunksize),
    ):
        if size is None:
            continue
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"{tool}(): {label} must be an int or None, not {size!r}")
        if size < 1:
            raise ValueError(f"{tool}(): {label} must be at least 1 (or None), not {size}")


def _make(
    engine: Engine,
    *,
    fn: Callable[..., R],
    iterables: tuple[Iterable[Any], ...],
    workers: int,
    buffer_size: int | None,
    chunksize: int | None,
    ordered: bool,
    progress: bool,
) -> ItemizedMap[R] | MapIterator[R]:
    options = _Options(
        engine=engine,
        workers=workers,
        buffer_size=buffer_size,
        chunksize=chunksize,
        ordered=bool(ordered),
        progress=bool(progress),
    )
    name = str(getattr(fn, "__qualname__", None) or type(fn).__name__)
    if all(is_indexable(x) for x in iterables):
        sequences: list[Sequence[Any]] = list(iterables)  # type: ignore[arg-type]
        view = range(min(len(s) for s in sequences))
        return ItemizedMap(fn, Indexed(sequences, view), options, name)
    return MapIterator(fn, zip(*iterables, strict=False), options, name)


def thread_map(
    fn: Callable[..., R],
    /,
    *iterables: Iterable[Any],
    num_workers: int | None = None,
    buffer_size: int | None = None,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: bool = False,
) -> ItemizedMap[R] | MapIterator[R]:
    """Map ``fn`` over the zipped inputs (shortest wins) in a pool of threads.

    Args:
        fn: Called as ``fn(*items)`` in worker threads.
        iterables: One or more inputs. If every one is indexable (``__getitem__`` and
            ``__len__``: a list, a range, a numpy array) the result is an `ItemizedMap`;
            otherwise it is a `MapIterator`, consumed once.
        num_workers: Threads per pass; default ``min(32, cpu count + 4)``.
        buffer_size: Most items pulled from the input but not yet yielded (computed ahead,
            or being computed); default: four chunks per worker.
        chunksize: Items per job; default: adapted to the measured cost per item.
        ordered: Yield in input order (default) or in completion order.
        progress: Show a tqdm progress bar.

    Returns:
        An `ItemizedMap` (indexable inputs) or a `MapIterator`. Nothing runs until a pass is
        iterated; the input is read only as the buffer allows.

    Raises:
        TypeError: ``fn`` is not callable, an input is not iterable, or there is none.
        ValueError: A size argument is less than 1.
    """
    _check(
        "thread_map",
        fn=fn,
        iterables=iterables,
        num_workers=num_workers,
        buffer_size=buffer_size,
        chunksize=chunksize,
    )
    workers = num_workers or min(32, (os.cpu_count() or 1) + 4)
    return _make(
        "thread",
        fn=fn,
        iterables=iterables,
        workers=workers,
        buffer_size=buffer_size,
        chunksize=chunksize,
        ordered=ordered,
        progress=progress,
    )


def process_map(
    fn: Callable[..., R],
    /,
    *iterables: Iterable[Any],
    num_workers: int | None = None,
    buffer_size: int | None = None,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: bool = False,
) -> ItemizedMap[R] | MapIterator[R]:
    """Map ``fn`` over the zipped inputs (shortest wins) in forked worker processes.

    Each pass forks its workers (up to ``num_workers``, as chunks need them) from the thread
    that iterates. They are forks of that moment: ``fn`` and everything it reaches are
    inherited, never pickled, and whatever the workers change is lost with them. Only results
    travel back (pickled). Indexable inputs are not pickled either: a worker reads its items
    from its own inherited copy. Items of other inputs are pickled into the workers' pipes.

    A worker that dies (a crash, a kill, the OOM killer) fails its chunk with `WorkerDied`
    at the chunk's first position; the other workers' earlier results are still yielded.

    Args:
        fn: Called as ``fn(*items)`` in the workers; it need not be picklable.
        iterables: One or more inputs; see `thread_map`.
        num_workers: Worker processes per pass; default ``os.cpu_count()``.
        buffer_size: Most items pulled from the input but not yet yielded; default: four
            chunks per worker.
        chunksize: Items per message; default: adapted to the measured cost per item.
        ordered: Yield in input order (default) or in completion order.
        progress: Show a tqdm progress bar.

    Returns:
        An `ItemizedMap` (indexable inputs) or a `MapIterator`, as for `thread_map`. Note
        that ``m[i]`` on an `ItemizedMap` computes in the calling process.

    Raises:
        TypeError: ``fn`` is not callable, an input is not iterable, or there is none.
        ValueError: A size argument is less than 1.
    """
    _check(
        "process_map",
        fn=fn,
        iterables=iterables,
        num_workers=num_workers,
        buffer_size=buffer_size,
        chunksize=chunksize,
    )
    workers = num_workers or os.cpu_count() or 1
    return _make(
        "process",
        fn=fn,
        iterables=iterables,
        workers=workers,
        buffer_size=buffer_size,
        chunksize=chunksize,
        ordered=ordered,
        progress=progress,
    )
