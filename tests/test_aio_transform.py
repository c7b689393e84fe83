"""Tests for the sequential transforms and the maps of `inparallel.aio`.

`iter_to_aiter`, `aiter_to_iter`, `azip`, `flatten_aiter`, `map_aiter` and `map_filter_aiter`
(research/async.md, sections 6.2 and 6.6). Every async test body is an ``async def main()``
run by the `arun` harness (debug mode, default and eager task factories, no task left
behind); the `aiter_to_iter` tests are sync, since it refuses to run inside a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import _faults
import pytest
from _timing import BOUND, PATIENCE

from inparallel.aio import (
    aiter_to_iter,
    azip,
    flatten_aiter,
    iter_to_aiter,
    map_aiter,
    map_filter_aiter,
    push_aiter,
)
from tests._aio import Src, arun, turns

FIXTURES = (arun,)  # pytest finds the `arun` fixture by its name in this module


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Fail a test still running after `PATIENCE` + `BOUND` s: some run a loop of their own."""
    with _faults.deadline(PATIENCE + BOUND, "the test"):
        yield


# -- helpers ----------------------------------------------------------------------------------


class Seq:
    """A tracked async source over given ``items`` (like `Src`, for values other than 0..n-1)."""

    def __init__(self, items: Any) -> None:
        self.items = list(items)
        self.pulls = 0
        self.closed_count = 0
        self.finally_task: asyncio.Task[Any] | None = None
        self._gen = self._run()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen

    async def _run(self) -> AsyncIterator[Any]:
        try:
            for x in self.items:
                await asyncio.sleep(0)
                self.pulls += 1
                yield x
        finally:
            self.closed_count += 1
            self.finally_task = asyncio.current_task()


async def recorded(n: int | None, rec: dict[str, int]) -> AsyncIterator[int]:
    """Yield 0..n-1, counting in ``rec``; nothing refers back to the generator (GC can take it)."""
    try:
        i = 0
        while n is None or i < n:
            await asyncio.sleep(0)
            rec["pulls"] += 1
            yield i
            i += 1
    finally:
        rec["closed"] += 1


async def get_n(aiter: Any, n: int = 0) -> list[Any]:
    """Read ``n`` items (all, if 0) by ``async for`` and ``break``, as the old suite did."""
    r = []
    async for x in aiter:
        r.append(x)
        if n and len(r) >= n:
            break
    return r


async def until(cond: Callable[[], bool], n: int = 200) -> None:
    """Let the loop run until ``cond()`` holds; fail after ``n`` turns instead of hanging."""
    for _ in range(n):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"condition not reached in {n} loop turns")


async def exhausted(stream: Any) -> bool:
    """Return whether the next read raises `StopAsyncIteration` (a stream closed for good)."""
    try:
        await anext(stream)
    except StopAsyncIteration:
        return True
    return False


def blocked_fn(
    started: list[int],
    cancelled: list[int],
    *,
    quick: Callable[[int], bool],
    finished: list[int] | None = None,
) -> Callable[[int], Any]:
    """An async map function: returns soon for ``quick`` items, else waits for ever.

    Records the items started, the ones that saw `CancelledError`, and (``finished``) the ones
    whose cancellation cleanup, which takes a loop turn, completed.
    """
    never = asyncio.Event()

    async def fn(x: int) -> int:
        started.append(x)
        if quick(x):
            await turns(10)  # long enough for the map to start the other calls
            return x
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(x)
            if finished is not None:
                await asyncio.sleep(0)  # cleanup that takes a turn: aclose must wait for it
                finished.append(x)
            raise
        raise AssertionError("unreachable")

    return fn


# -- azip -------------------------------------------------------------------------------------


def test_azip_equals_zip_old_suite(arun):
    """azip over "abcdefgh", range(20) and strings equals list(zip(...)): 8 tuples."""
    i1 = "abcdefgh"
    i2 = list(range(20))
    i3 = [str(x) for x in range(20)]

    async def main():
        r = await get_n(azip(iter_to_aiter(i1), iter_to_aiter(i2), iter_to_aiter(i3)))
        assert r == list(zip(i1, i2, i3, strict=False))
        assert len(r) == 8
        # Sync iterables are accepted directly.
        assert [t async for t in azip(i1, i2, i3)] == list(zip(i1, i2, i3, strict=False))

    arun(main)


def test_azip_closes_all_inputs(arun):
    """azip(Src(2), Src(10)) gives 2 tuples and closes both, the longer one included."""

    async def main():
        a, b = Src(2), Src(10)
        out = [t async for t in azip(a, b)]
        assert out == [(0, 0), (1, 1)]
        assert a.closed_count == 1
        assert b.closed_count == 1
        assert b.pulls == 2  # the first input ended first, the second is not read again
        me = asyncio.current_task()
        assert a.finally_task is me and b.finally_task is me
        assert a.ctx_ok and b.ctx_ok

    arun(main)


def test_azip_ended_stream_stays_ended(arun):
    """After the end, later reads of azip raise StopAsyncIteration."""

    async def main():
        z = azip(Src(1), Src(1))
        assert [t async for t in z] == [(0, 0)]
        assert await exhausted(z)

    arun(main)


def test_azip_strict_second_longer(arun):
    """strict=True, lengths 2 and 3: ValueError naming argument 2 as longer; both closed."""

    async def main():
        a, b = Src(2), Src(3)
        out = []
        with pytest.raises(ValueError, match=r"azip\(\) argument 2 is longer than argument 1"):
            async for t in azip(a, b, strict=True):
                out.append(t)
        assert out == [(0, 0), (1, 1)]
        assert a.closed_count == 1 and b.closed_count == 1

    arun(main)


def test_azip_strict_first_longer(arun):
    """strict=True, lengths 3 and 2: ValueError naming argument 2 as shorter; both closed."""

    async def main():
        a, b = Src(3), Src(2)
        z = azip(a, b, strict=True)
        out = []
        with pytest.raises(ValueError, match=r"azip\(\) argument 2 is shorter than argument 1"):
            async for t in z:
                out.append(t)
        assert out == [(0, 0), (1, 1)]
        assert a.closed_count == 1 and b.closed_count == 1
        assert await exhausted(z)  # raised once, then closed

    arun(main)


def test_azip_strict_third_longer(arun):
    """strict=True: inputs 1 and 2 end together, input 3 is longer: ValueError names 3."""

    async def main():
        srcs = [Src(2), Src(2), Src(3)]
        with pytest.raises(ValueError, match=r"argument 3 is longer than argument 1"):
            await get_n(azip(*srcs, strict=True))
        assert [s.closed_count for s in srcs] == [1, 1, 1]

    arun(main)


