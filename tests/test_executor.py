"""Engine selection (`inparallel.use`, ``executor=``, ``INPARALLEL_EXECUTOR``) and engine edges.

The core behaviours of every engine (results, errors, cancel, maps, pipelines) are in
test_engines.py. Here: which engine a call picks and when, what is refused and how, the fork
engine as an executor, `concurrency` and `share`, and the dask backend without a cluster
(or without dask). A `ThreadPoolExecutor` stands in for a remote engine: a call that ran in
one of its threads is known by the thread's name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import os
import pickle
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import _faults
import pytest
from _timing import BOUND, PATIENCE

import inparallel
from inparallel import (
    ForkExecutor,
    StreamExecutor,
    TaskFuture,
    TaskTimeout,
    aio,
    process_map,
    process_parallel,
    task,
)
from inparallel import _executor as engines

PREFIX = "stand-in"  # the names of the stand-in engine's threads


@pytest.fixture(autouse=True)
def bounded(no_leaks: None) -> Iterator[None]:
    """Fail a test still running after `PATIENCE` + `BOUND` seconds: maps, pipelines and
    ``asyncio.run`` take no timeout of their own."""
    with _faults.deadline(PATIENCE + BOUND, "the test"):
        yield


@pytest.fixture(autouse=True)
def no_environment_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without INPARALLEL_EXECUTOR; an engine it made from one is closed."""
    monkeypatch.delenv(engines.ENV_VAR, raising=False)
    yield
    engines._close_environment()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix=PREFIX) as executor:
        yield executor


def where(_: object = None) -> tuple[int, str]:
    """Where a call ran: its process and its thread's name."""
    return os.getpid(), threading.current_thread().name


def in_pool(places: list[tuple[int, str]]) -> bool:
    return bool(places) and all(
        pid == os.getpid() and name.startswith(PREFIX) for pid, name in places
    )


def forked(places: list[tuple[int, str]]) -> bool:
    return bool(places) and all(pid != os.getpid() for pid, _ in places)


def is_fork(engine: object) -> bool:
    return isinstance(engine, ForkExecutor)


async def collect(stream: Any) -> list[Any]:
    async with stream as out:
        return [value async for value in out]


class StubEngine(Executor):
    """What a stubbed ``dask:`` spec opens: it records its address and its shutdown."""

    def __init__(self, address: str, made: list[StubEngine]) -> None:
        self.address = address
        self.shutdowns: list[tuple[bool, bool]] = []
        made.append(self)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.shutdowns.append((wait, cancel_futures))


@pytest.fixture
def stub_dask(monkeypatch: pytest.MonkeyPatch) -> list[StubEngine]:
    """``dask:ADDRESS`` specs open a `StubEngine` instead of connecting to anything."""
    import inparallel.backends.dask as backend

    made: list[StubEngine] = []
    monkeypatch.setattr(backend, "from_address", lambda address: StubEngine(address, made))
    return made


# -- use() ----------------------------------------------------------------------------------


def test_use_runs_process_map_in_the_given_pool(pool: ThreadPoolExecutor) -> None:
    with inparallel.use(pool) as active:
        assert active is pool
        assert inparallel.current_executor() is pool
        places = list(process_map(where, range(8)))
    assert in_pool(places)
    assert is_fork(inparallel.current_executor())
    assert forked(list(process_map(where, range(2))))  # and fork again after the block


def test_use_blocks_nest_and_restore_the_outer_engine(pool: ThreadPoolExecutor) -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="inner") as inner, inparallel.use(pool):
        with inparallel.use(inner):
            assert inparallel.current_executor() is inner
            assert [name for _, name in process_map(where, range(3))] == ["inner_0"] * 3
        assert inparallel.current_executor() is pool
        assert in_pool(list(process_map(where, range(3))))
    assert is_fork(inparallel.current_executor())


@pytest.mark.parametrize("spec", [None, "fork", " fork ", ""])
def test_use_none_or_fork_inside_a_pool_block_selects_fork(
    pool: ThreadPoolExecutor, spec: str | None
) -> None:
    with inparallel.use(pool):
        with inparallel.use(spec) as active:
            assert is_fork(active)
            assert inparallel.current_executor() is active
            assert forked(list(process_map(where, range(3))))
        assert inparallel.current_executor() is pool


