"""StreamExecutor: submit, cancel, shutdown, and a map that streams its input in the background.

Most tests run in both modes (``mode`` fixture): forked children per call, or worker threads.
Calls are held with `Hold` (a pipe for children, a semaphore for threads) and report through a
`_faults.Beacon`; inputs run in the map's feeder thread, so they are held with events and
counted with `Counted`. A process that should be gone is watched through a pidfd.

"Nothing more happens" is checked once the threads that could make it happen wait: the map's
feeder for its consumer (`wait_feeder_full`) or its end (joined), the dispatcher for a free
slot, ``shutdown`` for the calls to end (`waits_in`). Each of them waits for a condition the
test itself holds, so the counts are exact from then on.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from itertools import count, islice
from pathlib import Path
from typing import Any

import _faults
import pytest
from _faults import InterruptAt, child_pids
from _timing import BOUND, PATIENCE, PROMPT

from inparallel import ResultNotPicklable, StreamExecutor, _stream
from inparallel._streammap import MapState


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Fail a test still running after `PATIENCE` + `BOUND` s: iterating a map takes no timeout."""
    with _faults.deadline(PATIENCE + BOUND, "the test"):
        yield


@pytest.fixture(params=["process", "thread"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@contextlib.contextmanager
def executor(max_workers: int | None = None, *, mode: str = "process") -> Iterator[StreamExecutor]:
    """A `StreamExecutor` shut down at the end like ``with`` does, but failing if that hangs."""
    ex = StreamExecutor(max_workers, mode=mode)  # type: ignore[arg-type]
    try:
        yield ex
    finally:
        waiter = threading.Thread(target=ex.shutdown, name="stream-test-shutdown", daemon=True)
        waiter.start()
        waiter.join(BOUND)
        if waiter.is_alive():
            raise AssertionError(f"shutdown(wait=True) hung: {ex!r}")


class Hold:
    """Holds calls until the test releases them, in a forked child or in a worker thread.

    A child waits on a `_faults.Gate` (a pipe it inherited); a thread of this process waits on
    a semaphore, so closing the gate's fds can never race a thread blocked on them. `close`
    releases everyone. Use as a context manager, inside the executor's ``with`` so that the
    calls are let go before the executor waits for them.
    """

    def __init__(self) -> None:
        self._gate = _faults.Gate()
        self._sem = threading.Semaphore(0)
        self._owner = os.getpid()

    def wait(self, timeout: float = PATIENCE) -> None:
        if os.getpid() == self._owner:
            ok = self._sem.acquire(timeout=timeout)
        else:
            ok = self._gate.wait(timeout)
        if not ok:
            raise AssertionError("a held call was never released")

    def release(self, n: int = 1) -> None:
        self._sem.release(n)
        self._gate.release(n)

    def close(self) -> None:
        self._sem.release(10_000)
        self._gate.close()

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Counted(Iterator[Any]):
    """An input that counts the items pulled from it (pulls happen in the map's feeder thread)."""

    def __init__(self, source: Iterable[Any]) -> None:
        self._it = iter(source)
        self._cond = threading.Condition()
        self.pulled = 0

    def __next__(self) -> Any:
        item = next(self._it)
        with self._cond:
            self.pulled += 1
            self._cond.notify_all()
        return item

    def wait_pulled(self, n: int, timeout: float = BOUND) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.pulled >= n, timeout)


def frame_names(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


def waits_in(thread: threading.Thread, *callers: Callable[..., Any]) -> bool:
    """Whether ``thread`` is blocked in a `threading` wait that one of ``callers`` started.

    Every threading wait (Condition, Event, Semaphore) blocks in ``Condition.wait``, and the
    thread cannot leave it while we look (we hold the GIL). Whether it stays there once we
    look away depends on what it waits for: each test checks that too.
    """
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None or frame.f_code is not threading.Condition.wait.__code__:
        return False
    codes = {caller.__code__ for caller in callers}
    while frame is not None and frame.f_code not in codes:
        frame = frame.f_back
    return frame is not None


def threads_named(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


def feeder() -> threading.Thread:
    """The feeder thread of the one map the test has open."""
    (thread,) = threads_named("inparallel-stream-feeder")
    return thread


def wait_feeder_full(m: Iterator[Any]) -> None:
    """Wait until the map's feeder waits for its consumer to make room in its buffer.

    It pulls nothing more until the consumer takes a result (or the map is closed).
    """
    state: MapState = m._state  # type: ignore[attr-defined]
    thread = feeder()

    def full() -> bool:
        with state.cond:  # the feeder cannot leave its wait while we hold its lock
            return state.idle and state._full() and waits_in(thread, MapState._room)

    assert _faults.wait_until(full), "the map's feeder never filled its buffer"


def shutdown_waits(thread: threading.Thread, returned: threading.Event) -> bool:
    """Wait until ``shutdown(wait=True)`` in ``thread`` blocks or returns; True if it blocks.

    Blocked while calls it waits for are held, it cannot return before they end.
    """
    _faults.wait_until(lambda: returned.is_set() or waits_in(thread, StreamExecutor.shutdown))
    return not returned.is_set()


def wait_feeders_ended() -> None:
    """Wait until every map's feeder has ended: from then on, nothing more is pulled."""
    assert _faults.join_all(threads_named("inparallel-stream-feeder")) == [], "a feeder runs on"


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def ident(x: Any) -> Any:
    return x


def square(x: int) -> int:
    return x * x


def repeat(s: str, n: int) -> str:
    return s * n


def fail_with(message: str) -> None:
    raise LookupError(message)


def fail_at_six(i: int) -> int:
    if i == 6:
        raise KeyError(f"item {i}")
    return i


# -- constructor and argument checks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_workers": 0}, ValueError),
        ({"max_workers": -3}, ValueError),
        ({"mode": "fiber"}, ValueError),
        ({"max_workers": "2"}, TypeError),
        ({"max_workers": 2.0}, TypeError),
    ],
    ids=["zero-workers", "negative-workers", "fiber", "str-workers", "float-workers"],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        StreamExecutor(**kwargs)


def test_submit_rejects_a_non_callable(mode: str) -> None:
    with executor(mode=mode) as ex, pytest.raises(TypeError):
        ex.submit(42)  # type: ignore[arg-type]


# -- submit ---------------------------------------------------------------------------------------


def test_submit_returns_a_future_with_the_result(mode: str) -> None:
    with executor(mode=mode) as ex:
        fut = ex.submit(add, 1, 2, c=3)
        assert isinstance(fut, Future)
        assert fut.result(BOUND) == 6
        assert fut.done() and not fut.cancelled() and fut.exception() is None
        assert ex.submit(add, a=5, b=6).result(BOUND) == 11


def test_submit_exception_keeps_type_message_and_traceback(mode: str) -> None:
    with executor(max_workers=1, mode=mode) as ex:
        fut = ex.submit(fail_with, "no such key")
        exc = fut.exception(BOUND)
        # The failure cost nothing but its own call: the next one runs in the freed slot.
        assert ex.submit(add, 1, 2).result(BOUND) == 3
    assert type(exc) is LookupError and str(exc) == "no such key"
    assert "fail_with" in frame_names(exc)
    with pytest.raises(LookupError, match="no such key") as info:
        fut.result()
    assert "fail_with" in frame_names(info.value)


def test_process_mode_runs_each_call_in_its_own_child() -> None:
    with executor(max_workers=2) as ex:
        pids = [f.result(BOUND) for f in [ex.submit(os.getpid) for _ in range(4)]]
    assert os.getpid() not in pids and len(set(pids)) == 4


def test_works_with_wait_and_as_completed(mode: str) -> None:
    with executor(max_workers=2, mode=mode) as ex, Hold() as hold:

        def held() -> str:
            hold.wait()
            return "held"

        slow = ex.submit(held)
        quick = ex.submit(add, 1, 1)
        done, not_done = concurrent.futures.wait(
            [slow, quick], timeout=BOUND, return_when=concurrent.futures.FIRST_COMPLETED
        )
        assert done == {quick} and not_done == {slow}
        hold.release()
        order = list(concurrent.futures.as_completed([slow, quick], timeout=BOUND))
        assert set(order) == {slow, quick} and slow.result() == "held"
        futures = [ex.submit(square, i) for i in range(6)]
        got = sorted(f.result() for f in concurrent.futures.as_completed(futures, BOUND))
        assert got == [i * i for i in range(6)]
        done, not_done = concurrent.futures.wait(futures, timeout=BOUND)
        assert done == set(futures) and not not_done


def test_max_workers_bounds_concurrency(mode: str) -> None:
    with _faults.Beacon() as log, executor(max_workers=2, mode=mode) as ex, Hold() as hold:

        def work(i: int) -> int:
            log.send(b"s")
            hold.wait()
            log.send(b"e")
            return i

        futures = [ex.submit(work, i) for i in range(6)]
        assert log.receive(2) == b"ss"
        # Every thread of the executor waits now: the dispatcher (process mode) for a free
        # slot, the workers (thread mode) in their held calls. None starts a call before one
        # of those two ends.
        threads = threads_named("inparallel-stream")
        assert len(threads) == (1 if mode == "process" else 2)
        assert _faults.wait_until(
            lambda: all(waits_in(t, StreamExecutor._take, work) for t in threads)
        ), "the executor's threads never settled"
        assert not log.pending()
        assert repr(ex).endswith(": 2 running, 4 queued>"), repr(ex)
        assert [f.running() for f in futures] == [True, True, False, False, False, False]
        hold.release(6)
        assert [f.result(BOUND) for f in futures] == list(range(6))
        events = b"ss" + log.receive(10)
    # A call writes "e" before it returns, so the next "s" can only follow it: the running
    # count along the log is the real number of calls running at once.
    running = most = 0
    for byte in events:
        running += 1 if byte == ord("s") else -1
        most = max(most, running)
    assert most == 2 and running == 0


# -- cancel ---------------------------------------------------------------------------------------


def test_cancel_a_queued_call_and_it_never_runs(mode: str) -> None:
    with _faults.Beacon() as log, executor(max_workers=1, mode=mode) as ex, Hold() as hold:

        def work(i: int) -> int:
            log.send_int(i)
            hold.wait()
            return i

        first = ex.submit(work, 1)
        assert log.receive_int() == 1
        second = ex.submit(work, 2)
        seen: list[Future[Any]] = []
        second.add_done_callback(seen.append)
        assert not second.running()
        assert second.cancel()
        assert second.cancelled() and second.done() and seen == [second]
        with pytest.raises(CancelledError):
            second.result(0)
        third = ex.submit(work, 3)
        hold.release(2)
        assert first.result(BOUND) == 1
        assert third.result(BOUND) == 3
        assert log.receive_int() == 3
        ex.shutdown(wait=True)
        assert not log.pending(), "the cancelled call ran"
        assert seen == [second]


def test_cancel_a_running_call_kills_its_child() -> None:
    with _faults.Beacon() as log, executor(max_workers=1) as ex, Hold() as hold:

        def work() -> str:
            log.send_int(os.getpid())
            hold.wait()
            return "finished"

        fut = ex.submit(work)
        pid = log.receive_int()
        assert pid != os.getpid() and fut.running()
        seen: list[Future[Any]] = []
        fut.add_done_callback(seen.append)
        assert fut.cancel()
        assert fut.cancelled() and fut.done()
        with pytest.raises(CancelledError):
            fut.result(0)
        assert _faults.survivors([pid], PROMPT) == [], "cancel() left the child running"
        assert seen == [fut]
        assert fut.cancel()  # cancelling again is harmless
        assert seen == [fut]
        # The slot was given back: the next call runs.
        assert ex.submit(add, 2, 3).result(BOUND) == 5


def test_cancelling_a_running_call_wakes_wait() -> None:
    with _faults.Beacon() as log, executor(max_workers=1) as ex, Hold() as hold:

        def work() -> str:
            log.send()
            hold.wait()
            return "finished"

        fut = ex.submit(work)
        log.receive()
        main = threading.current_thread()

        def cancel_once_waited_for() -> None:
            # wait() below blocks first (if it never does, the timing check below fails).
            _faults.wait_until(lambda: waits_in(main, concurrent.futures.wait))
            fut.cancel()

        canceller = threading.Thread(target=cancel_once_waited_for, name="stream-test-cancel")
        canceller.start()
        try:
            start = time.monotonic()
            done, _ = concurrent.futures.wait([fut], timeout=BOUND)
            assert done == {fut} and time.monotonic() - start < PROMPT
            assert list(concurrent.futures.as_completed([fut], timeout=BOUND)) == [fut]
            assert fut.cancelled()
        finally:
            canceller.join(BOUND)


def test_cancel_a_running_thread_call_is_refused() -> None:
    with executor(max_workers=1, mode="thread") as ex, Hold() as hold:
        started = threading.Event()

        def work() -> str:
            started.set()
            hold.wait()
            return "finished"

        fut = ex.submit(work)
        assert started.wait(BOUND)
        assert fut.cancel() is False
        assert fut.running() and not fut.cancelled()
        hold.release()
        assert fut.result(BOUND) == "finished"


# -- shutdown and the context manager -------------------------------------------------------------


def test_shutdown_wait_waits_for_every_call(mode: str) -> None:
    with executor(max_workers=2, mode=mode) as ex, Hold() as hold:

        def work(i: int) -> int:
            hold.wait()
            return i

        futures = [ex.submit(work, i) for i in range(4)]
        waiter, returned = shutdown_in_thread(ex)
        try:
            assert shutdown_waits(waiter, returned), "shutdown(wait=True) returned with calls held"
            hold.release(4)
            assert returned.wait(BOUND)
            # Everything was finished by the time shutdown() returned.
            assert all(f.done() for f in futures)
            assert [f.result(0) for f in futures] == [0, 1, 2, 3]
        finally:
            hold.close()
            waiter.join(BOUND)
        assert not waiter.is_alive()


def test_shutdown_cancel_futures_cancels_queued_calls(mode: str) -> None:
    with _faults.Beacon() as log, executor(max_workers=1, mode=mode) as ex, Hold() as hold:

        def work(i: int) -> int:
            log.send_int(i)
            hold.wait()
            return i

        futures = [ex.submit(work, i) for i in range(4)]
        assert log.receive_int() == 0
        ex.shutdown(wait=False, cancel_futures=True)
        assert [f.cancelled() for f in futures] == [False, True, True, True]
        hold.release()
        assert futures[0].result(BOUND) == 0
        ex.shutdown(wait=True)
        assert not log.pending(), "a cancelled call ran"


def test_submit_and_map_after_shutdown_raise(mode: str) -> None:
    ex = StreamExecutor(mode=mode)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(add, 1)
    with pytest.raises(RuntimeError):
        ex.map(square, [1, 2])
    ex.shutdown()  # a second shutdown is harmless


def test_context_manager_shuts_down_and_waits(mode: str) -> None:
    with StreamExecutor(max_workers=2, mode=mode) as ex:
        assert isinstance(ex, StreamExecutor)
        futures = [ex.submit(time.sleep, 0.05) for _ in range(4)]  # calls that take a while
    assert all(f.done() and f.result() is None for f in futures)
    with pytest.raises(RuntimeError):
        ex.submit(add, 1)


# -- map: shape and ordering ---------------------------------------------------------------------


def test_map_returns_before_reading_its_input(mode: str) -> None:
    opened = threading.Event()
    reading = threading.Event()
    readers: list[threading.Thread] = []

    def source() -> Iterator[int]:
        readers.append(threading.current_thread())
        reading.set()
        assert opened.wait(BOUND)
        yield from range(5)

    with executor(max_workers=2, mode=mode) as ex:
        try:
            m = ex.map(square, source())  # returns while the input is still held
            assert reading.wait(BOUND), "the input was not read in the background"
            assert readers != [threading.current_thread()]
        finally:
            opened.set()
        assert list(m) == [0, 1, 4, 9, 16]


def test_map_results_come_in_input_order(mode: str) -> None:
    with _faults.Beacon() as log, executor(max_workers=3, mode=mode) as ex, Hold() as hold:

        def work(i: int) -> int:
            if i == 0:
                hold.wait()
            else:
                log.send_int(i)
            return i * 10

        m = ex.map(work, range(8))
        # Every later item finished while item 0 was still held.
        assert sorted(log.receive_int() for _ in range(7)) == list(range(1, 8))
        hold.release()
        assert list(m) == [i * 10 for i in range(8)]


def test_map_without_iterables_is_empty(mode: str) -> None:
    with executor(mode=mode) as ex:
        m = ex.map(square)
        assert list(m) == []
        with pytest.raises(StopIteration):
            next(m)


def test_map_over_an_empty_input(mode: str) -> None:
    with executor(mode=mode) as ex:
        assert list(ex.map(square, [])) == []


def test_next_after_the_end_raises_stop_iteration_again(mode: str) -> None:
    with executor(mode=mode) as ex:
        m = ex.map(square, [3])
        assert next(m) == 9
        for _ in range(3):
            with pytest.raises(StopIteration):
                next(m)


def test_map_zips_several_iterables_shortest_wins(mode: str) -> None:
    with executor(max_workers=2, mode=mode) as ex:
        assert list(ex.map(pow, [2, 3, 4], [5, 6])) == [32, 729]
        assert list(ex.map(repeat, "abc", count(1))) == ["a", "bb", "ccc"]
        assert list(ex.map(add, range(100), range(3, 6))) == [3, 5, 7]


@pytest.mark.parametrize(("chunksize", "buffer_size"), [(2, 10000), (4, 10000), (7, 10), (4, 3)])
def test_map_chunksize_gives_the_same_results(mode: str, chunksize: int, buffer_size: int) -> None:
    with executor(max_workers=2, mode=mode) as ex:
        got = list(ex.map(square, range(30), chunksize=chunksize, buffer_size=buffer_size))
        assert got == [i * i for i in range(30)]
        assert list(ex.map(add, range(9), range(5), chunksize=chunksize)) == [0, 2, 4, 6, 8]


# -- map: buffer_size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "size"),
    [("buffer_size", 1), ("buffer_size", 3), ("buffer_size", 8), ("buffersize", 3)],
)
def test_map_pulls_at_most_buffer_size_ahead(mode: str, keyword: str, size: int) -> None:
    source = Counted(count())
    with executor(max_workers=2, mode=mode) as ex:
        m = ex.map(ident, source, **{keyword: size})
        consumed = 0
        for checkpoint in (0, 1, 5):
            while consumed < checkpoint:
                assert next(m) == consumed
                consumed += 1
            assert source.wait_pulled(consumed + size), "the feeder did not fill its buffer"
            wait_feeder_full(m)
            assert source.pulled == consumed + size
        m.close()


def test_map_buffer_size_none_is_unbounded(mode: str) -> None:
    source = Counted(range(100))
    with executor(max_workers=2, mode=mode) as ex:
        m = ex.map(ident, source, buffer_size=None)
        assert source.wait_pulled(100), "buffer_size=None did not read the whole input ahead"
        assert list(m) == list(range(100))


@pytest.mark.parametrize(
    "kwargs",
    [{"buffer_size": 0}, {"buffer_size": -1}, {"buffersize": 0}, {"buffersize": -5}],
    ids=["zero", "negative", "alias-zero", "alias-negative"],
)
def test_map_buffer_size_below_one_is_a_value_error(mode: str, kwargs: dict[str, int]) -> None:
    with executor(mode=mode) as ex, pytest.raises(ValueError):
        ex.map(square, [1, 2, 3], **kwargs)


@pytest.mark.parametrize(
    ("buffer_size", "buffersize"), [(3, 5), (None, 5), (3, None)], ids=["3-5", "None-5", "3-None"]
)
def test_map_both_buffer_spellings_disagreeing_is_a_type_error(
    mode: str, buffer_size: int | None, buffersize: int | None
) -> None:
    with executor(mode=mode) as ex, pytest.raises(TypeError):
        ex.map(square, [1, 2, 3], buffer_size=buffer_size, buffersize=buffersize)


def test_map_both_buffer_spellings_agreeing_is_accepted(mode: str) -> None:
    with executor(mode=mode) as ex:
        assert list(ex.map(square, [1, 2, 3], buffer_size=2, buffersize=2)) == [1, 4, 9]


# -- map: errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_item_error_comes_after_every_earlier_result(mode: str, chunksize: int) -> None:
    with executor(max_workers=2, mode=mode) as ex:
        m = ex.map(fail_at_six, range(20), chunksize=chunksize)
        got = []
        with pytest.raises(KeyError) as info:
            for value in m:
                got.append(value)
        assert got == [0, 1, 2, 3, 4, 5]
        assert info.value.args == ("item 6",)
        assert "fail_at_six" in frame_names(info.value)
        with pytest.raises(StopIteration):
            next(m)  # the error ended the map


def lock_at_five(i: int) -> object:
    return threading.Lock() if i == 5 else i


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_an_unpicklable_result_fails_alone_after_every_earlier_result(
    mode: str, chunksize: int
) -> None:
    with executor(max_workers=2, mode=mode) as ex:
        m = ex.map(lock_at_five, range(20), chunksize=chunksize)
        got = []
        if mode == "thread":  # nothing is pickled: the lock is a value like the others
            assert len(list(m)) == 20
            return
        with pytest.raises(ResultNotPicklable):
            for value in m:
                got.append(value)
        assert got == [0, 1, 2, 3, 4]  # the rest of the chunk before it arrived


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_input_error_comes_after_every_earlier_result(mode: str, chunksize: int) -> None:
    def source() -> Iterator[int]:
        yield from range(5)
        raise _faults.InjectedFault("the input broke")

    with executor(max_workers=2, mode=mode) as ex:
        m = ex.map(square, source(), chunksize=chunksize)
        got = []
        with pytest.raises(_faults.InjectedFault, match="the input broke"):
            for value in m:
                got.append(value)
        assert got == [0, 1, 4, 9, 16]
        with pytest.raises(StopIteration):
            next(m)


# -- map: timeout --------------------------------------------------------------------------------


def test_map_timeout_raises_after_about_the_timeout(mode: str) -> None:
    def slow(i: int) -> int:
        time.sleep(0.3)  # each item takes a known time: that is the scenario
        return i

    with executor(max_workers=2, mode=mode) as ex:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            list(ex.map(slow, range(10), timeout=0.5))  # the whole map needs 1.5 s
        elapsed = time.monotonic() - start
    assert 0.45 <= elapsed < 1.2, elapsed


def test_map_timeout_counts_from_the_map_call(mode: str) -> None:
    with executor(max_workers=2, mode=mode) as ex, Hold() as hold:

        def work(i: int) -> int:
            if i >= 2:
                hold.wait()
            return i

        start = time.monotonic()
        m = ex.map(work, range(6), timeout=1.0)
        time.sleep(0.6)  # the consumer starts late: that is the scenario
        begun = time.monotonic()
        assert next(m) == 0 and next(m) == 1
        with pytest.raises(TimeoutError):
            next(m)
        end = time.monotonic()
        assert 0.95 <= end - start < 1.8, end - start
        assert end - begun < 0.85, "the timeout was counted from the first next()"
        with pytest.raises(StopIteration):
            next(m)  # a timed-out map is over


# -- map: abandoned ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "del"])
def test_abandoned_map_stops_reading_and_cancels_its_work(mode: str, how: str) -> None:
    source = Counted(count())
    with _faults.Beacon() as log, executor(max_workers=2, mode=mode) as ex, Hold() as hold:

        def work(i: int) -> int:
            log.send_int(os.getpid())
            if i >= 3:
                hold.wait()
            return i

        m = ex.map(work, source, buffer_size=5)
        assert [next(m) for _ in range(3)] == [0, 1, 2]
        assert source.wait_pulled(3 + 5)
        pids = [log.receive_int() for _ in range(5)]  # items 0-4 started; 3 and 4 are held
        if how == "close":
            m.close()
        else:
            del m
            gc.collect()
        if mode == "process":
            assert _faults.survivors(pids, PROMPT) == [], "the held children were not killed"
        wait_feeders_ended()
        assert source.pulled == 3 + 5
        hold.release(5)  # thread mode: the two held calls cannot be killed; let them finish
        ex.shutdown(wait=True)
        assert not log.pending(), "work queued ahead ran after the map was abandoned"


def test_abandoned_map_that_was_never_iterated(mode: str) -> None:
    source = Counted(count())
    with executor(max_workers=2, mode=mode) as ex:
        m = ex.map(square, source, buffer_size=4)
        assert source.wait_pulled(4)
        del m
        gc.collect()
        wait_feeders_ended()
        assert source.pulled == 4


# -- map: an input blocked forever (H6) ----------------------------------------------------------


def test_shutdown_is_not_held_up_by_a_blocked_input(mode: str) -> None:
    opened = threading.Event()  # opened only at the end of the test
    stuck = threading.Event()
    passed = threading.Event()

    def source() -> Iterator[int]:
        yield from range(3)
        stuck.set()
        assert opened.wait(BOUND)
        passed.set()
        yield 3

    with _faults.Beacon() as log:

        def work(i: int) -> int:
            log.send_int(i)
            return i

        ex = StreamExecutor(max_workers=2, mode=mode)
        returned = threading.Event()

        def shut() -> None:
            ex.shutdown(wait=True, cancel_futures=True)
            returned.set()

        waiter = threading.Thread(target=shut, name="stream-test-shutdown", daemon=True)
        try:
            m = ex.map(work, source(), buffer_size=4)
            assert [next(m) for _ in range(3)] == [0, 1, 2]
            assert stuck.wait(BOUND)
            waiter.start()  # the feeder is stuck in next() of the input
            assert returned.wait(PROMPT), "shutdown(cancel_futures=True) waited for the input"
        finally:
            opened.set()
            if waiter.is_alive():
                waiter.join(BOUND)
            ex.shutdown(wait=True)
        assert passed.wait(BOUND)
        # The feeder came back after the shutdown: the map ends cancelled, item 3 never runs.
        with pytest.raises(CancelledError):
            next(m)
        assert sorted(log.receive_int() for _ in range(3)) == [0, 1, 2]
        assert not log.pending()


# -- interpreter exit ----------------------------------------------------------------------------

EXIT_SCRIPT = """
import itertools, os, sys, time
from inparallel import StreamExecutor

mode, log_path, shut = sys.argv[1], sys.argv[2], sys.argv[3] == "shutdown"

def slow(i):
    with open(log_path, "a") as f:
        f.write(f"{i} {os.getpid()}\\n")
    if i >= 2:
        time.sleep(60)  # far longer than the test: the interpreter's exit must not wait
    return i

def started():
    with open(log_path) as f:
        return len(f.read().split("\\n")) - 1

ex = StreamExecutor(max_workers=2, mode=mode)
m = ex.map(slow, itertools.count(), buffer_size=2 if shut else 10000)
if shut:  # items 2 and 3 are submitted after the shutdown, as the consumer makes room
    ex.shutdown(wait=False)
assert next(m) == 0 and next(m) == 1
deadline = time.monotonic() + 20
while started() < 4 and time.monotonic() < deadline:
    time.sleep(0.01)  # items 2 and 3 start in other processes or threads: poll the log
print("END", started(), time.monotonic(), flush=True)
"""


@pytest.mark.parametrize("shut", ["live", "shutdown"])
def test_a_live_map_never_blocks_interpreter_exit(mode: str, shut: str, tmp_path: Path) -> None:
    # "shutdown": the calls of items 2 and 3 start after shutdown(); their children die too.
    log_path, out_path, err_path = tmp_path / "log", tmp_path / "out", tmp_path / "err"
    log_path.touch()
    # stdout and stderr go to files: a surviving worker holding a pipe must not hang the test.
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", EXIT_SCRIPT, mode, str(log_path), shut],
            cwd=_faults.REPO_ROOT,
            env=_faults.python_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    try:
        rc = proc.wait(PATIENCE)
        exited = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    workers = {
        int(i): int(pid) for i, pid in (line.split() for line in log_path.read_text().splitlines())
    }
    others = [pid for pid in workers.values() if pid != proc.pid]
    try:
        gone = _faults.survivors(others, PROMPT)
    finally:
        for pid in others:
            if _faults.alive(pid):
                os.kill(pid, signal.SIGKILL)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert rc == 0, (rc, stdout, stderr)
    assert stderr == ""
    words = stdout.split()
    assert words[:2] == ["END", "4"], stdout
    assert exited - float(words[2]) < 3.0, "interpreter exit was held up by the live map"
    assert set(workers) == {0, 1, 2, 3}  # 2 and 3 never end: no slot is free for item 4
    if mode == "process":
        assert len(set(others)) == len(workers)
    else:
        assert others == []
    assert gone == [], "a worker outlived the interpreter"


# -- the seed README example ---------------------------------------------------------------------


def process(i: int) -> int:
    time.sleep(0.1)
    return i


def is_odd(x: int) -> int:
    return x % 2


@pytest.mark.parametrize(("workers", "low", "high"), [(2, 0.8, 2.0), (10, 0.0, 1.2)])
def test_seed_example_timing(mode: str, workers: int, low: float, high: float) -> None:
    n = 10  # will need 20 numbers to get 10 odd ones
    start = time.monotonic()
    # StreamExecutor.map takes 0.1 * 20 / 2 = 1 sec
    # starts processing here, without waiting for iteration
    executor = StreamExecutor(max_workers=workers, mode=mode)
    m = executor.map(process, count())
    g = islice(filter(is_odd, m), n)
    time.sleep(0.5)
    assert list(g) == list(range(1, 2 * n, 2))
    elapsed = time.monotonic() - start
    del g, m
    executor.shutdown(wait=True, cancel_futures=True)
    assert low <= elapsed < high, elapsed


# -- load ----------------------------------------------------------------------------------------


def test_many_thread_workers() -> None:
    base = threading.active_count()
    most = 0
    lock = threading.Lock()

    def work(i: int) -> int:
        nonlocal most
        with lock:
            most = max(most, threading.active_count())
        return i * 3

    with executor(max_workers=128, mode="thread") as ex:
        assert list(ex.map(work, range(1000))) == [i * 3 for i in range(1000)]
        futures = [ex.submit(work, i) for i in range(1000)]
        assert [f.result(BOUND) for f in futures] == [i * 3 for i in range(1000)]
    # A bound: how many workers are alive at once depends on timing; never more than 128,
    # plus the map's feeder.
    assert most <= base + 128 + 1


# -- found in review ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_close_ends_the_map_even_with_values_or_an_error_pending(mode: str) -> None:
    def source() -> Iterator[int]:
        yield from range(3)
        raise ValueError("input broke")

    with StreamExecutor(2, mode=mode) as ex:  # type: ignore[arg-type]
        m = ex.map(abs, source(), chunksize=2)
        assert next(m) == 0  # 1 is pending in the chunk, the error behind it
        m.close()  # type: ignore[attr-defined]
        for _ in range(2):
            with pytest.raises(StopIteration):
                next(m)


class _LockedError(Exception):
    def __init__(self) -> None:
        super().__init__(threading.Lock())  # will not pickle


def _fails_at_two(x: int) -> int:
    if x == 2:
        raise _LockedError
    return x


def test_chunked_map_delivers_values_before_an_exception_that_will_not_pickle() -> None:
    from inparallel import RemoteError

    got = []
    with StreamExecutor(2) as ex, pytest.raises(RemoteError, match="_LockedError"):
        for value in ex.map(_fails_at_two, range(8), chunksize=4):
            got.append(value)
    assert got == [0, 1]


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_chunked_map_reads_at_most_buffer_size_ahead(mode: str) -> None:
    pulled = 0

    def source() -> Iterator[int]:
        nonlocal pulled
        for i in count():
            pulled += 1
            yield i

    with StreamExecutor(2, mode=mode) as ex:  # type: ignore[arg-type]
        m = ex.map(abs, source(), buffer_size=4, chunksize=4)
        assert next(m) == 0
        wait_feeder_full(m)
        assert m._state.ahead == 4  # type: ignore[attr-defined]
        assert pulled == 1 + 4  # one consumed, four ahead: not a whole chunk more
        m.close()  # type: ignore[attr-defined]


# -- shutdown with a map in progress -------------------------------------------------------------


def test_with_block_then_read_the_map_gets_every_result(mode: str) -> None:
    # The standard idiom: the map is read after the with block has shut the executor down.
    with StreamExecutor(2, mode=mode) as ex:  # type: ignore[arg-type]
        results = ex.map(abs, range(-3, 3))
    assert list(results) == [3, 2, 1, 0, 1, 2]
    # With a small buffer, most items can only be submitted after the shutdown, as the
    # consumer makes room; shutdown(wait=True) must not wait for that consumer either.
    with executor(2, mode=mode) as ex:
        results = ex.map(abs, range(-30, 30), buffer_size=4)
    assert list(results) == [abs(i) for i in range(-30, 30)]
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)


