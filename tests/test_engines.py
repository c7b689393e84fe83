"""The core behaviours on every engine: the fork engine, and a real Dask cluster (LocalCluster).

Each test takes the ``engine`` fixture (conftest): first a `ForkExecutor`, then the session's
`DaskExecutor`. Calls that must wait for the test use a file gate in ``tmp_path``: a cluster
worker shares no memory, pipe or lock with the test, but it sees the same file system.

Every result is awaited with a timeout, and a whole test (maps and pipelines take none) fails
after `PATIENCE` + `BOUND` seconds: a call whose result never comes fails its test with a
message, well before pytest-timeout, and the session's teardown is bounded too (conftest).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import pathlib
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

import _faults
import pytest
from _timing import BOUND, PATIENCE, PROMPT

import inparallel
from inparallel import (
    RemoteError,
    StreamExecutor,
    aio,
    process_map,
    process_parallel,
    task,
    waitfor,
)


@pytest.fixture(autouse=True)
def bounded(no_leaks: None) -> Iterator[None]:
    """Fail a test still running after `PATIENCE` + `BOUND` seconds (after the leak check's
    setup, which may start the session's cluster)."""
    with _faults.deadline(PATIENCE + BOUND, "the test"):
        yield


def echo(x: Any, key: Any = None, priority: Any = None, **rest: Any) -> tuple[Any, ...]:
    return (x, key, priority, rest)


def square(x: int) -> int:
    return x * x


class Oops(ValueError):
    """An error with an attribute, raised deep in a call."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


def _deep(x: int) -> int:
    raise Oops(f"bad item {x}", code=42)


def fails_deep(x: int) -> int:
    return _deep(x)


def fails_at_seven(x: int) -> int:
    if x == 7:
        raise KeyError(x)
    return x * 10


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("this exception refuses to pickle")


def raise_unpicklable() -> None:
    raise Unpicklable("custom")


def wait_for_file(path: str, mark: str | None = None) -> str:
    """Block (in the worker) until ``path`` exists; first create ``mark`` if given."""
    if mark is not None:
        pathlib.Path(mark).touch()
    deadline = time.monotonic() + PATIENCE
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)  # a cross-process gate on a cluster: nothing shared to block on
    return path


def wait_until(check: Any, timeout: float = PATIENCE) -> None:
    """Wait for a worker's mark in the file system (polled: nothing shared to block on)."""
    assert _faults.wait_until(check, timeout), "condition not met in time"


# -- futures ---------------------------------------------------------------------------------


def test_submit_returns_standard_futures_that_resolve(engine: Executor) -> None:
    futures = [engine.submit(square, i) for i in range(10)]
    assert all(isinstance(f, cf.Future) for f in futures)
    _, not_done = cf.wait(futures, timeout=PATIENCE)
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=PATIENCE)) == [
        i * i for i in range(10)
    ]
    assert [f.result() for f in futures] == [i * i for i in range(10)]


def test_keyword_arguments_named_like_engine_options_reach_the_function(engine: Executor) -> None:
    future = engine.submit(echo, 1, key="mine", priority=5, workers="w", pure=True, retries=9)
    assert future.result(PATIENCE) == (
        1,
        "mine",
        5,
        {"workers": "w", "pure": True, "retries": 9},
    )


def test_identical_calls_all_run(engine: Executor) -> None:
    futures = [engine.submit(time.perf_counter_ns) for _ in range(4)]
    assert len({f.result(PATIENCE) for f in futures}) == 4


def test_closures_and_lambdas_run(engine: Executor) -> None:
    offset = 100
    assert engine.submit(lambda x: x + offset, 1).result(PATIENCE) == 101


def test_an_exception_keeps_its_type_attributes_and_traceback(engine: Executor) -> None:
    future = engine.submit(fails_deep, 3)
    with pytest.raises(Oops) as info:
        future.result(PATIENCE)
    assert info.value.code == 42
    assert str(info.value.args[0]) == "bad item 3"
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-2:] == ["fails_deep", "_deep"]


