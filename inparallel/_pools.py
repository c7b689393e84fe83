"""The pools behind one pass of a parallel map: worker threads, or forked worker processes.

A pass (``_pass``) cuts its input into chunks (``_chunks.Chunk``) and hands them to a pool,
which computes them (``_chunks.compute``, in its workers) and hands back `Done` records, in
whatever order they finish. The two pools here and
``_enginepool.EnginePool`` (chunks submitted to an executor) have the same four calls, all
made from the consumer's thread (these two also have ``wake()``, for any thread):

- ``slots()``: how many more chunks it takes now (two per worker: one running, one queued, so
  a worker never waits for the parent between chunks);
- ``submit(chunk)``: never blocks (but for a fork);
- ``wait()``: blocks until at least one chunk is done, and returns every finished one; after
  ``wake()`` (from any thread: the map's input reader has news) it may return none;
- ``close(kill)``: ends the pass (``kill=True`` stops the workers at once).

`ProcessPool` forks its workers lazily, as chunks need them, from the consumer's thread, and
first stops the map reader threads (``_feed.park_readers``) so that the fork is
single-threaded. For an indexable input a chunk is just ``(start, stop)``: the worker reads
the items from its own inherited copy of the input, so only results travel. Items of other
inputs are pickled into the request. A chunk's results come back as one pickle, loaded with
one ``loads`` whatever their type (``_core._channel.pack_values``). A worker that dies fails
the chunks it held with `WorkerDied` (naming the item range); the other workers go on, so
every earlier result is still delivered.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ._checks import HEAD_START
from ._chunks import PIPELINE, Chunk, Done, ItemNotPicklable, compute
from ._core._channel import (
    dumps,
    load_error,
    pack_error,
    pack_values,
    recv_message,
    send_parts,
    split_parts,
    unpack_values,
)
from ._core._errors import ResultNotPicklable, WorkerDied
from ._core._interrupts import atomic
from ._core._thread import start as start_thread
from ._feed import READER_WAIT, park_readers
from ._inputs import Indexed
from ._workers import Waker, Worker, wait_any

__all__ = ("ProcessPool", "ThreadPool")

# -- threads ---------------------------------------------------------------------------------


class ThreadPool:
    """Up to ``size`` daemon threads sharing one job queue; started as chunks need them."""

    def __init__(self, fn: Callable[..., Any], source: Indexed | None, size: int) -> None:
        self._fn, self._source, self._size = fn, source, size
        self._jobs: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Done | None] = queue.SimpleQueue()  # None: see wake()
        self._threads: list[threading.Thread] = []
        self._outstanding = 0
        self._stopped = threading.Event()

    def slots(self, grow: bool = True) -> int:
        return PIPELINE * self._size - self._outstanding  # starting a thread costs little

    def submit(self, chunk: Chunk, grow: bool = True) -> None:
        self._outstanding += 1
        self._jobs.put(chunk)
        if len(self._threads) < min(self._size, self._outstanding):
            thread = threading.Thread(
                target=_thread_worker,
                args=(self._fn, self._source, self._jobs, self._done, self._stopped),
                name=f"inparallel-map-{len(self._threads)}",
                daemon=True,  # a thread stuck in fn must never block interpreter exit
            )
            start_thread(thread)
            self._threads.append(thread)

    def wait(self) -> list[Done]:
        out = [self._done.get()]
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self._done.get_nowait())
        done = [d for d in out if d is not None]
        self._outstanding -= len(done)
        return done

    def wake(self) -> None:
        """Make the pending (or next) `wait` return, maybe with nothing; from any thread."""
        self._done.put(None)

    def close(self, kill: bool) -> None:
        # Threads cannot be killed: they skip the chunks still queued and end after the one
        # they are computing. At the normal end they are idle: wait for them, so that no
        # thread of ours is left when the caller forks next (3.12+ would warn).
        self._stop()
        if not kill:
            for thread in self._threads:
                thread.join()  # not held: a Ctrl-C may end the wait, the threads end anyway

    @atomic
    def _stop(self) -> None:
        # All at once: a Ctrl-C between the mark and the wake-ups would leave threads waiting
        # for a job for ever, and a second close() would see the mark and return.
        if self._stopped.is_set():
            return
        self._stopped.set()
        for _ in self._threads:
            self._jobs.put(None)


def _thread_worker(
    fn: Callable[..., Any],
    source: Indexed | None,
    jobs: queue.SimpleQueue[Chunk | None],
    done: queue.SimpleQueue[Done | None],
    stopped: threading.Event,
) -> None:
    while (chunk := jobs.get()) is not None and not stopped.is_set():
        done.put(Done(chunk, *compute(fn, source, chunk)))


# -- processes -------------------------------------------------------------------------------


class ProcessPool:
    """Up to ``size`` forked workers, each fed chunks over its own pipes.

    The workers are forks of the caller at the moment each is started: they see ``fn`` and the
    input as they are then, and nothing they change comes back but the results.
    """

    def __init__(
        self, fn: Callable[..., Any], source: Indexed | None, size: int, name: str
    ) -> None:
        self._fn, self._source, self._size, self._name = fn, source, size, name
        self._workers: dict[Worker, dict[int, Chunk]] = {}  # live worker -> chunks it holds
        self._waker: Waker | None = None  # made with the first worker, in the process using us
        self._pid = 0  # that process
        self._closed = False
        self._probe_end: float | None = None  # while set: one worker only, until then
        self._poked = False  # wake() was called: the next wait() returns, maybe with nothing
        self.deferred = False  # a fork waits for a map reader to stop (see submit)

    def _probing(self) -> bool:
        if self._probe_end is not None and time.monotonic() >= self._probe_end:
            self._probe_end = None
        return self._probe_end is not None

    def slots(self, grow: bool = True) -> int:
        """Chunks the pool takes now; with ``grow=False``, only what the workers it has take."""
        if self._workers and self._probing():  # the first worker, one chunk at a time
            return 1 - sum(len(chunks) for chunks in self._workers.values())
        held = sum(PIPELINE - len(chunks) for chunks in self._workers.values())
        if self._workers and not grow:
            return held
        return held + (self._size - len(self._workers)) * PIPELINE

    def submit(self, chunk: Chunk, grow: bool = True) -> None:
        """Send a chunk to the least busy worker, forking a new one when all are busy.

        With ``grow=False`` it goes to a worker already started (`slots` said one has room).

        Raises:
            ItemNotPicklable: One of the chunk's items cannot be pickled; nothing was sent.
            SpawnError: A needed worker could not be started.
        """
        if self._closed:
            raise RuntimeError("this map pass is over; start a new one")
        self._check_process()
        payload = _pack_request(chunk)
        worker = min(self._workers, key=lambda w: len(self._workers[w]), default=None)
        fork = worker is None or (
            grow
            and bool(self._workers[worker])
            and len(self._workers) < self._size
            and not self._probing()
        )
        if fork:
            # Fork single-threaded: stop the map reader threads first. A reader inside its
            # input is waited for only when no worker could take the chunk; otherwise a
            # worker we have takes it and the fork waits until the reader has stopped.
            if worker is None:
                park_readers(READER_WAIT)
            elif not park_readers(0.0):
                fork = False
            self.deferred = not fork
        if fork:
            if not self._workers and self._probe_end is None and self._size > 1:
                self._probe_end = time.monotonic() + HEAD_START
            worker = Worker(
                _serve_chunks_factory(self._fn, self._source),
                f"{self._name} worker",
                self._wake,
            )
            self._workers[worker] = {}
        assert worker is not None
        self._workers[worker][chunk.start] = chunk
        worker.send(payload)

    def _check_process(self) -> None:
        if self._pid and self._pid != os.getpid():
            raise RuntimeError(
                "this map pass was started in another process (a fork inherited it): its"
                " workers and pipes are not ours; create the map in the process that iterates it"
            )
        if self._waker is None:
            self._waker, self._pid = Waker(), os.getpid()

    def _wake(self) -> None:
        if self._waker is not None:
            self._waker.wake()

    def wake(self) -> None:
        """Make the pending (or next) `wait` return, maybe with nothing; from any thread."""
        self._poked = True
        self._wake()  # before the first wait() there is no waker yet: the flag is enough

    def wait(self) -> list[Done]:
        self._check_process()
        while True:
            out: list[Done] = []
            for worker, held in list(self._workers.items()):
                ended = worker.future.done()  # before reading: what it sent is all there
                out.extend(_unpack_reply(message, held) for message in worker.read())
                if ended:
                    out.extend(self._retire(worker))
            if out:
                self._probe_end = None  # a result is back: start the other workers now
                return out
            if self._poked:
                self._poked = False
                return out
            if self._probing():
                assert self._probe_end is not None
                if not self._block(self._probe_end - time.monotonic()):
                    self._probe_end = None
                    return out  # nothing yet: the caller dispatches to new workers
                continue
            self._block(None)

    def _block(self, timeout: float | None) -> bool:
        assert self._waker is not None
        return wait_any(self._waker, self._workers, timeout)

    def _retire(self, worker: Worker) -> list[Done]:
        """A worker ended: fail what it still held (it has sent all it could)."""
        held = self._workers.pop(worker)
        worker.close()
        if not held:
            return []
        cause = worker.future.exception()
        out = []
        for chunk in held.values():
            error: BaseException
            where = f"while computing items {chunk.start}..{chunk.stop - 1} of the map"
            if isinstance(cause, WorkerDied):
                detail = f"{cause.detail}; {where}" if cause.detail else where
                error = WorkerDied(cause.pid, cause.exitcode, cause.signal, detail)
                error.__cause__ = cause
            else:
                error = RuntimeError(f"map worker {worker.future.pid} ended {where}")
                error.__cause__ = cause
            out.append(Done(chunk, [], error, 0.0))
        return out

    @atomic  # all workers or none: a Ctrl-C halfway left the rest open for good
    def close(self, kill: bool) -> None:
        """End the pass: ``kill`` SIGKILLs the workers, else they exit once their pipe ends."""
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():  # inherited by a fork: the fds are not ours to close
            self._workers.clear()
            return
        for worker in self._workers:
            if kill:
                worker.kill()
            else:
                worker.close()
        self._workers.clear()
        if self._waker is not None:
            self._waker.close()


def _pack_request(chunk: Chunk) -> bytes:
    try:
        return dumps((chunk.start, chunk.stop, chunk.items))
    except ResultNotPicklable:
        assert chunk.items is not None
        for index, item in enumerate(chunk.items):
            try:
                dumps(item)
            except ResultNotPicklable as exc:
                raise ItemNotPicklable(index, exc.__cause__ or exc) from None
        raise


def _unpack_reply(message: bytes | bytearray, held: dict[int, Chunk]) -> Done:
    """Rebuild a computed chunk in the parent (never raises for a bad value: fails it)."""
    envelope, *parts = split_parts(message)
    start, whole, layout, error_packed, elapsed = pickle.loads(envelope)
    chunk = held.pop(start)
    values, failure = unpack_values(whole, layout, parts)
    if failure is not None:  # the parent lacks a class, or a __reduce__ fails here
        return Done(chunk, values, failure, elapsed)
    error = None if error_packed is None else load_error(error_packed)
    return Done(chunk, values, error, elapsed)


def _serve_chunks_factory(
    fn: Callable[..., Any], source: Indexed | None
) -> Callable[[int, int], None]:
    def serve(requests: int, replies: int) -> None:
        """In the worker child: compute chunks until the parent closes the request pipe."""
        # What the child inherited is the parent's: leave it out of the collector, or every
        # full collection (as chunks of results age) walks all of it and copies each page it
        # touches. This is the use the gc.freeze() docs give; 20% of a worker's time for
        # results of small objects when the parent holds as many.
        gc.freeze()
        while (message := recv_message(requests)) is not None:
            start, stop, items = pickle.loads(message)
            chunk = Chunk(start, stop, items)
            values, error, elapsed = compute(fn, source, chunk)
            send_parts(replies, _pack_reply(start, values, error, elapsed))

    return serve


def _pack_reply(
    start: int, values: list[Any], error: BaseException | None, elapsed: float
) -> list[bytes | memoryview]:
    """Encode a computed chunk (in the worker child) as the parts of one message.

    The values go as one pickle, or one per value when one will not pickle: that one fails
    at its own position, and every value before it is still delivered (see `pack_values`).
    """
    packed = pack_values(values, "the mapped function returned")
    if packed.error is not None:
        error = packed.error
    failure = None if error is None else pack_error(error)
    envelope = pickle.dumps((start, packed.whole, packed.layout, failure, elapsed), protocol=5)
    return [envelope, *packed.parts]
