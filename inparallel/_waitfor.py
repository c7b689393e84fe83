"""`waitfor`: yield futures from a caller-owned list as they complete, keeping it topped up.

Pure logic over `concurrent.futures.Future` objects (ours, an executor's, or hand-made): no fork,
no thread, no polling. Each future seen in the list gets one done-callback that appends it to a
completion queue and notifies a `threading.Condition`; the generator sleeps on that condition
whenever it has nothing to yield and nothing to ask for (for tasks, while no supervisor thread
runs, it watches their children itself instead: see `_Waiter`)::

    supervisor / executor thread            iterating thread
    ----------------------------            ----------------
    future finishes
      -> _Waiter.on_done(future)  --queue-->  pop, remove from in_flight, yield future
                                              len(in_flight) < concurrency_factor: yield None
                                              otherwise: register new entries, wait

The callback stays tiny (append + notify under a lock) because for a `TaskFuture` it runs in the
supervisor's role, which serves every child in flight.
"""

from __future__ import annotations

import operator
import threading
from collections import deque
from collections.abc import Generator, MutableSequence
from concurrent.futures import Future
from typing import Any, TypeVar, overload

from inparallel._checks import count
from inparallel._core._future import Driver, TaskFuture
from inparallel._progress import Progress, open_progress

__all__ = ("waitfor",)

_F = TypeVar("_F", bound="Future[Any]")


class _Waiter:
    """The completion queue one `waitfor` generator sleeps on.

    Done-callbacks (any thread) push; the iterating thread pops and waits. Once closed, late
    callbacks from futures that finish after the generator ended are dropped, so nothing of a
    finished iteration can leak into a later one.

    While it waits for tasks, the iterating thread watches their children itself when no
    supervisor thread does (`TaskFuture`'s driver): their callbacks then run right here, and
    on 3.12+ the loop's next fork has no thread to stop first. A callback from another thread
    (a future of an executor in the same list) wakes it.
    """

    __slots__ = ("_closed", "_cond", "_done", "_driver", "_driving", "_lock")

    def __init__(self) -> None:
        # An RLock-based condition: cancel() on a pending future runs its callbacks in the
        # calling thread, which may be ours. Sections that neither wait nor notify take the
        # lock itself, whose ``with`` runs in C (the condition's runs two Python calls; a
        # waitfor loop takes it about eight times per task).
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._done: deque[Future[Any]] = deque()
        self._closed = False
        self._driver: Driver | None = None  # who finishes the tasks among the futures
        self._driving: int | None = None  # the thread that drives it now, if any

    def watch(self, future: Future[Any]) -> None:
        """Call `on_done` when ``future`` finishes (at once if it has)."""
        if isinstance(future, TaskFuture) and not future._finished():
            # Unfinished, so this process's (a fork's copy refuses): its driver is this
            # process's supervisor, which every task shares.
            future._add_driven_callback(self.on_done)
            self._driver = future._driver
        else:
            future.add_done_callback(self.on_done)

    def on_done(self, future: Future[Any]) -> None:
        """Queue a finished future and wake the generator (runs on the completing thread)."""
        with self._lock:
            if not self._closed:
                self._done.append(future)
                self._cond.notify()
            driving = self._driving
        if self._driver is not None and driving not in (None, threading.get_ident()):
            self._driver.wake()

    def pop(self) -> Future[Any] | None:
        """Return the oldest finished future not yet taken, or None; never blocks."""
        with self._lock:
            return self._done.popleft() if self._done else None

    def wait(self) -> None:
        """Block until a finished future is queued (interruptible by a signal such as Ctrl-C)."""
        with self._lock:
            if self._done or self._closed:
                return
            driver = self._driver
            self._driving = threading.get_ident()
        try:
            driven = driver is not None and driver.drive(self._ready, None)
        finally:
            with self._lock:
                self._driving = None
        if not driven and driver is not None:
            driver.watch()  # a thread finishes the tasks while we sleep
        # Driven to its end without a completion: no child is left, and what is still
        # awaited finishes on some other thread (an executor's future).
        with self._cond:
            while not self._done and not self._closed:
                self._cond.wait()

    def _ready(self) -> bool:
        return bool(self._done) or self._closed

    def close(self) -> None:
        """Drop queued futures and ignore every later callback."""
        with self._lock:
            self._closed = True
            self._done.clear()


