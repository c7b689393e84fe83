"""`StreamExecutor`: a `concurrent.futures.Executor` whose ``map`` streams its input.

``submit`` runs each call in a forked child (``mode="process"``, one `task` per call) or in a
worker thread (``mode="thread"``), at most ``max_workers`` at a time; the rest wait in a queue.
In process mode a call starts in the submitting thread when a slot is free, and otherwise in a
dispatcher thread that lives only while calls are queued.

``map`` returns at once. A daemon *feeder* thread pulls the input and submits it, staying at
most ``buffer_size`` items ahead of the consumer; the consumer waits on the futures in input
order. An abandoned map (closed, garbage-collected, timed out, or failed) stops its feeder
and cancels the work it had submitted (killing the children of running calls). The feeder is
a daemon, so a live map never blocks interpreter exit, and a feeder stuck inside ``next()`` of
its input is abandoned safely: it submits nothing once it comes back.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, InvalidStateError, wait
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, RUNNING
from itertools import islice
from types import TracebackType
from typing import Any, Literal, TypeVar

from ._checks import count
from ._core._channel import load_error, pack_error
from ._core._options import TaskOptions
from ._core._spawn import install_hooks, spawn
from ._executor import concurrency, portable, selected

__all__ = ("StreamExecutor",)

R = TypeVar("R")
_MISSING: Any = object()

#: A map's first call gets this long (or until it finishes) before the feeder forks more:
#: each fork holds the parent for 1-3 ms, and the first result should not wait for them.
FIRST_CALL_HEAD_START = 0.02


class _Call(Future[Any]):
    """A submitted call; in process mode `cancel` also works while it runs (killing the child)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        killable: bool,
        engine: Executor | None = None,
    ) -> None:
        super().__init__()
        self.call = (fn, args, kwargs)
        self.killable = killable
        self.engine = engine  # None: fork the call here
        self.task: Future[Any] | None = None

    def cancel(self) -> bool:
        with self._condition:
            if self._state == FINISHED:
                return False
            if self._state in {CANCELLED, CANCELLED_AND_NOTIFIED}:
                return True
            if self._state == RUNNING and not self.killable:  # a thread call cannot be stopped
                return False
            # Queued; or running, or being started (no task yet: `attach` stops it when the
            # start returns). Notified at once, also when queued: wait() and as_completed()
            # count only CANCELLED_AND_NOTIFIED as done, and the slot may stay busy for long.
            task = self.task
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:  # wait() and as_completed() see it at once
                waiter.add_cancelled(self)
            self._condition.notify_all()
        if task is not None:
            task.cancel()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True

    def set_running_or_notify_cancel(self) -> bool:
        with self._condition:  # an RLock: the base class takes it again
            if self._state == CANCELLED_AND_NOTIFIED:  # cancelled while queued
                return False
            return super().set_running_or_notify_cancel()

    def attach(self, task: Future[Any]) -> None:
        """Record the child (or engine call) just started; cancel it if the call was."""
        with self._condition:
            self.task = task
            cancelled = self._state != RUNNING
        if cancelled:
            task.cancel()

    def copy_from(self, task: Future[Any]) -> None:
        """Finish with the task's outcome, unless cancelled meanwhile (then nothing)."""
        if task.cancelled():
            return
        error = task.exception()
        with contextlib.suppress(InvalidStateError):  # cancel() won the race: it stands
            if error is None:
                self.set_result(task.result())
            else:
                self.set_exception(error)