def test_use_accepts_a_duck_typed_executor() -> None:
    class Inline:
        def __init__(self) -> None:
            self.calls = 0

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            self.calls += 1
            future: Future[Any] = Future()
            future.set_result(fn(*args, **kwargs))
            return future

    engine = Inline()
    with inparallel.use(engine) as active:
        assert active is engine
        assert [pid for pid, _ in process_map(where, range(4))] == [os.getpid()] * 4
    assert engine.calls >= 1


def test_an_active_use_cannot_be_entered_twice(pool: ThreadPoolExecutor) -> None:
    block = inparallel.use(pool)
    with block:
        with pytest.raises(RuntimeError, match="already active"):
            block.__enter__()
        assert inparallel.current_executor() is pool  # the failed entry changed nothing
    assert is_fork(inparallel.current_executor())


def test_use_does_not_reach_a_plain_thread(pool: ThreadPoolExecutor) -> None:
    seen: list[Executor] = []
    with inparallel.use(pool):
        thread = threading.Thread(target=lambda: seen.append(inparallel.current_executor()))
        thread.start()
        thread.join(BOUND)
        # A thread run in a copy of the context sees the block's engine.
        copied = threading.Thread(
            target=contextvars.copy_context().run,
            args=(lambda: seen.append(inparallel.current_executor()),),
        )
        copied.start()
        copied.join(BOUND)
    assert len(seen) == 2
    assert is_fork(seen[0])
    assert seen[1] is pool


def test_an_asyncio_task_keeps_the_engine_of_the_block_it_was_created_in(
    pool: ThreadPoolExecutor,
) -> None:
    async def engine_now() -> Executor:
        return inparallel.current_executor()

    async def main() -> tuple[Executor, Executor, Executor]:
        with inparallel.use(pool):
            inside = asyncio.create_task(engine_now())
        after = asyncio.create_task(engine_now())
        # Both run only now, after the block ended: each has its creation's context.
        return await inside, await after, inparallel.current_executor()

    inside, after, here = asyncio.run(main())
    assert inside is pool
    assert is_fork(after)
    assert is_fork(here)


def test_asyncio_run_inside_a_block_sees_the_engine(pool: ThreadPoolExecutor) -> None:
    async def engine_now() -> Executor:
        return await asyncio.create_task(asyncio.sleep(0, inparallel.current_executor()))

    with inparallel.use(pool):
        assert asyncio.run(engine_now()) is pool


def test_stream_map_submits_to_the_block_engine_from_its_feeder_thread(
    pool: ThreadPoolExecutor,
) -> None:
    with StreamExecutor(2) as executor:  # made outside the block: it binds no engine
        with inparallel.use(pool):
            places = list(executor.map(where, range(6)))
            chunked = list(executor.map(where, range(6), chunksize=3))
        assert in_pool(places)
        assert in_pool(chunked)
        assert forked(list(executor.map(where, range(2))))


def test_stream_submit_inside_a_block_runs_in_the_pool(pool: ThreadPoolExecutor) -> None:
    with StreamExecutor(2) as executor:
        with inparallel.use(pool):
            inside = executor.submit(where)
        outside = executor.submit(where)
        assert in_pool([inside.result(PATIENCE)])
        assert forked([outside.result(PATIENCE)])


def test_aio_parallel_map_inside_a_block_runs_in_the_pool(pool: ThreadPoolExecutor) -> None:
    with inparallel.use(pool):
        places = asyncio.run(collect(aio.parallel_map(where, range(6), concurrency=2)))
    assert in_pool(places)
    assert len(places) == 6


def test_process_map_picks_the_engine_when_a_pass_starts(pool: ThreadPoolExecutor) -> None:
    mapped = process_map(where, range(4))  # an ItemizedMap: each iter() is a fresh pass
    with inparallel.use(pool):
        assert in_pool(list(mapped))
    assert forked(list(mapped))


# -- executor= ------------------------------------------------------------------------------


def test_process_map_executor_argument(pool: ThreadPoolExecutor) -> None:
    assert in_pool(list(process_map(where, range(8), executor=pool)))
    assert in_pool(list(process_map(where, iter(range(8)), executor=pool)))  # an iterator too
    assert in_pool(list(process_map(lambda a, b: where(), range(3), range(3), executor=pool)))


