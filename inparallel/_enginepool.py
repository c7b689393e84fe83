"""A map pass's pool on any executor: each chunk is one ``submit`` of the mapped function.

It has the four calls of the pools in ``_pools`` (``slots``, ``submit``, ``wait``, ``close``),
so a `Pass` drives it the same way: the read-ahead bound, ordering and error positions are
unchanged. A chunk's items travel in the call (an indexable input is read in the parent: a
remote worker has no copy of it), and the values come back as one result per chunk. An error
travels packed with its traceback, after the values computed before it.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from ._chunks import PIPELINE, Chunk, Done, compute
from ._core._channel import load_error, pack_error
from ._inputs import Indexed

__all__ = ("EnginePool", "run_chunk")


def run_chunk(call: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], Any, float]:
    """Compute a chunk where the engine runs it; the error (if any) comes back packed."""
    values, error, elapsed = compute(call, None, Chunk(0, len(items), items))
    return values, None if error is None else pack_error(error), elapsed


class EnginePool:
    """Chunks submitted to ``executor``, at most `PIPELINE` per worker slot in flight."""

    def __init__(
        self, call: Callable[[Any], Any], source: Indexed | None, executor: Executor, size: int
    ) -> None:
        self._call, self._source, self._executor, self._size = call, source, executor, size
        self._done: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
        self._held: dict[Future[Any], Chunk] = {}

    def slots(self, grow: bool = True) -> int:
        return PIPELINE * self._size - len(self._held)

    def submit(self, chunk: Chunk, grow: bool = True) -> None:
        items = chunk.items
        if items is None:
            assert self._source is not None
            items = list(self._source.items(chunk.start, chunk.stop))
        future = self._executor.submit(run_chunk, self._call, items)
        self._held[future] = chunk
        future.add_done_callback(self._done.put)

    def wait(self) -> list[Done]:
        finished = [self._done.get()]
        with contextlib.suppress(queue.Empty):
            while True:
                finished.append(self._done.get_nowait())
        out = []
        for future in finished:
            chunk = self._held.pop(future, None)
            if chunk is None:  # cancelled by close(): not ours any more
                continue
            try:
                values, error, elapsed = future.result()
            except BaseException as exc:  # the engine lost the call (a worker died, ...)
                out.append(Done(chunk, [], exc, 0.0))
                continue
            out.append(Done(chunk, values, None if error is None else load_error(error), elapsed))
        return out

    def close(self, kill: bool) -> None:
        held, self._held = list(self._held), {}
        for future in reversed(held):  # the latest first: they are the likeliest still queued
            future.cancel()
