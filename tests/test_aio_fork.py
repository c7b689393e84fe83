"""The asyncio bridges to forked tasks: ``await`` on a `TaskFuture`, and `aio.parallel_map`.

research/async.md 6.8, as it applies to our API: there is no executor, `parallel_map` forks
one child per item with the core's `spawn`, and ``fn`` runs in the child (a closure or a
lambda is fine: nothing is pickled on the way in). Children talk back to the test through
pipes (`Log`, `_faults.Gate`), never through shared wall-clock sleeps; the one bound on time
is how long a SIGKILLed child may take to be gone.
"""

# ruff: noqa: F401, F811 - `arun` is a fixture imported from tests._aio so that pytest sees it

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import _faults
import pytest
from _faults import Gate, child_pids
from _timing import BOUND

import inparallel
from inparallel import aio, task
from tests._aio import Src, arun, turns

# -- helpers -------------------------------------------------------------------------------------


class Log:
    """A pipe that children write short lines to and the test reads without blocking the loop.

    Writes of less than ``PIPE_BUF`` bytes are atomic, so lines from several children never mix.
    """

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self._buf = b""
        self.lines: list[list[str]] = []

    def send(self, *words: object) -> None:
        """Write one line (call in a child)."""
        os.write(self.w, (" ".join(map(str, words)) + "\n").encode())

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.r, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self._buf += chunk
            *done, self._buf = self._buf.split(b"\n")
            self.lines.extend(line.decode().split() for line in done)

    def drain(self) -> list[list[str]]:
        """Read what has arrived so far; return every line read until now."""
        self._drain()
        return self.lines

    async def until(
        self, check: Callable[[list[list[str]]], bool], timeout: float = BOUND
    ) -> list[list[str]]:
        """Wait until ``check(lines)`` holds; ``timeout`` only guards against a hang."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not check(self.drain()):
                ready = loop.create_future()
                loop.add_reader(self.r, lambda: ready.done() or ready.set_result(None))
                try:
                    await ready
                finally:
                    loop.remove_reader(self.r)
        return self.lines

    def tagged(self, tag: str) -> list[list[str]]:
        """Return the lines (read so far) that start with ``tag``, without the tag."""
        return [line[1:] for line in self.drain() if line[0] == tag]

    def pids(self) -> set[int]:
        """Return the pids of every line read so far (children log ``tag item pid ...``)."""
        return {int(line[2]) for line in self.drain()}

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def gone(pids: Iterable[int], timeout: float = BOUND) -> list[int]:
    """Wait (on pidfds, in the loop) until every pid has exited; return those still alive.

    A SIGKILLed (or finished) child is gone within microseconds; the bound is for a loaded
    machine.
    """
    loop = asyncio.get_running_loop()
    waits: dict[int, asyncio.Future[None]] = {}
    fds: dict[int, int] = {}
    try:
        for pid in set(pids):
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # exited and reaped already
            fut = loop.create_future()
            fds[pid], waits[pid] = fd, fut
            loop.add_reader(fd, lambda f=fut: f.done() or f.set_result(None))
        if waits:
            await asyncio.wait(waits.values(), timeout=timeout)
        return sorted(pid for pid, fut in waits.items() if not fut.done())
    finally:
        for pid, fd in fds.items():
            loop.remove_reader(fd)
            os.close(fd)
        for fut in waits.values():
            fut.cancel()


def alive_children() -> list[int]:
    """Return this process's children that are running (zombies do not count)."""
    return sorted(pid for pid in child_pids() if _faults.alive(pid))


async def ticker(n: int | None = None) -> AsyncIterator[int]:
    """0, 1, 2, ... with a loop turn before each item (a plain async input)."""
    i = 0
    while n is None or i < n:
        await asyncio.sleep(0)
        yield i
        i += 1


class Boom(Exception):
    """An error of the test's own, raised in children (its type must survive the trip)."""


# -- await TaskFuture ----------------------------------------------------------------------------


@task
def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@task
def fail_with(exc: BaseException) -> None:
    raise exc