def test_executor_argument_beats_the_use_block(pool: ThreadPoolExecutor) -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="other") as other, inparallel.use(other):
        assert in_pool(list(process_map(where, range(4), executor=pool)))
        assert forked(list(process_map(where, range(2), executor="fork")))
        assert forked(list(process_map(where, range(2), executor=ForkExecutor())))


def test_stream_executor_argument(pool: ThreadPoolExecutor) -> None:
    with StreamExecutor(executor=pool) as executor:
        assert "x2" in repr(executor)  # max_workers defaults to the pool's worker count
        assert in_pool([executor.submit(where).result(PATIENCE)])
        assert in_pool(list(executor.map(where, range(6))))


def test_stream_executor_argument_is_bound_at_construction(pool: ThreadPoolExecutor) -> None:
    with StreamExecutor(2, executor=pool) as executor, inparallel.use("fork"):
        assert in_pool([executor.submit(where).result(PATIENCE)])


def test_stream_executor_argument_fork_beats_the_use_block(pool: ThreadPoolExecutor) -> None:
    for explicit in ("fork", ForkExecutor()):
        with StreamExecutor(2, executor=explicit) as executor, inparallel.use(pool):
            assert forked([executor.submit(where).result(PATIENCE)])
            assert forked(list(executor.map(where, range(3))))


def test_stream_executor_argument_needs_process_mode(pool: ThreadPoolExecutor) -> None:
    with pytest.raises(ValueError, match="mode='process'"):
        StreamExecutor(2, mode="thread", executor=pool)


def test_process_parallel_executor_argument(pool: ThreadPoolExecutor) -> None:
    places: list[tuple[int, str]] = []
    process_parallel(range(10), where, places.append, executor=pool)
    assert len(places) == 10
    assert in_pool(places)


def test_aio_parallel_map_executor_argument(pool: ThreadPoolExecutor) -> None:
    places = asyncio.run(collect(aio.parallel_map(where, range(6), concurrency=2, executor=pool)))
    assert len(places) == 6
    assert in_pool(places)


def _refusing_callers(spec: object) -> dict[str, Any]:
    return {
        "process_map": lambda: process_map(where, [1], executor=spec),
        "StreamExecutor": lambda: StreamExecutor(1, executor=spec),  # type: ignore[arg-type]
        "process_parallel": lambda: process_parallel([1], where, print, executor=spec),  # type: ignore[arg-type]
        "parallel_map": lambda: aio.parallel_map(where, [1], concurrency=1, executor=spec),  # type: ignore[arg-type]
        "concurrency": lambda: inparallel.concurrency(spec),
        "share": lambda: inparallel.share(1, executor=spec),
    }


CALLERS = sorted(_refusing_callers(None))


@pytest.mark.parametrize("caller", CALLERS)
def test_a_value_that_is_no_engine_is_refused_at_the_call(caller: str) -> None:
    with pytest.raises(TypeError, match=r"expected a concurrent\.futures\.Executor.*int 42"):
        _refusing_callers(42)[caller]()


@pytest.mark.parametrize("caller", CALLERS)
def test_an_engine_spec_string_is_refused_as_executor_argument(
    caller: str, stub_dask: list[StubEngine]
) -> None:
    with pytest.raises(TypeError, match=r"pass an executor object.*inparallel\.use\(\)"):
        _refusing_callers("dask:tcp://127.0.0.1:1")[caller]()


def test_a_refused_engine_spec_opens_nothing(stub_dask: list[StubEngine]) -> None:
    with pytest.raises(TypeError):
        process_map(where, [1], executor="dask:tcp://127.0.0.1:1")
    assert stub_dask == []


def test_use_opens_the_engine_a_spec_names_and_closes_it_at_the_end(
    stub_dask: list[StubEngine],
) -> None:
    block = inparallel.use("dask:tcp://127.0.0.1:1")
    assert stub_dask == []  # nothing is opened before the block starts
    with block as active:
        assert stub_dask == [active]
        assert active.address == "tcp://127.0.0.1:1"  # type: ignore[attr-defined]
        assert inparallel.current_executor() is active
        assert list(process_map(abs, [-1, -2])) == [1, 2]
        assert active.shutdowns == []  # type: ignore[attr-defined]
    assert active.shutdowns == [(False, True)]  # type: ignore[attr-defined]
    assert is_fork(inparallel.current_executor())


