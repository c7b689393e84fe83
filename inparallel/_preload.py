"""Read-ahead iterators: `thread_preload` and `process_preload`.

Both run the source ahead of the consumer, in order, at most ``buffer_size`` items ahead (an
item counts as "ahead" from the moment it is pulled from the source until the consumer gets
it). A source error arrives after every earlier item, with its traceback, and ends the
iterator; after the end, ``next()`` raises `StopIteration` for ever. `close`, a ``with`` block
and garbage collection stop the background work.

`thread_preload` pulls in one daemon thread. `process_preload` runs the source in a forked
child (a `Worker`): the source is inherited, never pickled, and each item is pickled back. The
child produces an item only against a credit: the parent grants ``buffer_size`` at the start
and one more per item consumed, so the child can never run further ahead than that.
"""

from __future__ import annotations

import os
import pickle
import struct
import threading
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from ._checks import count
from ._core._channel import dumps, load_error, pack_error, recv_message, send_message
from ._core._errors import ResultNotPicklable
from ._core._interrupts import atomic
from ._core._reader import decode
from ._core._stdio import flush_stdio
from ._core._thread import start as start_thread
from ._core._wire import Kind
from ._feed import READER_WAIT, park_readers
from ._inputs import iterate
from ._workers import Waker, Worker, wait_any

__all__ = ("Preloader", "process_preload", "thread_preload")

T = TypeVar("T")

CREDIT = struct.Struct("<I")
_ITEM, _ERROR, _END = 0, 1, 2


def _check(tool: str, iterable: object, buffer_size: object) -> Iterator[Any]:
    count(f"{tool}()", "buffer_size", buffer_size)
    try:
        return iterate(iterable, f"the source of {tool}()")  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{tool}(): iterable must be iterable, not {type(iterable).__name__}"
        ) from None