def test_azip_strict_equal_lengths(arun):
    """strict=True with equal lengths ends normally."""

    async def main():
        a, b = Src(3), Src(3)
        assert [t async for t in azip(a, b, strict=True)] == [(0, 0), (1, 1), (2, 2)]
        assert a.closed_count == 1 and b.closed_count == 1

    arun(main)


def test_azip_self_zip(arun):
    """azip(it, it) reads the inputs in argument order: (0,1),(2,3),(4,5)."""

    async def gen():
        for i in range(6):
            yield i

    async def main():
        it = aiter(gen())
        assert [t async for t in azip(it, it)] == [(0, 1), (2, 3), (4, 5)]
        src = Src(6)
        assert [t async for t in azip(src, src)] == [(0, 1), (2, 3), (4, 5)]
        assert src.closed_count == 1
        sync_it = iter(range(6))
        assert [t async for t in azip(sync_it, sync_it)] == [(0, 1), (2, 3), (4, 5)]

    arun(main)


@pytest.mark.parametrize("failing", [0, 1])
def test_azip_error_closes_all_and_propagates(arun, failing):
    """An error in one input propagates after the tuples before it; every input is closed."""

    async def main():
        srcs = [Src(5), Src(5)]
        srcs[failing] = Src(5, fail_at=2)
        z = azip(*srcs)
        out = []
        with pytest.raises(ValueError, match="source failed at 2"):
            async for t in z:
                out.append(t)
        assert out == [(0, 0), (1, 1)]
        assert [s.closed_count for s in srcs] == [1, 1]
        assert await exhausted(z)

    arun(main)


def test_azip_non_iterable_raises_at_call():
    """A non-iterable argument raises TypeError when azip is called, naming the argument."""
    with pytest.raises(TypeError, match=r"azip\(\): argument 2 must be an async iterable"):
        azip([1], 5)


def test_azip_no_arguments_is_empty(arun):
    """azip() yields nothing."""

    async def main():
        z = azip()
        assert [t async for t in z] == []
        assert await exhausted(z)

    arun(main)


def test_azip_async_with_early_exit_closes_all(arun):
    """Leaving async with after one tuple closes every input in the reader's task."""

    async def main():
        a, b = Src(None), Src(None)
        async with azip(a, b) as z:
            async for t in z:
                assert t == (0, 0)
                break
        assert a.closed_count == 1 and b.closed_count == 1
        assert a.finally_task is asyncio.current_task()
        assert a.ctx_ok and b.ctx_ok

    arun(main)


# -- flatten_aiter ----------------------------------------------------------------------------


def test_flatten_old_suite(arun):
    """The old test_flatten_aiter: lists pushed over time come out flattened in order."""

    async def main():
        q = push_aiter()
        fi = flatten_aiter(q)
        r = []
        q.push([0, 1, 2, 3])
        r.extend(await get_n(fi, 3))
        q.push([4, 5, 6, 7])
        r.extend(await get_n(fi, 5))
        q.stop()
        r.extend(await get_n(fi))
        assert r == list(range(8))

    arun(main)


def test_flatten_simple_pipeline_old_suite(arun):
    """The old test_make_simple_pipeline: flatten_aiter(flatten_aiter(q)) over a list of tuples."""

    async def main():
        q = push_aiter()
        fi = flatten_aiter(flatten_aiter(q))
        q.push([(0, 0, 1, 0), (1, 1, 1, 1), (2, 0, 0, 1), (3, 1, 2, 0), (0, 0, 0, 7)])
        r = await get_n(fi, 11)
        assert r == [0, 0, 1, 0, 1, 1, 1, 1, 2, 0, 0]
        r.extend(await get_n(fi, 8))
        q.stop()
        r.extend(await get_n(fi))
        assert r == [0, 0, 1, 0, 1, 1, 1, 1, 2, 0, 0, 1, 3, 1, 2, 0, 0, 0, 0, 7]

    arun(main)


def test_flatten_filter_pipeline_old_suite(arun):
    """The old test_filter_pipeline: flatten_aiter(map_aiter(async filter, q))."""

    async def keep_nonzero(list_of_lists):
        return [item for sub in list_of_lists for item in sub if item != 0]

    test_case = [(0, 0, 0, 7), (5, 0, 0, 0), (0, 0, 1, 0), (1, 1, 1, 1), (2, 0, 0, 1), (3, 1, 2, 0)]

    async def main():
        q = push_aiter()
        fi = flatten_aiter(map_aiter(keep_nonzero, q))
        q.push(test_case)
        q.stop()
        assert await get_n(fi, 12) == [7, 5, 1, 1, 1, 1, 1, 2, 1, 3, 1, 2]
        assert await get_n(fi) == []

    arun(main)


def test_flatten_non_iterable_element_raises(arun):
    """[[1,2], 5, [3]] yields 1, 2, then TypeError naming the element; the outer is closed."""

    async def main():
        outer = Seq([[1, 2], 5, [3]])
        fi = flatten_aiter(outer)
        out = []
        with pytest.raises(TypeError, match=r"not iterable: 5 \(int\)"):
            async for x in fi:
                out.append(x)
        assert out == [1, 2]
        assert outer.closed_count == 1
        assert await exhausted(fi)
        # The same with a sync outer iterable.
        with pytest.raises(TypeError, match=r"not iterable: 5 \(int\)"):
            await get_n(flatten_aiter([[1, 2], 5, [3]]))

    arun(main)


def test_flatten_async_inner_early_exit(arun):
    """Leaving after one item closes the first inner and the outer; the second is never made."""

    async def main():
        created: list[Src] = []
        outer_closed = 0

        async def outer():
            nonlocal outer_closed
            try:
                for _ in range(2):
                    src = Src(3)
                    created.append(src)
                    yield src
            finally:
                outer_closed += 1

        async with flatten_aiter(outer()) as fi:
            async for x in fi:
                assert x == 0
                break
        assert len(created) == 1
        assert created[0].closed_count == 1
        assert created[0].pulls == 1
        assert created[0].finally_task is asyncio.current_task()
        assert outer_closed == 1

    arun(main)


def test_flatten_aclose_closes_inner_and_outer(arun):
    """await aclose() mid-inner closes the current inner and the outer."""

    async def main():
        inner = Src(5)
        outer = Seq([inner, [9]])
        fi = flatten_aiter(outer)
        assert await anext(fi) == 0
        await fi.aclose()
        assert inner.closed_count == 1
        assert outer.closed_count == 1
        assert await exhausted(fi)

    arun(main)


