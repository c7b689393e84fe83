"""Parallel maps: `thread_map`, `process_map`, the lazy `ItemizedMap` and the `MapIterator`.

Covers the result types per kind of input, zipping, lazy indexing and slicing, fresh passes,
ordering, errors at their position (the function's, the input's, pickling, dead workers),
early exit and garbage collection, the read-ahead bound, infinite inputs, many workers, argument
checks, fork semantics, progress bars, and a ledger that accounts for every id of a stopped run.

Workers are synchronised with pipes (`Beacon`, `Gate`) and counted through an append-only file
that threads and forked workers alike write to. Sleeps appear only as simulated work and while
polling ``/proc`` for another process's exit.
"""

from __future__ import annotations

import gc
import itertools
import os
import pickle
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _faults import (
    Beacon,
    ErrorAtUnpickle,
    Gate,
    InjectedFault,
    alive,
    child_pids,
    drain,
    kill_self,
    wait_until,
)
from _timing import BOUND, PATIENCE, PROMPT

from inparallel import (
    ItemizedMap,
    MapIterator,
    RemoteError,
    ResultNotPicklable,
    WorkerDied,
    process_map,
    thread_map,
)

Mapper = Callable[..., Any]  # thread_map or process_map (an "engine" is an Executor)

MAPS = [
    pytest.param(thread_map, id="thread"),
    pytest.param(process_map, id="process"),
]


# -- helpers ---------------------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def add(*xs: int) -> int:
    return sum(xs)


def identity(x: object) -> object:
    return x


def fail_at_37(x: int) -> int:
    if x == 37:
        raise ValueError(f"bad item {x} in process {os.getpid()}")
    return x * 3


class Pulled:
    """An iterator over ``source`` that counts the items taken from it."""

    def __init__(self, source: Iterable[Any]) -> None:
        self._it = iter(source)
        self.count = 0

    def __iter__(self) -> Pulled:
        return self

    def __next__(self) -> Any:
        item = next(self._it)
        self.count += 1
        return item