def test_awaiting_a_task_future_returns_the_childs_result(arun: Any) -> None:
    """``await fut`` gives the value the child computed, in another process."""

    async def main() -> None:
        value, pid = await square_and_pid(7)
        assert value == 49
        assert pid != os.getpid()
        results = await asyncio.gather(*(square_and_pid(i) for i in range(4)))
        assert [v for v, _ in results] == [0, 1, 4, 9]
        assert len({p for _, p in results}) == 4

    arun(main)


@pytest.mark.parametrize(
    "exc", [KeyError("missing"), Boom("the child's own"), ValueError("bad value")], ids=repr
)
def test_awaiting_a_failed_task_future_raises_the_original_type(arun: Any, exc: Exception) -> None:
    """The child's exception comes back with its own type and message."""

    async def main() -> None:
        with pytest.raises(type(exc)) as info:
            await fail_with(exc)
        assert type(info.value) is type(exc)
        assert info.value.args == exc.args

    arun(main)


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancelling_the_awaiter_kills_the_child(arun: Any, how: str) -> None:
    """A task awaiting a TaskFuture is cancelled (or times out): the child is SIGKILLed."""

    async def main() -> None:
        with Log() as log, Gate() as gate:

            @task
            def block() -> None:
                log.send("started", 0, os.getpid())
                gate.wait()  # never released while the test runs

            fut = block()
            lines = await log.until(lambda lines: len(lines) == 1)
            assert int(lines[0][2]) == fut.pid
            if how == "cancel":
                awaiter = asyncio.create_task(_await(fut))
                await turns(3)
                awaiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await awaiter
            else:
                before = asyncio.current_task().cancelling()  # type: ignore[union-attr]
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0):
                        await fut
                assert asyncio.current_task().cancelling() == before  # type: ignore[union-attr]
            assert fut.cancelled()
            assert await gone([fut.pid]) == []

    arun(main)


async def _await(fut: Any) -> Any:
    return await fut


# -- parallel_map: results and order -------------------------------------------------------------


def test_parallel_map_ordered_gives_every_result_in_input_order(arun: Any) -> None:
    """x*x over range(50) with concurrency=4 gives exactly the list."""

    async def main() -> None:
        out = [y async for y in aio.parallel_map(lambda x: x * x, range(50), concurrency=4)]
        assert out == [x * x for x in range(50)]

    arun(main)


def test_parallel_map_forks_one_child_per_item(arun: Any) -> None:
    """Every item runs in a child of its own, forked from the test process."""

    async def main() -> None:
        out = [
            y
            async for y in aio.parallel_map(
                lambda x: (x, os.getpid(), os.getppid()), range(8), concurrency=3
            )
        ]
        assert [x for x, _, _ in out] == list(range(8))
        assert len({pid for _, pid, _ in out}) == 8
        assert os.getpid() not in {pid for _, pid, _ in out}
        assert {ppid for _, _, ppid in out} == {os.getpid()}

    arun(main)


def test_parallel_map_unordered_yields_a_slow_first_item_last(arun: Any) -> None:
    """ordered=False: item 0, held until the others arrived, comes out last."""

    async def main() -> None:
        with Gate() as gate:

            def fn(x: int) -> int:
                if x == 0:
                    gate.wait()
                return x * 10

            got = []
            async for y in aio.parallel_map(fn, range(6), concurrency=2, ordered=False):
                got.append(y)
                if len(got) == 5:
                    gate.release()  # every other item has arrived: let item 0 finish
            assert got[-1] == 0
            assert sorted(got) == [x * 10 for x in range(6)]

    arun(main)


def test_parallel_map_ordered_goes_on_starting_items_behind_a_slow_one(arun: Any) -> None:
    """ordered, window=8: items 1..7 are all computed while item 0 is held; order is kept."""

    async def main() -> None:
        with Log() as log, Gate() as gate:

            def fn(x: int) -> int:
                log.send("start", x, os.getpid())
                if x == 0:
                    gate.wait()
                log.send("done", x, os.getpid())
                return x * 10

            async def read() -> list[int]:
                pm = aio.parallel_map(fn, range(8), concurrency=2, window=8)
                return [y async for y in pm]

            reader = asyncio.create_task(read())
            await log.until(lambda _: {int(x) for x, _ in log.tagged("done")} == set(range(1, 8)))
            assert not reader.done()
            assert {int(x) for x, _ in log.tagged("start")} == set(range(8))
            gate.release()
            assert await reader == [x * 10 for x in range(8)]

    arun(main)