def test_flatten_mixed_sync_and_async_inners(arun):
    """Sync and async inner iterables mix freely; each async inner is closed when it ends."""

    async def main():
        inner = Src(2)
        elements = [[1, 2], inner, (x for x in [3]), iter_to_aiter([4, 5]), "ab", range(6, 8)]
        out = [x async for x in flatten_aiter(elements)]
        assert out == [1, 2, 0, 1, 3, 4, 5, "a", "b", 6, 7]
        assert inner.closed_count == 1

    arun(main)


def test_flatten_empty_inners_skipped(arun):
    """Empty inner iterables (sync or async) contribute nothing."""

    async def main():
        empty = Src(0)
        assert [x async for x in flatten_aiter(Seq([[], [1], (), empty, [2], []]))] == [1, 2]
        assert empty.closed_count == 1
        assert [x async for x in flatten_aiter([[], []])] == []

    arun(main)


def test_flatten_inner_error_propagates_and_closes_outer(arun):
    """An async inner's error propagates after its items; inner and outer are closed."""

    async def main():
        inner = Src(3, fail_at=1)
        outer = Seq([[7], inner, [8]])
        out = []
        with pytest.raises(ValueError, match="source failed at 1"):
            async for x in flatten_aiter(outer):
                out.append(x)
        assert out == [7, 0]
        assert inner.closed_count == 1
        assert outer.closed_count == 1

    arun(main)


def test_flatten_non_iterable_argument():
    """flatten_aiter(5) raises TypeError at the call."""
    with pytest.raises(TypeError, match=r"flatten_aiter\(\): aiter must be an async iterable"):
        flatten_aiter(5)


# -- map_aiter: sequential semantics (and the same with workers) ------------------------------


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_map_push_aiter_old_suite(arun, kind, workers):
    """push 5,4,3 + stop; map_aiter(+1) gives [6,5,4]; the side-effect log is [5,4,3]."""

    async def main():
        log: list[int] = []

        def sync_f(item):
            log.append(item)
            return item + 1

        async def async_f(item):
            log.append(item)
            return item + 1

        q = push_aiter()
        q.push(5, 4, 3)
        q.stop()
        assert list(q.available_iter()) == [5, 4, 3]
        f = sync_f if kind == "sync" else async_f
        assert await get_n(map_aiter(f, q, workers)) == [6, 5, 4]
        assert log == [5, 4, 3]

    arun(main)


def fail_on_2(kind: str, error: Callable[[], BaseException]) -> Callable[[int], Any]:
    """A sync or async map_f that returns ``10 * x``, and raises ``error()`` for item 2."""

    def sync_f(x):
        if x == 2:
            raise error()
        return x * 10

    async def async_f(x):
        await asyncio.sleep(0)
        return sync_f(x)

    return sync_f if kind == "sync" else async_f


def raise_on_2(kind: str) -> Callable[[int], Any]:
    return fail_on_2(kind, lambda: ValueError("bad item 2"))


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_map_error_propagates_after_earlier_items(arun, kind, workers):
    """f raises on 2 over [1,2,3]: 10 is yielded, then ValueError; the source is closed."""

    async def main():
        src = Seq([1, 2, 3])
        m = map_aiter(raise_on_2(kind), src, worker_count=workers)
        out = []
        with pytest.raises(ValueError, match="bad item 2"):
            async for y in m:
                out.append(y)
        assert out == [10]
        assert src.closed_count == 1
        # worker_count > 1: the map's own tasks read and close the source, in one context
        assert (src.finally_task is asyncio.current_task()) == (workers == 1)
        assert await exhausted(m)

    arun(main)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_map_on_error_skip(arun, kind, workers):
    """on_error="skip" drops the failing item: [10, 30]; the source is closed at the end."""

    async def main():
        src = Seq([1, 2, 3])
        out = [y async for y in map_aiter(raise_on_2(kind), src, workers, on_error="skip")]
        assert out == [10, 30]
        assert src.closed_count == 1

    arun(main)


@pytest.mark.parametrize("workers", [1, 3])
def test_map_on_error_callable(arun, workers):
    """on_error=callable is called with (item, exc) and the item dropped."""

    async def main():
        seen: list[tuple[int, Exception]] = []
        out = [
            y
            async for y in map_aiter(
                raise_on_2("async"),
                [1, 2, 3],
                worker_count=workers,
                on_error=lambda item, exc: seen.append((item, exc)),
            )
        ]
        assert out == [10, 30]
        assert len(seen) == 1
        item, exc = seen[0]
        assert item == 2
        assert isinstance(exc, ValueError) and str(exc) == "bad item 2"

    arun(main)


def stop_on_2(kind: str, stop: type[BaseException]) -> Callable[[int], Any]:
    return fail_on_2(kind, lambda: stop("no value for 2"))


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("stop", [StopIteration, StopAsyncIteration])
def test_map_f_raising_stop_iteration_is_an_error_at_its_place(arun, stop, kind, workers):
    """map_f's StopIteration/StopAsyncIteration: a RuntimeError after 10, never a quiet end.

    Before, a StopAsyncIteration raised by map_f left ``__anext__`` as it was and the reader
    took it for the end of the stream ([10], no error: item 3 lost).
    """

    async def main():
        src = Seq([1, 2, 3])
        out = []
        with pytest.raises(RuntimeError, match=f"raised {stop.__name__}") as info:
            async for y in map_aiter(stop_on_2(kind, stop), src, worker_count=workers):
                out.append(y)
        assert out == [10]
        assert type(info.value.__cause__) is stop
        if kind == "sync" or stop is StopAsyncIteration:  # else Python's own: "coroutine raised"
            assert "map_f" in str(info.value)
        assert src.closed_count == 1

    arun(main)


@pytest.mark.parametrize("workers", [1, 3])
def test_map_on_error_skip_drops_an_item_whose_map_f_raised_stop_iteration(arun, workers):
    async def main():
        fn = stop_on_2("sync", StopAsyncIteration)
        assert [y async for y in map_aiter(fn, [1, 2, 3], workers, on_error="skip")] == [10, 30]

    arun(main)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("stop", [StopIteration, StopAsyncIteration])
def test_map_on_error_raising_stop_iteration_is_an_error(arun, stop, workers):
    """An on_error callable's StopIteration/StopAsyncIteration does not end the map quietly."""

    def on_error(item, exc):
        raise stop

    async def main():
        m = map_aiter(raise_on_2("sync"), [1, 2, 3], workers, on_error=on_error)
        out = []
        with pytest.raises(RuntimeError, match=f"on_error .*on_error raised {stop.__name__}"):
            async for y in m:
                out.append(y)
        assert out == [10]

    arun(main)