def test_use_does_not_shut_down_an_executor_passed_in(pool: ThreadPoolExecutor) -> None:
    with inparallel.use(pool):
        pass
    assert pool.submit(where).result(PATIENCE)[1].startswith(PREFIX)


def test_use_refuses_a_value_that_is_no_engine() -> None:
    with pytest.raises(TypeError, match=r"inparallel\.use\(\): expected .*Executor.*int 42"):
        inparallel.use(42)


@pytest.mark.parametrize("spec", ["nonsense:x", "ray:tcp://127.0.0.1:1"])
def test_use_refuses_an_unknown_scheme_at_once(spec: str) -> None:
    with pytest.raises(ValueError, match=r"unknown engine .*'dask:ADDRESS'"):
        inparallel.use(spec)


@pytest.mark.parametrize("spec", ["dask", "dask:", "tcp", " dask "])
def test_use_refuses_a_spec_without_an_address(spec: str) -> None:
    with pytest.raises(ValueError, match="names no engine"):
        inparallel.use(spec)


# -- INPARALLEL_EXECUTOR ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "fork", "  fork\n"])
def test_environment_default_is_fork(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is not None:
        monkeypatch.setenv(engines.ENV_VAR, value)
    assert inparallel.current_executor() is engines.FORK
    assert forked(list(process_map(where, range(2))))


@pytest.mark.parametrize("value", ["dask", "dask:", "nonsense"])
def test_environment_without_an_address_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(engines.ENV_VAR, value)
    with pytest.raises(ValueError, match=engines.ENV_VAR):
        inparallel.current_executor()
    with pytest.raises(ValueError, match=engines.ENV_VAR):
        process_map(where, [1])  # at the call, not when the map is iterated


def test_environment_unknown_scheme_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engines.ENV_VAR, "nonsense:x")
    with pytest.raises(ValueError, match="unknown engine 'nonsense'"):
        inparallel.current_executor()


def test_environment_unknown_scheme_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engines.ENV_VAR, "nonsense:x")
    with pytest.raises(ValueError, match=engines.ENV_VAR):
        inparallel.current_executor()


def test_environment_engine_is_used_cached_per_value_and_closed(
    monkeypatch: pytest.MonkeyPatch, stub_dask: list[StubEngine], pool: ThreadPoolExecutor
) -> None:
    monkeypatch.setenv(engines.ENV_VAR, "dask:tcp://127.0.0.1:1")
    first = inparallel.current_executor()
    assert isinstance(first, StubEngine)
    assert first.address == "tcp://127.0.0.1:1"
    assert inparallel.current_executor() is first  # opened once
    assert list(process_map(abs, [-3, -4])) == [3, 4]
    with inparallel.use(pool):
        assert inparallel.current_executor() is pool  # a use() block comes first
    with inparallel.use(None) as default:
        assert default is first  # use(None): the default engine, i.e. the environment's
    assert first.shutdowns == []  # use(None) does not own it
    monkeypatch.setenv(engines.ENV_VAR, "dask:tcp://127.0.0.1:2")
    second = inparallel.current_executor()
    assert second is not first
    assert len(stub_dask) == 2
    engines._close_environment()
    assert first.shutdowns == [(False, True)]
    assert second.shutdowns == [(False, True)]  # type: ignore[attr-defined]
    third = inparallel.current_executor()  # after closing, the next use opens a fresh one
    assert third is not second


# -- ForkExecutor ---------------------------------------------------------------------------


def sleep_long() -> None:
    time.sleep(PATIENCE)  # killed by the test long before


@task(timeout=0.3)
def overruns() -> None:
    time.sleep(PATIENCE)  # the task's timeout kills it long before


@task(timeout=PATIENCE)
def tasked(x: int) -> int:
    return x + 1


def test_fork_executor_submit_returns_a_running_task_future() -> None:
    future = ForkExecutor().submit(where)
    assert isinstance(future, TaskFuture)
    pid, _ = future.result(PATIENCE)
    assert pid == future.pid != os.getpid()