def test_parallel_map_never_runs_more_children_than_concurrency(arun: Any) -> None:
    """Three children held at once; no fourth starts; start/end times never overlap by more."""

    async def main() -> None:
        with Log() as log, Gate() as gate:

            def fn(x: int) -> int:
                log.send("start", x, os.getpid(), _now())
                if x < 3:
                    gate.wait()
                log.send("end", x, os.getpid(), _now())
                return x

            async def read() -> list[int]:
                return [y async for y in aio.parallel_map(fn, range(12), concurrency=3)]

            reader = asyncio.create_task(read())
            await log.until(lambda _: len(log.tagged("start")) == 3)
            await turns(20)  # room for a wrong fourth fork to show up
            assert {int(x) for x, *_ in log.tagged("start")} == {0, 1, 2}
            gate.release(3)
            assert await reader == list(range(12))
            starts = log.tagged("start")
            ends = log.tagged("end")
            assert len({pid for _, pid, _ in starts}) == 12
            events = sorted([(int(t), 1) for *_, t in starts] + [(int(t), -1) for *_, t in ends])
            running = peak = 0
            for _, step in events:
                running += step
                peak = max(peak, running)
            assert peak == 3

    arun(main)


def _now() -> int:
    return time.monotonic_ns()  # CLOCK_MONOTONIC: one clock for every process


def started(log: Log) -> set[int]:
    """The items whose child has logged its start."""
    return {int(x) for x, *_ in log.tagged("start")}


def test_parallel_map_reads_an_infinite_input_lazily_and_a_break_kills_the_children(
    arun: Any,
) -> None:
    """Read 5 of an endless input, then break: <= 5 + window pulled, every child killed."""

    async def main() -> None:
        with Log() as log, Gate() as last, Gate() as held:

            def fn(x: int) -> int:
                log.send("start", x, os.getpid())
                if x == 4:
                    last.wait()  # released once item 5 runs: a child is alive at the break
                elif x >= 5:
                    held.wait()  # never released while the test runs
                return x

            async def release_last() -> None:
                await log.until(lambda _: 5 in started(log))
                last.release()

            releasing = asyncio.create_task(release_last())
            src = Src(None)
            got = []
            async for y in aio.parallel_map(fn, src, concurrency=2):  # window: 4
                got.append(y)
                if len(got) == 5:
                    break
            await releasing
            assert got == [0, 1, 2, 3, 4]
            # A bound: how far the map read ahead (within its window) depends on its children.
            assert 6 <= src.pulls <= 5 + 4
            await turns()
            pids = log.pids()
            assert await gone(pids) == []  # item 5's child (at least) was killed
            assert await gone(child_pids()) == []

    arun(main)


def test_async_with_and_break_kills_the_running_children_before_aclose_returns(
    arun: Any,
) -> None:
    """Leaving ``async with`` kills the children still running; the source is closed once."""

    async def main() -> None:
        with Log() as log, Gate() as last, Gate() as held:

            def fn(x: int) -> int:
                log.send("start", x, os.getpid())
                if x == 1:
                    last.wait()  # released once items 2 and 3 run
                elif x >= 2:
                    held.wait()  # never released while the test runs
                return x

            async def release_last() -> None:
                await log.until(lambda _: {2, 3} <= started(log))
                last.release()

            releasing = asyncio.create_task(release_last())
            src = Src(None)
            got = []
            async with aio.parallel_map(fn, src, concurrency=3) as pm:
                async for y in pm:
                    got.append(y)
                    if len(got) == 2:
                        break
            # aclose has returned: the held children were killed (nothing else ends them).
            await releasing
            pids = log.pids()
            assert len(pids) >= 4  # 0 to 3; 4 too if item 0's slot was taken again in time
            assert await gone(pids) == []
            assert await gone(child_pids()) == []
            assert got == [0, 1]
            assert src.closed_count == 1
            assert src.finally_task not in (None, asyncio.current_task())  # the map's puller
            assert src.ctx_ok

    arun(main)


