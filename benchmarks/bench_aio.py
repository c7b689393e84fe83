"""Async bridges: ``inparallel.aio.parallel_map`` and ``map_aiter`` against asyncio by hand.

Every implementation runs inside ``asyncio.run``. The floors of the forking cases are the
hand-written fork + pipe of `benchmarks._floor` and do not use a loop (``aio-fork-map``'s runs
without one; ``aio-first-result``'s is a blocking call made from inside the loop, which nothing
else is using), so the loop's own cost is counted against everything else. "PPE" is
``concurrent.futures.ProcessPoolExecutor`` with the ``fork`` start method, reached from the
loop with ``loop.run_in_executor``.

``aio-fork-map``
    200 calls of `square`, at most 2 at once, results collected in input order; one
    ``asyncio.run`` per measured run, and the harness times that call. ``parallel_map(square,
    items, concurrency=2)`` collected with an ``async for``; PPE with 2 workers, each call an
    ``await loop.run_in_executor`` bounded by an ``asyncio.Semaphore(2)`` in one
    ``asyncio.gather`` (a fresh pool per run, created and shut down inside the timing, as the
    pools of ``bench_map`` are; and a warm pool, started before ``asyncio.run`` and shut down
    after it); and ``@task`` futures awaited directly (``await f(x)`` under the same semaphore
    and gather). The floor is `benchmarks._floor.run_all` with ``concurrency=2``: a child per
    item, two in flight, one selector on the pipes. That is the core's per-call fork round trip
    at the case's width (the floor of ``core.throughput``), not `benchmarks._floor.call`, which
    waits for each child before forking the next and would hand the async rows a free 2x.
``aio-first-result``
    Time from calling ``parallel_map(inc, source, concurrency=2)`` to its first result, where
    *source* is an infinite async generator over ``itertools.count()``; 20 maps per run, in one
    ``asyncio.run``, each timed from the call to the first result with `Stopwatch` and closed
    with ``aclose()`` after it, outside the timing (as ``bench_map``'s ``first-result``). The
    same first item through a warm PPE of 2 (``await loop.run_in_executor``) and through a bare
    ``await task(inc)(item)``. The floor is `benchmarks._floor.call`: one fork, one result. How
    many items ``parallel_map`` had pulled from the source by its first result is printed in a
    small table of its own (``bench_map.SideTable``) before the main table.
``aio-map-tasks``
    ``map_aiter(touch, range(20_000), worker_count=8)`` collected in order, where `touch` does
    ``await asyncio.sleep(0)`` and returns its item; one ``asyncio.run`` per run, timed by the
    harness. Against a semaphore of 8 and one ``asyncio.gather`` with all 20,000 tasks created
    up front, an ``asyncio.TaskGroup`` with the same semaphore, and aiostream's ``stream.map``
    with ``task_limit=8`` when aiostream is importable (it is not installed for the
    benchmarks: the row then says skipped). The floor is a plain sequential ``async for`` over
    an async generator with ``await touch(x)``: the same awaits with no task made at all, so the
    ratios are the price of running the calls as tasks (`touch` only yields to the loop, so 8
    at a time buys nothing here).

``--quick``: 40 calls, 5 first results per run, 2,000 items.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import importlib
import itertools
import multiprocessing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks import _floor
from benchmarks._harness import Case, Impl, Plan, Settings, Stopwatch, check
from benchmarks.bench_map import SideTable

_FORK = multiprocessing.get_context("fork")

WORKERS = 2
IP = "inparallel"
FRESH = "fresh pool per run: start and shutdown inside the timing"
WARM = "warm pool of 2, started outside the timing"

#: A child's first result: what `_open_first` and its peers return, and the stream to close.
Opened = tuple[Any, Callable[[], Awaitable[None]] | None]


# -- work run in the children and in the loop --------------------------------------------------


def square(x: int) -> int:
    """Return ``x * x`` (the trivial task)."""
    return x * x


def inc(x: int) -> int:
    """Return ``x + 1``."""
    return x + 1


async def touch(x: int) -> int:
    """Yield to the loop once, then return *x* (the trivial coroutine)."""
    await asyncio.sleep(0)
    return x


async def acount(counter: Iterator[int]) -> AsyncIterator[int]:
    """Yield the items of *counter* (an infinite ``itertools.count()``) as an async generator."""
    for x in counter:
        yield x


async def arange(n: int) -> AsyncIterator[int]:
    """Yield ``range(n)`` as an async generator."""
    for x in range(n):
        yield x


# -- helpers ----------------------------------------------------------------------------------


def _peer(name: str) -> Any:
    """Import an optional module where it is used, so that a missing one only skips its rows."""
    return importlib.import_module(name)


def _aio() -> Any:
    return _peer("inparallel.aio")


def _ip(fn: Callable[..., Any]) -> Callable[..., cf.Future[Any]]:
    return _peer("inparallel").task(fn)  # type: ignore[no-any-return]


def _ppe() -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(WORKERS, mp_context=_FORK)


def _warm_ppe() -> cf.ProcessPoolExecutor:
    """Return a fork-context pool of 2 whose workers are already running."""
    pool = _ppe()
    for fut in [pool.submit(square, i) for i in range(4 * WORKERS)]:
        fut.result()
    return pool


def _guard(call: Callable[[int], Awaitable[Any]], width: int) -> Callable[[int], Awaitable[Any]]:
    """Return ``one(x)``, which awaits ``call(x)`` holding one of *width* semaphore slots."""
    sem = asyncio.Semaphore(width)

    async def one(x: int) -> Any:
        async with sem:
            return await call(x)

    return one


async def _gather(call: Callable[[int], Awaitable[Any]], items: Iterable[int], width: int) -> Any:
    """``asyncio.gather`` of ``call(x)`` for every item, at most *width* running at once."""
    one = _guard(call, width)
    return await asyncio.gather(*(one(x) for x in items))


def _in_executor(pool: cf.Executor, fn: Callable[[int], Any]) -> Callable[[int], Awaitable[Any]]:
    loop = asyncio.get_running_loop()
    return lambda x: loop.run_in_executor(pool, fn, x)


# -- 1: a fork per item, two at a time -------------------------------------------------------


def _fork_map(s: Settings) -> Plan:
    n = s.pick(200, 40)
    items = list(range(n))
    expected = [square(x) for x in items]

    def floor() -> None:
        got = _floor.run_all(square, ((x,) for x in items), WORKERS)
        check(got == expected, "floor: wrong results")

    def parallel_map() -> None:
        async def main() -> list[int]:
            return [y async for y in _aio().parallel_map(square, items, concurrency=WORKERS)]

        check(asyncio.run(main()) == expected, "parallel_map: wrong results")

    def ppe_fresh() -> None:
        async def main() -> list[int]:
            with _ppe() as pool:
                return await _gather(_in_executor(pool, square), items, WORKERS)  # type: ignore[no-any-return]

        check(asyncio.run(main()) == expected, "PPE: wrong results")

    def ppe_warm() -> float:
        async def main(pool: cf.Executor) -> list[int]:
            return await _gather(_in_executor(pool, square), items, WORKERS)  # type: ignore[no-any-return]

        with _warm_ppe() as pool, Stopwatch() as sw:
            got = asyncio.run(main(pool))
        check(got == expected, "PPE warm: wrong results")
        return sw.elapsed

    def tasks() -> float:
        f = _ip(square)

        async def main() -> list[int]:
            return await _gather(f, items, WORKERS)  # type: ignore[arg-type,no-any-return]

        with Stopwatch() as sw:
            got = asyncio.run(main())
        check(got == expected, "@task: wrong results")
        return sw.elapsed

    impls = [
        Impl("floor", "floor: 2 in flight, selector", floor, note="no event loop"),
        Impl(IP, "aio.parallel_map(concurrency=2)", parallel_map, (IP,)),
        Impl("PPE", "PPE(fork, 2) run_in_executor, Semaphore(2)", ppe_fresh, note=FRESH),
        Impl("PPE-warm", "PPE(fork, 2) warm, run_in_executor, Semaphore(2)", ppe_warm, note=WARM),
        Impl("task", "await @task futures, Semaphore(2) + gather", tasks, (IP,)),
    ]
    return Plan(impls, per=n, detail=f"{n} x square(x), concurrency 2, ordered, one asyncio.run")


# -- 2: the first result over an infinite async generator -----------------------------------


@contextmanager
def _first(s: Settings) -> Iterator[Plan]:
    reps = s.pick(20, 5)
    table = SideTable("aio-first-result", "input items pulled by the first result", "{:.0f}".format)

    def first(
        key: str,
        label: str,
        open_first: Callable[..., Awaitable[Opened]],
        bound: str = "",
        warm: bool = False,
        **kw: Any,
    ) -> Impl:
        async def maps(pool: cf.Executor | None) -> float:
            total = 0.0
            for _ in range(reps):
                counter = itertools.count()
                source = acount(counter)
                with Stopwatch() as sw:
                    value, close = await open_first(source, pool)
                pulled = next(counter)  # count() yields 0, 1, ...: its next value is the count
                if close is not None:
                    await close()
                await source.aclose()  # a no-op where the map has closed it already
                check(value == 1, f"{key}: first result {value!r} != 1")
                if bound:
                    table.add(label, pulled, f"read right after the first result; {bound}")
                total += sw.elapsed
            return total

        def run() -> float:
            if not warm:
                return asyncio.run(maps(None))
            with _warm_ppe() as pool:
                return asyncio.run(maps(pool))

        return Impl(key, label, run, **kw)

    async def floor(source: AsyncIterator[int], pool: None) -> Opened:
        return _floor.call(inc, await anext(source)), None

    async def parallel_map(source: AsyncIterator[int], pool: None) -> Opened:
        stream = _aio().parallel_map(inc, source, concurrency=WORKERS)
        return await anext(stream), stream.aclose

    async def ppe(source: AsyncIterator[int], pool: cf.Executor) -> Opened:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, inc, await anext(source)), None

    async def bare(source: AsyncIterator[int], pool: None) -> Opened:
        return await _ip(inc)(await anext(source)), None

    impls = [
        first("floor", "floor: fork, pipe one result", floor, note="no event loop in the call"),
        first(
            IP,
            "aio.parallel_map(concurrency=2)",
            parallel_map,
            "bound: window = 2 x concurrency = 4",
            requires=(IP,),
        ),
        first("PPE-warm", "PPE(fork, 2) warm, run_in_executor", ppe, warm=True, note=WARM),
        first("task", "await task(inc)(item)", bare, requires=(IP,)),
    ]
    detail = f"inc over an async generator on itertools.count(), {reps} maps per run"
    yield Plan(impls, per=reps, detail=detail)
    table.show()


# -- 3: many small coroutines as tasks, 8 at a time ------------------------------------------


def _map_tasks(s: Settings) -> Plan:
    n, width = s.pick(20_000, 2_000), 8
    expected = list(range(n))

    def timed(key: str, label: str, main: Callable[[], Awaitable[list[int]]], **kw: Any) -> Impl:
        def run() -> None:
            check(list(asyncio.run(main())) == expected, f"{key}: wrong results")  # type: ignore[arg-type]

        return Impl(key, label, run, **kw)

    async def floor() -> list[int]:
        return [await touch(x) async for x in arange(n)]

    async def map_aiter() -> list[int]:
        return [y async for y in _aio().map_aiter(touch, range(n), worker_count=width)]

    async def gather() -> list[int]:
        return await _gather(touch, range(n), width)  # type: ignore[no-any-return]

    async def task_group() -> list[int]:
        one = _guard(touch, width)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(x)) for x in range(n)]  # type: ignore[arg-type]
        return [t.result() for t in tasks]

    async def aiostream() -> list[int]:
        stream = _peer("aiostream").stream
        return await stream.list(stream.map(stream.iterate(range(n)), touch, task_limit=width))  # type: ignore[no-any-return]

    impls = [
        timed("floor", "floor: sequential async for, await f(x)", floor, note="no task made"),
        timed(IP, f"aio.map_aiter(worker_count={width})", map_aiter, requires=(IP,)),
        timed(
            "gather",
            f"Semaphore({width}) + gather",
            gather,
            note=f"all {n:,} tasks created up front",
        ),
        timed(
            "TaskGroup",
            f"TaskGroup + Semaphore({width})",
            task_group,
            note=f"all {n:,} tasks created up front",
        ),
        timed(
            "aiostream",
            f"aiostream stream.map(task_limit={width})",
            aiostream,
            requires=("aiostream",),
        ),
    ]
    detail = f"{n:,} x touch(x) (await asyncio.sleep(0)), ordered, one asyncio.run; wall time"
    return Plan(impls, detail=detail)


CASES: tuple[Case, ...] = (
    Case("aio-fork-map", "parallel_map: a fork per item, concurrency 2, in order", _fork_map),
    Case(
        "aio-first-result",
        "parallel_map: time to the first result over an infinite async generator",
        _first,
        warmup=True,
    ),
    Case("aio-map-tasks", "map_aiter: small coroutines as tasks, 8 at a time", _map_tasks),
)