def test_a_map_started_before_shutdown_submits_its_input_after_it(mode: str) -> None:
    opened = threading.Event()

    def source() -> Iterator[int]:
        yield 0
        assert opened.wait(BOUND)
        yield from range(1, 6)

    with executor(2, mode=mode) as ex:
        try:
            m = ex.map(square, source())
            ex.shutdown(wait=False)
        finally:
            opened.set()  # items 1-5 reach the feeder only after the shutdown
        assert list(m) == [0, 1, 4, 9, 16, 25]
        with pytest.raises(RuntimeError):
            ex.map(square, [1])


def test_shutdown_waits_for_a_maps_buffer_but_not_its_consumer(mode: str) -> None:
    source = Counted(count())
    with _faults.Beacon() as log, executor(2, mode=mode) as ex, Hold() as hold:

        def work(i: int) -> int:
            if i < 3:
                hold.wait()
            log.send_int(i)
            return i

        m = ex.map(work, source, buffer_size=3)
        waiter, returned = shutdown_in_thread(ex)
        try:
            assert source.wait_pulled(3)
            wait_feeder_full(m)
            assert shutdown_waits(waiter, returned), "shutdown(wait=True) did not wait for calls"
            hold.release(3)
            assert returned.wait(BOUND), "shutdown(wait=True) waited for the map's consumer"
        finally:
            hold.close()
            waiter.join(BOUND)
        # Everything the map had submitted ended before shutdown() returned; nothing more.
        assert sorted(log.receive_int(timeout=0) for _ in range(3)) == [0, 1, 2]
        assert source.pulled == 3
        assert [next(m) for _ in range(6)] == list(range(6))  # 3 to 8 submitted after it
        m.close()


