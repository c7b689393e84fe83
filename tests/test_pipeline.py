"""`process_parallel`: work_generator -> forked work_processor workers -> result_consumer.

The generator and the consumer run in the caller's thread and the processors in forked workers,
so the tests observe the generator and the consumer directly (plain closures and counters) and
the workers through their results. The no_leaks fixture checks after every test that no worker
process, thread or fd was left behind, whichever stage failed.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from _faults import child_pids, kill_self, wait_until
from _timing import BOUND, PROMPT

from inparallel import WorkerDied, process_parallel

# -- helpers ---------------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


class Tracked:
    """An infinite (or ``n``-item) generator function that records how it ended."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n
        self.pulled = 0
        self.events: list[str] = []

    def __call__(self) -> Iterator[int]:
        try:
            for i in itertools.count() if self.n is None else range(self.n):
                self.pulled += 1
                yield i
        except GeneratorExit:
            self.events.append("GeneratorExit")
            raise
        finally:
            self.events.append("finally")


class Lines:
    """A class implementing ``__iter__`` (the seed README's other form of work_generator)."""

    def __init__(self, lines: list[str] | None = None) -> None:
        self.lines = lines if lines is not None else ["a b", "c", "d e f"]

    def __iter__(self) -> Iterator[str]:
        return iter(self.lines)


def assert_workers_gone(before: set[int]) -> None:
    """Assert that the workers of a failed pipeline are gone promptly (research H4/H7)."""
    # Reaping happens on the library's supervisor thread: there is no event to wait on here.
    wait_until(lambda: not child_pids() - before, PROMPT)
    left = child_pids() - before
    assert not left, f"worker processes left: {sorted(left)}"


# -- the PyProcessParallel README ------------------------------------------------------------

TEXTS = [
    "this is an example text",
    "another text with no meaning",
    "some more text here",
]


@pytest.mark.parametrize(
    "options",
    [{}, {"maxsize_jobsize": 100, "maxsize_results": 100}, {"workers": 2}],
    ids=["defaults", "maxsizes", "workers"],
)
def test_seed_example_as_written(tmp_path, monkeypatch, options):
    monkeypatch.chdir(tmp_path)
    texts = TEXTS

    def work_generator():
        for text in texts:  # noqa: UP028 - as the README writes it
            yield text

    def work_processor(line):
        return line.split()

    out = open("tokens.txt", "w")  # noqa: SIM115 - as the README writes it

    def result_consumer(tokens):
        for token in tokens:
            out.write("%s\n" % token)  # noqa: UP031 - as the README writes it

    process_parallel(work_generator, work_processor, result_consumer, **options)
    # do your clean up here
    out.close()
    assert (tmp_path / "tokens.txt").read_text().splitlines() == " ".join(TEXTS).split()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_many_lines_come_out_in_order(tmp_path, workers):
    lines = [f"line{i} has {i % 7} words" + " x" * (i % 5) for i in range(400)]
    path = tmp_path / "tokens.txt"
    with path.open("w") as out:

        def result_consumer(tokens):
            for token in tokens:
                out.write(f"{token}\n")

        process_parallel(
            lambda: iter(lines),
            str.split,
            result_consumer,
            workers=workers,
            maxsize_jobs=8,
            maxsize_results=8,
        )
    assert path.read_text().splitlines() == " ".join(lines).split()


# -- forms of work_generator -----------------------------------------------------------------


def _gen_fn():
    yield from range(20)


@pytest.mark.parametrize(
    "make",
    [
        lambda: list(range(20)),
        lambda: tuple(range(20)),
        lambda: range(20),
        lambda: (i for i in range(20)),
        lambda: iter(list(range(20))),
        lambda: _gen_fn,
        lambda: _gen_fn(),
        lambda: lambda: list(range(20)),
        lambda: Lines([str(i) for i in range(20)]),
        lambda: lambda: Lines([str(i) for i in range(20)]),
    ],
    ids=[
        "list",
        "tuple",
        "range",
        "generator-expression",
        "iterator",
        "generator-function",
        "generator-object",
        "callable-returning-list",
        "iterable-instance",
        "callable-returning-iterable",
    ],
)
def test_work_generator_forms(make):
    got = []
    process_parallel(make(), lambda x: int(x) * 3, got.append, workers=2)
    assert got == [3 * i for i in range(20)]


def test_iterable_class_itself_is_called_once():
    got = []
    process_parallel(Lines, str.upper, got.append, workers=2)
    assert got == ["A B", "C", "D E F"]


def test_work_generator_callable_is_called_exactly_once():
    calls = []

    def work_generator():
        calls.append(1)
        return [1, 2, 3]

    got = []
    process_parallel(work_generator, square, got.append, workers=2)
    assert calls == [1] and got == [1, 4, 9]


