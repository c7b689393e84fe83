"""Read-ahead iterators: `thread_preload`, `process_preload` and the `Preloader` they return.

Most tests run against both preloaders. Pulls from the source are counted through a pipe the
source writes one byte to per item (a `Beacon`), which works the same whether the source runs
in a thread of this process or in the forked child. "No more pulls" is checked only once the
background worker is parked: the thread is waiting on a `threading` condition, or the
(single-threaded) child is asleep in a system call. From then on it cannot pull again until the
consumer takes an item, so counting the bytes in the pipe at that point is exact.
"""

from __future__ import annotations

import gc
import itertools
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _faults import Beacon, child_pids, kill_self, process_state, wait_until
from _timing import BOUND, PATIENCE, PROMPT

from inparallel import (
    Preloader,
    ResultNotPicklable,
    WorkerDied,
    process_preload,
    thread_preload,
)

PRELOADERS = [
    pytest.param(thread_preload, id="thread"),
    pytest.param(process_preload, id="process"),
]

SENTINELS: list[Any] = [
    None,
    "STOP",
    b"",
    "",
    0,
    False,
    (),
    [],
    Ellipsis,
    StopIteration(),
    StopIteration("done"),
    GeneratorExit(),
]


# -- helpers ---------------------------------------------------------------------------------


class Pulls:
    """Counts the items a source hands out, wherever the source runs (by a byte per pull)."""

    def __init__(self) -> None:
        self.beacon = Beacon()
        self.seen = 0

    def source(self, n: int | None = None) -> Iterator[int]:
        """A generator of 0, 1, ... (``n`` items, or for ever) that reports each pull."""
        for i in itertools.count() if n is None else range(n):
            self.beacon.send()
            yield i

    def count(self) -> int:
        """Every pull reported so far (non-blocking)."""
        while self.beacon.pending():
            self.seen += len(os.read(self.beacon.r, 4096))
        return self.seen

    def wait_for(self, n: int) -> None:
        """Block until at least ``n`` pulls were reported."""
        self.count()
        if self.seen < n:
            self.seen += len(self.beacon.receive(n - self.seen, timeout=BOUND))

    def close(self) -> None:
        self.beacon.close()


@pytest.fixture
def pulls() -> Iterator[Pulls]:
    counter = Pulls()
    try:
        yield counter
    finally:
        counter.close()


class Background:
    """The thread or child process that runs one preloader's source (as `Where` reported it)."""

    def __init__(
        self, preloader: Preloader[Any] | None, thread: threading.Thread | None, pid: int | None
    ):
        self.preloader = preloader
        self.thread = thread
        self.pid = pid

    def parked(self) -> bool:
        """Whether the worker is blocked waiting for the consumer (it cannot pull right now)."""
        if self.thread is not None:
            frame = sys._current_frames().get(self.thread.ident or -1)
            # Condition.wait is where every threading wait (Condition, Event, Queue, Semaphore)
            # blocks; the GIL is held here, so the thread cannot leave it while we look.
            return (
                frame is not None
                and frame.f_code.co_name == "wait"
                and frame.f_code.co_filename == threading.__file__
            )
        assert self.pid is not None
        # The child runs one thread: asleep ("S") means blocked in a system call, which for a
        # source that never blocks on its own is the wait for the consumer's next credit.
        return process_state(self.pid) == "S"

    def wait_parked(self) -> None:
        # A blocked thread or process has no event of its own: poll it.
        assert wait_until(self.parked, BOUND), "the preloader's worker never blocked"

    def wait_stopped(self) -> None:
        """Assert that the thread ends / the child is gone (reaped) promptly (research H4/H5)."""
        if self.thread is not None:
            self.thread.join(PROMPT)
            assert not self.thread.is_alive(), "the preload thread is still running"
            return
        assert self.pid is not None
        assert wait_gone(self.pid, PROMPT), f"the process_preload child {self.pid} is still there"


class Where:
    """Wraps a source so that the worker pulling from it reports where it runs.

    Every preloader pulls at once (that is its point), so the report comes without any
    consumption; the wrapped source is pulled exactly as often as the original.
    """

    def __init__(self) -> None:
        self.beacon = Beacon()
        self.threads: list[threading.Thread] = []

    def wrap(self, source: Any) -> Iterator[Any]:
        def reporting() -> Iterator[Any]:
            self.threads.append(threading.current_thread())  # only seen in this process
            self.beacon.send_int(os.getpid())
            yield from source

        return reporting()

    def worker(self, kind: Callable[..., Preloader[Any]], preloader: Any = None) -> Background:
        """Wait for the report and describe the worker (the thread, or the child's pid)."""
        pid = self.beacon.receive_int(timeout=BOUND)
        if kind is thread_preload:
            assert pid == os.getpid()
            return Background(preloader, self.threads[0], None)
        assert pid != os.getpid()
        return Background(preloader, None, pid)

    def __enter__(self) -> Where:
        return self

    def __exit__(self, *exc: object) -> None:
        self.beacon.close()