def test_shutdown_cancel_futures_cuts_a_map_off(mode: str) -> None:
    source = Counted(count())
    with _faults.Beacon() as log, executor(2, mode=mode) as ex, Hold() as hold:

        def work(i: int) -> int:
            log.send_int(i)
            hold.wait()
            return i

        m = ex.map(work, source, buffer_size=4)
        assert source.wait_pulled(4)  # 0 and 1 run, 2 and 3 are queued, the feeder waits
        assert sorted(log.receive_int() for _ in range(2)) == [0, 1]
        ex.shutdown(wait=False, cancel_futures=True)
        hold.release(2)
        assert [next(m), next(m)] == [0, 1]  # the running calls finish
        with pytest.raises(CancelledError):
            next(m)  # item 2 was queued: cancelled
        with pytest.raises(StopIteration):
            next(m)
        ex.shutdown(wait=True)
        wait_feeders_ended()
        assert source.pulled == 4
        assert not log.pending(), "a cancelled call ran"


def test_closing_a_map_after_shutdown_still_stops_it(mode: str) -> None:
    source = Counted(count())
    with executor(2, mode=mode) as ex:
        m = ex.map(ident, source, buffer_size=3)
        ex.shutdown(wait=False)
        assert [next(m), next(m)] == [0, 1]
        assert source.wait_pulled(2 + 3)
        m.close()
        wait_feeders_ended()
        assert source.pulled == 2 + 3