@pytest.mark.parametrize("workers", [1, 3])
def test_map_awaitable_detection(arun, workers):
    """A lambda returning a coroutine, an async __call__ object and a partial are all awaited."""

    class AsyncCallable:
        async def __call__(self, x):
            await asyncio.sleep(0)
            return x

    async def ident(x, *, tag):
        await asyncio.sleep(0)
        return x

    async def main():
        fns = [
            lambda x: asyncio.sleep(0, x),
            AsyncCallable(),
            functools.partial(ident, tag="p"),
        ]
        for fn in fns:
            assert [y async for y in map_aiter(fn, range(6), workers)] == list(range(6))

    arun(main)


def test_map_seed_call_forms(arun):
    """map_aiter(f, it), map_aiter(f, it, 4) and map_aiter(f, it, worker_count=4) with sync f."""

    def square(x):
        return x * x

    async def main():
        expected = [x * x for x in range(20)]
        assert [y async for y in map_aiter(square, iter_to_aiter(range(20)))] == expected
        assert [y async for y in map_aiter(square, range(20), 4)] == expected
        src = Src(20)
        assert [y async for y in map_aiter(square, src, worker_count=4)] == expected
        assert src.closed_count == 1

    arun(main)


def test_map_built_outside_a_loop(arun):
    """Streams built before any loop runs work inside it (nothing binds a loop at construction)."""

    async def double(x):
        return 2 * x

    m = map_aiter(double, range(5), worker_count=3)
    z = azip("abc", range(3))
    f = flatten_aiter([[1], [2, 3]])
    i = iter_to_aiter(range(3), checkpoint_every=1)

    async def main():
        assert [y async for y in m] == [0, 2, 4, 6, 8]
        assert [t async for t in z] == [("a", 0), ("b", 1), ("c", 2)]
        assert [x async for x in f] == [1, 2, 3]
        assert [x async for x in i] == [0, 1, 2]

    arun(main)


def test_map_validation_errors():
    """Bad arguments raise at the call: ValueError for values, TypeError for types."""

    def f(x):
        return x

    with pytest.raises(ValueError, match="worker_count must be at least 1"):
        map_aiter(f, [], worker_count=0)
    with pytest.raises(ValueError, match="window must be at least 4"):
        map_aiter(f, [], worker_count=4, window=3)
    with pytest.raises(ValueError, match="on_error must be"):
        map_aiter(f, [], on_error="bogus")
    with pytest.raises(TypeError, match="map_f must be callable"):
        map_aiter(5, [])
    with pytest.raises(TypeError, match="worker_count must be an int"):
        map_aiter(f, [], worker_count=2.0)
    with pytest.raises(TypeError, match=r"map_aiter\(\): aiter must be an async iterable"):
        map_aiter(f, 5)
    with pytest.raises(ValueError, match="worker_count must be at least 1"):
        map_filter_aiter(f, [], worker_count=0)
    with pytest.raises(ValueError, match="on_error must be"):
        map_filter_aiter(f, [], on_error="bogus")
    with pytest.raises(TypeError, match="map_f must be callable"):
        map_filter_aiter(None, [])


def test_map_sequential_async_with_closes_source(arun):
    """worker_count=1: leaving async with early closes the source in the reader's task."""

    async def main():
        src = Src(None)
        async with map_aiter(lambda x: x + 1, src) as m:
            assert await anext(m) == 1
        assert src.closed_count == 1
        assert src.finally_task is asyncio.current_task()
        assert src.ctx_ok
        assert await exhausted(m)

    arun(main)


# -- map_aiter: concurrent ----------------------------------------------------------------------


def test_map_ordered_no_head_of_line_blocking(arun):
    """Ordered, 2 workers, window 8: items 1..7 start while item 0 is blocked; output in order."""

    async def main():
        release = asyncio.Event()
        started: list[int] = []

        async def fn(x):
            started.append(x)
            if x == 0:
                await release.wait()
            return x

        src = Src(20)
        consumer = asyncio.create_task(
            get_n(map_aiter(fn, src, worker_count=2, window=8, ordered=True))
        )
        await until(lambda: len(started) == 8)
        await turns(10)  # give a library that over-pulls the chance to show it
        assert started == list(range(8))
        assert src.pulls == 8  # the window bounds started-but-not-yielded items
        assert not consumer.done()
        release.set()
        assert await consumer == list(range(20))
        assert src.closed_count == 1
        # the map's own tasks read and close the source, in one context
        assert src.finally_task not in (None, consumer)
        assert src.ctx_ok

    arun(main)


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("workers", [2, 5])
def test_map_concurrency_bound(arun, workers, ordered):
    """Over 50 items the peak number of calls in flight is exactly worker_count."""

    async def main():
        inflight = peak = 0

        async def fn(x):
            nonlocal inflight, peak
            inflight += 1
            peak = max(peak, inflight)
            try:
                await turns(8 + x % 3)  # long enough for the map to start worker_count calls
            finally:
                inflight -= 1
            return 2 * x

        src = Src(50, checkpoint=False)
        out = [y async for y in map_aiter(fn, src, workers, ordered=ordered)]
        expected = [2 * x for x in range(50)]
        assert (out if ordered else sorted(out)) == expected
        assert peak == workers
        assert inflight == 0
        assert src.closed_count == 1

    arun(main)


def test_map_unordered_completion_order(arun):
    """ordered=False yields as calls finish: slow item 0 comes last."""

    async def main():
        release = asyncio.Event()

        async def fn(x):
            if x == 0:
                await release.wait()
            return x

        src = Src(5, checkpoint=False)
        async with map_aiter(fn, src, worker_count=2, ordered=False) as m:
            first = [await anext(m) for _ in range(4)]
            assert first == [1, 2, 3, 4]
            release.set()
            assert [y async for y in m] == [0]
        assert src.closed_count == 1

    arun(main)