class CallLog:
    """An append-only file of 8-byte records, written by worker threads or forked workers.

    ``O_APPEND`` makes each small write atomic, so records from concurrent writers never mix,
    and there is no pipe capacity to fill up.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def record(self, value: int) -> None:
        os.write(self.fd, struct.pack("<q", value))

    def values(self) -> list[int]:
        return [v for (v,) in struct.iter_unpack("<q", self.path.read_bytes())]

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def calls(tmp_path: Path) -> Iterator[CallLog]:
    log = CallLog(tmp_path / "calls.bin")
    yield log
    log.close()


def wait_gone(pids: Iterable[int], timeout: float = PROMPT) -> bool:
    """Wait until none of ``pids`` is running (a zombie counts as gone).

    Another process's exit: there is nothing in this process to wait on, so ``/proc`` is polled.
    """
    pids = set(pids)
    return wait_until(lambda: not any(alive(p) for p in pids), timeout)


def assert_exhausted(it: Iterator[Any]) -> None:
    for _ in range(3):
        with pytest.raises(StopIteration):
            next(it)


def is_process(mapper: Mapper) -> bool:
    return mapper is process_map


# -- result types and zipping ----------------------------------------------------------------------


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: list(range(20)), id="list"),
        pytest.param(lambda: tuple(range(20)), id="tuple"),
        pytest.param(lambda: range(20), id="range"),
        pytest.param(lambda: np.arange(20), id="numpy"),
    ],
)
def test_indexable_inputs_give_an_itemized_map(mapper: Mapper, make: Callable[[], Any]) -> None:
    m = mapper(square, make())
    assert isinstance(m, ItemizedMap)
    assert len(m) == 20
    assert list(m) == [i * i for i in range(20)]


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: (i for i in range(20)), id="generator"),
        pytest.param(lambda: iter(list(range(20))), id="list-iterator"),
        pytest.param(lambda: map(int, range(20)), id="map-object"),
        pytest.param(lambda: Pulled(range(20)), id="custom-iterator"),
    ],
)
def test_iterators_give_a_map_iterator(mapper: Mapper, make: Callable[[], Any]) -> None:
    it = mapper(square, make())
    assert isinstance(it, MapIterator)
    assert not isinstance(it, ItemizedMap)
    assert iter(it) is it
    assert list(it) == [i * i for i in range(20)]
    assert_exhausted(it)


@pytest.mark.parametrize("mapper", MAPS)
def test_a_dict_is_iterated_over_its_keys_not_indexed(mapper: Mapper) -> None:
    data = {10: "a", 20: "b", 30: "c"}
    it = mapper(identity, data)
    assert isinstance(it, MapIterator)
    assert list(it) == [10, 20, 30]


@pytest.mark.parametrize("mapper", MAPS)
def test_several_inputs_are_zipped_and_the_shortest_wins(mapper: Mapper) -> None:
    m = mapper(add, [1, 2, 3, 4], range(10, 13))
    assert isinstance(m, ItemizedMap)
    assert len(m) == 3
    assert list(m) == [11, 13, 15]

    three = mapper(add, range(100), np.arange(0, 50), tuple(range(7)))
    assert isinstance(three, ItemizedMap)
    assert list(three) == [3 * i for i in range(7)]

    mixed = mapper(add, (i for i in range(5)), [100] * 10)
    assert isinstance(mixed, MapIterator)
    assert list(mixed) == [100, 101, 102, 103, 104]

    endless = mapper(add, itertools.count(), iter(range(0, 30, 10)))
    assert list(endless) == [0, 11, 22]


# -- ItemizedMap: lazy indexing, slices, passes ----------------------------------------------------


@pytest.mark.parametrize("mapper", MAPS)
def test_indexing_computes_lazily_in_the_caller_each_time(mapper: Mapper) -> None:
    called: list[int] = []
    me = os.getpid()

    def fn(x: int) -> tuple[int, int]:
        called.append(x)
        return x * 10, os.getpid()

    m = mapper(fn, range(10))
    assert called == []  # building the map computes nothing
    assert m[3] == (30, me)
    assert called == [3]
    assert m[-1] == (90, me)
    assert m[-10] == (0, me)
    assert called == [3, 9, 0]
    assert m[3] == (30, me)  # not cached: computed again
    assert called == [3, 9, 0, 3]
    for bad in (10, 11, -11, 10**9):
        with pytest.raises(IndexError):
            m[bad]
    for wrong in ("1", 1.0, None):
        with pytest.raises(TypeError):
            m[wrong]  # type: ignore[index]
    assert called == [3, 9, 0, 3]


SLICES = [
    slice(2, 10),
    slice(None, None, 3),
    slice(None, None, -1),
    slice(-5, None),
    slice(25, 2, -2),
    slice(-3, -20, -4),
    slice(100, 200),
    slice(5, 5),
    slice(1, None, 7),
]


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize("sl", SLICES, ids=str)
def test_slices_are_itemized_maps_matching_the_builtin_map(mapper: Mapper, sl: slice) -> None:
    data = list(range(0, 60, 2))
    m = mapper(square, data)
    sub = m[sl]
    assert isinstance(sub, ItemizedMap)
    want = list(map(square, data[sl]))
    assert len(sub) == len(want)
    assert list(sub) == want
    assert [sub[i] for i in range(len(want))] == want  # every index, computed on demand
    assert [sub[i - len(want)] for i in range(len(want))] == want  # and every negative one
    with pytest.raises(IndexError):
        sub[len(want)]


@pytest.mark.parametrize("mapper", MAPS)
def test_nested_slices_of_zipped_inputs(mapper: Mapper) -> None:
    a, b = list(range(40)), range(100, 130)
    m = mapper(add, a, b)
    want = list(map(add, a, b))
    assert len(m) == 30
    nested = m[::2][1::3][::-1]
    assert isinstance(nested, ItemizedMap)
    assert list(nested) == want[::2][1::3][::-1]
    assert list(m[-3::-4][1:]) == want[-3::-4][1:]
    assert list(m[5:25][::-3][1:-1]) == want[5:25][::-3][1:-1]
    assert [nested[i] for i in range(len(nested))] == want[::2][1::3][::-1]


def test_slicing_computes_nothing() -> None:
    called: list[int] = []

    def fn(x: int) -> int:
        called.append(x)
        return x

    m = thread_map(fn, range(50))
    sub = m[10:40:3][::-1]
    assert len(sub) == 10
    assert called == []
    assert sub[0] == 37
    assert called == [37]


@pytest.mark.parametrize("mapper", MAPS)
def test_each_iteration_is_a_fresh_parallel_pass(mapper: Mapper) -> None:
    me = os.getpid()

    def fn(x: int) -> tuple[int, int]:
        return x * x, os.getpid()

    m = mapper(fn, range(30), num_workers=2)
    first, second = list(m), list(m)
    assert [v for v, _ in first] == [v for v, _ in second] == [i * i for i in range(30)]
    if is_process(mapper):
        pids1, pids2 = {p for _, p in first}, {p for _, p in second}
        assert me not in pids1 | pids2
        assert not pids1 & pids2  # each pass forks its own workers
    else:
        assert {p for _, p in first} == {me}

    it1, it2 = iter(m), iter(m)
    assert it1 is not it2
    assert isinstance(it1, MapIterator)
    interleaved = [(next(it1)[0], next(it2)[0]) for _ in range(5)]
    assert interleaved == [(i * i, i * i) for i in range(5)]
    it1.close()
    assert [v for v, _ in it2] == [i * i for i in range(5, 30)]


# -- ordering --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mapper", MAPS)
def test_output_is_in_input_order_by_default(mapper: Mapper) -> None:
    # Item 0 cannot finish before item 9 has been computed. With 12 workers the first dispatch
    # gives items 0..11 a worker each (a worker also holds one queued chunk: item 9 must not
    # wait behind item 0).
    with Beacon() as nine_done:

        def fn(x: int) -> int:
            if x == 0:
                nine_done.receive(1, timeout=BOUND)
            if x == 9:
                nine_done.send()
            return x * 2

        out = list(mapper(fn, range(30), num_workers=12, chunksize=1))
    assert out == [x * 2 for x in range(30)]


@pytest.mark.parametrize("mapper", MAPS)
def test_unordered_output_is_in_completion_order(mapper: Mapper) -> None:
    # Item 0 is held until the consumer has received some other value: only a map that yields
    # in completion order gets there (an ordered one would wait for item 0 until the timeout).
    with Gate() as gate:

        def fn(x: int) -> int:
            if x == 0:
                gate.wait(timeout=BOUND)
            return x * 2

        it = iter(mapper(fn, range(30), num_workers=4, chunksize=1, ordered=False))
        first = next(it)
        gate.release()
        out = [first, *it]
    assert first != 0
    assert sorted(out) == [x * 2 for x in range(30)]


@pytest.mark.parametrize("mapper", MAPS)
def test_unordered_itemized_map_gives_the_same_multiset(mapper: Mapper) -> None:
    m = mapper(square, list(range(200)), ordered=False)
    assert isinstance(m, ItemizedMap)
    assert sorted(m) == [i * i for i in range(200)]
    assert m[7] == 49


# -- errors at their position ----------------------------------------------------------------------


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize("chunksize", [1, None, 7], ids=["chunk1", "auto", "chunk7"])
@pytest.mark.parametrize("kind", ["list", "iterator"])
def test_an_error_surfaces_at_its_position_with_its_traceback(
    mapper: Mapper, chunksize: int | None, kind: str
) -> None:
    source: Iterable[int] = range(100) if kind == "list" else iter(range(100))
    it = iter(mapper(fail_at_37, source, chunksize=chunksize, num_workers=2))
    out, error = drain(it)
    assert out == [x * 3 for x in range(37)]
    assert type(error) is ValueError
    message = str(error)
    assert message.startswith("bad item 37 in process ")
    pid = int(message.rsplit(" ", 1)[1])
    if is_process(mapper):
        assert pid != os.getpid()  # raised in a worker, carried back with its traceback
    else:
        assert pid == os.getpid()
    frames = traceback.extract_tb(error.__traceback__)
    assert any(f.name == "fail_at_37" for f in frames)
    assert any("raise ValueError" in (f.line or "") for f in frames if f.name == "fail_at_37")
    assert_exhausted(it)


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_a_later_error_does_not_overtake_earlier_results(mapper: Mapper, ordered: bool) -> None:
    # Item 20 fails while item 3 is still being computed. With 24 workers the first dispatch
    # gives items 0..23 a worker each, so item 20 never waits in a queue behind item 3.
    with Beacon() as failed:

        def fn(x: int) -> int:
            if x == 3:
                failed.receive(1, timeout=BOUND)
            if x == 20:
                failed.send()
                raise InjectedFault("item 20")
            return x

        it = mapper(fn, range(30), num_workers=24, chunksize=1, buffer_size=64, ordered=ordered)
        out, error = drain(iter(it))
    assert isinstance(error, InjectedFault)
    assert str(error) == "item 20"
    if ordered:
        assert out == list(range(20))
    else:
        # Everything was in flight when item 20 failed: every other value comes out first.
        assert sorted(out) == [x for x in range(30) if x != 20]
        assert out.index(3) > 0  # completion order: item 3 came late


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize("chunksize", [1, 4, None], ids=["chunk1", "chunk4", "auto"])
def test_an_indexable_input_error_surfaces_at_its_position(
    mapper: Mapper, chunksize: int | None
) -> None:
    class Flaky:
        """A sequence (no slicing) whose item 10 cannot be read."""

        def __len__(self) -> int:
            return 20

        def __getitem__(self, i: int) -> int:
            if not isinstance(i, int):
                raise TypeError("Flaky takes integer indices only")
            if i == 10:
                raise InjectedFault("cannot read item 10")
            return i

    m = mapper(square, Flaky(), chunksize=chunksize)
    assert isinstance(m, ItemizedMap)
    it = iter(m)
    out, error = drain(it)
    assert out == [i * i for i in range(10)]
    assert isinstance(error, InjectedFault)
    assert str(error) == "cannot read item 10"
    assert_exhausted(it)
    assert m[11] == 121
    with pytest.raises(InjectedFault):
        m[10]


@pytest.mark.parametrize("mapper", MAPS)
def test_unordered_yields_every_computed_value_before_the_error(
    mapper: Mapper, calls: CallLog
) -> None:
    def fn(x: int) -> int:
        if x == 10:
            raise InjectedFault("item 10")
        calls.record(x)  # computed successfully
        return x

    it = iter(mapper(fn, range(200), num_workers=2, chunksize=1, ordered=False))
    out, error = drain(it)
    assert isinstance(error, InjectedFault)
    assert str(error) == "item 10"
    assert_exhausted(it)
    assert 10 not in out
    assert len(out) == len(set(out))
    computed = calls.values()
    assert sorted(out) == sorted(computed)  # nothing computed was dropped


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize("chunksize", [1, None], ids=["chunk1", "auto"])
def test_an_input_iterator_error_surfaces_at_its_position(
    mapper: Mapper, chunksize: int | None
) -> None:
    raised: list[BaseException] = []

    def source() -> Iterator[int]:
        yield from range(10)
        error = InjectedFault("the input broke at 10")
        raised.append(error)
        raise error

    it = mapper(square, source(), chunksize=chunksize)
    out, error = drain(it)
    assert out == [i * i for i in range(10)]
    assert raised and error is raised[0]
    assert any(f.name == "source" for f in traceback.extract_tb(error.__traceback__))
    assert_exhausted(it)


@pytest.mark.parametrize("chunksize", [1, None, 4], ids=["chunk1", "auto", "chunk4"])
def test_unpicklable_items_of_an_iterator_fail_at_their_position(chunksize: int | None) -> None:
    items: list[object] = [0, 1, 2, threading.Lock(), 4, 5, 6]
    it = process_map(type, iter(items), chunksize=chunksize)
    out, error = drain(it)
    assert out == [int, int, int]
    assert isinstance(error, TypeError)
    assert "pickle" in str(error)
    notes = getattr(error, "__notes__", [])
    assert any("item 3" in n and "indexable" in n for n in notes), notes
    assert_exhausted(it)


@pytest.mark.parametrize("chunksize", [1, None, 4], ids=["chunk1", "auto", "chunk4"])
def test_unpicklable_results_fail_at_their_position(chunksize: int | None) -> None:
    def fn(x: int) -> object:
        return threading.Lock() if x == 6 else x

    it = iter(process_map(fn, range(20), chunksize=chunksize))
    out, error = drain(it)
    assert out == list(range(6))
    assert isinstance(error, ResultNotPicklable)
    assert isinstance(error, TypeError)
    assert "lock" in str(error)
    assert_exhausted(it)


@pytest.mark.parametrize("chunksize", [1, 5, None], ids=["chunk1", "chunk5", "auto"])
def test_a_result_the_parent_cannot_unpickle_fails_at_its_position(chunksize: int | None) -> None:
    def fn(x: int) -> object:
        return ErrorAtUnpickle("item 7 will not load") if x == 7 else x

    it = iter(process_map(fn, range(20), chunksize=chunksize, num_workers=2))
    out, error = drain(it)
    assert isinstance(error, RemoteError)
    assert "item 7 will not load" in str(error)
    assert out == list(range(7))  # the good values computed before it are not lost
    assert_exhausted(it)


def test_indexable_inputs_are_not_pickled() -> None:
    locks = [threading.Lock() for _ in range(12)]
    locks[4].acquire()
    try:
        m = process_map(lambda lock: lock.locked(), locks, chunksize=3)
        assert [x for x in m] == [i == 4 for i in range(12)]
    finally:
        locks[4].release()


SENTINELS: list[object] = [
    None,
    "STOP",
    "__end__",
    "<object object at 0x7f0000001234>",
    "None",
    "",
    StopIteration("done"),
    StopIteration,
    GeneratorExit(),
    Ellipsis,
    NotImplemented,
    0,
    False,
    (),
    b"",
    [None],
]


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize("kind", ["list", "iterator"])
def test_sentinel_like_values_pass_through(mapper: Mapper, kind: str) -> None:
    source: Iterable[object] = SENTINELS if kind == "list" else iter(SENTINELS)
    out = list(mapper(identity, source, chunksize=1))
    assert len(out) == len(SENTINELS)
    for got, want in zip(out, SENTINELS, strict=True):
        assert type(got) is type(want)
        if isinstance(want, BaseException):
            assert got.args == want.args  # type: ignore[attr-defined]
        elif want is None or want is Ellipsis or want is NotImplemented or want is StopIteration:
            assert got is want
        else:
            assert got == want


# -- StopIteration from user code is an error, never an end ---------------------------------------


def stop_at_5(x: int) -> int:
    if x == 5:
        raise StopIteration("from item 5")
    return x


def assert_stop_error(error: BaseException | None, who: str) -> None:
    assert type(error) is RuntimeError
    assert str(error).startswith(f"{who} raised StopIteration, which is an error here")
    assert type(error.__cause__) is StopIteration
    assert str(error.__cause__) == "from item 5"
    frames = traceback.extract_tb(error.__cause__.__traceback__)
    assert any("raise StopIteration" in (f.line or "") for f in frames)


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize("chunksize", [1, 4, None], ids=["chunk1", "chunk4", "auto"])
@pytest.mark.parametrize("kind", ["indexable", "iterator"])
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_a_function_raising_stop_iteration_fails_at_its_position(
    mapper: Mapper, chunksize: int | None, kind: str, ordered: bool
) -> None:
    source: Iterable[int] = range(12) if kind == "indexable" else iter(range(12))
    it = iter(mapper(stop_at_5, source, chunksize=chunksize, num_workers=2, ordered=ordered))
    out, error = drain(it)
    assert_stop_error(error, "the mapped function stop_at_5()")
    if ordered:
        assert out == [0, 1, 2, 3, 4]
    else:  # every item dispatched before item 5 (0..4 at least) comes out before the error
        assert set(range(5)) <= set(out) <= set(range(12)) - {5}
        assert len(out) == len(set(out))
    assert_exhausted(it)


@pytest.mark.parametrize("mapper", MAPS)
def test_stop_iteration_from_a_function_of_several_inputs(mapper: Mapper) -> None:
    def add_until_5(x: int, y: int) -> int:
        return stop_at_5(x) + y

    out, error = drain(iter(mapper(add_until_5, range(12), iter(range(12)), chunksize=3)))
    assert out == [0, 2, 4, 6, 8]
    assert_stop_error(error, "the mapped function " + add_until_5.__qualname__ + "()")


def test_stop_iteration_on_an_executor_engine() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        for source in (range(12), iter(range(12))):
            it = process_map(stop_at_5, source, executor=pool, chunksize=2)
            out, error = drain(iter(it))
            assert out == [0, 1, 2, 3, 4]
            assert_stop_error(error, "the mapped function stop_at_5()")


def test_an_engine_failing_a_chunk_with_stop_iteration_is_an_error() -> None:
    from concurrent.futures import Executor, Future

    class Refusing(Executor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            future: Future[Any] = Future()
            future.set_exception(StopIteration("from item 5"))
            return future

    out, error = drain(iter(process_map(square, range(3), executor=Refusing())))
    assert out == []
    assert type(error) is RuntimeError
    assert str(error).startswith(
        "the engine computing a map chunk raised StopIteration, which is an error here"
    )
    assert type(error.__cause__) is StopIteration


@pytest.mark.parametrize("mapper", MAPS)
def test_indexing_an_itemized_map_raising_stop_iteration(mapper: Mapper) -> None:
    m = mapper(stop_at_5, range(12))
    assert m[4] == 4
    with pytest.raises(RuntimeError) as caught:
        m[5]
    assert_stop_error(caught.value, "the mapped function")
    # So that a lazy map read through map() or a for loop never ends early:
    with pytest.raises(RuntimeError):
        list(map(m.__getitem__, range(12)))


@pytest.mark.parametrize("mapper", MAPS)
def test_an_input_ending_with_stop_iteration_is_its_end(mapper: Mapper) -> None:
    source = Pulled(range(7))  # its __next__ raises StopIteration after 7 items
    assert list(mapper(square, source, chunksize=3)) == [i * i for i in range(7)]


@pytest.mark.parametrize("mapper", MAPS)
def test_an_input_whose_iter_raises_stop_iteration(mapper: Mapper) -> None:
    class Broken:
        def __iter__(self) -> Iterator[int]:
            raise StopIteration("from item 5")

    with pytest.raises(RuntimeError, match=r"__iter__ of input 0 .* raised StopIteration"):
        mapper(square, Broken())


@pytest.mark.parametrize("mapper", MAPS)
def test_an_input_whose_slices_are_short_fails_instead_of_skipping(mapper: Mapper) -> None:
    class Liar(list[int]):
        def __len__(self) -> int:
            return super().__len__() + 1  # one more than it iterates

    class Short:
        """Ten items, whose slices claim the right length but hold one item fewer."""

        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int | slice) -> Any:
            if isinstance(i, slice):
                return Liar(list(range(10))[i][:-1])
            return i

    out, error = drain(iter(mapper(square, Short(), chunksize=4, num_workers=1)))
    assert isinstance(error, RuntimeError)
    assert "slices and its len() disagree" in str(error)
    assert out == [0, 1, 4]


# -- dead workers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, None], ids=["chunk1", "auto"])
def test_a_worker_that_kills_itself_fails_its_position(chunksize: int | None) -> None:
    def fn(x: int) -> int:
        if x == 500:
            kill_self()
        return x

    it = iter(process_map(fn, range(1000), chunksize=chunksize, num_workers=2))
    out, error = drain(it)
    assert isinstance(error, WorkerDied)
    assert error.signal == signal.SIGKILL
    assert error.exitcode == -signal.SIGKILL
    assert out == list(range(len(out)))
    if chunksize == 1:
        assert len(out) == 500
        assert "items 500..500" in str(error)
    else:  # the automatic chunk size decides where the dead worker's chunk starts
        span = re.search(r"items (\d+)\.\.(\d+)", str(error))
        assert span is not None, str(error)
        first, last = int(span[1]), int(span[2])
        assert first <= 500 <= last
        assert len(out) == first  # every result before the dead chunk, none after
    assert_exhausted(it)


def test_a_worker_killed_from_outside_fails_its_position(calls: CallLog) -> None:
    # A helper process kills the worker computing item 5 as soon as that item starts: the
    # consumer is blocked in next() meanwhile, as it would be in real use.
    with Beacon() as started, Gate() as gate:

        def fn(x: int) -> int:
            if x == 5:
                calls.record(os.getpid())
                started.send(b"%d\n" % os.getpid())
                gate.wait(timeout=PATIENCE)
            return x

        killer = subprocess.Popen(
            ["/bin/sh", "-c", 'read pid && kill -KILL "$pid"'], stdin=started.r
        )
        try:
            it = iter(process_map(fn, range(40), chunksize=1, num_workers=2))
            out, error = drain(it)
        finally:
            assert killer.wait(timeout=BOUND) == 0
    assert out == [0, 1, 2, 3, 4]
    assert isinstance(error, WorkerDied)
    assert [error.pid] == calls.values()
    assert error.signal == signal.SIGKILL
    assert "items 5..5" in str(error)
    assert_exhausted(it)


# -- early exit, close, garbage collection ---------------------------------------------------------


@pytest.mark.parametrize("mapper", MAPS)
def test_early_break_stops_the_workers_and_bounds_the_read_ahead(mapper: Mapper) -> None:
    source = Pulled(itertools.count())
    before = child_pids()
    taken = []
    workers: set[int] = set()
    for x in mapper(square, source, buffer_size=8, num_workers=2):
        taken.append(x)
        if len(taken) == 3:
            workers = child_pids() - before
            break
    assert taken == [0, 1, 4]
    assert 3 <= source.count <= 3 + 8  # racy: how far the pass had read ahead at the break
    if is_process(mapper):  # racy: the second worker is forked once there is work for it
        assert 1 <= len(workers) <= 2
    else:
        assert not workers
    assert wait_gone(workers)


@pytest.mark.parametrize("mapper", MAPS)
def test_close_and_with_block_end_a_pass(mapper: Mapper) -> None:
    before = child_pids()
    it = mapper(square, itertools.count(), num_workers=2)
    assert next(it) == 0
    workers = child_pids() - before
    it.close()
    assert_exhausted(it)
    it.close()  # idempotent
    assert wait_gone(workers)

    source = Pulled(itertools.count())
    with mapper(square, source, buffer_size=4) as it2:
        assert [next(it2) for _ in range(3)] == [0, 1, 4]
        workers = child_pids() - before
    pulled = source.count
    assert pulled <= 3 + 4  # racy: how far the pass had read ahead when the block ended
    assert_exhausted(it2)
    assert source.count == pulled  # nothing is read after the end
    assert wait_gone(workers)

    with iter(mapper(square, [1, 2, 3])) as it3:  # a pass over an ItemizedMap, too
        assert next(it3) == 1
    assert_exhausted(it3)


def test_dropping_an_unfinished_process_map_kills_its_busy_workers() -> None:
    with Gate() as gate:

        def fn(x: int) -> int:
            if x >= 2:
                gate.wait(timeout=PATIENCE)  # only a kill ends this worker early
            return x

        before = child_pids()
        it = process_map(fn, itertools.count(), num_workers=2, chunksize=1)
        assert [next(it), next(it)] == [0, 1]
        workers = child_pids() - before
        assert len(workers) == 2
        assert all(alive(p) for p in workers)
        del it
        gc.collect()
        assert wait_gone(workers)


def test_dropping_an_unfinished_thread_map_stops_pulling_and_its_threads_end() -> None:
    source = Pulled(itertools.count())
    threads0 = set(threading.enumerate())
    it = thread_map(square, source, num_workers=4, buffer_size=6)
    assert [next(it) for _ in range(3)] == [0, 1, 4]
    assert set(threading.enumerate()) - threads0
    pulled = source.count
    assert pulled <= 3 + 6  # racy: how far the pass had read ahead when it was dropped
    del it
    gc.collect()
    assert source.count == pulled
    # The worker threads end on their own; the leak check waits for them.


def test_a_process_map_that_is_never_iterated_forks_nothing() -> None:
    before = child_pids()
    it = process_map(square, itertools.count())
    m = process_map(square, range(1000))
    assert child_pids() == before
    del it, m
    gc.collect()


# -- an input that blocks --------------------------------------------------------------------------

READER = "inparallel-map-reader"


class Stalling:
    """Iterates as a generator: ``before`` items, then blocks until the test releases it.

    The events say where it is: ``reached`` (blocked), ``resumed`` (released), ``finished``
    (its ``finally`` ran: it ended, or was closed or dropped).
    """

    def __init__(self, before: int, after: int = 3, *, fail: bool = False) -> None:
        self.before, self.after, self.fail = before, after, fail
        self.reached = threading.Event()
        self.release = threading.Event()
        self.resumed = threading.Event()
        self.finished = threading.Event()
        self.timed_out = False

    def __iter__(self) -> Iterator[int]:
        try:
            yield from range(self.before)
            self.reached.set()
            if not self.release.wait(timeout=BOUND):
                self.timed_out = True
                raise TimeoutError("the test never released the input")
            self.resumed.set()
            if self.fail:
                raise InjectedFault("the input broke after a stall")
            yield from range(self.before, self.before + self.after)
        finally:
            self.finished.set()


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == READER and t.is_alive()]


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize("chunksize", [None, 1], ids=["auto", "chunk1"])
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_results_reach_the_consumer_while_the_input_blocks(
    mapper: Mapper, chunksize: int | None, ordered: bool
) -> None:
    source = Stalling(2)
    with mapper(square, source, chunksize=chunksize, num_workers=2, ordered=ordered) as it:
        first = [next(it), next(it)]
        # Both computed and delivered while the input is still inside next(): with a fast
        # function the automatic chunk is already thousands of items, and item 1 is the
        # start of one that cannot fill.
        assert not source.timed_out and not source.resumed.is_set()
        assert source.reached.wait(BOUND)
        source.release.set()
        rest = list(it)
    assert not source.timed_out
    if ordered:
        assert (first, rest) == ([0, 1], [4, 9, 16])
    else:
        assert sorted(first) == [0, 1] and sorted(rest) == [4, 9, 16]
    assert not readers()  # the pass is over: its reader thread was joined


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize("how", ["close", "with", "drop"])
def test_stopping_a_map_whose_input_blocks_neither_hangs_nor_leaks(
    mapper: Mapper, how: str
) -> None:
    source = Stalling(3)
    before = child_pids()
    it = mapper(square, source, chunksize=1, num_workers=2)
    assert [next(it) for _ in range(3)] == [0, 1, 4]
    assert source.reached.wait(BOUND)
    workers = child_pids() - before
    started = time.monotonic()
    if how == "close":
        it.close()
        assert_exhausted(it)
    elif how == "with":
        with it:
            pass
    else:
        del it
        gc.collect()
    # The reader inside the input cannot be stopped: the map does not wait for it (for more
    # than a moment), its workers are gone at once, and the input is not closed under it.
    assert time.monotonic() - started < PROMPT
    assert wait_gone(workers)
    assert not source.finished.is_set()
    source.release.set()
    # Once next() returns, the reader drops that item and ends, letting the generator go.
    assert source.finished.wait(BOUND)
    assert not source.timed_out
    for thread in readers():
        thread.join(BOUND)
    assert not readers()


@pytest.mark.parametrize("mapper", MAPS)
def test_an_input_error_after_a_stall_comes_after_every_earlier_result(mapper: Mapper) -> None:
    source = Stalling(4, fail=True)
    with mapper(square, source, num_workers=2) as it:
        assert [next(it) for _ in range(4)] == [0, 1, 4, 9]
        assert source.reached.wait(BOUND)
        source.release.set()
        with pytest.raises(InjectedFault, match="the input broke after a stall"):
            next(it)
        assert_exhausted(it)


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: iter(list(range(50))), id="list-iterator"),
        pytest.param(lambda: itertools.count(), id="count"),
        pytest.param(lambda: dict.fromkeys(range(50)), id="dict"),
        pytest.param(lambda: set(range(50)), id="set"),
    ],
)
def test_an_input_that_cannot_block_is_read_without_a_thread(
    mapper: Mapper, make: Callable[[], Iterable[int]]
) -> None:
    threads = []
    for value in itertools.islice(mapper(identity, make(), chunksize=1), 50):
        threads.extend(readers())
        assert isinstance(value, int)
    assert threads == []


@pytest.mark.parametrize("mapper", MAPS)
def test_a_generator_is_read_by_a_thread_that_ends_with_the_pass(mapper: Mapper) -> None:
    seen: set[threading.Thread] = set()
    out = []
    for value in mapper(square, (i for i in range(200)), chunksize=1, num_workers=2):
        seen.update(readers())
        out.append(value)
    assert out == [i * i for i in range(200)]
    assert seen  # it read ahead while we consumed
    assert not readers()


def test_no_fork_runs_beside_a_map_reader_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # CPython 3.12+ warns at a fork with another thread alive (and warnings are errors here);
    # this also checks 3.11, where nothing warns: every fork sees no reader thread.
    from inparallel import process_preload

    real_fork = os.fork
    beside: list[list[str]] = []

    def fork() -> int:
        alive_readers = [t.name for t in readers()]
        pid = real_fork()
        if pid and alive_readers:
            beside.append(alive_readers)
        return pid

    monkeypatch.setattr(os, "fork", fork)

    def outer(i: int) -> int:
        return i

    # Four workers forked while the reader reads ahead (the pool grows after its probe).
    out = list(process_map(outer, (i for i in range(40)), num_workers=4, chunksize=1))
    assert out == list(range(40))
    total = 0
    # The same, and in the loop body a forked preloader and a nested map over a generator.
    for i in process_map(outer, (i for i in range(40)), num_workers=4, chunksize=1):
        if i % 10 == 0:
            with process_preload(iter(range(3))) as pre:
                total += sum(pre)
            total += sum(process_map(square, (j for j in range(i, i + 30)), num_workers=2))
        total += i
    expected = sum(sum(j * j for j in range(i, i + 30)) + 3 for i in range(0, 40, 10))
    assert total == expected + sum(range(40))
    assert beside == []


@pytest.mark.parametrize("mapper", MAPS)
def test_a_chunk_size_that_grows_mid_pass_never_spins_the_consumer(mapper: Mapper) -> None:
    # The automatic chunk grows in steps as the first, slow items come back; items read ahead
    # for a smaller chunk must not look like a full chunk to the pass (it then spun for ever
    # between "there is news" and "not a full chunk", never collecting its results).
    def f(x: int) -> int:
        if x < 6:
            time.sleep(0.002)  # simulated work: the measured cost per item falls in steps
        return x

    def gen() -> Iterator[int]:
        yield from range(20_000)

    for _ in range(8):
        done: list[int] = []
        runner = threading.Thread(
            target=lambda: done.append(len(list(mapper(f, gen(), num_workers=2)))), daemon=True
        )
        runner.start()
        runner.join(BOUND)
        assert not runner.is_alive(), "the pass stopped making progress"
        assert done == [20_000]


FORK_WARNING = "may lead to deadlocks in the child"

FORK_HARNESS = """
from inparallel import process_map, process_parallel, process_preload