class StreamExecutor(Executor):
    """An executor that forks a child per call, or runs calls in threads.

    Args:
        max_workers: Most calls running at once; default ``os.cpu_count()`` for processes,
            ``min(32, cpu count + 4)`` for threads.
        mode: ``"process"`` (each call runs in a fresh fork of the caller: arguments and
            ``fn`` are inherited, not pickled; the result is pickled back) or ``"thread"``.
        executor: Process mode: start the calls on this engine instead of forking them
            (``fn`` and the arguments must then pickle). Default: the engine selected
            (`inparallel.use`, ``INPARALLEL_EXECUTOR``) where each call is submitted;
            ``max_workers`` then defaults to `inparallel.concurrency` of that engine.

    Raises:
        TypeError: ``max_workers`` is not an int.
        ValueError: ``max_workers < 1``, or an unknown ``mode``.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        mode: Literal["process", "thread"] = "process",
        executor: Executor | str | None = None,
    ) -> None:
        if mode not in ("process", "thread"):
            raise ValueError(f"StreamExecutor mode must be 'process' or 'thread', not {mode!r}")
        if executor is not None:
            if mode != "process":
                raise ValueError("StreamExecutor: executor= needs mode='process'")
            selected(executor, "StreamExecutor()")  # a bad executor= fails here
        self._executor = executor  # resolved per submit (None: the engine selected there)
        if max_workers is None:
            cpus = os.cpu_count() or 1
            max_workers = min(32, cpus + 4) if mode == "thread" else concurrency(executor)
        self._max = count("StreamExecutor()", "max_workers", max_workers, optional=True)
        self._mode = mode
        self._cond = threading.Condition(threading.Lock())
        self._pending: deque[_Call] = deque()
        self._running = 0
        self._threads = 0  # dispatcher or worker threads alive
        self._shutdown = False
        self.forks = mode == "process"
        _at_exit_stop(self)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else f"{self._running} running"
        return f"<StreamExecutor {self._mode} x{self._max}: {state}, {len(self._pending)} queued>"

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)`` and return its future at once.

        Raises:
            RuntimeError: The executor is shut down.
            TypeError: ``fn`` is not callable.
        """
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {type(fn).__name__} {fn!r}")
        engine = selected(self._executor) if self._mode == "process" else None
        call = _Call(fn, args, kwargs, killable=self._mode == "process", engine=engine)
        start_now = False
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot submit to a StreamExecutor after shutdown()")
            if self._mode == "process" and self._running < self._max and not self._pending:
                self._running += 1
                start_now = True
            else:
                self._pending.append(call)
                self._ensure_thread()
        if start_now:
            self._start(call)
        return call

    def _ensure_thread(self) -> None:
        # Under the lock. Process mode needs one dispatcher; thread mode one thread per call.
        wanted = (
            1 if self._mode == "process" else min(self._max, self._running + len(self._pending))
        )
        if self._threads < wanted:
            self._threads += 1
            target = self._dispatch if self._mode == "process" else self._work
            threading.Thread(target=target, name="inparallel-stream", daemon=True).start()

    def _start(self, call: _Call) -> None:
        """Fork the call's child (process mode)."""
        if not call.set_running_or_notify_cancel():
            self._release()
            return
        fn, args, kwargs = call.call
        try:
            if call.engine is None:
                task: Future[Any] = spawn(fn, args, kwargs, TaskOptions())
            else:
                task = call.engine.submit(portable(fn), *args, **kwargs)
        except BaseException as exc:
            if not call.cancelled():
                call.set_exception(exc)
            self._release()
            if not isinstance(exc, Exception):
                raise  # Ctrl-C in the submitting thread: the call failed, and so does submit
            return
        call.attach(task)
        task.add_done_callback(functools.partial(self._finished, call))

    def _finished(self, call: _Call, task: Future[Any]) -> None:
        try:
            call.copy_from(task)
        finally:
            call.task = None  # the task's callbacks hold the call: break the cycle
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def _dispatch(self) -> None:
        """Process mode: start queued calls as slots free up; end when none is queued."""
        while (call := self._take()) is not None:
            self._start(call)

    def _take(self) -> _Call | None:
        """Take the next queued call once a slot is free; None (the thread ends) if none."""
        with self._cond:
            while self._pending and self._running >= self._max:
                self._cond.wait()
            if not self._pending:
                self._threads -= 1
                self._cond.notify_all()
                return None
            self._running += 1
            return self._pending.popleft()

    def _work(self) -> None:
        """Thread mode: run queued calls; end when none is queued."""
        while (call := self._take()) is not None:
            if call.set_running_or_notify_cancel():
                fn, args, kwargs = call.call
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    call.set_exception(exc)
                else:
                    call.set_result(result)
                    del result  # the future holds it; this thread must not
            self._release()

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffer_size: int | None = 10000,
        buffersize: int | None = _MISSING,
    ) -> Iterator[R]:
        """Return an iterator over ``fn(*items)`` for the zipped inputs, without blocking.

        A background thread acquires the inputs and submits them, at most ``buffer_size``
        items ahead of the consumer (``None``: no limit). Results come in input order.
        ``timeout`` counts from this call: a result not there by then raises `TimeoutError`.
        An item's error is raised at its position (after every earlier result) and ends the
        map; so does closing the iterator, which also cancels the work submitted ahead.

        Args:
            fn: The function; inherited by the children in process mode.
            iterables: Inputs, zipped (shortest wins); none at all gives an empty map.
            timeout: Seconds from now for the whole map, or None.
            chunksize: Items per submitted call (process mode amortises the fork).
            buffer_size: Most items submitted but not yet consumed.
            buffersize: The Python 3.14 spelling of ``buffer_size``.

        Raises:
            TypeError: ``fn`` is not callable, or both spellings of the buffer are given.
            ValueError: ``buffer_size`` or ``chunksize`` is less than 1.
            RuntimeError: The executor is shut down.
        """
        if buffersize is not _MISSING:
            if buffer_size not in {10000, buffersize}:
                raise TypeError("give buffer_size= or buffersize= (its alias), not both")
            buffer_size = buffersize
        if not callable(fn):
            raise TypeError(f"map() needs a callable first, not {type(fn).__name__} {fn!r}")
        if buffer_size is not None:
            count("map()", "buffer_size", buffer_size, optional=True, hint=" (None: no limit)")
        count("map()", "chunksize", chunksize)
        if self._shutdown:
            raise RuntimeError("cannot map on a StreamExecutor after shutdown()")
        deadline = None if timeout is None else time.monotonic() + timeout
        if not iterables:
            return iter(())
        state = _MapState(self, fn, zip(*iterables, strict=False), chunksize, buffer_size)
        return _MapIterator(state, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls; optionally cancel queued ones; optionally wait for the rest.

        Running calls finish (use ``future.cancel()`` to kill one in process mode). Maps in
        progress fail with `CancelledError` at the first cancelled item.
        """
        with self._cond:
            self._shutdown = True
            cancelled = list(self._pending) if cancel_futures else []
        for call in cancelled:
            call.cancel()
        if wait:
            with self._cond:
                while self._running or self._pending or self._threads:
                    self._cond.wait()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown(wait=True)


def _run_chunk(
    fn: Callable[..., Any], chunk: list[tuple[Any, ...]], pack: bool
) -> tuple[list[Any], Any]:
    """Run a chunk of calls; return the values up to the first error, and that error.

    In a child (``pack``) the error travels packed, as a map worker's does, so that the values
    before it arrive even when the exception itself will not pickle.
    """
    values: list[Any] = []
    try:
        values.extend(itertools.starmap(fn, chunk))
    except BaseException as exc:  # belongs to the item after the last value
        return values, pack_error(exc) if pack else exc
    return values, None


_stop_at_exit: weakref.WeakSet[StreamExecutor | _MapState] = weakref.WeakSet()
_exit_lock = threading.Lock()
_exit_hook = False


def _at_exit_stop(obj: StreamExecutor | _MapState) -> None:
    """Stop ``obj`` at interpreter exit, before the core kills and reaps every child.

    Daemon threads keep running while ``atexit`` handlers do; without this a feeder or a
    dispatcher would go on forking while the interpreter tears itself down.
    """
    global _exit_hook
    with _exit_lock:
        if not _exit_hook:
            install_hooks()  # registered first, so the core's handler runs after ours
            atexit.register(_stop_all)
            _exit_hook = True
        _stop_at_exit.add(obj)


class _MapState:
    """What the feeder thread and the consumer share (the iterator itself is not shared)."""

    def __init__(
        self,
        executor: StreamExecutor,
        fn: Callable[..., Any],
        items: Iterator[tuple[Any, ...]],
        chunksize: int,
        buffer_size: int | None,
    ) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.futures: deque[tuple[Future[Any], int]] = deque()
        self.ahead = 0  # items pulled (or being pulled) and not yet consumed
        self.limit = buffer_size
        self.chunked = chunksize > 1  # each future holds a list of values
        self.fed = False  # the feeder has ended
        self.error: BaseException | None = None  # the input's own error, after the futures
        self.stopped = False
        _at_exit_stop(self)
        thread = threading.Thread(
            # In a copy of the caller's context: the engine selected by inparallel.use()
            # around map() is the one the feeder submits to.
            target=contextvars.copy_context().run,
            args=(self._feed, executor, fn, items, chunksize),
            name="inparallel-stream-feeder",
            daemon=True,
        )
        thread.start()

    def _feed(
        self,
        executor: StreamExecutor,
        fn: Callable[..., Any],
        items: Iterator[tuple[Any, ...]],
        chunksize: int,
    ) -> None:
        cond = self.cond
        first = True
        try:
            while True:
                with cond:
                    while self.limit is not None and self.ahead >= self.limit and not self.stopped:
                        cond.wait()
                    if self.stopped:
                        return
                    take = (
                        chunksize if self.limit is None else min(chunksize, self.limit - self.ahead)
                    )
                    self.ahead += take
                chunk: list[tuple[Any, ...]] = []
                try:
                    chunk.extend(islice(items, take))
                except BaseException as exc:  # the input's error: raised after the results
                    self.error = exc  # (the items pulled before it still go out below)
                if not chunk:
                    return
                if self.chunked:
                    future = executor.submit(_run_chunk, fn, chunk, executor.forks)
                else:
                    future = executor.submit(fn, *chunk[0])
                with cond:
                    self.ahead -= take - len(chunk)
                    if self.is_stopped():  # stop() ran while we pulled or submitted
                        future.cancel()
                        return
                    self.futures.append((future, len(chunk)))
                    cond.notify_all()
                if first:
                    first = False
                    wait([future], timeout=FIRST_CALL_HEAD_START)
                if len(chunk) < take:  # the input ended (or failed)
                    return
                # Let the supervisor and the consumer in: filling a big buffer would otherwise
                # hold the GIL for tens of ms at a time and delay the first results.
                os.sched_yield()
        except BaseException as exc:  # submit refused (shut down) or could not fork
            self.error = exc
        finally:
            with cond:
                self.fed = True
                cond.notify_all()

    def is_stopped(self) -> bool:
        return self.stopped

    def release(self, n: int) -> None:
        """``n`` items were consumed (or will never be): the feeder may pull that many more."""
        if n:
            with self.cond:
                self.ahead -= n
                self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.error = None  # an input error not yet raised: the map is over anyway
            futures = [f for f, _ in self.futures]
            self.futures.clear()
            self.cond.notify_all()
        # Latest first: the queued calls are cancelled before a killed running one frees a
        # slot that the dispatcher could give them.
        for future in reversed(futures):
            future.cancel()


def _stop_all() -> None:
    for obj in list(_stop_at_exit):
        if isinstance(obj, StreamExecutor):
            obj.shutdown(wait=False, cancel_futures=True)
        else:
            obj.stop()


class _MapIterator(Iterator[Any]):
    def __init__(self, state: _MapState, deadline: float | None) -> None:
        self._state, self._deadline = state, deadline
        self._values: deque[Any] = deque()
        self._error: BaseException | None = None
        self._finalizer = weakref.finalize(self, state.stop)

    def __iter__(self) -> _MapIterator:
        return self

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def __next__(self) -> Any:
        if self._values:
            self._state.release(1)
            return self._values.popleft()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        state = self._state
        with state.cond:
            while not state.futures and not state.fed and not state.stopped:
                remaining = self._remaining()
                if remaining == 0.0:
                    break
                state.cond.wait(remaining)
            if not state.futures:
                failure, state.error = state.error, None
                timed_out = not state.fed and not state.stopped
        if not state.futures:
            self.close()
            if timed_out:
                raise TimeoutError("StreamExecutor.map timed out waiting for its input")
            if failure is not None:
                raise failure
            raise StopIteration
        future, count = state.futures[0]
        try:
            result = future.result(self._remaining())
        except BaseException:
            self.close()
            raise
        with state.cond:
            state.futures.popleft()
            if not state.chunked:
                state.ahead -= count
            state.cond.notify_all()
        if not state.chunked:
            return result
        values, error = result
        state.release(count - len(values))  # items after an error are never delivered
        self._values.extend(values)
        if error is not None:  # the values before it first, then the error; then the end
            self._error = load_error(error) if isinstance(error, tuple) else error
            self._finalizer()
        return next(self)

    def close(self) -> None:
        """Stop the feeder and cancel every call submitted ahead; the map ends here."""
        self._values.clear()
        self._error = None
        self._finalizer()