THREAD_EXIT_SCRIPT = """
import sys, time
from inparallel import StreamExecutor

def work(i):
    time.sleep(0.3)  # still running when the main thread ends: that is the scenario
    with open(sys.argv[1], "a") as f:
        f.write(f"{i}\\n")

ex = StreamExecutor(2, mode="thread")
for i in range(3):
    ex.submit(work, i)  # the third waits in the queue
print("END", flush=True)
"""


def test_thread_mode_runs_submitted_calls_to_the_end_at_exit(tmp_path: Path) -> None:
    log_path = tmp_path / "log"
    proc = subprocess.run(
        [sys.executable, "-c", THREAD_EXIT_SCRIPT, str(log_path)],
        cwd=_faults.REPO_ROOT,
        env=_faults.python_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.split() == ["END"]
    assert sorted(log_path.read_text().split()) == ["0", "1", "2"]


# -- references, StopIteration ------------------------------------------------------------------


class Box:
    """A result that can be watched with a weakref (and pickled back from a child)."""

    def __init__(self, i: int) -> None:
        self.i = i


def boxed(i: int) -> Box:
    return Box(i)


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_keeps_no_consumed_result_alive(mode: str, chunksize: int) -> None:
    asked = threading.Event()  # the feeder asked for the next item: it waits in the input
    opened = threading.Event()

    def source() -> Iterator[int]:
        yield from range(chunksize)
        asked.set()
        assert opened.wait(BOUND)
        yield from range(chunksize, 2 * chunksize)

    with executor(2, mode=mode) as ex:
        try:
            m = ex.map(boxed, source(), chunksize=chunksize)
            values = [next(m) for _ in range(chunksize)]
            assert asked.wait(BOUND)
            # The threads that ran the calls end when the queue is empty; the supervisor when
            # no child is left. Their last frames must be gone before anything is counted.
            for thread in threading.enumerate():
                if thread.name == "inparallel-stream":
                    thread.join(BOUND)
            assert _faults.supervisor_idle(BOUND)
            refs = [weakref.ref(value) for value in values]
            del values
            gc.collect()
            assert [ref() for ref in refs] == [None] * chunksize, "a consumed result is kept"
        finally:
            opened.set()
        assert [box.i for box in m] == list(range(chunksize, 2 * chunksize))


def stop_at_three(i: int) -> int:
    if i == 3:
        raise StopIteration("no more")
    return i


@pytest.mark.parametrize("chunksize", [1, 2, 4])
def test_map_fn_raising_stop_iteration_is_an_error_at_its_position(
    mode: str, chunksize: int
) -> None:
    with executor(2, mode=mode) as ex:
        m = ex.map(stop_at_three, range(8), chunksize=chunksize)
        got = []
        with pytest.raises(
            RuntimeError,
            match=r"^the mapped function stop_at_three\(\) raised StopIteration, which is an error",
        ) as info:
            for value in m:
                got.append(value)
        assert got == [0, 1, 2]
        cause = info.value.__cause__
        assert isinstance(cause, StopIteration) and cause.args == ("no more",)
        assert "stop_at_three" in frame_names(cause)
        with pytest.raises(StopIteration):
            next(m)  # the error ended the map


class StopsInIter:
    def __iter__(self) -> Iterator[int]:
        raise StopIteration("not an iterator's end")


def test_an_input_whose_iter_raises_stop_iteration_is_an_error(mode: str) -> None:
    with executor(2, mode=mode) as ex:
        with pytest.raises(RuntimeError, match=r"^__iter__ of input 1 of StreamExecutor") as info:
            ex.map(add, range(3), StopsInIter())
        assert isinstance(info.value.__cause__, StopIteration)
        assert not ex._maps  # nothing was started


def test_submit_fn_raising_stop_iteration_keeps_it(mode: str) -> None:
    # As the stdlib's executors do: result() raises the StopIteration itself.
    with executor(2, mode=mode) as ex:
        fut = ex.submit(stop_at_three, 3)
        with pytest.raises(StopIteration, match="no more"):
            fut.result(BOUND)
        assert isinstance(fut.exception(), StopIteration)
        done, _ = concurrent.futures.wait([fut], timeout=BOUND)
        assert done == {fut}
        assert ex.submit(stop_at_three, 2).result(BOUND) == 2


# -- Ctrl-C and failures inside submit, map and shutdown -------------------------------------------


def settled(ex: StreamExecutor) -> None:
    """Wait until the executor's books show nothing running, queued or owned, and no thread.

    Also checks that Ctrl-C's handler is Python's own again (tests using it take
    `sigint_default`).
    """
    with ex._cond:
        assert ex._cond.wait_for(
            lambda: not (ex._running or ex._pending or ex._owned or ex._threads), BOUND
        ), f"the books do not balance: {ex!r}, {ex._owned} owned, {ex._threads} threads"
    for thread in threading.enumerate():
        if thread.name.startswith("inparallel-stream"):
            thread.join(BOUND)
    assert _faults.supervisor_idle(BOUND)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def shutdown_in_thread(ex: StreamExecutor) -> tuple[threading.Thread, threading.Event]:
    """Run ``ex.shutdown(wait=True)`` in a thread; the event is set once it has returned."""
    returned = threading.Event()

    def shut() -> None:
        ex.shutdown(wait=True)
        returned.set()

    waiter = threading.Thread(target=shut, name="stream-test-shutdown")
    waiter.start()
    return waiter, returned


def interrupted_at(k: int, call: Any, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
    """Run ``call`` with a SIGINT at its k-th check point; return (interrupted, its result).

    Fails if a SIGINT was raised and did not reach the caller. A call passes a few more or
    fewer check points from one run to the next (waiting for the kernel to drop a thread
    loops), so a k past the call's last check point is no interrupt at all.
    """
    tracer = InterruptAt(k)
    try:
        with tracer:
            result = call(*args, **kwargs)
    except KeyboardInterrupt as exc:
        return True, getattr(exc, "future", None)  # what the call returned, if it finished
    assert not tracer.fired, f"the interrupt at check point {k} did not reach the caller"
    return False, result


needs_main_thread = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="needs the main thread"
)


@needs_main_thread
def test_ctrl_c_at_every_check_point_of_submit(mode: str, sigint_default: None) -> None:
    with executor(2, mode=mode) as ex:
        assert ex.submit(add, 0, 1).result(BOUND) == 1  # warm up: hooks, imports
        settled(ex)
        with InterruptAt(-1) as tracer:
            fut = ex.submit(add, 0, 1)
        assert fut.result(BOUND) == 1
        settled(ex)
        total = tracer.seen
        assert total > 5
        outcomes = set()
        for k in range(total + 3):
            pids0 = child_pids()
            _, fut = interrupted_at(k, ex.submit, add, k, 1)
            if fut is not None:  # the call had been made: it runs to its end
                assert fut.result(BOUND) == k + 1
            settled(ex)
            assert child_pids() <= pids0, f"a child was left at check point {k}"
            outcomes.add(fut is not None)
        assert outcomes == {True, False}


@needs_main_thread
def test_ctrl_c_at_every_check_point_of_map(mode: str, sigint_default: None) -> None:
    with executor(2, mode=mode) as ex:
        assert list(ex.map(add, range(3), range(3))) == [0, 2, 4]
        settled(ex)
        with InterruptAt(-1) as tracer:
            m = ex.map(add, range(3), range(3))
        assert list(m) == [0, 2, 4]
        settled(ex)
        for k in range(tracer.seen + 3):
            _, m = interrupted_at(k, ex.map, add, range(3), range(3))
            if m is not None:
                assert list(m) == [0, 2, 4]
            del m  # a map nobody got stops when dropped
            gc.collect()
            settled(ex)
            assert not ex._maps, "a map is still recorded"


@needs_main_thread
def test_ctrl_c_at_every_check_point_of_shutdown(mode: str, sigint_default: None) -> None:
    k = 0
    total = None
    outcomes: list[bool] = []  # per interrupted shutdown, in order: were the queued cancelled?
    while total is None or k < total + 3:
        ex = StreamExecutor(1, mode=mode)  # type: ignore[arg-type]
        with _faults.Beacon() as log, Hold() as hold:

            def work() -> str:
                log.send()
                hold.wait()
                return "ran"

            running = ex.submit(work)
            queued = [ex.submit(add, i, 1) for i in range(2)]
            log.receive()  # running: shutdown(cancel_futures=True) leaves it alone
            if total is None:
                with InterruptAt(-1) as tracer:
                    ex.shutdown(wait=False, cancel_futures=True)
                total, interrupted = tracer.seen, False
            else:
                interrupted, _ = interrupted_at(k, ex.shutdown, wait=False, cancel_futures=True)
                k += 1
            cancelled = [f.cancelled() for f in queued]
            # All or nothing: the queued calls are cancelled together, or not at all.
            assert cancelled in ([True, True], [False, False])
            if interrupted:
                outcomes.append(cancelled[0])
            else:
                assert cancelled == [True, True]
            hold.release()
            ex.shutdown(wait=True)
        assert running.result(BOUND) == "ran"
        assert [f.result(BOUND) for f in queued if not f.cancelled()] == (
            [] if cancelled[0] else [1, 2]
        )
        settled(ex)
    # Interrupted before it cancels, shutdown cancels nothing; once it has begun, everything.
    assert outcomes == sorted(outcomes) and outcomes[0] is False and outcomes[-1] is True


def test_an_interrupt_right_after_the_fork_kills_the_child(
    monkeypatch: pytest.MonkeyPatch, sigint_default: None
) -> None:
    # A Ctrl-C that spawn() delivers after its fork, carrying the task (as it does when it is
    # the outermost frame that holds the interrupt), or one that nothing held.
    real_spawn = _stream.spawn
    pids: list[int] = []

    def spawn_then_interrupt(*args: Any, **kwargs: Any) -> Any:
        task = real_spawn(*args, **kwargs)
        pids.append(task.pid)
        interrupt = KeyboardInterrupt()
        interrupt.future = task  # type: ignore[attr-defined]
        raise interrupt

    with executor(1) as ex, Hold() as hold:

        def work() -> str:
            hold.wait()
            return "ran"

        monkeypatch.setattr(_stream, "spawn", spawn_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            ex.submit(work)
        monkeypatch.undo()
        assert len(pids) == 1 and _faults.survivors(pids, PROMPT) == [], "the child runs on"
        assert ex.submit(add, 1, 2).result(BOUND) == 3  # its slot was given back
        settled(ex)


def test_a_thread_that_cannot_start_fails_only_its_call(
    mode: str, monkeypatch: pytest.MonkeyPatch, sigint_default: None
) -> None:
    real_start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        if self.name.startswith("inparallel-stream"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    with executor(1, mode=mode) as ex, Hold() as hold:

        def work() -> str:
            hold.wait()
            return "ran"

        first = ex.submit(work) if mode == "process" else None  # forks here: no thread
        monkeypatch.setattr(threading.Thread, "start", refuse)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            ex.submit(add, 1, 2)  # needs the dispatcher, or a worker thread
        with pytest.raises(RuntimeError, match="can't start new thread"):
            ex.map(add, [1], [2])  # needs its feeder
        monkeypatch.undo()
        hold.release()
        if first is not None:
            assert first.result(BOUND) == "ran"
        assert ex.submit(add, 2, 3).result(BOUND) == 5
        assert list(ex.map(add, [1], [2])) == [3]
        settled(ex)


# -- inherited by a fork ---------------------------------------------------------------------------


def test_a_fork_refuses_an_inherited_executor_map_and_future(mode: str) -> None:
    from inparallel import InheritedFutureError, task

    with executor(2, mode=mode) as ex, Hold() as hold:

        def held() -> str:
            hold.wait()
            return "held"

        fut = ex.submit(held)  # unfinished when the task forks
        m = ex.map(square, count(), buffer_size=2)
        assert next(m) == 0

        @task
        def use_them() -> list[str]:
            seen = []
            for attempt in (lambda: next(m), lambda: ex.submit(abs, 1), fut.result):
                try:
                    attempt()
                except (RuntimeError, InheritedFutureError) as exc:
                    seen.append(type(exc).__name__)
            ex.shutdown(wait=True)  # nothing of it is this process's: returns at once
            m.close()
            return seen

        assert use_them().result(BOUND) == [
            "RuntimeError",
            "RuntimeError",
            "InheritedFutureError",
        ]
        assert next(m) == 1  # the parent's map and executor are untouched
        hold.release()
        assert fut.result(BOUND) == "held"
        m.close()
