"""The reader of a map pass's non-indexable input: `Feed`, its reader thread, and forks.

**Other inputs** (`Feed`) are read in order. Reading one in the thread that consumes the
results would hold back every result already computed while ``next()`` blocks (a socket, a
queue, a slow generator), and for ever if it never returns. So a daemon thread,
``inparallel-map-reader``, reads ahead for the pass while the consumer's thread takes what it
has read and keeps delivering results. The reader reads up to the limit the pass sets (items
consumed + ``buffer_size``), waits on a condition there, and ends with the input. Items are
visible to the pass as they arrive: while nothing is in flight it takes a partial chunk
rather than wait for a source that has stopped short of a full one. The iterators of
``_inputs.INLINE_TYPES`` cannot block and run no user code: the pass reads them itself,
threadless.

**Forks stay single-threaded.** The process pool forks its workers from the consumer's thread,
and CPython 3.12+ warns when a process with another thread alive forks. Before each fork the
pool calls `park_readers`, which stops every reader of this process: one waiting for room stops
at once; one reading stops after the item it is in, and a pool that can give the chunk to a
worker it has does not wait for that (it forks once the reader has stopped, which wakes it).
Only a reader blocked inside its input outlives a fork, and CPython then warns, rightly. Other
forks (a ``@task`` called in the loop body) do not stop the readers: while a pass over such an
input runs, they are multi-threaded forks (as they are beside ``thread_map``'s threads).

**Closing** stops the reader after the item it is reading, waiting for that at most
`READER_WAIT`. A reader blocked inside its input cannot be stopped, and a generator cannot be
closed from another thread while it runs (``ValueError: generator already executing``): the
reader drops what that call returns and ends; `Feed.finalize` has it close the source then.
"""

from __future__ import annotations

import itertools
import operator
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ._core._park import OS_THREAD_WAIT, PARK
from ._core._thread import start as start_thread
from ._core._thread import wait_gone

__all__ = (
    "READER_NAME",
    "READER_WAIT",
    "Feed",
    "park_readers",
)

#: How long a fork or a close waits for a reader to finish the item it is reading. An input
#: slower than that for one item counts as blocked: the fork goes ahead with the reader alive
#: (CPython 3.12+ warns about it, rightly), the close leaves the reader to end on its own.
READER_WAIT = 0.1

READER_NAME = "inparallel-map-reader"

_second = operator.itemgetter(1)
_running: dict[threading.Thread, Feed] = {}  # reader threads of this process, until they end
_hooked = False


# -- a non-indexable input --------------------------------------------------------------------