def _not_a_future(item: object, where: str) -> TypeError:
    hint = ""
    if hasattr(item, "__await__"):
        hint = " (asyncio awaitables are waited for with asyncio.wait() or asyncio.as_completed())"
    return TypeError(
        f"waitfor() waits for concurrent.futures.Future objects, such as the futures @task calls "
        f"and Executor.submit() return; {where} is a {type(item).__qualname__}: {item!r:.80}{hint}"
    )


def _remove(seq: MutableSequence[Any], future: Future[Any]) -> bool:
    """Delete the first entry of ``seq`` that *is* ``future``; return whether there was one."""
    if type(seq) is list:
        # list.index tests identity before equality, at C speed; a custom __eq__ could still
        # match an equal-but-different entry first, so confirm identity before trusting it.
        try:
            index = seq.index(future)
        except ValueError:
            return False
        if seq[index] is future:
            del seq[index]
            return True
    for index, item in enumerate(seq):
        if item is future:
            del seq[index]
            return True
    return False


@overload
def waitfor(
    in_flight: MutableSequence[_F], concurrency_factor: None = None, *, progress: bool = False
) -> Generator[_F, None, None]: ...


@overload
def waitfor(
    in_flight: MutableSequence[_F], concurrency_factor: int | None, *, progress: bool = False
) -> Generator[_F | None, None, None]: ...


def waitfor(
    in_flight: MutableSequence[_F],
    concurrency_factor: int | None = None,
    *,
    progress: bool = False,
) -> Generator[_F | None, None, None]:
    """Yield the futures of ``in_flight`` as they complete, removing each from the list.

    ``in_flight`` is read and modified in place: a future is removed from it (by identity) just
    before it is yielded, and futures appended to it while the loop runs are picked up. Each
    entry is yielded once, whatever its outcome (result, exception or cancellation); waitfor never
    calls ``result()`` and never raises a task's exception. A future listed twice is yielded once
    per entry; one removed by the loop body before it completes is not yielded.

    Without ``concurrency_factor`` the loop ends when the list is empty. With it, waitfor also
    yields ``None`` to ask for more work while fewer than ``concurrency_factor`` futures are in
    the list; append new futures after a ``None`` (as many as you like) or append nothing. When
    nothing is added it stops asking until another future completes, so ``None`` never spins.
    When the list is empty it asks one last time and ends if nothing was added.

    Blocking: waitfor sleeps on a condition variable, woken by the futures' done-callbacks, when
    it has nothing to yield and nothing to ask for; it never polls. Only completions of futures
    already seen wake it: a future appended by another thread is noticed at the next wake-up.

    Threads: the list is owned by the iterating thread, which may append to it and remove from
    it in the loop body. Other threads may only append (``list.append`` is atomic); removing or
    reordering entries from another thread races with waitfor's own removals.

    Ctrl-C: if KeyboardInterrupt interrupts waitfor (typically while it blocks), it calls
    ``cancel()`` on every unfinished future still in the list, then re-raises. Cancelling a
    running `TaskFuture` kills its child; stdlib futures that are already running cannot be
    cancelled and keep running. The cancelled futures stay in the list. Leaving the loop early
    (``break``, ``close()``) cancels nothing.

    Example (futures built by hand, so nothing forks)::

        >>> from concurrent.futures import Future
        >>> jobs = iter(["alpha", "bravo", "charlie"])
        >>> in_flight: list[Future[str]] = []
        >>> for future in waitfor(in_flight, concurrency_factor=2):
        ...     if future is None:  # a free slot: start more work, if there is any
        ...         job = next(jobs, None)
        ...         if job is not None:
        ...             done: Future[str] = Future()
        ...             done.set_result(job.upper())
        ...             in_flight.append(done)
        ...     else:
        ...         print(future.result())
        ALPHA
        BRAVO
        CHARLIE

    Args:
        in_flight: A mutable sequence (normally a list) of `concurrent.futures.Future` objects.
        concurrency_factor: ``None``, or how many futures to keep in the list: waitfor yields
            ``None`` while fewer are in it.
        progress: Show a tqdm progress bar on stderr (its total grows as futures are seen). Needs
            the ``progress`` extra; without tqdm a RuntimeWarning is emitted and no bar is drawn.

    Returns:
        A generator yielding completed futures, and ``None`` requests when
        ``concurrency_factor`` is given.

    Raises:
        TypeError: ``in_flight`` is not a mutable sequence, holds something that is not a
            `concurrent.futures.Future` (raised by the loop when such an entry is first seen),
            ``concurrency_factor`` is not None or an int, or ``progress`` is not a bool.
        ValueError: ``concurrency_factor`` is less than 1.
        KeyboardInterrupt: re-raised after cancelling the unfinished futures, as above.
    """
    if not isinstance(in_flight, MutableSequence):
        raise TypeError(
            "waitfor(): in_flight must be a mutable sequence (a list) of futures, because it "
            f"removes each future from it as it completes; got {type(in_flight).__qualname__}. "
            "Pass a list, e.g. waitfor(list(futures))"
        )
    for index, item in enumerate(in_flight):
        if not isinstance(item, Future):
            raise _not_a_future(item, f"in_flight[{index}]")
    limit: int | None = None
    if concurrency_factor is not None:
        value: object = concurrency_factor
        if not isinstance(value, bool) and hasattr(value, "__index__"):
            value = operator.index(value)  # any integer type (numpy's too) counts as an int
        hint = " (how many futures to keep in flight; None: wait without asking for more work)"
        limit = count("waitfor()", "concurrency_factor", value, optional=True, hint=hint)
    if not isinstance(progress, bool):
        raise TypeError(
            f"waitfor(): progress must be True or False; got {type(progress).__qualname__}"
        )
    return _iterate(in_flight, limit, progress)