# -- parallel_map: errors ------------------------------------------------------------------------


def test_parallel_map_raises_the_first_error_at_its_place(arun: Any) -> None:
    """Item 3 raises KeyError: 0, 1, 2 come out, then the KeyError; input read <= 3 + window."""

    async def main() -> None:
        with Log() as log:

            def fn(x: int) -> int:
                log.send("start", x, os.getpid())
                if x == 3:
                    raise KeyError(f"item {x}")
                return x

            src = Src(None)
            got = []
            with pytest.raises(KeyError, match="item 3"):
                async for y in aio.parallel_map(fn, src, concurrency=2):  # window: 4
                    got.append(y)
            assert got == [0, 1, 2]
            assert src.pulls <= 3 + 4  # a bound: how far it read ahead depends on the children
            assert src.closed_count == 1
            assert src.finally_task not in (None, asyncio.current_task())  # the map's puller
            assert await gone(log.pids()) == []
            assert await gone(child_pids()) == []

    arun(main)


def test_parallel_map_on_error_skip_drops_the_failed_items(arun: Any) -> None:
    """on_error="skip": the items that raised are left out, the others keep their order."""

    async def main() -> None:
        def fn(x: int) -> int:
            if x % 3 == 1:
                raise Boom(f"item {x}")
            return x

        out = [y async for y in aio.parallel_map(fn, range(10), concurrency=3, on_error="skip")]
        assert out == [0, 2, 3, 5, 6, 8, 9]

    arun(main)


def test_parallel_map_on_error_callable_sees_each_item_and_error(arun: Any) -> None:
    """A callable on_error is called with (item, exc) for each failure, in order."""

    async def main() -> None:
        seen: list[tuple[int, str, str]] = []

        def fn(x: int) -> int:
            if x in (2, 5):
                raise Boom(f"item {x}")
            return x

        def on_error(item: int, exc: Exception) -> None:
            seen.append((item, type(exc).__name__, str(exc)))

        out = [y async for y in aio.parallel_map(fn, range(7), concurrency=2, on_error=on_error)]
        assert out == [0, 1, 3, 4, 6]
        assert seen == [(2, "Boom", "item 2"), (5, "Boom", "item 5")]

    arun(main)


@pytest.mark.parametrize("death", ["exit3", "sigkill"])
def test_a_child_that_dies_gives_worker_died_at_its_place(arun: Any, death: str) -> None:
    """A child that os._exit()s or is SIGKILLed: WorkerDied after the items before it."""

    async def main() -> None:
        def fn(x: int) -> int:
            if x == 2:
                if death == "exit3":
                    os._exit(3)
                _faults.kill_self()
            return x

        got = []
        with pytest.raises(inparallel.WorkerDied) as info:
            async for y in aio.parallel_map(fn, range(6), concurrency=2):
                got.append(y)
        assert got == [0, 1]
        if death == "exit3":
            assert info.value.exitcode == 3
            assert info.value.signal is None
        else:
            assert info.value.signal == signal.SIGKILL
        assert await gone(child_pids()) == []

    arun(main)


def test_a_dead_child_can_be_skipped(arun: Any) -> None:
    """on_error="skip" also drops an item whose child died."""

    async def main() -> None:
        def fn(x: int) -> int:
            if x == 1:
                os._exit(3)
            return x

        out = [y async for y in aio.parallel_map(fn, range(4), concurrency=2, on_error="skip")]
        assert out == [0, 2, 3]

    arun(main)


# -- parallel_map: @task functions, closures, inputs, outputs -------------------------------------


@task(timeout=30, name="where")
def where(x: int) -> tuple[int, int, int]:
    return x, os.getpid(), os.getppid()