def start(kind: Callable[..., Preloader[Any]], source: object, buffer_size: int = 4) -> Background:
    """Call ``kind(source, buffer_size)`` and find the thread or child that runs the source."""
    with Where() as where:
        return where.worker(kind, kind(where.wrap(source), buffer_size=buffer_size))


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` is no longer a child of this process (killed and reaped).

    Reaping happens on the library's supervisor thread: there is no event to wait on here.
    """
    return wait_until(lambda: pid not in child_pids(), timeout)


def failing_source(n: int = 5) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"the source broke after {n} items")


def assert_exhausted(preloader: Preloader[Any], times: int = 3) -> None:
    for _ in range(times):
        with pytest.raises(StopIteration):
            next(preloader)


# -- order and ends --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PRELOADERS)
@pytest.mark.parametrize("buffer_size", [1, 3, 100])
def test_order_kept(kind, buffer_size):
    assert list(kind(range(200), buffer_size=buffer_size)) == list(range(200))


@pytest.mark.parametrize("kind", PRELOADERS)
def test_every_item_of_a_finite_generator(kind):
    words = [f"item-{i}" for i in range(1000)]
    assert list(kind(w for w in words)) == words


@pytest.mark.parametrize("kind", PRELOADERS)
@pytest.mark.parametrize("source", [[], (), iter([])], ids=["list", "tuple", "iterator"])
def test_empty_source(kind, source):
    p = kind(source)
    assert list(p) == []
    assert_exhausted(p)


@pytest.mark.parametrize("kind", PRELOADERS)
def test_next_after_the_end_raises_stop_iteration_again_and_again(kind):
    p = kind(iter("abc"), buffer_size=2)
    assert [next(p), next(p), next(p)] == ["a", "b", "c"]
    assert_exhausted(p, times=5)
    assert next(p, "default") == "default"


@pytest.mark.parametrize("kind", PRELOADERS)
def test_returns_a_preloader_that_is_its_own_iterator(kind):
    p = kind(range(3))
    assert isinstance(p, Preloader)
    assert iter(p) is p
    with p as entered:
        assert entered is p
        assert next(p) == 0


@pytest.mark.parametrize("kind", PRELOADERS)
def test_default_buffer_size_is_four(kind, pulls):
    bg = start(kind, pulls.source(100))
    with bg.preloader:
        pulls.wait_for(4)
        bg.wait_parked()
        assert pulls.count() == 4


# -- bounded read-ahead ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", PRELOADERS)
@pytest.mark.parametrize("buffer_size", [1, 2, 5])
def test_read_ahead_without_consumption_stops_at_buffer_size(kind, pulls, buffer_size):
    bg = start(kind, pulls.source(), buffer_size)
    with bg.preloader:
        pulls.wait_for(buffer_size)  # it does read ahead, unasked ...
        bg.wait_parked()
        assert pulls.count() == buffer_size  # ... but not one item further


@pytest.mark.parametrize("kind", PRELOADERS)
@pytest.mark.parametrize("buffer_size", [1, 3])
def test_read_ahead_follows_consumption(kind, pulls, buffer_size):
    n = 12
    bg = start(kind, pulls.source(n), buffer_size)
    with bg.preloader as p:
        for k in range(1, n - buffer_size + 1):
            assert next(p) == k - 1
            # Racy until the worker parks: it may not have taken its new credit yet.
            assert pulls.count() <= k + buffer_size
            pulls.wait_for(k + buffer_size)  # consuming one item lets exactly one more in
            bg.wait_parked()
            assert pulls.count() == k + buffer_size, f"after consuming {k}"
        assert list(p) == list(range(n - buffer_size, n))
        assert pulls.count() == n


# -- source errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PRELOADERS)
@pytest.mark.parametrize("buffer_size", [1, 4, 50])
def test_source_error_comes_after_every_earlier_item(kind, buffer_size):
    bg = start(kind, failing_source(5), buffer_size)
    p = bg.preloader
    assert [next(p) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"^the source broke after 5 items$") as info:
        next(p)
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "failing_source" in frames, frames
    text = "".join(traceback.format_exception(info.value))
    assert 'raise ValueError(f"the source broke after {n} items")' in text
    assert_exhausted(p)
    bg.wait_stopped()  # the thread ended, the child was reaped


@pytest.mark.parametrize("kind", PRELOADERS)
def test_source_error_ends_a_for_loop_after_the_items(kind):
    got = []
    with pytest.raises(ValueError, match="broke after 5"):
        for x in kind(failing_source(5), buffer_size=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind", PRELOADERS)
def test_error_in_the_first_pull(kind):
    p = kind(failing_source(0))
    with pytest.raises(ValueError, match="broke after 0"):
        next(p)
    assert_exhausted(p)


# -- stopping the background work ------------------------------------------------------------


@pytest.mark.parametrize("kind", PRELOADERS)
def test_close_stops_the_background_work(kind, pulls):
    bg = start(kind, pulls.source(), buffer_size=3)
    p = bg.preloader
    assert next(p) == 0
    pulls.wait_for(4)
    p.close()
    bg.wait_stopped()
    assert pulls.count() == 4  # one taken + buffer_size ahead, and not one more after close()
    assert_exhausted(p)
    p.close()  # idempotent
    assert_exhausted(p, times=1)


@pytest.mark.parametrize("kind", PRELOADERS)
def test_with_block_stops_the_background_work(kind, pulls):
    bg = start(kind, pulls.source(), buffer_size=2)
    with bg.preloader as p:
        assert [next(p), next(p)] == [0, 1]
    bg.wait_stopped()
    # Racy: the block may end before the worker has used the two credits just given back.
    assert 2 <= pulls.count() <= 4
    assert_exhausted(p)


@pytest.mark.parametrize("kind", PRELOADERS)
def test_with_block_left_by_an_exception_stops_the_background_work(kind, pulls):
    bg = start(kind, pulls.source(), buffer_size=2)
    with pytest.raises(KeyError), bg.preloader as p:
        next(p)
        raise KeyError("consumer gave up")
    bg.wait_stopped()


@pytest.mark.parametrize("kind", PRELOADERS)
@pytest.mark.parametrize("consumed", [0, 2])
def test_garbage_collection_stops_the_background_work(kind, pulls, consumed):
    bg = start(kind, pulls.source(), buffer_size=3)
    for _ in range(consumed):
        next(bg.preloader)
    pulls.wait_for(consumed + 3)
    bg.preloader = None  # the last reference
    gc.collect()
    bg.wait_stopped()


@pytest.mark.parametrize("kind", PRELOADERS)
def test_garbage_collection_of_a_preloader_in_a_reference_cycle(kind, pulls):
    bg = start(kind, pulls.source(), buffer_size=2)
    holder: dict[str, Any] = {"preloader": bg.preloader}
    holder["self"] = holder
    bg.preloader = None
    del holder
    gc.collect()
    bg.wait_stopped()


def test_early_break_over_an_infinite_source_leaks_nothing():
    seen = []
    for x in thread_preload(itertools.count()):
        seen.append(x)
        if x == 3:
            break
    assert seen == [0, 1, 2, 3]
    # The no_leaks fixture checks that the preload thread is gone.


@pytest.mark.parametrize("kind", PRELOADERS)
def test_early_break_stops_the_worker_and_bounds_the_pulls(kind, pulls):
    with Where() as where:
        for x in kind(where.wrap(pulls.source()), buffer_size=4):  # the loop's is the only ref
            if x == 3:
                break
        worker = where.worker(kind)
    worker.wait_stopped()
    # Racy: the break may come before the worker has filled its buffer again, but never beyond it.
    assert 4 <= pulls.count() <= 4 + 4


@pytest.mark.parametrize("then", ["yields", "raises"])
def test_close_of_a_thread_preloader_blocked_inside_the_source(then):
    entered, release = threading.Event(), threading.Event()
    pulled = []

    def source():
        for i in itertools.count():
            pulled.append(i)
            if i == 2:
                entered.set()
                assert release.wait(BOUND)
                if then == "raises":
                    raise ValueError("the source failed after the close")
            yield i

    bg = start(thread_preload, source(), buffer_size=8)
    assert entered.wait(BOUND)
    bg.preloader.close()
    assert_exhausted(bg.preloader)
    release.set()  # the source returns (or raises); the thread must stop there, not pull item 3
    bg.wait_stopped()
    assert pulled == [0, 1, 2]
    # What the source produced after close() is dropped: next() still says StopIteration.
    assert_exhausted(bg.preloader)


@pytest.mark.parametrize("kind", PRELOADERS)
def test_close_drops_an_error_that_had_already_arrived(kind):
    bg = start(kind, failing_source(1), buffer_size=4)
    bg.wait_stopped()  # the source is done: its item and its error wait in the preloader
    p = bg.preloader
    assert next(p) == 0
    p.close()
    assert_exhausted(p)  # close(): "later next() calls raise StopIteration"


def test_close_kills_a_process_preloader_blocked_inside_the_source(pulls, gate):
    def source():
        yield from pulls.source(2)
        gate.wait()  # never released while the child lives
        yield "never"

    bg = start(process_preload, source())
    with bg.preloader as p:
        assert next(p) == 0
        pulls.wait_for(2)
        bg.wait_parked()  # blocked on the gate, inside the source
    bg.wait_stopped()
    assert_exhausted(p)


# -- process_preload: fork semantics ---------------------------------------------------------


def test_process_source_is_inherited_not_pickled():
    lock = threading.Lock()
    with open(os.devnull, "w") as log:  # neither a lock nor a file can be pickled

        def source():
            for i in range(5):
                with lock:
                    log.write(f"{i}\n")
                    yield i * 10

        assert list(process_preload(source())) == [0, 10, 20, 30, 40]


@pytest.mark.parametrize(
    "make",
    [
        lambda: (i for i in range(10)),
        lambda: iter(list(range(10))),
        lambda: map(int, "0123456789"),
    ],
    ids=["generator", "list-iterator", "map"],
)
def test_process_parent_copy_of_the_source_is_not_advanced(make):
    source = make()
    assert list(process_preload(source, buffer_size=3)) == list(range(10))
    assert list(source) == list(range(10))  # the child ran its own copy


def test_process_changes_made_by_the_source_stay_in_the_child():
    state = {"pulled": 0}

    def source():
        for i in range(3):
            state["pulled"] += 1
            yield state["pulled"] + i

    assert list(process_preload(source())) == [1, 3, 5]
    assert state == {"pulled": 0}


@pytest.mark.parametrize("buffer_size", [1, 4])
def test_process_unpicklable_item_ends_it_with_result_not_picklable(buffer_size):
    def source():
        yield 0
        yield "one"
        yield threading.Lock()  # neither pickle nor cloudpickle can send this
        yield 3

    p = process_preload(source(), buffer_size=buffer_size)
    assert [next(p), next(p)] == [0, "one"]
    with pytest.raises(ResultNotPicklable) as info:
        next(p)
    assert "lock" in str(info.value).lower()
    assert_exhausted(p)


def test_process_child_killed_from_outside_ends_it_with_worker_died(pulls, gate):
    def source():
        yield from pulls.source(3)
        gate.wait()  # the child stays here until it is killed
        yield "never"

    bg = start(process_preload, source())
    p = bg.preloader
    assert [next(p), next(p), next(p)] == [0, 1, 2]
    pulls.wait_for(3)

    def kill_when_parked():
        bg.wait_parked()
        os.kill(bg.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_parked, name="test-killer")
    killer.start()
    try:
        with pytest.raises(WorkerDied) as info:
            next(p)  # blocked waiting for item 3 when the kill lands: must not hang
    finally:
        killer.join(BOUND)
    assert info.value.pid == bg.pid
    assert info.value.signal == signal.SIGKILL
    assert_exhausted(p)
    bg.wait_stopped()
    p.close()


def test_process_child_dying_inside_the_source_ends_it_with_worker_died():
    def source():
        yield from range(3)
        kill_self()

    p = process_preload(source(), buffer_size=10)
    assert [next(p), next(p), next(p)] == [0, 1, 2]
    with pytest.raises(WorkerDied):
        next(p)
    assert_exhausted(p)


def test_process_child_exiting_inside_the_source_is_not_a_silent_end():
    def source():
        yield from range(2)
        os._exit(0)

    p = process_preload(source())
    assert [next(p), next(p)] == [0, 1]
    with pytest.raises(WorkerDied):  # it ended without a word: not a silent StopIteration
        next(p)
    assert_exhausted(p)


def test_process_sentinel_like_items_pass_through():
    got = list(process_preload(iter(SENTINELS), buffer_size=2))
    assert len(got) == len(SENTINELS)
    for sent, back in zip(SENTINELS, got, strict=True):
        assert type(back) is type(sent)
        if isinstance(sent, BaseException):
            assert back.args == sent.args
        else:
            assert back == sent


def test_process_items_larger_than_a_pipe_buffer():
    blobs = [bytes([i]) * (1 << 20) for i in range(6)]
    got = list(process_preload(iter(blobs), buffer_size=2))
    assert got == blobs


def test_process_items_are_copies():
    items = [[i] for i in range(3)]
    got = list(process_preload(iter(items)))
    assert got == items
    assert all(a is not b for a, b in zip(got, items, strict=True))


def test_process_preload_runs_the_source_in_another_process():
    def source():
        yield os.getpid()

    (pid,) = process_preload(source())
    assert pid != os.getpid()


# -- thread_preload: same objects ------------------------------------------------------------


def test_thread_sentinel_like_values_pass_through():
    assert list(thread_preload(iter(SENTINELS), buffer_size=2)) == SENTINELS


def test_thread_items_are_the_objects_the_source_yields():
    items = [object() for _ in range(20)] + SENTINELS
    got = list(thread_preload(iter(items), buffer_size=3))
    assert len(got) == len(items)
    assert all(a is b for a, b in zip(got, items, strict=True))


def test_thread_preload_runs_the_source_in_another_thread():
    def source():
        yield threading.get_ident()

    (ident,) = thread_preload(source())
    assert ident != threading.get_ident()


# -- argument errors -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PRELOADERS)
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"buffer_size": 0}, ValueError, "buffer_size"),
        ({"buffer_size": -1}, ValueError, "buffer_size"),
        ({"buffer_size": "4"}, TypeError, "buffer_size"),
        ({"buffer_size": 4.0}, TypeError, "buffer_size"),
        ({"buffer_size": None}, TypeError, "buffer_size"),
    ],
)
def test_bad_buffer_size(kind, kwargs, error, match):
    source = iter([1, 2, 3])
    with pytest.raises(error, match=match):
        kind(source, **kwargs)
    assert list(source) == [1, 2, 3]  # nothing was read (and the fixture: nothing started)


@pytest.mark.parametrize("kind", PRELOADERS)
@pytest.mark.parametrize("bad", [42, None, object()], ids=["int", "None", "object"])
def test_non_iterable_source(kind, bad):
    with pytest.raises(TypeError, match="iterable"):
        kind(bad)


@pytest.mark.parametrize("kind", PRELOADERS)
def test_a_source_whose_iter_raises_stop_iteration_is_an_error(kind):
    class Broken:
        def __iter__(self):
            raise StopIteration("not an empty source")

    with pytest.raises(RuntimeError, match=r"__iter__ of the source .* raised StopIteration"):
        kind(Broken())


@pytest.mark.parametrize("kind", PRELOADERS)
def test_a_stop_iteration_escaping_inside_a_generator_source_is_an_error(kind):
    def source():
        yield from range(3)
        next(iter(()))  # PEP 479: an error at this position, not the end

    preloader = kind(source())
    assert [next(preloader) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="generator raised StopIteration"):
        next(preloader)
    assert_exhausted(preloader)


# -- the iterlib README ----------------------------------------------------------------------


def test_iterlib_seed_example_as_written():
    gen = (x**2 for x in range(100000))
    preloaded_gen = thread_preload(gen, buffer_size=100)
    assert sum(preloaded_gen) == sum(x**2 for x in range(100000))
    assert next(preloaded_gen, "end") == "end"


def test_a_preloader_inherited_by_a_fork_refuses_to_run_there() -> None:
    from inparallel import task

    for preload in (process_preload, thread_preload):
        p = preload(iter(range(10)))
        assert next(p) == 0

        @task
        def in_child() -> str:
            try:
                next(p)
            except RuntimeError as exc:
                return str(exc)
            return "no error"

        assert "another process" in in_child().result(timeout=BOUND)
        assert next(p) == 1  # and the parent's is untouched
        p.close()


PRINTING_SOURCES = r"""
from inparallel import process_preload

def source(run):
    for i in range(3):
        print(f"source {run} item {i}")
        yield i

for run in range(50):
    assert list(process_preload(source(run))) == [0, 1, 2]
print("end", flush=True)
"""


def test_what_a_process_preload_source_printed_is_never_lost() -> None:
    # stdout on a pipe (block-buffered in the child): the source's lines reached the parent's
    # stdout only if the child flushed before the parent, done with it, killed it.
    import subprocess

    import _faults

    proc = subprocess.run(
        [sys.executable, "-c", PRINTING_SOURCES],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env=_faults.python_env(),  # PYTHONUNBUFFERED unset
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    expected = {f"source {run} item {i}" for run in range(50) for i in range(3)}
    assert set(lines) - {"end"} == expected and len(lines) == len(expected) + 1
