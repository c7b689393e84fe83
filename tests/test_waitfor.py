"""waitfor() protocol tests on hand-built futures: no forking, no sleeps.

Futures are resolved directly or from helper threads; a helper that must act only once waitfor
has seen a future waits for `Probe.watched` (set when waitfor registers its done-callback).
A waitfor that blocks for ever fails its test after `PATIENCE` seconds (see `bounded`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import _faults
import pytest
from _timing import BOUND, PATIENCE

from inparallel._waitfor import waitfor


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Fail a test still running after `PATIENCE` s: waitfor itself takes no timeout."""
    with _faults.deadline(PATIENCE, "the test"):
        yield


class Probe(Future[Any]):
    """A Future that records when a done-callback is added and when cancel() is called."""

    def __init__(self) -> None:
        super().__init__()
        self.watched = threading.Event()
        self.cancel_calls = 0

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        super().add_done_callback(fn)
        self.watched.set()

    def cancel(self) -> bool:
        self.cancel_calls += 1
        return super().cancel()


def done(value: object = None) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_result(value)
    return f


@contextlib.contextmanager
def background(fn: Callable[[], None]) -> Iterator[threading.Thread]:
    """Run fn in a thread for the duration of the block; join it and re-raise its error."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, name="waitfor-test-helper")
    t.start()
    try:
        yield t
    finally:
        t.join(timeout=BOUND)
        assert not t.is_alive(), "helper thread did not finish"
    if errors:
        raise errors[0]


def resolve_when_watched(futures: list[Probe]) -> Callable[[], None]:
    """Resolve futures in the given order, once waitfor has registered all of them."""

    def run() -> None:
        for f in futures:
            assert f.watched.wait(BOUND)
        for i, f in enumerate(futures):
            f.set_result(i)

    return run


SERVERS = [
    "alpha.local", "bravo.local", "charlie.local", "delta.local", "echo.local", "foxtrot.local",
    "golf.local", "hotel.local", "india.local", "juliet.local", "kilo.local", "lima.local",
]  # fmt: skip


class FakeTasks:
    """Stands in for @task getOS: each call returns a future a worker thread resolves in FIFO."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[tuple[Future[Any], str] | None] = queue.Queue()

    def getOS(self, server: str) -> Future[Any]:  # the seed's name
        f: Future[Any] = Future()
        f.set_running_or_notify_cancel()
        self.jobs.put((f, server))
        return f

    def work(self) -> None:
        while (job := self.jobs.get()) is not None:
            job[0].set_result(f"Linux {job[1]}")


@pytest.fixture
def fake() -> Iterator[FakeTasks]:
    tasks = FakeTasks()
    with background(tasks.work):
        try:
            yield tasks
        finally:
            tasks.jobs.put(None)


# -- the seed README's two examples -------------------------------------------------------------