# -- where each stage runs -------------------------------------------------------------------


def test_processors_run_in_workers_and_the_consumer_in_the_caller():
    me, caller = os.getpid(), threading.get_ident()
    consumer_threads = set()
    pids = []

    def consume(pid):
        consumer_threads.add(threading.get_ident())
        pids.append(pid)

    process_parallel(range(40), lambda _: os.getpid(), consume, workers=2)
    assert consumer_threads == {caller}
    assert len(pids) == 40 and me not in pids
    assert len(set(pids)) in (1, 2)  # racy: one worker may take every job before the other starts


def test_processor_closing_over_unpicklable_state():
    lock = threading.Lock()
    table = {i: f"v{i}" for i in range(30)}
    pipe_r, pipe_w = os.pipe()  # not picklable either: just inherited
    try:

        def work_processor(x):
            with lock:
                return (table[x], pipe_w > 0)

        got = []
        process_parallel(iter(range(30)), work_processor, got.append, workers=2)
        assert got == [(f"v{i}", True) for i in range(30)]
    finally:
        os.close(pipe_r)
        os.close(pipe_w)


def test_worker_changes_stay_in_the_workers():
    state = {"calls": 0}

    def work_processor(x):
        state["calls"] += 1
        return x

    got = []
    process_parallel(range(10), work_processor, got.append, workers=2)
    assert got == list(range(10)) and state == {"calls": 0}


# -- H8: bounded memory ----------------------------------------------------------------------


@pytest.mark.parametrize(("jobs", "results"), [(1, 1), (2, 3), (5, 1), (1, 6), (10, 10)], ids=str)
@pytest.mark.parametrize("workers", [1, 2])
def test_backpressure_bounds_items_between_generator_and_consumer(jobs, results, workers):
    n = 60
    source = Tracked(n)
    leads = []

    def result_consumer(_):
        leads.append(source.pulled - len(leads))  # pulled and not yet consumed, this one included

    process_parallel(
        source,
        square,
        result_consumer,
        workers=workers,
        maxsize_jobs=jobs,
        maxsize_results=results,
    )
    assert len(leads) == n and source.pulled == n
    assert max(leads) <= jobs + results, leads
    if jobs + results > 1:
        assert max(leads) > 1, "the generator never ran ahead of the consumer"


def test_backpressure_with_a_slow_consumer():
    source = Tracked()  # infinite: only the bound keeps the pipeline from reading it all
    leads = []

    class Enough(Exception):
        pass

    def result_consumer(_):
        leads.append(source.pulled - len(leads))
        # A slow consumer: meanwhile the workers finish what they have and would race ahead.
        time.sleep(0.005)
        if len(leads) == 30:
            raise Enough

    with pytest.raises(Enough) as info:  # holds the pipeline's frame: no closing by refcount
        process_parallel(
            source, square, result_consumer, workers=2, maxsize_jobs=3, maxsize_results=2
        )
    assert max(leads) <= 5, leads
    assert source.pulled <= 30 + 5
    assert source.events == ["GeneratorExit", "finally"]
    assert info.value.__traceback__ is not None


# -- H7: a stage raises ----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_processor_error_at_item_7(workers):
    source = Tracked()
    consumed = []

    def work_processor(x):
        if x == 7:
            raise ValueError("item 7 is bad")
        return x * 10

    before = child_pids()
    with pytest.raises(ValueError, match=r"^item 7 is bad$") as info:  # holds the frames alive
        process_parallel(
            source,
            work_processor,
            consumed.append,
            workers=workers,
            maxsize_jobs=4,
            maxsize_results=4,
        )
    assert consumed == [x * 10 for x in range(7)]
    assert source.events == ["GeneratorExit", "finally"]
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "work_processor" in names, names
    assert_workers_gone(before)


def test_generator_error_comes_after_every_earlier_result():
    def work_generator():
        yield from range(10)
        raise KeyError("the generator broke")

    consumed = []
    before = child_pids()
    with pytest.raises(KeyError, match="the generator broke"):
        process_parallel(
            work_generator, square, consumed.append, workers=2, maxsize_jobs=3, maxsize_results=3
        )
    assert consumed == [square(i) for i in range(10)]
    assert_workers_gone(before)


def test_generator_error_before_any_item():
    def work_generator():
        raise OSError("cannot open the input")
        yield  # a generator function

    consumed = []
    with pytest.raises(OSError, match="cannot open the input"):
        process_parallel(work_generator, square, consumed.append, workers=2)
    assert consumed == []