def test_an_exception_that_cannot_pickle_arrives_as_remote_error(engine: Executor) -> None:
    with pytest.raises(RemoteError) as info:
        engine.submit(raise_unpicklable).result(PATIENCE)
    assert "Unpicklable" in str(info.value)
    assert "raise_unpicklable" in str(info.value)


def test_waitfor_throttles_engine_futures(engine: Executor) -> None:
    in_flight: list[cf.Future[int]] = []
    items = iter(range(12))
    seen = []
    most = 0
    for future in waitfor(in_flight, 3):
        if future is None:
            item = next(items, None)
            if item is not None:
                in_flight.append(engine.submit(square, item))
            most = max(most, len(in_flight))
        else:
            seen.append(future.result())
    assert sorted(seen) == [i * i for i in range(12)]
    assert most == 3


def test_a_queued_call_cancels_and_never_runs(engine: Executor, tmp_path: pathlib.Path) -> None:
    gate = tmp_path / "go"
    ran = tmp_path / "queued-ran"
    with StreamExecutor(1, executor=engine) as executor:
        running = executor.submit(wait_for_file, str(gate), str(tmp_path / "started"))
        try:
            wait_until((tmp_path / "started").exists)
            queued = executor.submit(wait_for_file, str(gate), str(ran))
            assert queued.cancel()
            done, _ = cf.wait([queued], timeout=PROMPT)  # a cancel is seen at once
            assert queued in done
        finally:
            gate.touch()
        assert running.result(PATIENCE) == str(gate)
    assert queued.cancelled()
    assert not ran.exists()


# -- the tools above submit ------------------------------------------------------------------


def test_process_map_orders_results_and_places_an_error(engine: Executor) -> None:
    assert list(process_map(square, range(50), executor=engine)) == [i * i for i in range(50)]
    mapped = iter(process_map(fails_at_seven, list(range(20)), executor=engine))
    got = []
    with pytest.raises(KeyError) as info:
        for value in mapped:
            got.append(value)
    assert got == [i * 10 for i in range(7)]
    assert info.value.args == (7,)


def test_process_map_unordered_yields_every_result(engine: Executor) -> None:
    mapped = process_map(square, range(40), executor=engine, ordered=False)
    assert sorted(mapped) == [i * i for i in range(40)]


def test_process_map_over_an_infinite_generator_stays_bounded(engine: Executor) -> None:
    pulled = itertools.count()

    def numbers() -> Any:
        for i in itertools.count():
            next(pulled)
            yield i

    with process_map(square, numbers(), buffer_size=16, executor=engine) as mapped:
        first = list(itertools.islice(mapped, 50))
    assert first == [i * i for i in range(50)]
    assert next(pulled) <= 50 + 16


def test_stream_executor_map_over_an_infinite_generator_stays_bounded(engine: Executor) -> None:
    pulled = itertools.count()

    def numbers() -> Any:
        for i in itertools.count():
            next(pulled)
            yield i

    with StreamExecutor(2, executor=engine) as executor:
        results = executor.map(square, numbers(), buffer_size=8)
        first = list(itertools.islice(results, 30))
        results.close()  # type: ignore[attr-defined]
    assert first == [i * i for i in range(30)]
    assert next(pulled) <= 30 + 8 + 1


def test_pipeline_runs_on_the_engine_in_order(engine: Executor) -> None:
    consumed: list[int] = []
    process_parallel(range(60), square, consumed.append, workers=2, executor=engine)
    assert consumed == [i * i for i in range(60)]


def test_pipeline_error_is_raised_in_the_caller(engine: Executor) -> None:
    consumed: list[int] = []
    with pytest.raises(KeyError):
        process_parallel(range(20), fails_at_seven, consumed.append, executor=engine)
    assert consumed == [i * 10 for i in range(7)]


def test_use_selects_the_engine_for_every_tool(engine: Executor) -> None:
    with inparallel.use(engine) as active:
        assert active is engine
        assert inparallel.current_executor() is engine
        assert list(process_map(square, range(10))) == [i * i for i in range(10)]
        with StreamExecutor(2) as executor:
            assert list(executor.map(square, range(10))) == [i * i for i in range(10)]
    assert type(inparallel.current_executor()).__name__ == "ForkExecutor"