def test_fork_executor_cancel_kills_the_child() -> None:
    read_end, write_end = os.pipe()
    try:
        future = ForkExecutor().submit(sleep_long)  # the child inherits write_end
        os.close(write_end)
        write_end = -1
        assert future.running()
        assert future.cancel()
        assert future.cancelled()
        with pytest.raises(cf.CancelledError):
            future.result(PATIENCE)
        # The pipe reaches end of file once the only process holding its write end is dead.
        ready, _, _ = select.select([read_end], [], [], BOUND)
        assert ready, "the cancelled task's child is still alive"
        assert os.read(read_end, 1) == b""
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_fork_executor_keeps_a_tasks_options() -> None:
    future = ForkExecutor().submit(overruns)
    assert isinstance(future, TaskFuture)
    with pytest.raises(TaskTimeout):
        future.result(PATIENCE)
    assert ForkExecutor().submit(tasked, 1).result(PATIENCE) == 2  # a value, no future


def test_fork_executor_refuses_work_after_shutdown() -> None:
    executor = ForkExecutor()
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(where)
    assert engines.FORK.submit(abs, -1).result(PATIENCE) == 1  # the default is unharmed


def test_fork_executor_refuses_a_non_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        ForkExecutor().submit(42)  # type: ignore[arg-type]


def test_fork_executor_share_and_slots() -> None:
    value = {"big": list(range(10))}
    executor = ForkExecutor()
    assert executor.share(value) is value
    assert executor.worker_slots() == os.cpu_count()
    with executor:  # an Executor: the with block shuts it down
        pass
    with pytest.raises(RuntimeError):
        executor.submit(where)


# -- concurrency() and share() ----------------------------------------------------------------


def test_concurrency_of_fork_and_of_standard_pools() -> None:
    cpus = os.cpu_count()
    assert inparallel.concurrency() == cpus
    assert inparallel.concurrency("fork") == cpus
    assert inparallel.concurrency(ForkExecutor()) == cpus
    with ThreadPoolExecutor(max_workers=3) as three:
        assert inparallel.concurrency(three) == 3
        with inparallel.use(three):
            assert inparallel.concurrency() == 3


def test_share_on_fork_and_on_a_pool_is_the_value_itself(pool: ThreadPoolExecutor) -> None:
    value = [1, 2, 3]
    assert inparallel.share(value) is value
    assert inparallel.share(value, executor="fork") is value
    assert inparallel.share(value, executor=pool) is value
    with inparallel.use(pool):
        assert inparallel.share(value) is value


# -- portable(): a @task on another engine ----------------------------------------------------


def test_portable_leaves_a_plain_function_alone() -> None:
    assert engines.portable(where) is where
    assert engines.portable(tasked)(1) == 2


def test_a_task_on_a_pool_returns_its_value_not_a_future(pool: ThreadPoolExecutor) -> None:
    assert list(process_map(tasked, range(4), executor=pool)) == [1, 2, 3, 4]
    with StreamExecutor(executor=pool) as executor:
        assert executor.submit(tasked, 1).result(PATIENCE) == 2
        assert list(executor.map(tasked, range(3))) == [1, 2, 3]
    got = asyncio.run(collect(aio.parallel_map(tasked, range(3), concurrency=2, executor=pool)))
    assert got == [1, 2, 3]


def test_a_task_on_a_pool_keeps_its_timeout(pool: ThreadPoolExecutor) -> None:
    with StreamExecutor(executor=pool) as executor, pytest.raises(TaskTimeout):
        executor.submit(overruns).result(PATIENCE)


# -- without dask -----------------------------------------------------------------------------

WITHOUT_DASK = """
import os, sys
sys.modules["distributed"] = None  # import distributed now raises ImportError
sys.modules["dask"] = None
import inparallel
from inparallel.backends.dask import DaskExecutor

def message(call):
    try:
        call()
    except ImportError as exc:
        return str(exc)
    return "no ImportError"

print(message(lambda: DaskExecutor("tcp://127.0.0.1:1")))
block = inparallel.use("dask:tcp://127.0.0.1:1")  # the spec is valid: nothing imported yet
print(message(block.__enter__))
os.environ["INPARALLEL_EXECUTOR"] = "dask:tcp://127.0.0.1:1"
print(message(inparallel.current_executor))
"""


