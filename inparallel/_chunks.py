"""The chunk of a map pass, and how it is computed: shared by every pool.

A pass (``_pass``) cuts its input into `Chunk` records and hands them to a pool (the thread
and process pools of ``_pools``, or ``_enginepool.EnginePool``); the pool hands back a `Done`
record per chunk. `compute` is the loop that runs in the workers (a worker thread, a forked
worker process, an executor's worker): it calls the mapped function on each item of a chunk
and stops at the first error, which belongs to its position. `spread` adapts the function to
the argument tuples of a map over several inputs; it runs wherever `compute` does. Nothing
here keeps state, blocks or starts anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._core._errors import stray_stop
from ._inputs import Indexed

__all__ = ("PIPELINE", "Chunk", "Done", "ItemNotPicklable", "compute", "describe", "spread")

#: Chunks a worker holds at once: the one it computes and the next, already in its pipe.
PIPELINE = 2


@dataclass(slots=True)
class Chunk:
    """Positions ``start..stop-1`` of a pass; ``items`` holds them unless the input is indexed."""

    start: int
    stop: int
    items: list[Any] | None = None


class Done(NamedTuple):
    """A computed chunk: the values in order up to the first error, which ends it."""

    chunk: Chunk
    values: list[Any]
    error: BaseException | None
    elapsed: float  # seconds the worker spent on it (feeds the automatic chunk size)


class ItemNotPicklable(Exception):
    """Item ``index`` of a chunk could not be pickled for a worker process."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


def spread(fn: Callable[..., Any]) -> Callable[[tuple[Any, ...]], Any]:
    """Adapt ``fn`` to items that are tuples of arguments (a map over several inputs)."""

    def call(args: tuple[Any, ...]) -> Any:
        return fn(*args)

    # Named in error messages. Not through __qualname__: pickle would look that up here.
    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def compute(
    call: Callable[[Any], Any], source: Indexed | None, chunk: Chunk
) -> tuple[list[Any], BaseException | None, float]:
    """Run ``call(item)`` over a chunk's items; stop at the first exception and return it.

    ``call`` is the mapped function for one input, `spread` of it for several. The values
    before the error are returned, so ``len(values)`` is the failing item's offset.
    """
    started = time.perf_counter()
    values: list[Any] = []
    append = values.append
    error: BaseException | None = None
    try:
        items: Iterable[Any]
        if chunk.items is None:
            assert source is not None
            items = source.items(chunk.start, chunk.stop)
        else:
            items = chunk.items
        # A plain loop, not values.extend(map(call, items)): a StopIteration raised by call
        # would end map() as if the items had run out, and the rest of the chunk would vanish.
        # Here only the items' own end ends the loop, and it costs ~7 ns more per item.
        for item in items:
            append(call(item))
    except StopIteration as exc:  # raised by call: the loop itself swallows the items' end
        error = stray_stop(exc, describe(call))
    except BaseException as exc:  # the item's error, whatever it is, belongs to its position
        error = exc
    else:
        if len(values) < chunk.stop - chunk.start:  # never leave a position without an outcome
            error = RuntimeError(
                f"the input gave {len(values)} items for positions {chunk.start}.."
                f"{chunk.stop - 1}: its slices and its len() disagree"
            )
    return values, error, time.perf_counter() - started


def describe(call: Callable[..., Any]) -> str:
    """Name the mapped function for an error message (``the mapped function f()``)."""
    name = getattr(getattr(call, "__wrapped__", call), "__qualname__", None)
    return f"the mapped function {name}()" if isinstance(name, str) else "the mapped function"
