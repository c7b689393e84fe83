"""One pass of a parallel map: dispatch, read-ahead bound, ordering and errors.

A pass is one parallel run over the input, driven by the consumer's thread: each time the
consumer has used up the results it was given, the pass tops the pool up with chunks, waits
for finished chunks and hands over their values, a list per chunk. For the process pool every
fork happens from the consumer's thread. An indexable input is read by the workers; any other
is read ahead by the pass's `Feed` in a reader thread, so that an input blocked in ``next()``
never holds back a result already computed (see ``_feed``; an input that cannot block is
read here, as the chunks need it). A pass holds at most ``buffer_size``
items that were pulled but not yet consumed: that bounds both the results computed ahead and
the input read ahead, so an infinite input maps in constant memory. Closing the pass (or an
early ``break`` that drops it) kills the workers and stops the reader.

Chunk size adapts unless given: a pass starts with one item per chunk (the first result comes
back at once) and then aims at `TARGET_CHUNK_SECONDS` of work per chunk, measured by the
workers, within the buffer and, for inputs of known length, small enough that every worker
gets a share of what is left.

Errors belong to their position. In order (the default), a pass hands over every earlier
value, then raises the error and ends; with ``ordered=False`` it first hands over every value
already computed or in flight, then raises. Either way nothing computed before the error is
lost.

What runs where. All of a pass runs in the parent, in the consumer's thread (one consumer at a
time: a pass is not thread-safe), but for the `Feed` reader thread that pulls a non-indexable
input. The mapped function runs in the pool's workers: threads (``ThreadPool``), forked
processes (``ProcessPool``, which read an indexable input from their inherited copy), or an
executor's workers (``EnginePool``). Only the results and the measured cost of each chunk come
back to the pass.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal

from ._checks import default_threads
from ._chunks import Chunk, Done, ItemNotPicklable
from ._core._errors import stray_stop
from ._core._interrupts import atomic
from ._enginepool import EnginePool
from ._executor import worker_slots
from ._feed import Feed
from ._inputs import Indexed
from ._pools import ProcessPool, ThreadPool
from ._progress import Progress, open_progress

__all__ = ("MAX_CHUNK", "TARGET_CHUNK_SECONDS", "MapOptions", "Pass")

#: Seconds of work an automatic chunk aims at: long enough that the per-chunk cost (a message
#: each way, about 50 us) is noise, short enough that the consumer sees results steadily.
TARGET_CHUNK_SECONDS = 0.02

#: Largest automatic chunk: bounds the memory one chunk of results takes.
MAX_CHUNK = 4096

#: Where a map's workers run: threads of this process, or forked processes. ("Engine" is kept
#: for the `Executor` a process map may run on instead: see `_executor`.)
Mode = Literal["thread", "process"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MapOptions:
    """What a map was asked for (checked by the public functions)."""

    mode: Mode
    workers: int | None  # None: the mode's default (or the engine's worker slots)
    executor: object  # the executor= argument (None: whatever is selected when a pass starts)
    buffer_size: int | None
    chunksize: int | None
    ordered: bool
    progress: bool


class Pass:
    """The state of one pass; `chunks` is its output, consumed from one thread.

    ``call`` takes one item: the mapped function itself for one input, `spread` of it (the
    items are argument tuples) for several.
    """

    def __init__(
        self,
        call: Callable[[Any], Any],
        inputs: Indexed | Iterator[Any],
        options: MapOptions,
        name: str,
        *,
        executor: Executor | None = None,
        inline: bool = False,
    ) -> None:
        self.options = options
        source = inputs if isinstance(inputs, Indexed) else None
        self._length = None if source is None else len(source)
        workers = options.workers
        if workers is None:
            workers = worker_slots(executor) if options.mode == "process" else default_threads()
        if self._length is not None:
            workers = max(1, min(workers, self._length))
        self.workers = workers
        self.pool: ThreadPool | ProcessPool | EnginePool
        if executor is not None:
            self.pool = EnginePool(call, source, executor, workers)
        elif options.mode == "process":
            self.pool = ProcessPool(call, source, workers, name)
        else:
            self.pool = ThreadPool(call, source, workers)
        # A non-indexable input is read by a background thread, which wakes the pool's wait()
        # (see _feed), unless it cannot block (``inline``) or the pool cannot be woken.
        self.feed: Feed | None = None
        if not isinstance(inputs, Indexed):
            pool = self.pool
            wake = None if inline or isinstance(pool, EnginePool) else pool.wake
            self.feed = Feed(inputs, wake)
        self._progress: Progress = open_progress(options.progress, total=self._length, desc=name)
        self.pulled = 0  # positions handed to the pool (or found to be past the end)
        self.consumed = 0  # values handed over in lists the consumer has finished
        self._limit: int | None = self._length  # no position at or past it is dispatched
        self._chunk = options.chunksize or 1
        self._in_flight = 0  # chunks submitted and not yet returned
        self._finished: dict[int, Done] = {}  # ordered: done chunks by start, not handed over
        self._next_start = 0
        self._ready: deque[list[Any]] = deque()
        self._current: list[Any] = []  # the list the consumer is iterating now
        self._error: BaseException | None = None  # raised once _ready is empty
        self._late_errors: list[BaseException] = []  # ordered=False: raised after the values
        self._failed = False  # an error is known: dispatch nothing more
        self._settled = False  # ordered: the error is next in line; later chunks are moot
        self.done = False

    def chunks(self) -> Iterator[list[Any]]:
        """Yield the results, a list at a time, in output order; then raise or end.

        Blocks while waiting for workers. Resuming it means the consumer has used up the list
        yielded before, which is what makes room in the buffer.
        """
        try:
            while not self.done:  # closed while the consumer held a list: nothing more
                self.consumed += len(self._current)
                self._progress.update(len(self._current))
                if self.feed is not None:  # room to read ahead
                    self.feed.allow(self.consumed + self._buffer(), self._chunk)
                self._dispatch()
                while not self._ready:
                    if self._error is not None:
                        error, self._error = self._error, None
                        raise error
                    if self.is_done():  # _finish() ended it
                        return
                    if self._in_flight == 0 and self._input_done():
                        self._finish()
                        continue
                    self._collect(self._wait())
                    # Keep the workers fed, but fork new ones only after the consumer has
                    # had these results: a fork holds up the parent for 1-3 ms.
                    self._dispatch(grow=not self._ready)
                self._current = self._ready.popleft()
                yield self._current
        except GeneratorExit:
            raise  # the iterator was dropped: its finalizer stops the pool
        except BaseException:  # an item's error, or Ctrl-C while waiting: the pass is over
            self.close()
            raise

    def is_done(self) -> bool:
        """Whether the pass has ended (normally, by an error, or closed)."""
        return self.done

    def close(self) -> None:
        """Stop the pass now: kill worker processes, tell worker threads to stop."""
        self._stop()
        self._progress.close()  # not held: drawing may block on a full stderr pipe

    @atomic  # a Ctrl-C halfway would leave the pool or the input reader running
    def _stop(self) -> None:
        self.done = True
        self._ready.clear()
        self._current.clear()  # what the consumer has not taken yet is not handed over
        self._finished.clear()
        self._error = None
        self.pool.close(kill=True)
        if self.feed is not None:
            self.feed.close()

    # -- dispatch ----------------------------------------------------------------------------

    def _buffer(self) -> int:
        if self.options.buffer_size is not None:
            return self.options.buffer_size
        return max(16, 4 * self.workers * self._chunk)

    def _chunk_size(self, room: int) -> int:
        size = min(self._chunk, room)
        if self._limit is not None:
            left = self._limit - self.pulled
            if self.options.chunksize is None:  # share the tail among the workers
                size = min(size, math.ceil(left / self.workers))
            size = min(size, left)
        return max(size, 1)

    def _dispatch(self, grow: bool = True) -> None:
        """Submit chunks while the pool has room, the buffer allows, and input remains.

        ``grow=False`` uses only the workers already started.
        """
        while not self._failed and self.pool.slots(grow) > 0:
            if self._limit is not None and self.pulled >= self._limit:
                return
            room = self._buffer() - (self.pulled - self.consumed)
            if room <= 0 and self.feed is None:  # a feed's read-ahead was bounded as it read
                return
            start = self.pulled
            if self.feed is None:
                chunk = Chunk(start, start + self._chunk_size(room))
            else:
                items = self._take(self.feed)
                if items is None:
                    return
                chunk = Chunk(start, start + len(items), items)
            self._submit(chunk, grow)

    def _take(self, feed: Feed) -> list[Any] | None:
        """The next chunk of a non-indexable input, or None (none now, or the input is over).

        What the reader has read is within the bound already. The pass reads the input itself
        only when it has nothing to deliver meanwhile (nothing in flight or ready), or when
        the input cannot block.
        """
        idle = self._in_flight == 0 and not self._ready  # so a partial chunk will do
        room = self._buffer() - (feed.pulled - self.consumed)
        here = min(self._chunk, room) if feed.inline or idle else 0
        items = feed.take(self._chunk, idle, here)
        if items is None or items:
            return items
        self._limit = self.pulled  # the input is over
        if feed.error is not None:
            error, feed.error = feed.error, None
            self._fail_at(self.pulled, error)
        return None

    def _input_done(self) -> bool:
        """Whether nothing more will be dispatched (an error, or the input is all out)."""
        return self._failed or (self._limit is not None and self.pulled >= self._limit)

    def _wait(self) -> list[Done]:
        """Block until chunks are done or, for a read input, the reader brings what we need.

        The reader runs while we wait, but stops for a fork the pool put off (see
        ``ProcessPool.submit``): then its end is what we wait for.
        """
        feed = self.feed
        if feed is None or feed.inline or self._input_done():
            return self.pool.wait()
        deferred = isinstance(self.pool, ProcessPool) and self.pool.deferred and feed.alive()
        if not deferred:
            feed.run()
        # Items (or the end) are news only if the pool can take a chunk now, and only in the
        # terms of _take(): news that the next _dispatch() cannot use would spin this loop.
        starving = self._in_flight == 0
        size = self._chunk if starving or self.pool.slots() > 0 else None
        if size is None and not deferred:
            return self.pool.wait()
        if not feed.expect(size, exit=deferred, starving=starving):
            return []  # it is here already
        try:
            return self.pool.wait()
        finally:
            feed.settle()

    def _submit(self, chunk: Chunk, grow: bool) -> None:
        try:
            self.pool.submit(chunk, grow)
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
            self.pool.submit(chunk, grow)
        except Exception as exc:  # SpawnError: no worker; fail this position
            self._fail_at(chunk.start, exc)
            return
        self.pulled = max(self.pulled, chunk.stop)
        self._in_flight += 1

    def _fail_at(self, position: int, error: BaseException) -> None:
        self._failed = True
        self._limit = position if self._limit is None else min(self._limit, position)
        self.pulled = max(self.pulled, position)
        self._record(Done(Chunk(position, position), [], error, 0.0))

    # -- collection --------------------------------------------------------------------------

    def _collect(self, results: list[Done]) -> None:
        for done in results:
            if self._settled:
                return
            self._in_flight -= 1
            if self.options.chunksize is None and done.values and done.elapsed > 0:
                per_item = done.elapsed / len(done.values)
                self._chunk = max(1, min(MAX_CHUNK, int(TARGET_CHUNK_SECONDS / per_item)))
            if done.error is not None:
                self._failed = True
                position = done.chunk.start + len(done.values)
                if self._limit is None or position < self._limit:
                    self._limit = position
            self._record(done)

    def _record(self, done: Done) -> None:
        if isinstance(done.error, StopIteration):  # an engine's: raised here, it looks like the end
            done = done._replace(error=stray_stop(done.error, "the engine computing a map chunk"))
        if not self.options.ordered:
            if done.values:
                self._ready.append(done.values)
            if done.error is not None:
                self._late_errors.append(done.error)
            return
        self._finished[done.chunk.start] = done
        while (head := self._finished.pop(self._next_start, None)) is not None:
            if head.values:
                self._ready.append(head.values)
            if head.error is not None:
                self._error = head.error
                # The error is next in line: what is still in flight comes after it.
                self._finished.clear()
                self._failed = self._settled = True
                self._in_flight = 0
                self.pool.close(kill=True)
                return
            self._next_start = head.chunk.stop

    def _finish(self) -> None:
        """Nothing is in flight and nothing more will be dispatched: the pass is over."""
        if self._late_errors:  # ordered=False: every computed value went out first
            self._error = self._late_errors[0]
            self._late_errors.clear()
            return
        self.done = True
        self.pool.close(kill=False)
        if self.feed is not None:
            self.feed.close()  # its reader has ended with the input: join it
        self._progress.close()