class Scaler:
    def __init__(self, k: int) -> None:
        self.k = k

    @task(timeout=30)
    def scale(self, x: int) -> tuple[int, int]:
        return x * self.k, os.getppid()


def test_a_task_function_keeps_its_timeout_under_parallel_map(arun: Any) -> None:
    """A @task(timeout=0.3) function: the slow item fails with TaskTimeout at its place."""

    async def main() -> None:
        with Gate() as gate:

            @task(timeout=0.3)
            def fn(x: int) -> int:
                if x != 0:
                    gate.wait()  # held past the timeout
                return x

            got = []
            with pytest.raises(inparallel.TaskTimeout) as info:
                async for y in aio.parallel_map(fn, range(3), concurrency=2):
                    got.append(y)
            assert got == [0]
            assert info.value.timeout == 0.3
            assert isinstance(info.value, TimeoutError)
        assert await gone(child_pids()) == []

    arun(main)


def test_a_task_function_is_forked_once_not_twice(arun: Any) -> None:
    """The child of a @task function under parallel_map is a child of the test process."""

    async def main() -> None:
        out = [y async for y in aio.parallel_map(where, range(4), concurrency=2)]
        assert [x for x, _, _ in out] == [0, 1, 2, 3]
        assert {ppid for _, _, ppid in out} == {os.getpid()}

    arun(main)


def test_a_bound_task_method_works_and_is_forked_once(arun: Any) -> None:
    """A @task method, bound to an instance, runs once per item in a child of the test."""

    async def main() -> None:
        out = [y async for y in aio.parallel_map(Scaler(3).scale, range(4), concurrency=2)]
        assert out == [(0, os.getpid()), (3, os.getpid()), (6, os.getpid()), (9, os.getpid())]

    arun(main)


def test_fn_may_close_over_unpicklable_local_objects(arun: Any) -> None:
    """A closure over a lock and a local lambda works: fn is inherited, never pickled."""

    async def main() -> None:
        lock = threading.Lock()
        offset = lambda x: x + 100  # noqa: E731 - a local lambda on purpose (unpicklable)
        calls: list[int] = []

        def fn(x: int) -> tuple[int, bool, int]:
            calls.append(x)  # in the child's copy of the list
            with lock:
                return offset(x), lock.locked(), len(calls)

        out = [y async for y in aio.parallel_map(fn, range(4), concurrency=2)]
        assert out == [(100, True, 1), (101, True, 1), (102, True, 1), (103, True, 1)]
        assert calls == []  # what a child changes in its memory stays there
        out = [y async for y in aio.parallel_map(lambda x: -x, range(3), concurrency=2)]
        assert out == [0, -1, -2]

    arun(main)


def test_an_async_input_is_read_and_closed_once_in_one_context(arun: Any) -> None:
    """Src(20) as the input: every result; the source closed once, in its own context."""

    async def main() -> None:
        src = Src(20)
        out = [y async for y in aio.parallel_map(lambda x: x * x, src, concurrency=3)]
        assert out == [x * x for x in range(20)]
        assert src.pulls == 20
        assert src.closed_count == 1
        assert src.finally_task not in (None, asyncio.current_task())  # the map's puller
        assert src.ctx_ok

    arun(main)


def test_an_async_generator_and_another_stream_are_inputs_too(arun: Any) -> None:
    """An async generator and an aio stream both feed parallel_map."""

    async def main() -> None:
        out = [y async for y in aio.parallel_map(lambda x: x + 1, ticker(6), concurrency=2)]
        assert out == [1, 2, 3, 4, 5, 6]
        inner = aio.map_aiter(lambda x: x * 2, Src(5))
        out = [y async for y in aio.parallel_map(lambda x: x + 1, inner, concurrency=2)]
        assert out == [1, 3, 5, 7, 9]

    arun(main)