class Preloader(Iterator[T]):
    """The iterator both preloaders return: ``next``, `close`, and ``with``."""

    def __init__(self, state: _ThreadState | _ProcessState) -> None:
        self._state = state
        self._pid = os.getpid()
        self._finalizer = weakref.finalize(self, _stop, state, self._pid)

    def __iter__(self) -> Preloader[T]:
        return self

    def __next__(self) -> T:
        if self._pid != os.getpid():
            raise RuntimeError(
                "this preloader was started in another process (a fork inherited it): its"
                " thread or child is not ours; create it in the process that iterates it"
            )
        ok, value = self._state.next()
        if ok:
            return value  # type: ignore[no-any-return]
        self.close()
        if value is None:
            raise StopIteration
        raise value

    @atomic  # weakref.finalize forgets its call before making it: no Ctrl-C in between
    def close(self) -> None:
        """Stop reading ahead now; later ``next()`` calls raise `StopIteration`."""
        self._finalizer()

    def __enter__(self) -> Preloader[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Preloader {self._state!r}>"


def _stop(state: _ThreadState | _ProcessState, pid: int) -> None:
    if pid == os.getpid():  # in a fork that inherited it, nothing of it is ours to stop
        state.stop()


# -- threads ---------------------------------------------------------------------------------


class _ThreadState:
    """The buffer shared by the consumer and the daemon thread that fills it."""

    def __init__(self, source: Iterator[Any], buffer_size: int) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[Any] = deque()
        self._ahead = 0  # pulled (or being pulled) and not yet consumed
        self._limit = buffer_size
        self._end: BaseException | None = None  # the source's error, once it ended with one
        self._ended = False
        self._stopped = False
        self._thread = threading.Thread(
            target=self._fill, args=(source,), name="inparallel-preload", daemon=True
        )
        start_thread(self._thread)

    def __repr__(self) -> str:
        return f"thread, {len(self._items)} buffered"

    def _fill(self, source: Iterator[Any]) -> None:
        cond = self._cond
        while True:
            with cond:
                while self._ahead >= self._limit and not self._stopped:
                    cond.wait()
                if self._stopped:
                    return
                self._ahead += 1
            try:
                item = next(source)
            except BaseException as exc:  # StopIteration or the source's own error
                self._deliver(None, None if isinstance(exc, StopIteration) else exc, end=True)
                return
            if not self._deliver(item, None, end=False):
                return

    def _deliver(self, item: Any, error: BaseException | None, *, end: bool) -> bool:
        """Hand over an item or the end; False once closed (the consumer wants nothing more)."""
        with self._cond:
            if self._stopped:
                return False
            if end:
                self._ended, self._end = True, error
            else:
                self._items.append(item)
            self._cond.notify_all()
            return True

    def next(self) -> tuple[bool, Any]:
        with self._cond:
            while not self._items and not self._ended and not self._stopped:
                self._cond.wait()
            if self._items:
                self._ahead -= 1
                self._cond.notify_all()
                return True, self._items.popleft()
            end, self._end = self._end, None
            self._ended = True
            return False, end

    def stop(self) -> None:
        with self._cond:
            self._stopped = self._ended = True
            self._items.clear()
            self._end = None
            self._cond.notify_all()


def thread_preload(iterable: Iterable[T], buffer_size: int = 4) -> Preloader[T]:
    """Iterate ``iterable`` in a background thread, at most ``buffer_size`` items ahead.

    The thread starts at once. ``next()`` blocks until the next item is there. A thread blocked
    inside the source when the preloader is closed ends as soon as the source returns.

    Raises:
        TypeError: ``iterable`` is not iterable, or ``buffer_size`` is not an int.
        ValueError: ``buffer_size`` is less than 1.
    """
    return Preloader(_ThreadState(_check("thread_preload", iterable, buffer_size), buffer_size))


# -- processes -------------------------------------------------------------------------------


def _serve_source(source: Iterator[Any]) -> Any:
    def serve(requests: int, replies: int) -> None:
        """In the child: send one item per credit until the source ends or the parent goes."""
        credit = 0
        while True:
            while credit == 0:
                message = recv_message(requests)
                if message is None:
                    return
                (grant,) = CREDIT.unpack(message)
                credit += grant
            try:
                item = next(source)
            except StopIteration:
                flush_stdio()  # before the end: the parent may kill us as soon as it has it
                send_message(replies, pickle.dumps((_END, None)))
                return
            except BaseException as exc:
                flush_stdio()
                send_message(replies, pickle.dumps((_ERROR, pack_error(exc))))
                return
            try:
                payload = dumps(item, "the source yielded")
            except ResultNotPicklable as exc:
                send_message(replies, pickle.dumps((_ERROR, pack_error(exc))))
                return
            send_message(replies, pickle.dumps((_ITEM, payload)))
            credit -= 1

    return serve


class _ProcessState:
    """The parent's side of a forked source: credits out, items in."""

    def __init__(self, source: Iterator[Any], buffer_size: int) -> None:
        park_readers(READER_WAIT)  # fork single-threaded: stop the maps' readers (see _feed)
        self._waker = Waker()
        try:
            self._worker = Worker(_serve_source(source), "process_preload", self._waker.wake)
        except BaseException:
            self._waker.close()
            raise
        self._items: deque[bytes] = deque()
        self._ended = False
        self._end: BaseException | None = None
        self._grant(buffer_size)

    def __repr__(self) -> str:
        return f"process pid={self._worker.future.pid}, {len(self._items)} buffered"

    def _grant(self, n: int) -> None:
        self._worker.send(CREDIT.pack(n))

    def next(self) -> tuple[bool, Any]:
        worker = self._worker
        while not self._items:
            if self._ended:
                end, self._end = self._end, None
                return False, end
            ended = worker.future.done()  # before reading: what it sent is all there
            for message in worker.read():
                kind, payload = pickle.loads(message)
                if kind == _ITEM:
                    self._items.append(payload)
                else:  # the stream is in order: the end comes after every item before it
                    self._ended = True
                    self._end = None if kind == _END else load_error(payload)
            if not self._items and not self._ended:
                if ended:
                    self._ended = True
                    self._end = _early_end(worker)
                else:
                    wait_any(self._waker, [self._worker])
        self._grant(1)
        ok, value = decode(Kind.VALUE, self._items.popleft(), [], restricted=False)
        if not ok:
            self.stop()
        return ok, value

    def stop(self) -> None:
        self._ended = True
        self._items.clear()
        self._end = None
        self._worker.kill()
        self._waker.close()


def _early_end(worker: Worker) -> BaseException:
    cause = worker.future.exception()
    if isinstance(cause, BaseException):
        return cause  # WorkerDied, typically
    return RuntimeError(f"the process_preload child pid {worker.future.pid} ended early")


def process_preload(iterable: Iterable[T], buffer_size: int = 4) -> Preloader[T]:
    """Iterate ``iterable`` in a forked child, at most ``buffer_size`` items ahead.

    The child is forked at once and inherits the source as it is now (a generator, an open
    file, a database cursor: nothing is pickled); the parent's copy of the source is left
    untouched. Items are pickled back, so they must be picklable (cloudpickle is the fallback);
    an unpicklable item ends the iterator with `ResultNotPicklable` at its position. A child
    that dies ends it with `WorkerDied`. Closing kills the child at once.

    Raises:
        TypeError: ``iterable`` is not iterable, or ``buffer_size`` is not an int.
        ValueError: ``buffer_size`` is less than 1.
        SpawnError: The child could not be started.
    """
    source = _check("process_preload", iterable, buffer_size)
    return Preloader(_ProcessState(source, buffer_size))