def gen(n):
    yield from range(n)

total = 0
for i in process_map(abs, gen(60), num_workers=4, chunksize=1):
    if i % 20 == 0:
        with process_preload(gen(3)) as pre:
            total += sum(pre)
        total += sum(process_map(abs, gen(30), num_workers=2))
out = []
process_parallel(lambda: gen(100), abs, out.append, workers=3, maxsize_jobs=2)
total += sum(process_map(abs, range(100), num_workers=3))
print("DONE", total, len(out), flush=True)
"""


@pytest.mark.skipif(sys.version_info < (3, 12), reason="the fork warning exists from 3.12")
def test_maps_over_generators_fork_without_the_multi_threaded_warning() -> None:
    # In a fresh interpreter with the warning shown (under the suite's "error" filter CPython
    # drops it: it cannot raise from a fork that already happened).
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-c", FORK_HARNESS],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert proc.returncode == 0, proc.stderr
    expected = 3 * (sum(range(3)) + sum(range(30))) + sum(range(100))
    assert proc.stdout.split() == ["DONE", str(expected), "100"]
    assert FORK_WARNING not in proc.stderr, proc.stderr[:2000]


# -- read-ahead bound ------------------------------------------------------------------------------


@pytest.mark.parametrize("mapper", MAPS)
@pytest.mark.parametrize("buffer_size", [1, 3, 8, 32])
@pytest.mark.parametrize("kind", ["indexable", "iterator"])
def test_read_ahead_is_bounded_by_buffer_size(
    mapper: Mapper, buffer_size: int, kind: str, calls: CallLog
) -> None:
    def fn(x: int) -> int:
        calls.record(x)
        return x

    source = Pulled(range(10_000))
    data: Iterable[int] = range(10_000) if kind == "indexable" else source
    before = child_pids()
    consumed = 0
    with iter(mapper(fn, data, buffer_size=buffer_size, num_workers=2)) as it:
        for consumed, value in enumerate(it, 1):
            assert value == consumed - 1
            if kind == "iterator":
                assert source.count - consumed <= buffer_size
            if consumed == 12:
                break
        workers = child_pids() - before
    assert wait_gone(workers)
    computed = calls.values()
    assert len(computed) == len(set(computed))
    assert set(range(12)) <= set(computed)
    assert len(computed) - consumed <= buffer_size
    if kind == "iterator":
        assert source.count - consumed <= buffer_size
        assert max(computed) < source.count


def test_an_infinite_input_maps_in_bounded_read_ahead() -> None:
    source = Pulled(itertools.count())
    worst = 0
    total = 0
    n = 50_000
    with process_map(square, source, buffer_size=512) as it:
        for consumed, value in enumerate(itertools.islice(it, n), 1):
            total += value
            worst = max(worst, source.count - consumed)
    assert total == sum(i * i for i in range(n))
    assert worst <= 512
    assert source.count <= n + 512


# -- many workers, empty and single inputs ---------------------------------------------------------


def test_thread_map_with_128_workers_runs_them_at_once() -> None:
    barrier = threading.Barrier(128, timeout=BOUND)

    def fn(x: int) -> tuple[int, int]:
        if x < 128:
            barrier.wait()  # breaks (and fails the test) unless 128 threads are in fn at once
        return x, threading.get_ident()

    out = list(thread_map(fn, range(1000), num_workers=128))
    assert [x for x, _ in out] == list(range(1000))
    assert len({t for _, t in out[:128]}) == 128
    assert len({t for _, t in out}) == 128  # the same 128 threads for the whole pass


def test_process_map_with_8_workers_runs_them_at_once() -> None:
    with Beacon() as arrived, Beacon() as released:

        def fn(x: int) -> int:
            if x < 8:
                arrived.send()
                if x == 0:  # item 0 lets the others go once all eight are in fn at once
                    try:
                        # Raises TimeoutError (failing the map) unless all eight arrive.
                        arrived.receive(8, timeout=BOUND)
                    finally:
                        released.send(b"g" * 7)  # never leave the others waiting
                else:
                    released.receive(1, timeout=2 * BOUND)
            return os.getpid()

        pids = list(process_map(fn, range(1000), num_workers=8))
    assert len(pids) == 1000
    assert len(set(pids[:8])) == 8
    assert len(set(pids)) == 8  # the same eight workers for the whole pass
    assert os.getpid() not in pids


@pytest.mark.parametrize("mapper", MAPS)
def test_empty_and_single_inputs(mapper: Mapper) -> None:
    before = child_pids()
    empty = mapper(square, [])
    assert isinstance(empty, ItemizedMap)
    assert len(empty) == 0
    assert list(empty) == []
    assert list(mapper(square, iter([]))) == []
    assert list(mapper(square, [], range(10))) == []
    assert child_pids() == before  # nothing to compute, nothing forked
    assert list(mapper(square, [7])) == [49]
    assert list(mapper(square, iter([7]))) == [49]
    assert list(mapper(add, (7,), [5, 6])) == [12]


# -- argument checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("mapper", MAPS)
def test_argument_errors(mapper: Mapper) -> None:
    with pytest.raises(TypeError):
        mapper(square)
    with pytest.raises(TypeError):
        mapper(42, [1, 2])
    with pytest.raises(TypeError):
        mapper("square", [1, 2])
    with pytest.raises(TypeError):
        mapper(square, 5)
    with pytest.raises(TypeError):
        mapper(square, [1, 2], None)
    for name in ("num_workers", "buffer_size", "chunksize"):
        for bad in (0, -1):
            with pytest.raises(ValueError, match=name):
                mapper(square, [1, 2], **{name: bad})
        for wrong in (2.0, "2", [2]):
            with pytest.raises(TypeError, match=name):
                mapper(square, [1, 2], **{name: wrong})
    before = child_pids()
    with pytest.raises(ValueError):
        mapper(square, itertools.count(), buffer_size=0)
    assert child_pids() == before


# -- fork semantics --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["indexable", "iterator"])
def test_process_map_runs_unpicklable_closures_and_worker_mutations_stay_there(
    kind: str,
) -> None:
    big = list(range(200_000))
    lock = threading.Lock()
    seen: list[int] = []
    lock.acquire()
    try:

        def fn(i: int) -> int:
            seen.append(i)
            big[i] = -1
            return big[i + 1] + lock.locked()

        with pytest.raises(Exception):  # a local closure over a lock: pickle cannot carry it
            pickle.dumps(fn)
        data: Iterable[int] = (
            range(0, 1000, 10) if kind == "indexable" else iter(range(0, 1000, 10))
        )
        out = list(process_map(fn, data, num_workers=2))
    finally:
        lock.release()
    assert out == [i + 1 + 1 for i in range(0, 1000, 10)]  # the child saw the held lock
    assert seen == []
    assert big == list(range(200_000))


# -- progress bars ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mapper", MAPS)
def test_progress_bar_is_written_to_stderr(
    mapper: Mapper, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list(mapper(square, range(20), progress=True)) == [i * i for i in range(20)]
    err = capsys.readouterr().err
    assert "20/20" in err
    assert "square" in err
    assert list(mapper(square, iter(range(13)), progress=True)) == [i * i for i in range(13)]
    err = capsys.readouterr().err
    assert "13it" in err


# -- ledger ----------------------------------------------------------------------------------------


# Seeds picked so that runs end by a planned failure (1, 3, 9), by the consumer stopping (4, 6)
# and by the input running out (470).
@pytest.mark.parametrize("seed", [1, 3, 4, 6, 9, 470])
def test_ledger_of_a_stopped_run(seed: int, calls: CallLog) -> None:
    n = 2000
    rng = random.Random(seed)
    plan = rng.choices(["ok", "raise", "slow"], weights=[94, 0.1, 5.9], k=n)
    stop = rng.randrange(1, n + 200)  # past n: the run may end by itself
    buffer_size = rng.choice([4, 16, 64])
    chunksize = rng.choice([1, 5, None])

    def fn(i: int) -> int:
        calls.record(i)
        if plan[i] == "raise":
            raise InjectedFault(f"planned failure of id {i}")
        if plan[i] == "slow":
            time.sleep(0.002)  # simulated work, not synchronisation
        return i

    source = Pulled(range(n))
    delivered: list[int] = []
    failed: list[int] = []
    worst = 0
    before = child_pids()
    with process_map(fn, source, buffer_size=buffer_size, chunksize=chunksize, num_workers=2) as it:
        try:
            for value in it:
                delivered.append(value)
                worst = max(worst, source.count - len(delivered))
                if len(delivered) == stop:
                    break
        except InjectedFault as error:
            failed.append(int(str(error).rsplit(" ", 1)[1]))
        workers = child_pids() - before
    assert wait_gone(workers)
    pulled = list(range(source.count))  # the source is read in order

    first_raise = plan.index("raise") if "raise" in plan else n
    assert delivered == list(range(len(delivered)))  # in order, unique, nothing skipped
    assert len(failed) <= 1
    if failed:
        assert failed == [first_raise] == [len(delivered)]
    else:
        assert len(delivered) == min(stop, n)
        assert first_raise >= len(delivered)
    discarded = set(pulled) - set(delivered) - set(failed)
    assert len(pulled) == len(delivered) + len(failed) + len(discarded)
    assert all(i > len(delivered) - 1 for i in discarded)
    assert len(pulled) - len(delivered) <= buffer_size
    assert worst <= buffer_size
    computed = calls.values()
    assert len(computed) == len(set(computed))  # nothing computed twice
    assert set(delivered) | set(failed) <= set(computed) <= set(pulled)


# -- big results -------------------------------------------------------------------------------


def test_big_results_arrive_whole_and_in_order() -> None:
    # Big bytes and numpy arrays travel as out-of-band parts read straight into place.
    size = 3 << 20

    def big(i: int) -> bytes:
        return bytes([i]) * size

    out = list(process_map(big, range(6), chunksize=2))
    assert [len(b) for b in out] == [size] * 6
    assert all(b == bytes([i]) * size for i, b in enumerate(out))
    assert all(type(b) is bytes for b in out)

    arrays = list(process_map(lambda i: np.full(size // 8, i, dtype=np.float64), iter(range(5))))
    assert [float(a[0]) for a in arrays] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(a.shape == (size // 8,) and float(a[-1]) == i for i, a in enumerate(arrays))
    arrays[0][:] = 9.0  # writable, and private to the parent
    assert float(arrays[1][0]) == 1.0


def test_mixed_small_and_big_values_in_one_chunk() -> None:
    def value(i: int) -> object:
        return {"i": i, "blob": b"x" * (2 << 20)} if i % 3 == 0 else (i, "small")

    out = list(process_map(value, range(9), chunksize=9))
    for i, v in enumerate(out):
        if i % 3 == 0:
            assert v == {"i": i, "blob": b"x" * (2 << 20)}
        else:
            assert v == (i, "small")


def test_small_numpy_results_are_writable() -> None:
    # Small messages are copied out of the stream; the copy must be writable, as a task's is.
    arrays = list(process_map(lambda i: np.full(4, i), range(3)))
    for i, a in enumerate(arrays):
        assert a.flags.writeable
        a += 1
        assert a.tolist() == [i + 1] * 4


def test_a_started_pass_inherited_by_a_fork_refuses_to_run_there() -> None:
    from inparallel import task

    it = iter(process_map(abs, range(-10, 0)))
    assert next(it) == 10

    @task
    def in_child() -> str:
        try:
            list(it)
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "another process" in in_child().result(timeout=BOUND)
    assert list(it) == list(range(9, 0, -1))  # the parent's pass is untouched


def test_a_pass_not_yet_started_can_run_in_a_child() -> None:
    from inparallel import task

    it = process_map(abs, iter(range(-5, 0)))
    assert task(lambda: list(it))().result(timeout=BOUND) == [5, 4, 3, 2, 1]
    it.close()


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="needs the main thread"
)
@pytest.mark.parametrize("tool", [thread_map, process_map])
def test_ctrl_c_at_every_check_point_of_closing_a_map_leaves_nothing(
    tool: Callable[..., Any], sigint_default: None
) -> None:
    # Closing stops the workers (threads or processes) and the input's reader all at once: an
    # interrupt halfway left the rest running for good (a later close saw the pool closed).
    import _faults

    threads0 = set(threading.enumerate())
    for k in range(10_000):
        mapped = iter(tool(abs, (x for x in range(-200, 0)), num_workers=2))
        assert next(mapped) == 200
        tracer = _faults.InterruptAt(k)
        try:
            with tracer:
                mapped.close()  # type: ignore[attr-defined]
        except KeyboardInterrupt:
            assert tracer.fired
        else:
            assert not tracer.fired, f"the interrupt at check point {k} was lost"
        del mapped
        gc.collect()
        assert _faults.wait_until(lambda: not _faults.child_pids(), BOUND), f"a worker at {k}"
        assert _faults.wait_until(lambda: set(threading.enumerate()) <= threads0, BOUND), (
            f"a thread at {k}: {set(threading.enumerate()) - threads0}"
        )
        if not tracer.fired:
            break  # past the last check point of close()
    else:
        raise AssertionError("close() never ended its check points")