def test_generator_callable_raising_when_called():
    def work_generator():
        raise FileNotFoundError("no input")

    with pytest.raises(FileNotFoundError, match="no input"):
        process_parallel(work_generator, square, print, workers=2)


@pytest.mark.parametrize("workers", [1, 2])
def test_consumer_error_stops_everything(workers):
    source = Tracked()
    consumed = []

    def result_consumer(result):
        if len(consumed) == 5:
            raise RuntimeError("the database is gone")
        consumed.append(result)

    before = child_pids()
    # Holding the traceback keeps the pipeline's frame (and so the generator) alive: the close
    # checked below is the pipeline's own, not the garbage collector's.
    with pytest.raises(RuntimeError, match="the database is gone") as info:
        process_parallel(
            source,
            square,
            result_consumer,
            workers=workers,
            maxsize_jobs=4,
            maxsize_results=4,
        )
    assert consumed == [square(i) for i in range(5)]
    assert source.events == ["GeneratorExit", "finally"]
    assert info.value.__traceback__ is not None
    assert source.pulled <= 6 + 8  # racy: how far the generator ran ahead before the error
    assert_workers_gone(before)


def test_worker_dying_ends_the_pipeline_with_worker_died():
    consumed = []

    def work_processor(x):
        if x == 5:
            kill_self()
        return x

    before = child_pids()
    with pytest.raises(WorkerDied):
        process_parallel(range(1000), work_processor, consumed.append, workers=2, maxsize_jobs=4)
    # Racy: how many results before the dead worker's came back first depends on scheduling.
    assert consumed == list(range(len(consumed))) and len(consumed) <= 5
    assert_workers_gone(before)


# -- a generator that blocks -----------------------------------------------------------------


class Stalling:
    """A generator function: ``before`` items, then blocked until the test releases it."""

    def __init__(self, before):
        self.before = before
        self.reached = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.events = []

    def __call__(self):
        try:
            yield from range(self.before)
            self.reached.set()
            if not self.release.wait(timeout=BOUND):
                raise TimeoutError("the test never released the generator")
            yield from range(self.before, self.before + 3)
        except GeneratorExit:
            self.events.append("GeneratorExit")
            raise
        finally:
            self.events.append("finally")
            self.finished.set()


def test_results_reach_the_consumer_while_the_generator_blocks():
    source = Stalling(2)
    consumed = []

    def result_consumer(result):
        consumed.append(result)
        if len(consumed) == 2:  # both arrived while the generator is blocked: let it go on
            assert not source.release.is_set()
            assert source.reached.wait(BOUND)
            source.release.set()

    process_parallel(source, square, result_consumer, workers=2)
    assert consumed == [square(i) for i in range(5)]
    assert source.events == ["finally"]


def test_a_failing_consumer_does_not_wait_for_a_blocked_generator():
    source = Stalling(3)

    def result_consumer(result):
        if result == 1:
            assert source.reached.wait(BOUND)  # the generator is blocked now
            raise ValueError("the consumer failed")

    before = child_pids()
    started = time.monotonic()
    with pytest.raises(ValueError, match="the consumer failed"):
        process_parallel(source, square, result_consumer, workers=2, maxsize_jobs=2)
    assert time.monotonic() - started < BOUND / 2
    assert_workers_gone(before)
    # It cannot be closed while it is blocked inside next() (another thread runs it): the
    # pipeline leaves the closing to that thread, which does it as soon as next() returns.
    assert source.events == []
    source.release.set()
    assert source.finished.wait(BOUND)
    assert source.events == ["GeneratorExit", "finally"]


# -- StopIteration from a stage is an error, not the end of the work -------------------------


def stop_at_5(x):
    if x == 5:
        raise StopIteration("from item 5")
    return x * 10


def assert_stop_error(error, who):
    assert type(error) is RuntimeError
    assert str(error).startswith(f"{who} raised StopIteration, which is an error here")
    assert type(error.__cause__) is StopIteration


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
@pytest.mark.parametrize("kind", ["generator", "list"])
def test_processor_raising_stop_iteration_fails_at_its_position(workers, ordered, kind):
    source = Tracked(12) if kind == "generator" else list(range(12))
    consumed = []
    before = child_pids()
    with pytest.raises(RuntimeError) as info:
        process_parallel(
            source, stop_at_5, consumed.append, workers=workers, maxsize_jobs=2, ordered=ordered
        )
    assert_stop_error(info.value, "the mapped function stop_at_5()")
    if ordered:
        assert consumed == [0, 10, 20, 30, 40]
    else:
        # Racy: results after the failing one may already have been consumed.
        assert {0, 10, 20, 30, 40} <= set(consumed) and 50 not in consumed
    if kind == "generator":
        # Racy: the generator may have run to its end before the error came back.
        assert source.events in (["GeneratorExit", "finally"], ["finally"])
    assert_workers_gone(before)


