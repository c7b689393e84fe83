"""Parallel map: `thread_map`, `process_map`, the lazy `ItemizedMap`, and `MapIterator`.

The work of a pass (dispatch, read-ahead bound, ordering, errors) lives in ``_pass``; this
module holds the public objects around it and the argument checks.

What runs where. In the parent: the argument checks, when `thread_map`/`process_map` is
called (nothing starts then); every ``next()`` on a `MapIterator`, in the consumer's thread,
which drives its pass; and ``m[i]`` on an `ItemizedMap`, which calls the function right there,
in the calling thread. In the workers: the mapped function during a pass, in threads of this
process (`thread_map`), or in processes forked when the pass starts (`process_map`, unless an
``executor=`` runs the chunks). Forked workers inherit the inputs and all other state as they
were at the fork; what they change is lost, and only results (or errors) come back.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from types import TracebackType
from typing import Any, Generic, TypeVar, cast, overload

from ._checks import count, function
from ._chunks import spread
from ._core._errors import stray_stop
from ._core._interrupts import atomic
from ._executor import portable, selected
from ._inputs import INLINE_TYPES, Indexed, iterate
from ._pass import MapOptions, Mode, Pass

__all__ = (
    "ItemizedMap",
    "MapIterator",
    "close_source",
    "is_indexable",
    "process_map",
    "thread_map",
)

R = TypeVar("R")


def is_indexable(obj: object) -> bool:
    """Whether ``obj`` has ``__getitem__`` and ``__len__`` and is not a mapping."""
    cls = type(obj)
    return (
        hasattr(cls, "__getitem__")
        and hasattr(cls, "__len__")
        and not hasattr(cls, "keys")  # a dict indexes by key, not by position
    )


class MapIterator(itertools.chain[R]):
    """One parallel pass: an iterator over ``fn``'s results, with `close` and ``with``.

    ``next()`` blocks until the next result is computed (in order, or in completion order with
    ``ordered=False``) and raises the error of an item at that item's position; after the end
    or an error it raises `StopIteration` for ever. Use it from one thread. Dropping it (or
    `close`, or leaving a ``with`` block, or ``break`` in a loop that owns the last reference)
    stops the workers at once: worker processes are killed, worker threads stop after their
    current chunk, the input's reader thread after the item it is reading (one blocked inside
    the input ends when that call returns, dropping the item). A Ctrl-C while it waits ends
    the pass too.
    """

    # It is an ``itertools.chain`` over the pass's lists of results, so that taking one item
    # costs a C call; Python code runs once per chunk.

    _pass: Pass
    _finalizer: weakref.finalize[..., Any]

    def __new__(cls, pass_: Pass) -> MapIterator[R]:
        self = cast("MapIterator[R]", cls.from_iterable(pass_.chunks()))
        self._pass = pass_
        self._finalizer = weakref.finalize(self, pass_.close)
        return self

    def __init__(self, pass_: Pass) -> None:
        pass  # all done in __new__ (``chain`` is built by its classmethod)

    def __repr__(self) -> str:
        p = self._pass
        state = "done" if p.done else f"{p.consumed} consumed, {p.pulled} pulled"
        return f"<MapIterator {p.options.mode} x{p.workers}: {state}>"

    @atomic  # weakref.finalize forgets its call before making it: no Ctrl-C in between
    def close(self) -> None:
        """Stop the pass now: kill worker processes, tell worker threads to stop.

        Later ``next()`` calls raise `StopIteration`.
        """
        self._finalizer()

    def __enter__(self) -> MapIterator[R]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _start(
    fn: Callable[..., R],
    inputs: Indexed | Iterator[Any],
    several: bool,
    options: MapOptions,
    name: str,
    *,
    inline: bool = False,
) -> MapIterator[R]:
    """Begin a pass; with ``several`` inputs the items are argument tuples.

    ``inline``: the input cannot block, so the pass reads it itself (no reader thread).
    """
    engine = None
    if options.mode == "process":
        engine = selected(options.executor, "process_map()")
        fn = portable(fn)  # a @task runs as one (with its options), not as its wrapper
    call = spread(fn) if several else fn
    return MapIterator(Pass(call, inputs, options, name, executor=engine, inline=inline))


def close_source(mapped: object, close: Callable[[], object]) -> None:
    """Call ``close``, the input's own, once no reader thread of ``mapped`` is inside the input.

    That is now, unless a reader is blocked in its ``next()``: then the reader calls it as
    that returns (see ``_feed.Feed.finalize``).
    """
    feed = mapped._pass.feed if isinstance(mapped, MapIterator) else None
    if feed is None:
        close()
    else:
        feed.finalize(close)


class ItemizedMap(Sequence[R], Generic[R]):
    """``fn`` mapped lazily over indexable inputs: a sequence whose items compute on demand.

    ``len(m)`` is the shortest input's length. ``m[i]`` (negative ``i`` too) calls
    ``fn(*items at i)`` in the calling thread, each time it is asked; ``m[a:b:c]`` is a new
    `ItemizedMap` over those positions (nothing is computed). Each ``iter(m)`` starts a fresh
    parallel pass (a `MapIterator`) that yields every result in order, or in completion
    order when the map was made with ``ordered=False``.
    """

    __slots__ = ("_fn", "_inputs", "_name", "_options")

    def __init__(
        self, fn: Callable[..., R], inputs: Indexed, options: MapOptions, name: str
    ) -> None:
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
        try:
            return self._fn(*inputs.item(i))
        except StopIteration as exc:  # not an end: m[i] may run inside someone's iteration
            raise stray_stop(exc, "the mapped function") from exc

    def __iter__(self) -> MapIterator[R]:
        several = len(self._inputs.sequences) > 1
        return _start(self._fn, self._inputs, several, self._options, self._name)

    def __repr__(self) -> str:
        return f"<ItemizedMap {self._name} over {len(self)} items ({self._options.mode})>"


def _check(
    tool: str,
    *,
    fn: object,
    iterables: tuple[Iterable[Any], ...],
    num_workers: int | None,
    buffer_size: int | None,
    chunksize: int | None,
) -> None:
    function(f"{tool}()", "fn", fn)
    if not iterables:
        raise TypeError(f"{tool}(): give at least one iterable: {tool}(fn, items, ...)")
    for value in iterables:
        if not hasattr(value, "__iter__") and not is_indexable(value):
            raise TypeError(f"{tool}(): the arguments after fn must be iterable, not {value!r}")
    for label, size in (
        ("num_workers", num_workers),
        ("buffer_size", buffer_size),
        ("chunksize", chunksize),
    ):
        if size is not None:
            count(f"{tool}()", label, size, optional=True)


def _make(
    mode: Mode,
    *,
    fn: Callable[..., R],
    iterables: tuple[Iterable[Any], ...],
    num_workers: int | None,
    buffer_size: int | None,
    chunksize: int | None,
    ordered: bool,
    progress: bool,
    executor: object = None,
) -> ItemizedMap[R] | MapIterator[R]:
    """Check the arguments of `thread_map`/`process_map` and build the map."""
    _check(
        f"{mode}_map",
        fn=fn,
        iterables=iterables,
        num_workers=num_workers,
        buffer_size=buffer_size,
        chunksize=chunksize,
    )
    if mode == "process":
        selected(executor, "process_map()")  # a bad executor= fails here, not at iteration
    options = MapOptions(
        mode=mode,
        workers=num_workers,
        executor=executor,
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
    iterators = [iterate(x, f"input {i} of {mode}_map()") for i, x in enumerate(iterables)]
    inline = all(type(it) in INLINE_TYPES for it in iterators)
    if len(iterators) == 1:
        return _start(fn, iterators[0], False, options, name, inline=inline)
    return _start(fn, zip(*iterators, strict=False), True, options, name, inline=inline)


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
            otherwise it is a `MapIterator`, consumed once, and the input is read ahead by
            a background thread (``inparallel-map-reader``), so that results already
            computed keep coming while it blocks in ``next()``. The iterators of lists,
            tuples, ranges, dicts, sets and ``itertools.count()`` cannot block and are read
            without one. A `StopIteration` raised by ``fn`` is an error at its position
            (`RuntimeError`, the original as its cause), never the end of the map.
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
    return _make(
        "thread",
        fn=fn,
        iterables=iterables,
        num_workers=num_workers,
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
    executor: Executor | str | None = None,
) -> ItemizedMap[R] | MapIterator[R]:
    """Map ``fn`` over the zipped inputs (shortest wins) in forked worker processes.

    Each pass forks its workers (up to ``num_workers``, as chunks need them) from the thread
    that iterates. They are forks of that moment: ``fn`` and everything it reaches are
    inherited, never pickled, and whatever the workers change is lost with them. Only results
    travel back (pickled). Indexable inputs are not pickled either: a worker reads its items
    from its own inherited copy. Items of other inputs are pickled into the workers' pipes;
    such an input is read by a background thread (see `thread_map`), which the pass stops
    before each fork, so the workers are forked single-threaded.

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
        executor: Run the chunks on this engine instead (see `inparallel.use`, which also
            selects one): each chunk is one ``submit`` of ``fn`` and its items, so both must
            pickle; an indexable input is read in the parent. Default: the engine selected
            when a pass starts (fork, unless ``use()`` or ``INPARALLEL_EXECUTOR`` says
            otherwise); ``num_workers`` then defaults to the engine's worker slots.

    Returns:
        An `ItemizedMap` (indexable inputs) or a `MapIterator`, as for `thread_map`. Note
        that ``m[i]`` on an `ItemizedMap` computes in the calling process.

    Raises:
        TypeError: ``fn`` is not callable, an input is not iterable, or there is none.
        ValueError: A size argument is less than 1.
    """
    return _make(
        "process",
        fn=fn,
        iterables=iterables,
        num_workers=num_workers,
        buffer_size=buffer_size,
        chunksize=chunksize,
        ordered=ordered,
        progress=progress,
        executor=executor,
    )