def test_seed_example_without_concurrency_factor(
    fake: FakeTasks, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = list(SERVERS)
    active_futures = []
    while len(servers) > 0:
        active_futures.append(fake.getOS(servers.pop(0)))
    for future in waitfor(active_futures):
        print(future.result())
    assert active_futures == []
    assert sorted(capsys.readouterr().out.splitlines()) == [f"Linux {s}" for s in SERVERS]


def test_seed_example_with_concurrency_factor(
    fake: FakeTasks, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = list(SERVERS)
    most = 0
    active_futures: list[Future[Any]] = []
    for future in waitfor(active_futures, concurrency_factor=3):
        if future is not None:
            print(future.result())
        else:
            if len(servers) > 0:
                active_futures.append(fake.getOS(servers.pop(0)))
                most = max(most, len(active_futures))
    assert active_futures == [] and servers == [] and 1 <= most <= 3
    assert sorted(capsys.readouterr().out.splitlines()) == [f"Linux {s}" for s in SERVERS]


def test_asks_until_concurrency_factor_is_reached() -> None:
    # Single-threaded: a future is completed only when the list is full or no work is left, so
    # waitfor must keep asking until k are in flight, and never ask while the list is full.
    k, total = 3, 10
    in_flight: list[Future[Any]] = []
    started: list[Future[Any]] = []
    yielded = []
    for future in waitfor(in_flight, k):
        if future is None:
            assert len(in_flight) < k
            if len(started) < total:
                in_flight.append(Future())
                started.append(in_flight[-1])
        else:
            yielded.append(future)
        if in_flight and (len(in_flight) == k or len(started) == total):
            in_flight[0].set_result(None)
    assert yielded == started and in_flight == []


# -- the None protocol -------------------------------------------------------------------------


def test_no_none_spam_when_nothing_is_added() -> None:
    a, b = Probe(), Probe()
    in_flight: list[Future[Any]] = [a, b]
    gen = waitfor(in_flight, 5)
    assert next(gen) is None  # room for 3 more; we add nothing
    a.set_result(1)
    assert next(gen) is a  # not another None
    assert next(gen) is None  # a slot freed up: ask once
    with background(lambda: b.set_result(2)):
        assert next(gen) is b
    assert next(gen) is None  # the final request
    assert next(gen, "end") == "end"


def test_none_count_is_bounded_by_adds_and_completions() -> None:
    # Each None either brings new work or stalls waitfor until the next completion, so there are
    # at most (requests that added something) + completions + 1 (the final request).
    rng = random.Random(7)
    k, total = 4, 50
    in_flight: list[Future[Any]] = []
    adds = productive = completions = nones = 0
    for future in waitfor(in_flight, k):
        added = False
        if future is None:
            nones += 1
            # The final request (empty list) must get work if there is any left, or it ends.
            if adds < total and (not in_flight or rng.random() < 0.6):
                for _ in range(min(rng.randint(1, 3), total - adds)):
                    in_flight.append(done(adds) if rng.random() < 0.3 else Future())
                    adds += 1
                added = True
                productive += 1
        else:
            completions += 1
        # Keep it moving: when waitfor would block (list full, or it stalled after an empty
        # request) and nothing in the list is done, complete one future ourselves.
        would_block = len(in_flight) >= k or (future is None and not added)
        if would_block and in_flight and not any(f.done() for f in in_flight):
            rng.choice(in_flight).set_result(None)
    assert completions == adds == total
    assert nones <= productive + completions + 1


def test_final_request() -> None:
    assert list(waitfor([], 2)) == [None]
    assert list(waitfor([])) == []
    f = done("first")
    in_flight = [f]
    seen: list[object] = []
    extra = done("late")
    for future in waitfor(in_flight, concurrency_factor=1):
        seen.append(future)
        if future is None and extra not in seen:
            in_flight.append(extra)
            seen.append(extra)
    assert seen == [f, None, extra, extra, None]


# -- completion order and list handling ---------------------------------------------------------


def test_done_futures_of_every_outcome_are_yielded_in_list_order_and_removed() -> None:
    failed: Future[Any] = Future()
    failed.set_exception(ValueError("boom"))
    cancelled: Future[Any] = Future()
    cancelled.cancel()
    futures = [done("a"), failed, cancelled, done("b")]
    in_flight = list(futures)
    alias, yielded = in_flight, []
    for future in waitfor(in_flight):  # never raises the futures' exceptions
        assert all(f is not future for f in in_flight)
        yielded.append(future)
    assert yielded == futures and alias is in_flight and in_flight == []


def test_reverse_completion_order_is_yielded_in_completion_order() -> None:
    probes = [Probe() for _ in range(4)]
    in_flight: list[Future[Any]] = list(probes)
    with background(resolve_when_watched(probes[::-1])):
        yielded = list(waitfor(in_flight))
    assert yielded == probes[::-1]


def test_futures_appended_during_iteration_are_picked_up() -> None:
    first, pending = done(0), Probe()
    in_flight: list[Future[Any]] = [first]
    later = [done(1), done(2)]
    yielded = []
    with background(resolve_when_watched([pending])):
        for future in waitfor(in_flight):
            yielded.append(future)
            if future is first:
                in_flight.extend(later)
                in_flight.append(pending)
    assert yielded == [first, *later, pending]


def test_future_removed_by_the_body_is_not_yielded() -> None:
    a, b = done("a"), done("b")
    in_flight = [a, b]
    yielded = []
    for future in waitfor(in_flight):
        yielded.append(future)
        if b in in_flight:
            in_flight.remove(b)
    assert yielded == [a]


@pytest.mark.parametrize("resolve_first", [True, False])
def test_duplicated_future_is_yielded_once_per_entry(resolve_first: bool) -> None:
    f = Probe()
    in_flight: list[Future[Any]] = [f, f]
    if resolve_first:
        f.set_result(1)
        assert list(waitfor(in_flight)) == [f, f]
    else:
        with background(resolve_when_watched([f])):
            assert list(waitfor(in_flight)) == [f, f]
    assert in_flight == []


def test_works_with_executor_futures_and_a_deque() -> None:
    gate = threading.Event()
    with ThreadPoolExecutor(max_workers=2) as pool:
        in_flight = collections.deque([pool.submit(gate.wait, BOUND) for _ in range(4)])
        gate.set()
        results = [f.result() for f in waitfor(in_flight)]
    assert results == [True] * 4 and not in_flight


# -- bad arguments -----------------------------------------------------------------------------


class Awaitable:
    def __await__(self) -> Iterator[None]:
        yield None


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (((),), {}, TypeError, r"mutable sequence \(a list\).*tuple.*list\(futures\)"),
        ((set(),), {}, TypeError, "mutable sequence"),
        ((None,), {}, TypeError, "mutable sequence"),
        ((iter([]),), {}, TypeError, "mutable sequence"),
        (([done(), 42],), {}, TypeError, r"in_flight\[1\] is a int"),
        (([Awaitable()],), {}, TypeError, r"Awaitable.*asyncio.wait"),
        (
            ([], 0),
            {},
            ValueError,
            r"^waitfor\(\): concurrency_factor must be at least 1, not 0.*None",
        ),
        (([], -3), {}, ValueError, "concurrency_factor must be at least 1, not -3"),
        (([], True), {}, TypeError, "concurrency_factor must be an int or None, not True"),
        (([], 2.0), {}, TypeError, "concurrency_factor must be an int or None, not 2.0"),
        (([], "3"), {}, TypeError, "concurrency_factor must be an int or None, not '3'"),
        (([],), {"progress": 1}, TypeError, "progress must be True or False; got int"),
        (([],), {"progress": "yes"}, TypeError, "progress must be True or False"),
    ],
)
def test_bad_arguments_raise_at_the_call(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        waitfor(*args, **kwargs)  # no next(): checked eagerly


def test_index_like_concurrency_factor_is_accepted() -> None:
    class Two:
        def __index__(self) -> int:
            return 2

    assert list(waitfor([], Two())) == [None]  # type: ignore[call-overload]


def test_non_future_appended_later_raises_when_seen() -> None:
    in_flight: list[Any] = [done()]
    gen = waitfor(in_flight)
    next(gen)
    in_flight.append("not a future")
    with pytest.raises(TypeError, match="appended to in_flight is a str"):
        next(gen)
    assert in_flight == ["not a future"]


# -- close and Ctrl-C ----------------------------------------------------------------------------


def test_close_midway_leaves_nothing_behind(caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = Probe(), Probe(), Probe()
    in_flight: list[Future[Any]] = [a, b, c]
    a.set_result("a")
    gen = waitfor(in_flight, progress=False)
    assert next(gen) is a
    gen.close()
    assert next(gen, "closed") == "closed"
    assert in_flight == [b, c] and b.watched.is_set()
    with caplog.at_level(logging.DEBUG, logger="concurrent.futures"):
        b.set_result("b")  # the closed generator's callback fires: it must do nothing
    assert not caplog.records
    # A fresh waitfor over the same list sees each remaining future exactly once.
    c.set_result("c")
    assert list(waitfor(in_flight)) == [b, c]
    unstarted = waitfor([Probe()], progress=True)
    unstarted.close()  # never started: nothing was registered, no bar was drawn


class Interrupting(Probe):
    """Raises KeyboardInterrupt when waitfor registers it, as a Ctrl-C arriving right then."""

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        raise KeyboardInterrupt


def test_keyboard_interrupt_inside_waitfor_cancels_unfinished_futures() -> None:
    finished, pending, interrupting = done("finished"), Probe(), Interrupting()
    in_flight: list[Future[Any]] = [finished, pending, interrupting]
    with pytest.raises(KeyboardInterrupt):
        for _ in waitfor(in_flight):
            pass
    assert pending.cancelled() and interrupting.cancelled()
    assert finished.done() and not finished.cancelled()
    assert in_flight == [finished, pending, interrupting]  # registration failed before the wait


def test_ctrl_c_while_blocked_cancels_unfinished_futures() -> None:
    finished = done("finished")
    pending, running = Probe(), Probe()
    running.set_running_or_notify_cancel()  # a stdlib running future cannot be cancelled
    in_flight: list[Future[Any]] = [finished, pending, running]
    main = threading.main_thread().ident
    assert main is not None and main == threading.get_ident(), "tests run in the main thread"
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if not interrupted.is_set():  # later repeats of the signal are ignored
            interrupted.set()
            raise KeyboardInterrupt

    def press_ctrl_c() -> None:
        assert pending.watched.wait(BOUND) and running.watched.wait(BOUND)
        # A real signal (not _thread.interrupt_main) so the blocked lock wait returns EINTR. One
        # that lands just before the wait blocks is only noticed when it wakes, which a repeated
        # signal does: repeat until the handler has run (later repeats are ignored by it).
        for _ in range(int(BOUND / 0.05)):
            signal.pthread_kill(main, signal.SIGINT)
            if interrupted.wait(0.05):
                return
        raise AssertionError(f"SIGINT did not interrupt waitfor within {BOUND} s")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yielded: list[Future[Any]] = []
        with pytest.raises(KeyboardInterrupt), background(press_ctrl_c):
            yielded.extend(waitfor(in_flight))  # list() would lose what was yielded
    finally:
        signal.signal(signal.SIGINT, previous)
    assert yielded == [finished]
    assert pending.cancelled() and pending.cancel_calls == 1
    assert running.cancel_calls == 1 and running.running()
    assert in_flight == [pending, running]
    running.set_result(None)


# -- progress ----------------------------------------------------------------------------------


def test_progress_bar_with_tqdm(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    in_flight = [done(i) for i in range(3)]
    for future in waitfor(in_flight, progress=True):
        if future.result() == 0:
            in_flight.extend([done(3), done(4)])
    err = capsys.readouterr().err
    assert "5/5" in err and "waitfor" in err
    # No tqdm monitor thread is left running (the leak fixture checks threads as well).
    assert not [t for t in threading.enumerate() if t.name == "tqdm_monitor"]


def test_progress_without_tqdm_warns_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm` fail
    in_flight = [done(i) for i in range(3)]
    with pytest.warns(RuntimeWarning, match=r"pip install 'inparallel\[progress\]'") as record:
        assert len(list(waitfor(in_flight, 2, progress=True))) == 4
    assert len(record) == 1
    assert record[0].filename == __file__  # points at the caller's loop
    assert capsys.readouterr().err == ""


def test_importing_does_not_import_tqdm() -> None:
    code = "import sys, inparallel, inparallel._waitfor; assert 'tqdm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=PATIENCE)


# -- K1: a concurrent appender, every future yielded exactly once -------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_concurrent_appender_every_future_yielded_once(seed: int) -> None:
    rng = random.Random(seed)
    helper_rng = random.Random(seed + 1000)
    k = rng.randint(1, 6)
    sentinel: Future[Any] = Future()
    in_flight: list[Future[Any]] = [sentinel]
    created: list[Future[Any]] = [sentinel]

    def appender() -> None:
        mine: list[Future[Any]] = []
        for i in range(200):
            f: Future[Any] = Future()
            mine.append(f)
            created.append(f)  # before it becomes visible to waitfor
            in_flight.append(f)
            if helper_rng.random() < 0.5:
                victim = mine.pop(helper_rng.randrange(len(mine)))
                outcome = helper_rng.random()
                if outcome < 0.1:
                    victim.cancel()
                elif outcome < 0.2:
                    victim.set_exception(RuntimeError(i))
                else:
                    victim.set_result(i)
        for f in mine:
            f.set_result(None)
        sentinel.set_result("last")

    yielded: list[Future[Any]] = []
    with background(appender):
        for future in waitfor(in_flight, k):
            if future is None:
                if rng.random() < 0.3:
                    f = done("from the loop")
                    created.append(f)
                    in_flight.append(f)
            else:
                assert future.done()
                yielded.append(future)
    assert in_flight == []
    assert collections.Counter(map(id, yielded)) == collections.Counter(map(id, created))
    assert len(yielded) == len(created)