def test_without_dask_the_dask_engine_says_which_extra_to_install() -> None:
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_DASK], capture_output=True, text=True, timeout=PATIENCE
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout
    for line in lines:
        assert "inparallel[dask]" in line, line


# -- on the session's cluster -----------------------------------------------------------------


def test_concurrency_of_the_cluster(dask_client: Any, dask_executor: Any) -> None:
    assert inparallel.concurrency(dask_client) == 4  # 2 workers x 1 thread, x 2
    with inparallel.use(dask_executor):
        assert inparallel.concurrency() == 4
        with StreamExecutor() as executor:
            assert "x4" in repr(executor)


def test_share_under_use_reaches_a_process_map_closure(dask_executor: Any) -> None:
    with inparallel.use(dask_executor):
        table = inparallel.share(SimpleNamespace(rows={"p": 1, "q": 2}))
        assert type(table).__name__ == "Shared"
        got = list(process_map(lambda key: table.rows[key], ["q", "p", "q"]))
    assert got == [2, 1, 2]


def test_a_shared_value_belongs_to_its_executor(dask_client: Any, dask_executor: Any) -> None:
    from inparallel.backends.dask import DaskExecutor

    table = dask_executor.share(SimpleNamespace(size=7))
    other = DaskExecutor(dask_client)
    try:
        with pytest.raises(TypeError, match="shared by another executor"):
            other.submit(lambda: table.size)
        with pytest.raises(TypeError, match="shared by another executor"):
            list(process_map(lambda _: table.size, [1], executor=other))
    finally:
        other.shutdown(wait=True)
    assert dask_executor.submit(lambda: table.size).result(PATIENCE) == 7


def test_a_shared_value_does_not_pickle(dask_executor: Any) -> None:
    table = dask_executor.share(SimpleNamespace(size=7))
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(table)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps({"nested": [table]})


def test_two_shared_dicts_with_the_same_keys_stay_apart(dask_executor: Any) -> None:
    key = f"k-{uuid.uuid4().hex}"  # a key no other test shares
    first = dask_executor.share({key: 1})
    second = dask_executor.share({key: 2})
    assert dask_executor.submit(lambda: first[key]).result(PATIENCE) == 1
    assert dask_executor.submit(lambda: second[key]).result(PATIENCE) == 2


def _keys_on_cluster(client: Any) -> int:
    return sum(len(keys) for keys in client.has_what().values())


def test_a_shared_list_is_one_value_on_the_cluster(dask_client: Any, dask_executor: Any) -> None:
    before = _keys_on_cluster(dask_client)
    rows = dask_executor.share(list(range(500)))
    assert dask_executor.submit(lambda: sum(rows)).result(PATIENCE) == sum(range(500))
    # Broadcast to both workers: two copies of one key, and the call's own result, which the
    # cluster releases asynchronously (a list scattered item by item made 1000 here).
    assert _keys_on_cluster(dask_client) - before <= 3


def test_environment_names_the_cluster(monkeypatch: pytest.MonkeyPatch, dask_client: Any) -> None:
    from inparallel.backends.dask import DaskExecutor

    address = dask_client.scheduler.address
    monkeypatch.setenv(engines.ENV_VAR, f"dask:{address}")
    engine = inparallel.current_executor()
    assert isinstance(engine, DaskExecutor)
    assert engine.client is not dask_client  # its own client, opened from the address
    assert inparallel.current_executor() is engine
    assert list(process_map(abs, [-1, -2, -3])) == [1, 2, 3]
    engines._close_environment()
    assert engine.client.status == "closed"


def test_use_of_a_cluster_address_opens_and_closes_a_client(dask_client: Any) -> None:
    from inparallel.backends.dask import DaskExecutor

    with inparallel.use(f"dask:{dask_client.scheduler.address}") as engine:
        assert isinstance(engine, DaskExecutor)
        assert engine.submit(abs, -5).result(PATIENCE) == 5
    assert engine.client.status == "closed"
    with pytest.raises(RuntimeError, match="after shutdown"):
        engine.submit(abs, -1)