def test_consumer_raising_stop_iteration_stops_everything():
    source = Tracked()
    consumed = []

    def result_consumer(result):
        if len(consumed) == 5:
            raise StopIteration("from item 5")
        consumed.append(result)

    before = child_pids()
    with pytest.raises(RuntimeError) as info:
        process_parallel(source, square, result_consumer, workers=2, maxsize_jobs=4)
    assert_stop_error(info.value, "result_consumer")
    assert consumed == [square(i) for i in range(5)]
    assert source.events == ["GeneratorExit", "finally"]
    assert_workers_gone(before)


def test_generator_callable_raising_stop_iteration_when_called():
    def work_generator():
        raise StopIteration("from item 5")

    consumed = []
    with pytest.raises(RuntimeError) as info:
        process_parallel(work_generator, square, consumed.append, workers=2)
    assert_stop_error(info.value, "work_generator()")
    assert consumed == []


def test_generator_stop_iteration_ends_it_only_when_it_is_its_own_end():
    class Five:
        """An iterator whose __next__ says "no more" after five items: a normal end."""

        def __init__(self):
            self.i = 0

        def __iter__(self):
            return self

        def __next__(self):
            if self.i == 5:
                raise StopIteration
            self.i += 1
            return self.i - 1

    consumed = []
    process_parallel(Five, square, consumed.append, workers=2)
    assert consumed == [square(i) for i in range(5)]

    def leaky():  # a StopIteration escaping inside a generator: an error (PEP 479)
        yield from range(5)
        next(iter(()))

    consumed.clear()
    with pytest.raises(RuntimeError, match="generator raised StopIteration"):
        process_parallel(leaky, square, consumed.append, workers=2)
    assert consumed == [square(i) for i in range(5)]


# -- argument errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"workers": 0}, ValueError),
        ({"workers": -1}, ValueError),
        ({"workers": "2"}, TypeError),
        ({"maxsize_jobs": 0}, ValueError),
        ({"maxsize_jobs": -3}, ValueError),
        ({"maxsize_results": 0}, ValueError),
        ({"maxsize_jobsize": 0}, ValueError),
        ({"maxsize_jobs": 2.5}, TypeError),
        ({"work_processor": 42}, TypeError),
        ({"work_processor": None}, TypeError),
        ({"result_consumer": "print"}, TypeError),
    ],
    ids=str,
)
def test_bad_arguments(kwargs, error):
    called = []

    def work_generator():
        called.append(True)
        return [1, 2, 3]

    args: dict[str, Any] = {
        "work_generator": work_generator,
        "work_processor": square,
        "result_consumer": print,
    }
    args.update(kwargs)
    with pytest.raises(error):
        process_parallel(**args)
    assert called == []  # rejected before any stage started


@pytest.mark.parametrize("bad", [42, None, object()], ids=["int", "None", "object"])
def test_non_iterable_work_generator(bad):
    with pytest.raises(TypeError):
        process_parallel(bad, square, print, workers=2)


def test_callable_returning_a_non_iterable():
    with pytest.raises(TypeError):
        process_parallel(lambda: 42, square, print, workers=2)


# -- H9: empty and single inputs -------------------------------------------------------------


@pytest.mark.parametrize(
    "work_generator",
    [[], (), iter([]), lambda: iter(()), Lines([])],
    ids=["list", "tuple", "iterator", "callable", "iterable-instance"],
)
def test_empty_generator_never_calls_the_consumer(work_generator):
    calls = []
    assert process_parallel(work_generator, square, calls.append, workers=2) is None
    assert calls == []


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_single_item(workers):
    got = []
    process_parallel([7], square, got.append, workers=workers)
    assert got == [49]


# -- progress --------------------------------------------------------------------------------


def test_progress_bar(capsys):
    pytest.importorskip("tqdm")
    got = []
    process_parallel(range(5), square, got.append, workers=2, progress=True)
    assert got == [0, 1, 4, 9, 16]
    err = capsys.readouterr().err
    assert "5/5" in err, err  # range() has a length: the bar shows the total
    assert not [t for t in threading.enumerate() if t.name == "tqdm_monitor"]


def test_progress_bar_with_a_generator_of_unknown_length(capsys):
    pytest.importorskip("tqdm")
    got = []
    process_parallel(Tracked(6), square, got.append, workers=2, progress=True)
    assert got == [square(i) for i in range(6)]
    assert "6it" in capsys.readouterr().err