def test_aio_parallel_map_runs_on_the_engine(engine: Executor) -> None:
    import asyncio

    async def main() -> list[int]:
        async with aio.parallel_map(square, range(12), concurrency=3, executor=engine) as out:
            return [value async for value in out]

    assert asyncio.run(main()) == [i * i for i in range(12)]


@task(timeout=PATIENCE)
def tasked(x: int) -> int:
    return x + 1


def test_a_task_submitted_to_an_engine_returns_its_value(engine: Executor) -> None:
    assert engine.submit(tasked, 1).result(PATIENCE) == 2
    assert list(process_map(tasked, range(3), executor=engine)) == [1, 2, 3]


# -- the cluster only ------------------------------------------------------------------------


def test_dask_cancel_of_work_queued_on_the_cluster(
    dask_executor: Any, tmp_path: pathlib.Path
) -> None:
    gate = tmp_path / "go"
    slots = dask_executor.worker_slots()
    busy = [
        dask_executor.submit(wait_for_file, str(gate), str(tmp_path / f"busy{i}"))
        for i in range(slots)
    ]
    queued_count = 3 * slots
    try:
        wait_until(lambda: all((tmp_path / f"busy{i}").exists() for i in range(slots)))
        queued = [
            dask_executor.submit(wait_for_file, str(gate), str(tmp_path / f"queued{i}"))
            for i in range(queued_count)
        ]
        assert all(future.cancel() for future in queued)
        done, _ = cf.wait(queued, timeout=PROMPT)  # a cancel is seen at once
        assert done == set(queued)
        with pytest.raises(cf.CancelledError):
            queued[0].result(0)
    finally:
        gate.touch()
    assert [f.result(PATIENCE) for f in busy] == [str(gate)] * slots
    # The futures are cancelled and deliver nothing. On the cluster the cancellation is best
    # effort: dask may already have handed a queued call to a worker, where it still runs
    # (seen: 0 to 4 of these 6), so which ones ran is not asserted.
    assert all(future.cancelled() for future in queued)


def test_dask_shared_value_reaches_calls_and_closures(dask_executor: Any) -> None:
    table = dask_executor.share({"a": 1, "b": 2})
    assert "Shared dict" in repr(table)
    assert dask_executor.submit(lambda k: table[k], "b").result(PATIENCE) == 2
    assert dask_executor.submit(dict.get, table, "a").result(PATIENCE) == 1
    mapped = process_map(lambda k: table[k], ["a", "b", "a"], executor=dask_executor)
    assert list(mapped) == [1, 2, 1]


def test_dask_unpicklable_argument_fails_at_submit(dask_executor: Any) -> None:
    with pytest.raises(TypeError, match="pickle"):
        dask_executor.submit(echo, threading.Lock())


def test_dask_worker_slots_count_the_cluster_threads(dask_executor: Any) -> None:
    assert dask_executor.worker_slots() == 2
    assert inparallel.concurrency(dask_executor) == 4


def make_lock() -> Any:
    return threading.Lock()


def test_a_result_that_cannot_pickle_fails_its_future(engine: Executor) -> None:
    future = engine.submit(make_lock)
    with pytest.raises(TypeError):  # ResultNotPicklable on fork: also a TypeError
        future.result(PATIENCE)
    assert engine.submit(square, 3).result(PATIENCE) == 9  # and the engine goes on


def test_dask_client_is_wrapped_once(dask_client: Any) -> None:
    with inparallel.use(dask_client) as first, inparallel.use(dask_client) as second:
        assert first is second
        assert type(first).__name__ == "DaskExecutor"
        assert first.client is dask_client  # type: ignore[attr-defined]
        assert list(process_map(square, range(5), executor=dask_client)) == [0, 1, 4, 9, 16]


@task
def engine_in_child() -> str:
    return type(inparallel.current_executor()).__name__


@task
def nested_map_in_child() -> list[int]:
    return list(process_map(square, range(4)))


def test_a_forked_child_never_uses_its_parents_engine(engine: Executor) -> None:
    with inparallel.use(engine):
        assert engine_in_child().result(PATIENCE) == "ForkExecutor"
        assert nested_map_in_child().result(PATIENCE) == [0, 1, 4, 9]