def test_map_concurrent_error_cancels_calls_in_flight(arun):
    """Item 5 of 4 workers fails: 0..4, then the error; calls in flight cancelled; pulls bounded."""

    async def main():
        never = asyncio.Event()
        started: list[int] = []
        cancelled: list[int] = []
        window = 8

        async def fn(x):
            started.append(x)
            if x < 5:
                return x
            if x == 5:
                await turns(10)  # long enough for the map to start later calls
                raise ValueError("item 5 failed")
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled.append(x)
                raise
            raise AssertionError("unreachable")

        src = Src(None)
        m = map_aiter(fn, src, worker_count=4, window=window)
        out = []
        with pytest.raises(ValueError, match="item 5 failed"):
            async for y in m:
                out.append(y)
        assert out == [0, 1, 2, 3, 4]
        in_flight = [x for x in started if x > 5]
        assert in_flight  # some later calls were running when 5 failed
        assert sorted(cancelled) == sorted(in_flight)
        # A call whose task was cancelled before its first step never ran fn: started <= pulls.
        assert len(started) <= src.pulls <= 5 + window
        assert src.closed_count == 1
        assert src.finally_task is not asyncio.current_task()  # the map's own tasks close it
        assert src.ctx_ok
        pulls = src.pulls
        await turns(10)
        assert src.pulls == pulls
        assert await exhausted(m)

    arun(main)


def test_map_concurrent_source_error_after_started_calls(arun):
    """A source error reaches the reader after the results of the items before it."""

    async def main():
        async def fn(x):
            await turns(x % 3)
            return x * 10

        for ordered in (True, False):
            src = Src(10, fail_at=4)
            out = []
            with pytest.raises(ValueError, match="source failed at 4"):
                async for y in map_aiter(fn, src, worker_count=3, ordered=ordered):
                    out.append(y)
            assert sorted(out) == [0, 10, 20, 30]
            if ordered:
                assert out == [0, 10, 20, 30]
            assert src.closed_count == 1

    arun(main)


def test_map_break_plain_async_for_closes_source(arun):
    """break out of a plain async for: calls cancelled within a few turns, source closed."""

    async def main():
        started: list[int] = []
        cancelled: list[int] = []
        src = Src(None)
        fn = blocked_fn(started, cancelled, quick=lambda x: x == 0)
        async for y in map_aiter(fn, src, worker_count=3):
            assert y == 0
            break
        await turns(5)
        assert started[1:] and sorted(cancelled) == sorted(started[1:])
        assert src.closed_count == 1

    arun(main)


def test_map_break_plain_async_for_cancels_calls(arun):
    """break out of a plain async for: calls cancelled within a few turns; a source only the
    stream held is closed (by the loop's async-generator finalizer) within a few turns."""

    async def main():
        started: list[int] = []
        cancelled: list[int] = []
        rec = {"pulls": 0, "closed": 0}
        fn = blocked_fn(started, cancelled, quick=lambda x: x == 0)
        async for y in map_aiter(fn, recorded(None, rec), worker_count=3):
            assert y == 0
            break
        await turns(5)
        assert started[0] == 0
        assert started[1:]  # calls were in flight at the break
        assert sorted(cancelled) == sorted(started[1:])
        assert rec["closed"] == 1
        assert len(started) <= rec["pulls"] <= 3 + 3  # window: 2 * worker_count

    arun(main)


def test_map_async_with_exit_cancels_and_awaits_calls(arun):
    """Leaving async with cancels the calls in flight and waits for their cleanup, then closes."""

    async def main():
        started: list[int] = []
        cancelled: list[int] = []
        finished: list[int] = []
        src = Src(None)
        fn = blocked_fn(started, cancelled, quick=lambda x: x == 0, finished=finished)
        async with map_aiter(fn, src, worker_count=3) as m:
            async for y in m:
                assert y == 0
                break
        in_flight = started[1:]
        assert in_flight
        assert sorted(cancelled) == sorted(in_flight)
        assert sorted(finished) == sorted(in_flight)  # awaited, not just cancelled
        assert src.closed_count == 1
        # the map's own tasks read and close the source, in one context
        assert src.finally_task not in (None, asyncio.current_task())
        assert src.ctx_ok
        assert src.ctx_ok

    arun(main)


def test_map_aclose_cancels_and_awaits_calls(arun):
    """await aclose() on a concurrent map does what leaving async with does."""

    async def main():
        started: list[int] = []
        cancelled: list[int] = []
        finished: list[int] = []
        src = Src(None)
        m = map_aiter(
            blocked_fn(started, cancelled, quick=lambda x: x % 2 == 0, finished=finished),
            src,
            worker_count=4,
            ordered=False,
        )
        assert await anext(m) == 0
        await m.aclose()
        in_flight = [x for x in started if x % 2]
        assert in_flight
        assert sorted(finished) == sorted(in_flight)
        assert src.closed_count == 1
        assert await exhausted(m)
        await m.aclose()  # idempotent
        assert src.closed_count == 1

    arun(main)