class Feed:
    """A non-indexable input, read in order ahead of a pass, taken a chunk at a time.

    With ``wake`` (the pool's wake-up, safe from any thread) a reader thread reads it, and
    calls ``wake`` when the pass waits for what it brings. Without, the pass reads it itself
    in `take` (for ``_inputs.INLINE_TYPES``, and for pools that cannot be woken). Methods are
    for the pass's thread, but for `park`, which any thread may call.

    The reader reads up to a chunk per *read*, into a list that `take` may slice while it
    fills: ``list.extend`` appends item by item, so what arrived before a blocking ``next()``
    can be taken at once, without a lock or a Python instruction per item.
    """

    def __init__(self, source: Iterator[Any], wake: Callable[[], None] | None) -> None:
        self.inline = wake is None
        self._source: Iterator[Any] | None = source
        self._wake = wake
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._reads: deque[list[Any]] = deque()  # items read, oldest read first
        self._offset = 0  # items of _reads[0] already taken
        self._filling: list[Any] | None = None  # the read being extended (the last one)
        self.pulled = 0  # items read from the source by finished reads (or by the pass)
        self.ended = False  # it is exhausted, or failed with `error`, after every item read
        self.error: BaseException | None = None
        self._limit = 0  # the reader reads while pulled < limit
        self._size = 1  # items per read (and per chunk)
        self._threads: list[threading.Thread] = []  # readers not yet joined by park()
        self._running = False  # a reader is in its loop
        self._busy = False  # it is inside the source (or the finalizer)
        self._halt = False  # it is asked to stop (after the item it is reading)
        self._gate: list[int] = []  # the current read goes on while this is non-empty
        self._closed = False
        self._waiting = False  # the pass waits for news: wake it
        self._starving = False  # ... and any item is news: read one at a time
        self._finalize: Callable[[], object] | None = None  # for the reader to call as it ends

    def __repr__(self) -> str:
        state = "reading" if self._running else "ended" if self.ended else "idle"
        return f"<Feed {state}, {self.pulled} pulled, {self._available()} not taken>"

    def _available(self) -> int:
        return sum(map(len, self._reads)) - self._offset

    def alive(self) -> bool:
        """Whether a reader is in its loop (it may be inside the source)."""
        return self._running

    def allow(self, limit: int, size: int) -> None:
        """Let the reader read while fewer than ``limit`` items were read, ``size`` a chunk."""
        with self._cond:
            self._size = max(1, size)
            if limit > self._limit:
                self._limit = limit
                self._cond.notify_all()

    def take(self, size: int, partial: bool, here: int) -> list[Any] | None:
        """Return the next ``size`` items read, ``[]`` once the input is over, or None: not yet.

        With ``partial``, fewer items than ``size`` do (the workers are idle). With ``here``
        and no reader running, read up to ``here`` items in this thread instead (blocking
        while the source blocks). The source's error ends the input as `error`, after every
        item read before it.
        """
        with self._cond:
            available = self._available()
            if available and (available >= size or partial or self.ended):
                return self._pop(min(available, size))
            if self.ended or self._closed:
                return []
            if here <= 0 or self._running:
                return None
            source = self._source
        assert source is not None
        items: list[Any] = []
        error = None
        try:
            items.extend(itertools.islice(source, here))
        except Exception as exc:  # the input's own error, at its position (not Ctrl-C)
            error = exc
        with self._cond:
            self._account(len(items), error is not None or len(items) < here, error)
        return items or ([] if self.ended else None)

    def _pop(self, count: int) -> list[Any]:
        items: list[Any] = []
        while len(items) < count:
            read = self._reads[0]
            # A copy of what the read holds so far: the reader may still be appending to it.
            piece = read[self._offset : self._offset + count - len(items)]
            items += piece
            self._offset += len(piece)
            if self._offset == len(read) and read is not self._filling:
                self._reads.popleft()
                self._offset = 0
        return items

    def _account(self, count: int, ended: bool, error: BaseException | None) -> None:
        self.pulled += count
        if ended:
            self.ended, self.error = True, error
            self._source = None  # let an exhausted generator go now

    def run(self) -> None:
        """Let the reader read ahead: start it, or call off the stop it was asked for."""
        if self.inline:
            return
        with self._cond:
            if self._closed or self.ended:
                return
            self._halt = False
            if self._running:
                return
            thread = threading.Thread(target=self._read, name=READER_NAME, daemon=True)
            self._running = True
            _running[thread] = self
            _hook()
            try:
                start_thread(thread)  # under the lock: park() sees it running or not at all
            except BaseException:
                self._running = False
                del _running[thread]
                raise
            self._threads.append(thread)

    def expect(self, size: int | None, exit: bool, starving: bool) -> bool:
        """Ask to be woken by ``size`` items read or the end, or (``exit``) the reader's end.

        ``size`` None: no items are wanted now. ``starving`` (nothing in flight): any item
        will do, so reads end after one item. Returns False, asking nothing, if the news is
        here already: then `take` with that ``size`` and ``partial=starving`` returns
        something, or the reader has ended.
        """
        with self._cond:
            if starving:
                # Close the gate first, then look: an item appended after the look is followed
                # by a look at the gate, which ends that read, and its end wakes us.
                self._gate.clear()
            available = self._available()
            wanted = size is not None and (
                self.ended or available >= size or (starving and available > 0)
            )
            if wanted or (exit and not self._running):
                return False
            self._waiting, self._starving = True, starving
            return True

    def settle(self) -> None:
        """The wait is over: no wake-up is wanted any more."""
        with self._cond:
            self._waiting = self._starving = False

    def park(self, timeout: float) -> bool:
        """Stop the reader for a fork; return whether no reader thread is left.

        A reader waiting for room stops at once. One reading stops after the item it is in,
        waited for up to ``timeout`` seconds. What it read is kept; `run` restarts it.
        """
        if self._pid != os.getpid():
            return True  # inherited by a fork: no thread of it runs here
        with self._cond:
            if self._running:
                self._halt = True
                self._gate.clear()
                self._cond.notify_all()
            threads, busy = list(self._threads), self._busy
        deadline = time.monotonic() + (timeout if busy else max(timeout, READER_WAIT))
        for thread in threads:
            if thread is threading.current_thread():
                return False  # a fork from inside the input: this reader is its thread
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return False
            if PARK:
                wait_gone(thread.native_id, OS_THREAD_WAIT)
        with self._cond:
            self._threads = [t for t in self._threads if t not in threads]
        return True

    def close(self) -> None:
        """Stop reading for good: what was read is dropped, the reader ends (see `park`)."""
        if self._pid != os.getpid():
            return
        with self._cond:
            self._closed = True
            self._reads.clear()
            self._source = None  # a reader inside it holds its own reference until it returns
            self._cond.notify_all()  # a reader waiting for room sees it closed, and ends
        self.park(READER_WAIT)

    def finalize(self, close: Callable[[], object]) -> None:
        """Call ``close`` (the source's own) now, or from the reader once it is out of it.

        A generator cannot be closed while a reader is inside it, blocked: then the reader
        calls ``close`` as soon as that call returns (an error there goes to
        `threading.excepthook`).
        """
        with self._cond:
            if self._running and self._pid == os.getpid():
                self._finalize = close
                return
        close()

    # -- the reader thread -----------------------------------------------------------------------

    def _stopping(self) -> bool:
        # Under the lock. Closed: the source is gone already (close() dropped it).
        return self._halt or self._closed

    def _read(self) -> None:
        cond = self._cond
        try:
            while True:
                with cond:
                    while not self._stopping() and self.pulled >= self._limit:
                        cond.wait()
                    if self._stopping():
                        return
                    size = 1 if self._starving else min(self._size, self._limit - self.pulled)
                    source, gate = self._source, [1]
                    read: list[Any] = []
                    self._gate, self._busy, self._filling = gate, True, read
                    self._reads.append(read)
                assert source is not None
                error = None
                try:
                    # zip asks the gate first and the source only while the gate is open, so
                    # park() and expect() stop the read between two items; all in C (a Python
                    # loop would cost ~30 ns more per item), appending each item as it comes.
                    gated = zip(iter(gate.__len__, 0), source, strict=False)
                    read.extend(itertools.islice(map(_second, gated), size))
                except BaseException as exc:  # the source's own: it comes after these items
                    error = exc
                # A short read is the end, unless the gate was closed.
                ended = error is not None or (len(read) < size and bool(gate))
                with cond:
                    self._busy, self._filling = False, None
                    if self._closed:
                        return
                    self._account(len(read), ended, error)
                    wake, self._waiting = self._waiting, False
                    self._starving = False
                if wake:
                    assert self._wake is not None
                    self._wake()
                if ended:
                    return
        finally:
            with cond:
                self._running = False
                self._filling = None
                finalize, self._finalize = self._finalize, None
                wake, self._waiting = self._waiting, False
                self._busy = finalize is not None  # user code: a fork waits for it, bounded
            try:
                if wake and self._wake is not None:
                    self._wake()
                if finalize is not None:  # the feed is closed: no other reader starts now
                    try:
                        finalize()
                    finally:
                        self._busy = False
            finally:
                # Only now: until here park_readers() finds this thread, to join it.
                _running.pop(threading.current_thread(), None)


def park_readers(timeout: float) -> bool:
    """Stop every map reader thread of this process before a fork (see `Feed.park`).

    Returns whether none is left; waits up to ``timeout`` seconds for those reading an item.
    """
    deadline = time.monotonic() + timeout
    parked = True
    for feed in set(_running.values()):
        parked = feed.park(max(0.0, deadline - time.monotonic())) and parked
    return parked


def _hook() -> None:
    global _hooked
    if not _hooked:  # once, at the first reader: importing registers nothing
        _hooked = True
        os.register_at_fork(after_in_child=_running.clear)  # no reader thread runs in a child