def _iterate(
    in_flight: MutableSequence[_F], limit: int | None, progress: bool
) -> Generator[_F | None, None, None]:
    """Run the waitfor protocol over arguments already checked by `waitfor`."""
    bar: Progress = open_progress(progress, total=0, desc="waitfor", unit="future")
    waiter = _Waiter()
    # id -> future for every entry with our callback on it and not yet taken from the queue.
    # Holding the future keeps its id from being reused while the entry is tracked.
    watched: dict[int, _F] = {}

    def watch_new() -> int:
        """Put a callback on entries not seen yet; return how many there were."""
        fresh = [item for item in in_flight if id(item) not in watched]
        count = 0
        for item in fresh:
            if id(item) in watched:  # listed twice in this batch
                continue
            if not isinstance(item, Future):
                raise _not_a_future(item, "an entry appended to in_flight")
            watched[id(item)] = item
            count += 1
            # Runs on_done right here if the future is already done.
            waiter.watch(item)
        if count:
            bar.add_total(count)
        return count

    # Set when a None request brought nothing new: do not ask again until a future completes.
    stalled = False
    try:
        while True:
            done = waiter.pop()
            if done is not None:
                future = watched.pop(id(done))  # the same object, typed as the caller's
                if not _remove(in_flight, future):
                    # Removed by the loop body while it ran: not ours to yield any more.
                    bar.add_total(-1)
                    continue
                # Nothing between the removal and the yield may be a check point: a Ctrl-C
                # there would lose a finished future (it is neither listed nor yielded).
                yield future
                stalled = False
                bar.update(1)
                continue
            if limit is not None and not stalled and len(in_flight) < limit:
                watch_new()  # so that the count below sees only what this request adds
                yield None
                stalled = watch_new() == 0
                continue
            if not in_flight:
                return
            # Every entry now has our callback, so one of them completing will wake us: the
            # list is not empty and every entry is either queued already or still running.
            watch_new()
            waiter.wait()
    except KeyboardInterrupt:
        for item in list(in_flight):
            if isinstance(item, Future) and not item.done():
                item.cancel()
        raise
    finally:
        waiter.close()
        watched.clear()
        bar.close()