def test_map_reader_cancelled_inside_async_with(arun):
    """Reader cancelled mid-stream: CancelledError out; calls cancelled, awaited; source closed."""

    async def main():
        started: list[int] = []
        cancelled: list[int] = []
        finished: list[int] = []
        got: list[int] = []
        src = Src(None)
        fn = blocked_fn(started, cancelled, quick=lambda x: x == 0, finished=finished)

        async def reader():
            async with map_aiter(fn, src, worker_count=3) as m:
                async for y in m:
                    got.append(y)

        task = asyncio.create_task(reader())
        await until(lambda: got == [0] and len(started) == 4)
        await turns(5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert got == [0]
        in_flight = started[1:]
        assert sorted(cancelled) == sorted(in_flight)
        assert sorted(finished) == sorted(in_flight)
        assert src.closed_count == 1
        # the map's own tasks read and close the source, in one context
        assert src.finally_task not in (None, task)
        assert src.ctx_ok
        assert src.ctx_ok

    arun(main)


def test_map_cancelled_read_loses_no_result(arun):
    """A read cancelled while waiting leaves the calls running; the next read gets the result."""

    async def main():
        gate = asyncio.Event()

        async def fn(x):
            if x == 1:
                await gate.wait()
            return x

        src = Src(4, checkpoint=False)  # pulls never suspend: the cancel lands in the wait
        async with map_aiter(fn, src, worker_count=2, ordered=True) as m:
            assert await anext(m) == 0
            reader = asyncio.create_task(m.__anext__())
            await turns(5)
            assert not reader.done()
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            gate.set()
            assert [y async for y in m] == [1, 2, 3]
        assert src.closed_count == 1

    arun(main)


def test_map_sequential_read_cancelled_while_pulling_a_generator_fails_loudly(arun):
    """worker_count=1 reads in the reader's task: a read cancelled inside an async generator
    source kills it, and the next read says so instead of looking like a normal end."""

    async def main():
        gate = asyncio.Event()
        gate.set()
        src = Src(10, gate=gate)
        async with map_aiter(lambda x: x, src) as m:
            assert await anext(m) == 0
            gate.clear()
            reader = asyncio.create_task(m.__anext__())
            await turns(5)  # the reader now waits in the source, for the gate
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            gate.set()
            with pytest.raises(RuntimeError, match=r"finalized.*sharable_aiter"):
                await anext(m)
        assert src.closed_count == 1

    arun(main)


def test_map_concurrent_read_cancelled_while_pulling_a_generator_loses_nothing(arun):
    """worker_count > 1 reads the source in a task of its own: a cancelled read leaves that
    pull running for the next read, and the generator is not finalized."""

    async def main():
        gate = asyncio.Event()
        gate.set()
        src = Src(10, gate=gate)
        async with map_aiter(lambda x: x, src, worker_count=2) as m:
            assert await anext(m) == 0
            gate.clear()
            got = []
            reader = asyncio.create_task(m.__anext__())
            await turns(5)  # the reader waits for a result or for the source (the gate)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                got.append(await reader)  # it may have had a result already
            gate.set()
            got += [y async for y in m]
            assert got == list(range(1, 10))
        assert src.closed_count == 1
        assert src.ctx_ok

    arun(main)


@pytest.mark.parametrize("workers", [1, 2])
def test_map_read_cancelled_while_pulling_a_queue_loses_nothing(arun, workers):
    """With a source whose reads are safe to cancel, a cancelled read loses nothing."""

    async def main():
        q = push_aiter()
        q.push(0)
        async with map_aiter(lambda x: x, q, worker_count=workers) as m:
            assert await anext(m) == 0
            reader = asyncio.create_task(m.__anext__())
            await turns(5)  # the reader waits in the empty queue
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            q.push(*range(1, 10))
            q.stop()
            assert [y async for y in m] == list(range(1, 10))

    arun(main)


def test_map_sequential_read_cancelled_during_call_drops_that_item(arun):
    """worker_count=1 runs the call in the reader's task: cancelling the read cancels it.

    The item whose call was cancelled is dropped (as in a hand-written ``async for`` loop);
    the map goes on with the next item.
    """

    async def main():
        gate = asyncio.Event()
        started = []

        async def fn(x):
            started.append(x)
            if x == 1:
                await gate.wait()
            return x

        async with map_aiter(fn, Src(4)) as m:
            assert await anext(m) == 0
            reader = asyncio.create_task(m.__anext__())
            await turns(5)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            gate.set()
            assert [y async for y in m] == [2, 3]
        assert started == [0, 1, 2, 3]

    arun(main)


# -- map_filter_aiter -------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 3])
def test_map_filter_repeat_by_mod(arun, workers):
    """fn(x) = [x] * (x % 3) over range(6) gives [1, 2, 2, 4, 5, 5]."""

    async def main():
        out = [y async for y in map_filter_aiter(lambda x: [x] * (x % 3), range(6), workers)]
        assert out == [1, 2, 2, 4, 5, 5]

    arun(main)


def test_map_filter_async_fn(arun):
    """An async fn returning a list works; empty lists filter the item out."""

    async def evens_twice(x):
        await asyncio.sleep(0)
        return [x, x] if x % 2 == 0 else []

    async def main():
        src = Src(5)
        assert [y async for y in map_filter_aiter(evens_twice, src)] == [0, 0, 2, 2, 4, 4]
        assert src.closed_count == 1

    arun(main)


def test_map_filter_concurrent_keeps_per_item_order(arun):
    """worker_count > 1: each item's results stay together and in order, items in input order."""

    async def fn(x):
        await turns((7 - x) % 4)  # later items often finish first
        return [(x, 0), (x, 1), (x, 2)]

    async def main():
        out = [y async for y in map_filter_aiter(fn, range(8), worker_count=4, ordered=True)]
        assert out == [(x, k) for x in range(8) for k in range(3)]
        out = [y async for y in map_filter_aiter(fn, range(8), worker_count=4, ordered=False)]
        assert sorted(out) == [(x, k) for x in range(8) for k in range(3)]
        for i in range(0, len(out), 3):  # each item's group is contiguous and in order
            x = out[i][0]
            assert out[i : i + 3] == [(x, 0), (x, 1), (x, 2)]

    arun(main)


@pytest.mark.parametrize("workers", [1, 3])
def test_map_filter_f_raising_stop_async_iteration_is_an_error(arun, workers):
    """map_filter_aiter's map_f raising StopAsyncIteration: an error after [1], not the end."""

    def fn(x):
        if x == 2:
            raise StopAsyncIteration
        return [x]

    async def main():
        out = []
        with pytest.raises(RuntimeError, match="raised StopAsyncIteration"):
            async for y in map_filter_aiter(fn, [1, 2, 3], workers):
                out.append(y)
        assert out == [1]

    arun(main)


def one_then_stop_async() -> Any:
    """A sync generator: a StopAsyncIteration inside it leaves it as it is (PEP 479 is for
    StopIteration only)."""
    yield 1
    raise StopAsyncIteration("from inside the generator")


@pytest.mark.parametrize("how", ["iter_to_aiter", "to_thread", "flatten", "map_source"])
def test_sync_iterator_raising_stop_async_iteration_is_an_error(arun, how):
    """Where sync iteration enters async iteration, a StopAsyncIteration is not the end.

    Before, it left ``__anext__`` as it was, and the reader took it for the end of the stream.
    """

    async def main():
        if how == "iter_to_aiter":
            stream: Any = iter_to_aiter(one_then_stop_async())
        elif how == "to_thread":
            stream = iter_to_aiter(one_then_stop_async(), to_thread=True)
        elif how == "flatten":
            stream = flatten_aiter([one_then_stop_async(), [2]])
        else:
            stream = map_aiter(lambda x: x, one_then_stop_async(), 2)
        out = []
        with pytest.raises(RuntimeError, match="one_then_stop_async raised StopAsyncIteration"):
            async for y in stream:
                out.append(y)
        assert out == [1]

    arun(main)


@pytest.mark.parametrize("workers", [1, 3])
def test_map_filter_non_iterable_result(arun, workers):
    """fn returning a non-iterable raises TypeError after the items before it; source closed."""

    async def main():
        src = Seq([0, 1, 2, 3])
        out = []
        with pytest.raises(TypeError, match=r"not iterable: 5 \(int\)"):
            async for y in map_filter_aiter(lambda x: 5 if x == 2 else [x], src, workers):
                out.append(y)
        assert out == [0, 1]
        assert src.closed_count == 1

    arun(main)


def test_map_filter_async_with_exit_cancels_calls(arun):
    """Leaving async with on a concurrent map_filter_aiter cancels and awaits the calls."""

    async def main():
        started: list[int] = []
        cancelled: list[int] = []
        finished: list[int] = []
        src = Src(None)
        fn = blocked_fn(started, cancelled, quick=lambda x: x == 0, finished=finished)

        async def listed(x):
            return [await fn(x)]

        async with map_filter_aiter(listed, src, worker_count=3) as m:
            assert await anext(m) == 0
        assert started[1:]
        assert sorted(finished) == sorted(started[1:])
        assert src.closed_count == 1
        # the map's own tasks read and close the source, in one context
        assert src.finally_task not in (None, asyncio.current_task())
        assert src.ctx_ok

    arun(main)


# -- iter_to_aiter ----------------------------------------------------------------------------


class Ticker:
    """A side task counting its loop turns."""

    def __init__(self) -> None:
        self.ticks = 0
        self._running = True
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._running:
            self.ticks += 1
            await asyncio.sleep(0)

    async def stop(self) -> None:
        self._running = False
        await self.task


def test_iter_to_aiter_checkpoint_every(arun):
    """checkpoint_every=100 over range(10_000): a side task runs 100 times meanwhile."""

    async def main():
        ticker = Ticker()
        await asyncio.sleep(0)
        before = ticker.ticks
        out = [x async for x in iter_to_aiter(range(10_000), checkpoint_every=100)]
        during = ticker.ticks - before
        await ticker.stop()
        assert out == list(range(10_000))
        assert during == 100  # one turn per 100 items

    arun(main)


def test_iter_to_aiter_never_suspends_by_default(arun):
    """Without checkpoint_every a list is iterated without yielding to the loop."""

    async def main():
        ticker = Ticker()
        await asyncio.sleep(0)
        before = ticker.ticks
        out = [x async for x in iter_to_aiter(list(range(1000)))]
        during = ticker.ticks - before
        await ticker.stop()
        assert out == list(range(1000))
        assert during == 0

    arun(main)


def test_iter_to_aiter_early_close_runs_generator_finally(arun):
    """Closing the stream early (async with, aclose) closes the sync generator: its finally runs."""

    async def main():
        closed: list[str] = []

        def gen(tag):
            try:
                yield from range(10)
            finally:
                closed.append(tag)

        async with iter_to_aiter(gen("with")) as s:
            async for x in s:
                if x == 2:
                    break
        assert closed == ["with"]
        s = iter_to_aiter(gen("aclose"))
        assert await anext(s) == 0
        await s.aclose()
        assert closed == ["with", "aclose"]
        assert await exhausted(s)
        await s.aclose()  # idempotent
        assert closed == ["with", "aclose"]

    arun(main)


def test_iter_to_aiter_closes_plain_iterator_once(arun):
    """An iterator with a close() method is closed exactly once, at exhaustion."""

    class It:
        def __init__(self):
            self.n = 0
            self.closes = 0

        def __iter__(self):
            return self

        def __next__(self):
            if self.n == 3:
                raise StopIteration
            self.n += 1
            return self.n

        def close(self):
            self.closes += 1

    async def main():
        it = It()
        s = iter_to_aiter(it)
        assert [x async for x in s] == [1, 2, 3]
        assert it.closes == 1
        await s.aclose()
        assert it.closes == 1

    arun(main)


def test_iter_to_aiter_error_propagates_once(arun):
    """An error from next() propagates after the items before it; later reads end."""

    def gen():
        yield 1
        raise KeyError("boom")

    async def main():
        s = iter_to_aiter(gen())
        assert await anext(s) == 1
        with pytest.raises(KeyError, match="boom"):
            await anext(s)
        assert await exhausted(s)

    arun(main)


def test_iter_to_aiter_to_thread_runs_next_off_loop(arun):
    """to_thread=True runs each next() in a worker thread, not the loop's."""

    async def main():
        loop_thread = threading.get_ident()
        idents: list[int] = []

        def gen():
            for i in range(5):
                idents.append(threading.get_ident())
                yield i

        assert [x async for x in iter_to_aiter(gen(), to_thread=True)] == list(range(5))
        assert len(idents) == 5
        assert loop_thread not in idents

    arun(main)


def blocking_gen(loop: asyncio.AbstractEventLoop, entered: Any, go: threading.Event, log: list):
    """A generator whose first next() signals ``entered`` and blocks (in a thread) on ``go``."""
    try:
        loop.call_soon_threadsafe(entered.set_result, None)
        # Bounded, so a failing test cannot hang the executor shutdown of asyncio.run.
        go.wait(timeout=BOUND)
        yield "a"
        yield "b"
    finally:
        log.append("closed")


def test_iter_to_aiter_to_thread_cancelled_read_keeps_item(arun):
    """to_thread=True: a read cancelled during next() leaves its item for the next read."""

    async def main():
        loop = asyncio.get_running_loop()
        entered = loop.create_future()
        go = threading.Event()
        log: list[str] = []
        s = iter_to_aiter(blocking_gen(loop, entered, go, log), to_thread=True)
        try:
            reader = asyncio.create_task(s.__anext__())
            await entered
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            go.set()
            assert await anext(s) == "a"
            assert [x async for x in s] == ["b"]
            assert log == ["closed"]
        finally:
            go.set()
            await s.aclose()

    arun(main)


def test_iter_to_aiter_to_thread_aclose_waits_for_running_next(arun):
    """aclose() waits for a next() still running in its thread, then closes the iterator."""

    async def main():
        loop = asyncio.get_running_loop()
        entered = loop.create_future()
        go = threading.Event()
        log: list[str] = []
        s = iter_to_aiter(blocking_gen(loop, entered, go, log), to_thread=True)
        try:
            reader = asyncio.create_task(s.__anext__())
            await entered
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            closer = asyncio.create_task(s.aclose())
            await turns(5)
            assert not closer.done()
            assert log == []
            go.set()
            await closer
            assert log == ["closed"]
            assert await exhausted(s)
        finally:
            go.set()
            await s.aclose()

    arun(main)


def test_iter_to_aiter_bad_arguments():
    """A bad checkpoint_every or a non-iterable raises at the call."""
    with pytest.raises(ValueError, match="checkpoint_every must be at least 1"):
        iter_to_aiter([], checkpoint_every=0)
    with pytest.raises(ValueError, match="checkpoint_every must be at least 1"):
        iter_to_aiter([], checkpoint_every=-5)
    with pytest.raises(TypeError, match="checkpoint_every must be an int"):
        iter_to_aiter([], checkpoint_every="100")
    with pytest.raises(TypeError, match="checkpoint_every must be an int"):
        iter_to_aiter([], checkpoint_every=True)
    with pytest.raises(TypeError, match=r"^iter_to_aiter\(\): iter must be an iterable, not int"):
        iter_to_aiter(5)
    with pytest.raises(TypeError, match="iter must be an iterable, not Src"):
        iter_to_aiter(Src(1))


# -- aiter_to_iter (sync tests: it refuses to run inside a loop) ------------------------------


async def agen(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(0)
        yield i


def test_aiter_to_iter_outside_loop():
    """list(aiter_to_iter(async gen)) works with no loop running (seed call form)."""
    assert list(aiter_to_iter(agen(5))) == [0, 1, 2, 3, 4]
    src = Src(3)
    assert list(aiter_to_iter(src)) == [0, 1, 2]
    assert src.closed_count == 1
    assert src.ctx_ok


def test_aiter_to_iter_inside_running_loop_raises():
    """Called inside asyncio.run, aiter_to_iter raises RuntimeError at once, pulling nothing."""
    src = Src(3)

    async def main():
        with pytest.raises(RuntimeError, match="inside a running event loop"):
            aiter_to_iter(src)

    asyncio.run(main())
    assert src.pulls == 0


def test_aiter_to_iter_close_closes_source():
    """next() then close() closes the source once, in its own context; the owned runner closes
    (the fd leak check would catch a runner left open)."""
    src = Src(10)
    it = aiter_to_iter(src)
    assert next(it) == 0
    it.close()
    assert src.closed_count == 1
    assert src.ctx_ok
    assert src.pulls == 1
    with pytest.raises(StopIteration):
        next(it)
    it.close()  # idempotent
    assert src.closed_count == 1


def test_aiter_to_iter_dropped_closes_source():
    """Dropping the iterator mid-stream closes the source."""
    src = Src(10)
    it = aiter_to_iter(src)
    assert next(it) == 0
    del it
    gc.collect()
    assert src.closed_count == 1


def test_aiter_to_iter_dropped_inside_running_loop_is_quiet():
    """Dropping a started iterator while a loop runs in this thread warns nothing."""
    src = Src(10)
    it: Any = aiter_to_iter(src)
    assert next(it) == 0

    async def main():
        nonlocal it
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            it = None
            gc.collect()
        assert [str(w.message) for w in caught] == []

    asyncio.run(main())


def test_aiter_to_iter_error_propagates_then_ends():
    """A source error comes out of next() after the items before it; then the iterator ends."""
    src = Src(5, fail_at=2)
    it = aiter_to_iter(src)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(ValueError, match="source failed at 2"):
        next(it)
    assert src.closed_count == 1
    with pytest.raises(StopIteration):
        next(it)


def test_aiter_to_iter_stream_with_background_tasks():
    """A concurrent map driven through aiter_to_iter gives its results in order."""

    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    src = Src(10)
    assert list(aiter_to_iter(map_aiter(double, src, worker_count=3))) == [2 * x for x in range(10)]
    assert src.closed_count == 1


def test_aiter_to_iter_caller_runner_stays_open():
    """With a caller-supplied Runner the runner stays open and usable afterwards."""
    with asyncio.Runner() as runner:
        src = Src(3)
        it = aiter_to_iter(src, runner=runner)
        assert list(it) == [0, 1, 2]
        assert src.closed_count == 1
        assert src.ctx_ok
        it.close()
        assert not runner.get_loop().is_closed()
        assert runner.run(asyncio.sleep(0, "still usable")) == "still usable"
        src2 = Src(5)
        it2 = aiter_to_iter(src2, runner=runner)
        assert next(it2) == 0
        it2.close()
        assert src2.closed_count == 1
        assert runner.run(asyncio.sleep(0, 7)) == 7


def test_aiter_to_iter_with_loop():
    """With loop= a new, not running loop, it works on that loop; the loop is left open."""
    loop = asyncio.new_event_loop()
    try:
        src = Src(3)
        assert list(aiter_to_iter(src, loop)) == [0, 1, 2]
        assert src.closed_count == 1
        assert not loop.is_closed()
        assert loop.run_until_complete(asyncio.sleep(0, 7)) == 7
        src2 = Src(5)
        it = aiter_to_iter(src2, loop=loop)
        assert next(it) == 0
        it.close()
        assert src2.closed_count == 1
    finally:
        loop.close()


def test_aiter_to_iter_with_loop_keeps_one_context():
    """With loop=, the source runs in one context across next() calls, as with a Runner."""
    loop = asyncio.new_event_loop()
    try:
        src = Src(5)
        it = aiter_to_iter(src, loop)
        assert next(it) == 0
        it.close()
        assert src.closed_count == 1
        assert src.ctx_ok
    finally:
        loop.close()


def test_aiter_to_iter_bad_arguments():
    """Both loop and runner, or a non-async-iterable, raise TypeError."""
    loop = asyncio.new_event_loop()
    try:
        with asyncio.Runner() as runner, pytest.raises(TypeError, match="not both"):
            aiter_to_iter(Src(1), loop, runner=runner)
    finally:
        loop.close()
    with pytest.raises(
        TypeError, match=r"^aiter_to_iter\(\): aiter must be an async iterable, not list"
    ):
        aiter_to_iter([1, 2])


def test_map_seed_form_yields_in_completion_order(arun):
    """map_aiter(f, it, worker_count=N) yields as calls finish, as the original aiter did."""
    release = None

    async def fn(x):
        if x == 0:
            await release.wait()  # the first item is the slowest
        return x

    async def main():
        nonlocal release
        release = asyncio.Event()
        out = []
        async for y in map_aiter(fn, range(6), worker_count=3):
            out.append(y)
            if len(out) == 5:
                release.set()
        assert out[:5] == [1, 2, 3, 4, 5] and out[5] == 0

    arun(main)


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_map_default_window_is_twice_the_worker_count(arun, workers):
    """With the first call stuck, exactly 2 * worker_count calls are started, not one more.

    (worker_count=1 runs the calls one by one, in the reader's task: no window.)
    """
    release = None
    started: list[int] = []

    async def fn(x):
        started.append(x)
        if x == 0:
            await release.wait()
        return x

    async def main():
        nonlocal release
        release = asyncio.Event()
        m = map_aiter(fn, Src(None), worker_count=workers, ordered=True)
        reader = asyncio.create_task(m.__anext__())
        await turns(50)
        assert len(started) == 2 * workers, started
        release.set()
        assert await reader == 0
        await m.aclose()

    arun(main)