def test_results_over_a_mebibyte_come_back_whole(arun: Any) -> None:
    """Each child returns 1.5 MiB of bytes; every result arrives intact and in order."""

    size = 3 << 19

    async def main() -> None:
        pm = aio.parallel_map(lambda x: _faults.blob(size, seed=x), range(4), concurrency=2)
        out = [y async for y in pm]
        assert [len(b) for b in out] == [size] * 4
        assert [_faults.digest(b) for b in out] == [
            _faults.digest(_faults.blob(size, seed=x)) for x in range(4)
        ]

    arun(main)


# -- parallel_map: cancellation --------------------------------------------------------------------


@pytest.mark.parametrize("form", ["async_for", "async_with"])
def test_cancelling_the_reader_mid_stream_kills_every_child(arun: Any, form: str) -> None:
    """The reader task is cancelled while children run: CancelledError, no child left."""

    async def main() -> None:
        with Log() as log, Gate() as gate:

            def fn(x: int) -> int:
                log.send("start", x, os.getpid())
                if x >= 2:
                    gate.wait()  # never released while the test runs
                return x

            got: list[int] = []
            two = asyncio.Event()

            def take(y: int) -> None:
                got.append(y)
                if len(got) == 2:
                    two.set()

            async def read() -> None:
                if form == "async_for":
                    async for y in aio.parallel_map(fn, range(100), concurrency=3):
                        take(y)
                else:
                    async with aio.parallel_map(fn, range(100), concurrency=3) as pm:
                        async for y in pm:
                            take(y)

            reader = asyncio.create_task(read())
            await two.wait()
            await log.until(lambda _: started(log) == {0, 1, 2, 3, 4})  # 2, 3, 4 are held
            await turns(5)  # the reader waits for item 2 again
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            assert got == [0, 1]
            pids = log.pids()
            assert len(pids) == 5
            assert await gone(pids) == []
            assert await gone(child_pids()) == []

    arun(main)


# -- parallel_map: arguments ---------------------------------------------------------------------


def test_parallel_map_checks_its_arguments_when_called() -> None:
    """Bad arguments fail at once, outside any loop, and nothing is forked."""
    before = child_pids()
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        aio.parallel_map(abs, range(3), concurrency=0)
    with pytest.raises(TypeError, match="concurrency"):
        aio.parallel_map(abs, range(3))  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="concurrency must be an int"):
        aio.parallel_map(abs, range(3), concurrency=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fn must be callable"):
        aio.parallel_map(42, range(3), concurrency=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window must be at least 3"):
        aio.parallel_map(abs, range(3), concurrency=3, window=2)
    with pytest.raises(ValueError, match="on_error"):
        aio.parallel_map(abs, range(3), concurrency=2, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aiterable must be an async iterable"):
        aio.parallel_map(abs, 42, concurrency=2)  # type: ignore[arg-type]
    aio.parallel_map(abs, range(3), concurrency=2)  # built, never read: nothing runs
    assert child_pids() == before


def test_a_stream_built_outside_the_loop_runs_inside_it(arun: Any) -> None:
    """parallel_map binds no loop when built; it forks at the first read."""
    pm = aio.parallel_map(lambda x: x + 1, range(3), concurrency=2)
    assert alive_children() == []

    async def main() -> None:
        assert [y async for y in pm] == [1, 2, 3]

    arun(main)


# -- parallel_map: an input that waits -----------------------------------------------------------
# (A bug until 79b89ab: the map awaited the next input item before yielding finished results.)


def test_each_finished_result_is_yielded_while_the_input_waits_for_more(arun: Any) -> None:
    """Items pushed one at a time into an open queue: each result comes out before the next."""

    async def main() -> None:
        with Log() as log:

            def fn(x: int) -> int:
                log.send("start", x, os.getpid())
                return x * 10

            q: aio.push_aiter[int] = aio.push_aiter()
            async with aio.parallel_map(fn, q, concurrency=2) as pm:
                for i in range(3):
                    q.push(i)
                    # The queue stays open and empty: the result must not wait for more input.
                    # (The bound only turns a regression into a failure instead of a hang.)
                    async with asyncio.timeout(BOUND):
                        assert await anext(pm) == i * 10
                q.stop()
                assert [y async for y in pm] == []
            assert len(log.tagged("start")) == 3

    arun(main)
