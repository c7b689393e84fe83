"""`StreamExecutor`: a `concurrent.futures.Executor` whose ``map`` streams its input.

``submit`` runs each call in a forked child (``mode="process"``, one `task` per call) or in a
worker thread (``mode="thread"``), at most ``max_workers`` at a time; the rest wait in a queue.
In process mode a call starts in the submitting thread when a slot is free, and otherwise in a
dispatcher thread that lives only while calls are queued. ``map`` is in ``_streammap``, the
future of one call in ``_streamcall``, the hooks for interpreter exit in ``_streamexit``.

**Shutdown.** ``shutdown()`` refuses new ``submit`` and ``map`` calls, but a map started before
it keeps submitting its own input: ``with StreamExecutor() as ex: results = ex.map(...)``
delivers every result after the block, as `ThreadPoolExecutor` does. ``shutdown(wait=True)``
waits for every call submitted so far and for each live map to read its input either to the
end or until its buffer is full (what 3.14's ``Executor.map(buffersize=)`` reads in ``map()``
itself); it never waits for a consumer, so a map read after the block cannot deadlock it.
``cancel_futures=True`` also cuts every map off where its feeder is.

**Interpreter exit.** Process mode: queued calls are cancelled and the core kills every child
(no child outlives the parent). Thread mode, as `ThreadPoolExecutor`: every call given to
``submit``, queued ones included, runs to its end before the ``atexit`` handlers run; the calls
of a live map are not waited for (nobody can read them any more).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, InvalidStateError
from typing import Any, Literal, TypeVar

from ._checks import MISSING, count, default_threads, function, renamed
from ._core._interrupts import GiveUp, atomic
from ._core._options import TaskOptions
from ._core._spawn import spawn
from ._core._thread import start as start_thread
from ._executor import concurrency, portable, selected
from ._inputs import iterate
from ._streamcall import Call
from ._streamexit import stop_at_exit
from ._streammap import MapIterator, MapState, cut_off

__all__ = ("StreamExecutor",)

R = TypeVar("R")


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
            raise ValueError(f"StreamExecutor(): mode must be 'process' or 'thread', not {mode!r}")
        if executor is not None:
            if mode != "process":
                raise ValueError("StreamExecutor(): executor= needs mode='process'")
            selected(executor, "StreamExecutor()")  # a bad executor= fails here
        self._executor = executor  # resolved per submit (None: the engine selected there)
        if max_workers is None:
            max_workers = default_threads() if mode == "thread" else concurrency(executor)
        self._max = count("StreamExecutor()", "max_workers", max_workers, optional=True)
        self._mode = mode
        # Re-entrant: a map's finalizer, run by the collector in a thread that holds it,
        # takes it again (see _streammap).
        self._cond = threading.Condition()
        self._pending: deque[Call] = deque()
        self._running = 0  # slots taken (calls started, or being started)
        self._owned = 0  # calls given to submit() not yet ended: thread mode waits at exit
        self._threads = 0  # dispatcher or worker threads alive
        self._shutdown = False
        self._cancelled = False  # shutdown(cancel_futures=True): maps may submit no more
        self._maps: weakref.WeakSet[MapState] = weakref.WeakSet()
        self.forks = mode == "process"
        self._pid = os.getpid()  # its threads and children live in this process only
        stop_at_exit(self)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else f"{self._running} running"
        return f"<StreamExecutor {self._mode} x{self._max}: {state}, {len(self._pending)} queued>"

    @atomic
    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)`` and return its future at once.

        In process mode this forks here if a slot is free. ``result()`` raises what ``fn``
        raised, a `StopIteration` too (as the stdlib's executors do). A Ctrl-C is held until
        the call is made, then raised with the future as ``.future`` (see `_core._interrupts`).

        Raises:
            RuntimeError: The executor is shut down, or was made in another process (a fork
                inherited it), or no worker thread could be started.
            TypeError: ``fn`` is not callable.
        """
        function("StreamExecutor.submit()", "fn", fn)
        self._refuse_in_a_fork()
        return self._submit(fn, args, kwargs, mapped=False)

    def _refuse_in_a_fork(self) -> None:
        if self._pid != os.getpid():
            raise RuntimeError(
                "this StreamExecutor was made in another process (a fork inherited it): its"
                " threads and children are not this process's; make one where it is used"
            )

    def _submit_mapped(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        """Submit a call of a map: accepted after `shutdown`, unless that cancelled futures."""
        return self._submit(fn, args, {}, mapped=True)

    def _submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], mapped: bool
    ) -> Call:
        engine = selected(self._executor) if self.forks else None
        call = Call(fn, args, kwargs, killable=self.forks, engine=engine, mapped=mapped)
        with self._cond:
            if mapped and self._cancelled:
                raise cut_off()  # the map ends as cut() would have it
            if not mapped and self._shutdown:
                raise RuntimeError("cannot submit to a StreamExecutor after shutdown()")
            start_now = self.forks and self._running < self._max and not self._pending
            if start_now:
                self._running += 1
                call.slot = True
            else:
                self._pending.append(call)
                try:
                    self._ensure_thread()
                except BaseException:
                    self._pending.pop()  # ours, the last one: nobody could take it meanwhile
                    raise
            self._owned += not mapped
        if start_now:
            self._start(call)
        return call

    def _ensure_thread(self) -> None:
        """Start the dispatcher, or a worker per queued call (under the lock); see `submit`."""
        wanted = 1 if self.forks else min(self._max, self._running + len(self._pending))
        if self._threads >= wanted:
            return
        thread = threading.Thread(target=self._serve, name="inparallel-stream", daemon=True)
        try:
            start_thread(thread)
        except RuntimeError:  # "can't start new thread": the ones alive will take the call
            if not self._threads:
                raise
        else:
            self._threads += 1  # its first step waits for this lock: it sees the count

    def _serve(self) -> None:
        """Dispatcher (process mode) or worker thread: run queued calls until none is left."""
        run = functools.partial(self._start, queued=True) if self.forks else self._run
        while (call := self._take()) is not None:
            run(call)
            del call  # not kept (nor so its result) while this thread waits for a slot

    def _take(self) -> Call | None:
        """Take the next queued call once a slot is free; None (the thread ends) if none."""
        with self._cond:
            while self._pending and self._running >= self._max:
                self._cond.wait()
            if not self._pending:
                self._threads -= 1
                self._cond.notify_all()
                return None
            self._running += 1
            call = self._pending.popleft()
            call.slot = True
            return call

    def _start(self, call: Call, *, queued: bool = False) -> None:
        """Fork the call's child, or start it on the engine (process mode).

        A Ctrl-C (`GiveUp`: one held before the fork) cancels the call, killing its child if
        any, and is raised unless ``queued`` (a dispatcher thread goes on).
        """
        task: Future[Any] | None = None
        try:
            if not call.set_running_or_notify_cancel():
                self._release(call)
                return
            assert call.call is not None
            fn, args, kwargs = call.call
            call.call = None
            if call.engine is None:
                task = spawn(fn, args, kwargs, TaskOptions())
            else:
                task = call.engine.submit(portable(fn), *args, **kwargs)
            call.attach(task)
            task.add_done_callback(functools.partial(self._finished, call))
        except BaseException as exc:
            if task is None:  # an interrupt after the fork carries the task (_core._interrupts)
                task = getattr(exc, "future", None)
            if task is not None:  # started but not followed up: it must not run on unseen
                task.cancel()
            failed = isinstance(exc, Exception) and not isinstance(exc, GiveUp)
            if failed:  # could not fork or start: the call's own failure
                with contextlib.suppress(InvalidStateError):
                    call.set_exception(exc)
            else:
                call.cancel()
            self._release(call)
            if not (failed or queued):
                raise

    def _finished(self, call: Call, task: Future[Any]) -> None:
        try:
            call.copy_from(task)
        finally:
            call.task = None  # the task's callbacks hold the call: break the cycle
            self._release(call)

    def _run(self, call: Call) -> None:
        """Thread mode: run the call here."""
        try:
            if call.set_running_or_notify_cancel():
                assert call.call is not None
                fn, args, kwargs = call.call
                call.call = None
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    call.set_exception(exc)
                else:
                    call.set_result(result)
        finally:
            self._release(call)

    def _release(self, call: Call) -> None:
        """Give the call's slot back; a no-op if it holds none (released already)."""
        with self._cond:
            if not call.slot:
                return
            call.slot = False
            self._running -= 1
            self._owned -= not call.mapped
            self._cond.notify_all()

    def _map_settled(self) -> None:
        """A map's feeder ended or waits for its consumer: wake a waiting `shutdown`."""
        if self._shutdown:
            with self._cond:
                self._cond.notify_all()

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffer_size: int | None = 10000,
        buffersize: int | None = MISSING,
    ) -> Iterator[R]:
        """Return an iterator over ``fn(*items)`` for the zipped inputs, without blocking.

        A background thread acquires the inputs and submits them, at most ``buffer_size``
        items ahead of the consumer (``None``: no limit), also after `shutdown` (unless it
        cancelled futures). Results come in input order. ``timeout`` counts from this call: a
        result not there by then raises `TimeoutError`. An item's error is raised at its
        position (after every earlier result) and ends the map; so does closing the iterator,
        which also cancels the work submitted ahead. A `StopIteration` raised by ``fn`` is
        raised as a `RuntimeError` caused by it, not taken for the end of the map. A Ctrl-C
        during the call is held until it returns (see `submit`).

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
            RuntimeError: The executor is shut down, or was made in another process, or no
                thread could be started; ``__iter__`` of an input raised `StopIteration`.
        """
        where = "StreamExecutor.map()"
        if buffersize is not MISSING:
            buffer_size = renamed(
                where,
                "buffer_size",
                buffer_size,
                default=10000,
                other="buffersize",
                given=buffersize,
                note="its alias",
            )
        function(where, "fn", fn)
        if buffer_size is not None:
            count(where, "buffer_size", buffer_size, optional=True, hint=" (None: no limit)")
        count(where, "chunksize", chunksize)
        self._refuse_in_a_fork()
        if self._shutdown:
            raise RuntimeError("cannot map on a StreamExecutor after shutdown()")
        deadline = None if timeout is None else time.monotonic() + timeout
        if not iterables:
            return iter(())
        # Each __iter__ is user code: called here, before Ctrl-C is held.
        inputs = [iterate(x, f"input {i} of StreamExecutor.map()") for i, x in enumerate(iterables)]
        return self._open(fn, zip(*inputs, strict=False), chunksize, buffer_size, deadline)

    @atomic
    def _open(
        self,
        fn: Callable[..., Any],
        items: Iterator[tuple[Any, ...]],
        chunksize: int,
        buffer_size: int | None,
        deadline: float | None,
    ) -> MapIterator:
        """Start a map; a Ctrl-C meanwhile is held until it returns (see `submit`)."""
        state = MapState(self, fn, chunksize, buffer_size)
        iterator = MapIterator(state, deadline)  # its finalizer stops the feeder from now on
        with self._cond:
            if self._shutdown:  # shut down since map() checked
                raise RuntimeError("cannot map on a StreamExecutor after shutdown()")
            self._maps.add(state)
        try:
            state.start(fn, items)
        except BaseException:
            iterator.close()
            raise
        return iterator

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls and maps; optionally cancel queued calls; optionally wait.

        Maps started before keep submitting their input (see the module docstring). Running
        calls finish (use ``future.cancel()`` to kill one in process mode).

        Args:
            wait: Block until every call submitted so far has ended and each live map has
                read its input to the end or filled its buffer (never for a consumer). An
                input that blocks in ``next()`` holds this up, unless ``cancel_futures``.
            cancel_futures: Cancel the queued calls, and end every live map where its feeder
                is: it raises `CancelledError` after the results of what it had submitted.

        In a fork that inherited the executor, this does nothing (nothing of it is ours).
        """
        if self._pid != os.getpid():
            return
        self._refuse(cancel_futures)
        if wait:
            with self._cond:
                while not self._idle():
                    self._cond.wait()

    @atomic
    def _refuse(self, cancel_futures: bool) -> None:
        """Shut down now; a Ctrl-C meanwhile is held until every queued call is cancelled."""
        with self._cond:
            self._shutdown = True
            cancelled: list[Call] = []
            maps: list[MapState] = []
            if cancel_futures:
                self._cancelled = True  # from here on, maps submit nothing
                cancelled = list(self._pending)
                maps = list(self._maps)
        for state in maps:
            state.cut()
        for call in cancelled:
            call.cancel()

    def _idle(self) -> bool:
        # Under the lock. A map's `settled` is read without its own lock: the feeder sets it
        # before it calls _map_settled(), which takes this lock and wakes us.
        busy = self._running or self._pending or self._threads
        return not busy and all(state.settled for state in self._maps)

    def _drain_at_exit(self) -> None:
        """Thread mode: wait until every call given to `submit` has ended."""
        with self._cond:
            while self._owned and not self.forks:
                self._cond.wait()

    def _stop_at_exit(self) -> None:
        self.shutdown(wait=False, cancel_futures=True)
