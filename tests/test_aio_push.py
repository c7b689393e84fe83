"""`push_aiter` (cursors, forks, preflight, maxsize), `aiter_forker` (`Fork`) and `sharable_aiter`.

Every async body runs under `tests._aio.run` (the ``arun`` fixture): asyncio debug mode, the
default and (3.12+) the eager task factory, and a failure for any task left behind or anything
the loop reports. Ordering is by `asyncio.Event`, futures and `turns()`; the few time bounds
only show that something does *not* happen (a longer bound could only make them stricter).
"""

from __future__ import annotations

import asyncio
import gc
import math
import threading
import warnings
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _timing import BOUND

from inparallel import InParallelError
from inparallel.aio import (
    Fork,
    QueueFull,
    QueueStopped,
    aiter_forker,
    push_aiter,
    sharable_aiter,
)
from tests._aio import Src, arun, turns

FIXTURES = (arun,)  # pytest finds the `arun` fixture by its name in this module

#: "Nothing happened within this long" (seconds): a block shown with a bounded wait. Any
#: scheduling delay only makes the check stricter, so it cannot flake.
QUIET = 0.05

END = object()  # what `read_or_end` returns at the end of a stream


async def read_or_end(it: AsyncIterator[Any]) -> Any:
    """Read one item, or return END at the end (a task must not raise StopAsyncIteration)."""
    try:
        return await anext(it)
    except StopAsyncIteration:
        return END


async def drain(it: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in it]


def others() -> set[asyncio.Task[Any]]:
    """The tasks other than the test's own (the pumps, once a stream was read)."""
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


# =============================================================================================
# push_aiter
# =============================================================================================


def test_push_seed_lengths_stop_available_iter_and_iteration(arun):
    """The seed case: len 0 -> 2 -> 3, push after stop raises QueueStopped, peek, then read."""
    q: push_aiter[int] = push_aiter()
    assert len(q) == 0
    q.push(5, 4)
    assert len(q) == 2
    q.push(3)
    assert len(q) == 3
    q.stop()
    with pytest.raises(QueueStopped, match="after stop"):
        q.push(2)
    assert issubclass(QueueStopped, ValueError)
    assert issubclass(QueueStopped, InParallelError) and issubclass(QueueFull, InParallelError)
    with pytest.raises(ValueError):
        q.push(2)
    assert list(q.available_iter()) == [5, 4, 3]
    assert list(q.available_iter()) == [5, 4, 3]  # it did not consume
    assert len(q) == 3

    async def main():
        assert await drain(q) == [5, 4, 3]
        assert len(q) == 0
        assert await drain(q) == []  # the end is terminal

    arun(main)


def test_push_built_outside_any_loop_works_inside_asyncio_run(arun):
    """Construct, push and fork before any loop exists: no warning, and it works in the loop."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q: push_aiter[int] = push_aiter()
        f = q.fork()
        q.push(1)

    async def main():
        t = asyncio.create_task(drain(q))
        await turns(3)  # the reader now waits: the queue binds the loop here, not before
        q.push(2)
        q.stop()
        assert await t == [1, 2]
        assert await drain(f) == [1, 2]

    arun(main)


def test_push_wait_in_second_loop_raises_runtime_error(arun):
    """A queue that waited in one asyncio.run refuses to wait in another (not a hang)."""
    q: push_aiter[int] = push_aiter()

    async def first():
        t = asyncio.create_task(anext(q))
        await turns(3)
        assert not t.done()
        q.push(1)
        assert await t == 1

    async def second():
        with pytest.raises(RuntimeError, match="another event loop"):
            await anext(q)

    arun(first)
    arun(second)


def test_push_cancel_waiting_reader_leaves_queue_open(arun):
    """Cancelling a waiting reader cancels only it: not stopped, others and new readers go on."""

    async def main():
        q: push_aiter[int] = push_aiter()
        other = q.fork()
        waiting = asyncio.create_task(anext(q))
        bystander = asyncio.create_task(drain(other))
        await turns(3)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert waiting.cancelled() is True
        assert q.is_stopped() is False
        assert not bystander.done()
        q.push(7)
        q.stop()
        assert await drain(q) == [7]
        assert await bystander == [7]

    arun(main)


@pytest.mark.parametrize("order", ["push_then_cancel", "cancel_then_push"])
def test_push_and_cancel_in_one_iteration_never_loses_the_item(arun, order):
    """push(1) and cancel() of the waiting reader in one loop iteration: 1 is never lost."""

    async def main():
        q: push_aiter[int] = push_aiter()
        t = asyncio.create_task(anext(q))
        await turns(3)
        if order == "push_then_cancel":
            q.push(1)
            t.cancel()
        else:
            t.cancel()
            q.push(1)
        got = []
        try:
            got.append(await t)
        except asyncio.CancelledError:
            assert t.cancelled()
        q.stop()
        assert got + await drain(q) == [1]

    arun(main)


def test_push_woken_reader_cancelled_leaves_item_to_other_sharer(arun):
    """Two tasks wait on one cursor; push(1) then cancel the first: the second gets 1."""

    async def main():
        q: push_aiter[int] = push_aiter()
        a = asyncio.create_task(anext(q))
        b = asyncio.create_task(anext(q))
        await turns(3)
        q.push(1)
        a.cancel()
        assert await asyncio.wait_for(b, BOUND) == 1
        assert a.cancelled()
        assert len(q) == 0

    arun(main)


def test_push_tasks_sharing_one_cursor_split_items_exactly_once(arun):
    """Two tasks iterating one push_aiter: 1..100 each delivered once, each task in order."""

    async def main():
        q: push_aiter[int] = push_aiter()
        got: list[list[int]] = [[], []]

        async def reader(i: int) -> None:
            async for x in q:
                got[i].append(x)

        tasks = [asyncio.create_task(reader(i)) for i in range(2)]
        for i in range(1, 101):
            q.push(i)
            if i % 7 == 0:
                await turns(1)
        q.stop()
        await asyncio.gather(*tasks)
        union = got[0] + got[1]
        assert len(union) == 100
        assert sorted(union) == list(range(1, 101))
        assert all(part == sorted(part) for part in got)

    arun(main)


def test_push_fork_before_pushing_broadcasts(arun):
    """q.fork() before pushing 1..3: q and the fork each read [1, 2, 3]."""

    async def main():
        q: push_aiter[int] = push_aiter()
        f = q.fork()
        q.push(1, 2, 3)
        q.stop()
        assert await drain(q) == [1, 2, 3]
        assert await drain(f) == [1, 2, 3]

    arun(main)


def test_push_passive_fork_does_not_call_preflight(arun):
    """A passive fork waits without calling next_preflight; it reads what active reads cause."""

    async def main():
        calls: list[Any] = []

        def preflight(reader: push_aiter[int]) -> None:
            calls.append(reader)
            reader.push(len(calls))

        q: push_aiter[int] = push_aiter(next_preflight=preflight)
        passive = q.fork(is_active=False)
        t = asyncio.create_task(anext(passive))
        await turns(10)
        assert calls == []
        assert not t.done()
        assert await anext(q) == 1  # an active read: its preflight pushes 1
        assert calls == [q]
        assert await t == 1
        active = q.fork()
        assert await anext(active) == 2  # an active fork keeps the preflight, called with it
        assert calls == [q, active]

    arun(main)


@pytest.mark.parametrize("form", ["with_reader", "no_argument"])
def test_push_preflight_runs_per_read_and_feeds_the_reader(arun, form):
    """Preflight pushes i on call i: the reader gets 0, 1, 2 with no producer task."""

    async def main():
        calls = [0]
        q: push_aiter[int]

        def feed(reader: push_aiter[int]) -> None:
            assert reader is q
            if calls[0] < 3:
                reader.push(calls[0])
            else:
                reader.stop()
            calls[0] += 1

        def feed_no_arg() -> None:
            feed(q)

        q = push_aiter(next_preflight=feed if form == "with_reader" else feed_no_arg)
        assert await drain(q) == [0, 1, 2]
        assert calls == [4]
        assert others() == set()

    arun(main)


def test_push_preflight_runs_even_when_items_are_ready(arun):
    """next_preflight runs at the start of every read, not only when the reader must wait."""

    async def main():
        calls = []
        q: push_aiter[int] = push_aiter(next_preflight=lambda r: calls.append(len(r)))
        q.push(1, 2, 3)
        assert [await anext(q) for _ in range(3)] == [1, 2, 3]
        assert calls == [3, 2, 1]

    arun(main)


def test_push_preflight_exception_reaches_the_reader(arun):
    """A KeyError from next_preflight is raised by the read; the queue stays usable."""

    async def main():
        def preflight(reader: push_aiter[int]) -> None:
            raise KeyError("preflight failed")

        q: push_aiter[int] = push_aiter(next_preflight=preflight)
        q.push(1)
        with pytest.raises(KeyError, match="preflight failed"):
            await anext(q)
        assert q.is_stopped() is False
        assert len(q) == 1  # nothing consumed
        assert list(q.fork(is_active=False).available_iter()) == [1]

    arun(main)


def test_push_stop_with_error_reaches_every_fork_after_the_items(arun):
    """push 1, 2; stop(ValueError("x")): two forks each read 1, 2 then raise that error, again."""

    async def main():
        q: push_aiter[int] = push_aiter()
        forks = [q.fork(), q.fork()]
        q.push(1, 2)
        err = ValueError("x")
        q.stop(err)
        for f in forks:
            got = []
            with pytest.raises(ValueError, match=r"^x$") as info:
                async for x in f:
                    got.append(x)
            assert got == [1, 2]
            assert info.value is err
            with pytest.raises(ValueError, match=r"^x$"):  # terminal: raised on every read
                await anext(f)

    arun(main)


def test_push_is_stopped_true_while_items_remain(arun):
    """is_stopped() means stop() was called, even while items are still to be read."""

    async def main():
        q: push_aiter[int] = push_aiter()
        q.push(1)
        assert q.is_stopped() is False
        q.stop()
        assert q.is_stopped() is True
        assert q.is_item_available() is True
        assert await anext(q) == 1
        assert q.is_stopped() is True

    arun(main)


def test_push_is_len_at_least_and_is_item_available_do_not_consume(arun):
    """With 3 items: is_len_at_least 0/1/3 True, 4 False; is_item_available True; nothing read."""

    async def main():
        q: push_aiter[str] = push_aiter()
        assert q.is_item_available() is False
        assert q.is_len_at_least(0) is True
        assert q.is_len_at_least(1) is False
        q.push("a", "b", "c")
        assert [q.is_len_at_least(n) for n in (0, 1, 3, 4)] == [True, True, True, False]
        assert q.is_item_available() is True
        assert len(q) == 3
        assert list(q.available_iter()) == ["a", "b", "c"]
        assert await anext(q) == "a"
        assert q.is_len_at_least(2) is True
        assert q.is_len_at_least(3) is False

    arun(main)


class _Payload:
    """A pushed object we can hold a weak reference to."""


def test_push_memory_released_once_every_open_cursor_read_past_it(arun):
    """A pushed object is held while some open cursor has not read it, and freed after."""

    async def main():
        q: push_aiter[Any] = push_aiter()
        ahead, behind = q.fork(), q.fork()
        obj = _Payload()
        ref = weakref.ref(obj)
        q.push(obj, "after")
        del obj
        x = await anext(ahead)
        same = x is ref()
        del x
        assert same
        assert await anext(ahead) == "after"  # `ahead` has read past it
        gc.collect()
        assert ref() is not None  # q and `behind` have not read it: they must hold it
        x = await anext(q)
        del x
        gc.collect()
        assert ref() is not None  # `behind` still has not
        await behind.aclose()  # the last cursor behind it lets go
        gc.collect()
        assert ref() is None
        q.push("more")  # `ahead` is still open and reads on
        assert await anext(ahead) == "more"

    arun(main)


def test_push_maxsize_backpressure(arun):
    """maxsize=2: the third push raises QueueFull (nothing added); await put() waits for a read."""

    async def main():
        q: push_aiter[int] = push_aiter(maxsize=2)
        q.push(1)
        q.push(2)
        with pytest.raises(QueueFull, match="maxsize=2"):
            q.push(3)
        assert len(q) == 2
        put = asyncio.create_task(q.put(3))
        await turns(10)
        assert not put.done()
        assert await anext(q) == 1
        await turns(3)
        assert put.done()
        assert put.result() is None
        assert list(q.available_iter()) == [2, 3]

    arun(main)


def test_push_maxsize_is_all_or_nothing_for_several_items():
    """push(1, 2, 3) beyond maxsize=2 adds none of them; push(1, 2) fits."""
    q: push_aiter[int] = push_aiter(maxsize=2)
    with pytest.raises(QueueFull):
        q.push(1, 2, 3)
    assert len(q) == 0
    q.push(1, 2)
    assert list(q.available_iter()) == [1, 2]


def test_push_put_waits_for_the_slowest_cursor_and_its_detach(arun):
    """maxsize counts the slowest open cursor: put() waits for it, and its aclose() frees room."""

    async def main():
        q: push_aiter[int] = push_aiter(maxsize=1)
        slow = q.fork()
        q.push(1)
        assert await anext(q) == 1
        put = asyncio.create_task(q.put(2))
        await turns(10)
        assert not put.done()  # `slow` has not read 1 yet
        await slow.aclose()
        await turns(3)
        assert put.done()
        assert await anext(q) == 2

    arun(main)


def test_push_producer_cursor_counts_for_maxsize_until_closed(arun):
    """The queue object is a reader too: unread, it holds maxsize; its aclose() frees room."""

    async def main():
        q: push_aiter[int] = push_aiter(maxsize=2)
        reader = q.fork()
        q.push(1, 2)
        assert [await anext(reader) for _ in range(2)] == [1, 2]
        with pytest.raises(QueueFull):
            q.push(3)  # q itself has read nothing
        await q.aclose()  # the producer keeps pushing but stops reading
        q.push(3, 4)
        q.stop()
        assert await drain(reader) == [3, 4]

    arun(main)


def test_push_stop_while_put_waits_raises_queue_stopped(arun):
    """A put() waiting for room raises QueueStopped when the queue is stopped."""

    async def main():
        q: push_aiter[int] = push_aiter(maxsize=1)
        q.push(1)
        put = asyncio.create_task(q.put(2))
        await turns(5)
        assert not put.done()
        q.stop()
        with pytest.raises(QueueStopped):
            await asyncio.wait_for(put, BOUND)
        assert await drain(q) == [1]

    arun(main)


def test_push_stop_is_idempotent_and_the_first_stop_wins(arun):
    """stop(); stop() is fine and readers end once; a later stop(exc) does not replace the end."""

    async def main():
        q: push_aiter[int] = push_aiter()
        q.push(1)
        q.stop()
        q.stop()
        assert await drain(q) == [1]
        with pytest.raises(StopAsyncIteration):
            await anext(q)

        q2: push_aiter[int] = push_aiter()
        q2.stop(ValueError("first"))
        q2.stop(KeyError("second"))
        q2.stop()
        with pytest.raises(ValueError, match="first"):
            await anext(q2)

    arun(main)


def test_push_tail_argument_makes_a_reader_at_that_position(arun):
    """push_aiter(tail=q) reads from q's position on; push() through it feeds the same queue."""

    async def main():
        q: push_aiter[int] = push_aiter()
        q.push(1, 2)
        assert await anext(q) == 1
        r = push_aiter(tail=q)
        r2 = push_aiter(q)  # positional, as fork() used it
        assert len(r) == 1
        r.push(3)
        q.stop()
        assert await drain(r) == [2, 3]
        assert await drain(r2) == [2, 3]
        assert await drain(q) == [2, 3]

    arun(main)


def test_push_seed_passive_fork_form(arun):
    """The seed's q.fork(is_active=False) returns a push_aiter that reads every later item."""

    async def main():
        q: push_aiter[int] = push_aiter()
        p = q.fork(is_active=False)
        assert isinstance(p, push_aiter)
        q.push(1, 2)
        q.stop()
        assert await drain(p) == [1, 2]
        assert await drain(q) == [1, 2]

    arun(main)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"maxsize": -1}, ValueError),
        ({"maxsize": math.nan}, ValueError),
        ({"maxsize": "3"}, TypeError),
        ({"maxsize": True}, TypeError),
        ({"maxsize": None}, TypeError),
        ({"next_preflight": 5}, TypeError),
        ({"next_preflight": "f"}, TypeError),
        ({"tail": [1, 2]}, TypeError),
        ({"tail": "q"}, TypeError),
    ],
)
def test_push_bad_constructor_arguments(kwargs, exc):
    """A bad maxsize, a non-callable next_preflight or a non-push_aiter tail is refused."""
    with pytest.raises(exc):
        push_aiter(**kwargs)


@pytest.mark.parametrize("bad", ["x", ValueError, 3])
def test_push_stop_with_a_non_exception_is_a_type_error(bad):
    """stop() takes an exception instance or None (not a class, not a string)."""
    q: push_aiter[int] = push_aiter()
    with pytest.raises(TypeError, match="exception instance"):
        q.stop(bad)
    assert q.is_stopped() is False
    q.push(1)


def _push_from_thread(q: push_aiter[int], item: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def other() -> None:
        try:
            q.push(item)
        except BaseException as e:  # handed back to the test
            errors.append(e)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive()
    return errors


def test_push_from_another_thread_while_a_reader_waits_raises(arun):
    """push() from another thread while a reader waits: RuntimeError naming call_soon_threadsafe."""

    async def main():
        q: push_aiter[int] = push_aiter()
        t = asyncio.create_task(anext(q))
        await turns(3)
        errors = _push_from_thread(q, 1)
        try:
            assert len(errors) == 1
            assert isinstance(errors[0], RuntimeError)
            assert "call_soon_threadsafe" in str(errors[0])
        finally:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    arun(main)


def test_push_via_call_soon_threadsafe_from_another_thread(arun):
    """The remedy the error names works: loop.call_soon_threadsafe(q.push, item)."""

    async def main():
        q: push_aiter[int] = push_aiter()
        loop = asyncio.get_running_loop()
        t = asyncio.create_task(anext(q))
        await turns(3)
        thread = threading.Thread(target=loop.call_soon_threadsafe, args=(q.push, 5))
        thread.start()
        thread.join(BOUND)
        assert not thread.is_alive()
        assert await asyncio.wait_for(t, BOUND) == 5

    arun(main)


def test_push_refused_from_another_thread_adds_nothing(arun):
    """A push() that raised leaves the queue unchanged, so retrying it the safe way is exact."""

    async def main():
        q: push_aiter[int] = push_aiter()
        loop = asyncio.get_running_loop()
        t = asyncio.create_task(drain(q))
        await turns(3)
        try:
            errors = _push_from_thread(q, 1)
            assert [type(e) for e in errors] == [RuntimeError]
            assert len(q) == 0  # fails: the refused item was appended
            thread = threading.Thread(target=loop.call_soon_threadsafe, args=(q.push, 1))
            thread.start()
            thread.join(BOUND)
            assert not thread.is_alive()
            await turns(3)
            q.stop()
            assert await asyncio.wait_for(t, BOUND) == [1]
        finally:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    arun(main)


def test_push_cancelled_waits_do_not_accumulate(arun):
    """Readers that time out on an idle queue leave nothing behind in the queue."""

    async def main():
        # Private state, looked at on purpose: nothing public shows the leak but memory.
        q: push_aiter[int] = push_aiter(maxsize=1)
        for _ in range(50):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0):
                    await anext(q)
        assert len(q._shared._readers) == 0  # readers that timed out
        q.push(1)
        for _ in range(50):
            t = asyncio.create_task(q.put(2))
            await turns(2)
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
        assert len(q._shared._movers) == 0  # put() calls that were cancelled

    arun(main)


def test_push_aclose_detaches_the_reader(arun):
    """aclose(): the cursor reads nothing more and reports nothing available; others go on."""

    async def main():
        q: push_aiter[int] = push_aiter()
        f = q.fork()
        q.push(1, 2)
        await q.aclose()
        await q.aclose()  # idempotent
        assert len(q) == 0
        assert q.is_item_available() is False
        assert list(q.available_iter()) == []
        with pytest.raises(StopAsyncIteration):
            await anext(q)
        q.push(3)  # the producer side still works
        q.stop()
        assert await drain(f) == [1, 2, 3]

    arun(main)


def test_push_aclose_ends_a_reader_waiting_on_the_same_cursor(arun):
    """A task waiting on q when q.aclose() is called ends with StopAsyncIteration."""

    async def main():
        q: push_aiter[int] = push_aiter()
        t = asyncio.create_task(read_or_end(q))
        await turns(3)
        await q.aclose()
        await turns(3)
        try:
            assert t.done()
            assert t.result() is END
        finally:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    arun(main)


def test_push_fork_of_a_closed_reader_reads_later_items(arun):
    """fork() 'reads every later item': also when the reader it was made from was closed."""

    async def main():
        q: push_aiter[int] = push_aiter()
        q.push(1)
        await q.aclose()  # the producer stops holding items in memory
        f = q.fork()
        q.push(2)
        q.stop()
        got = await asyncio.wait_for(drain(f), BOUND)
        assert got == [2]  # 1 went with the only cursor that held it

    arun(main)


# =============================================================================================
# aiter_forker
# =============================================================================================


def test_forker_fork_mid_stream_reads_the_same_rest(arun):
    """Old test: root reads 3 of 1..5, f2 = root.fork(), push 7..13: both read the same rest."""

    async def main():
        q: push_aiter[int] = push_aiter()
        root = aiter_forker(q)
        q.push(1, 2, 3, 4, 5)
        r0 = []
        async for x in root:
            r0.append(x)
            if len(r0) == 3:
                break
        f2 = root.fork()
        assert isinstance(f2, Fork)
        q.push(*range(7, 14))
        q.stop()
        assert r0 == [1, 2, 3]
        assert await drain(root) == [4, 5, *range(7, 14)]
        assert await drain(f2) == [4, 5, *range(7, 14)]

    arun(main)


def test_forker_two_active_forks_on_an_empty_source(arun):
    """Two active forks wait on an empty source; push(1): both get [1], neither blocks."""

    async def main():
        q: push_aiter[int] = push_aiter()
        async with aiter_forker(q) as root:
            f1, f2 = root.fork(is_active=True), root.fork(is_active=True)
            t1 = asyncio.create_task(anext(f1))
            t2 = asyncio.create_task(anext(f2))
            await turns(10)
            assert not t1.done()
            assert not t2.done()
            q.push(1)
            done, _ = await asyncio.wait({t1, t2}, timeout=BOUND)
            assert done == {t1, t2}
            assert [t1.result(), t2.result()] == [1, 1]

    arun(main)


def test_forker_cancel_the_pulling_fork_keeps_the_item(arun):
    """Fork A's pull is in flight; cancel A, open the gate: B gets the item, source alive."""

    async def main():
        gate = asyncio.Event()
        src = Src(5, gate=gate)
        async with aiter_forker(src) as a:
            b = a.fork()
            ta = asyncio.create_task(anext(a))
            await turns(5)
            assert not ta.done()
            assert src.pulls == 0  # the pull is in flight, held at the gate
            ta.cancel()
            with pytest.raises(asyncio.CancelledError):
                await ta
            assert ta.cancelled()
            tb = asyncio.create_task(anext(b))
            await turns(3)
            gate.set()
            assert await asyncio.wait_for(tb, BOUND) == 0
            assert src.pulls == 1
            assert src.closed_count == 0  # not finalized by the cancellation
            assert await anext(a) == 0  # the cancelled fork still reads it (broadcast)
            assert src.pulls == 1
            assert await anext(b) == 1  # and the source goes on
            assert src.pulls == 2
        assert src.closed_count == 1

    arun(main)


def test_forker_pulls_are_single_flight(arun):
    """Three active forks ask at once: each item is pulled once and reaches all three."""

    async def main():
        src = Src(5)
        async with aiter_forker(src) as root:
            forks = [root, root.fork(), root.fork()]
            for i in range(5):
                got = await asyncio.gather(*(anext(f) for f in forks))
                assert got == [i, i, i]
                assert src.pulls == i + 1
            assert await asyncio.gather(*(read_or_end(f) for f in forks)) == [END] * 3
            assert src.pulls == 5
        assert src.closed_count == 1

    arun(main)


def test_forker_source_error_reaches_every_fork(arun):
    """The source yields 0 then raises ValueError: every fork reads [0] then that error, again."""

    async def main():
        src = Src(fail_at=1)
        root = aiter_forker(src)
        forks = [root, root.fork(), root.fork(is_active=False)]

        async def read(f: Fork[int]) -> tuple[list[int], BaseException | None]:
            got = []
            try:
                async for x in f:
                    got.append(x)
            except ValueError as e:
                return got, e
            return got, None

        results = await asyncio.gather(*(read(f) for f in forks))
        assert [got for got, _ in results] == [[0], [0], [0]]
        errors = [e for _, e in results]
        assert all(isinstance(e, ValueError) for e in errors)
        assert str(errors[0]) == "source failed at 1"
        assert errors[0] is errors[1] is errors[2]
        for f in forks:
            with pytest.raises(ValueError, match="source failed at 1"):
                await anext(f)
        assert src.closed_count == 1
        assert src.finally_task is not asyncio.current_task()
        assert src.ctx_ok is True

    arun(main)


def test_forker_passive_fork_never_pulls(arun):
    """Alone, a passive fork blocks with pulls == 0; it reads what an active fork pulled."""

    async def main():
        src = Src(10)
        async with aiter_forker(src) as root:
            passive = root.fork(is_active=False)
            waiting = asyncio.create_task(anext(passive))
            await turns(10)
            assert not waiting.done()
            assert src.pulls == 0
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            with pytest.raises(TimeoutError):  # a bounded wait shows the block, not an error
                await asyncio.wait_for(anext(passive), QUIET)
            assert src.pulls == 0
            assert [await anext(root) for _ in range(2)] == [0, 1]
            assert src.pulls == 2
            assert [await anext(passive) for _ in range(2)] == [0, 1]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(passive), QUIET)
            assert src.pulls == 2

    arun(main)


def test_forker_closing_the_last_fork_closes_the_source(arun):
    """Two forks: the source is closed (by the pump task) after the second aclose, not the first."""

    async def main():
        src = Src(None)
        root = aiter_forker(src)
        f = root.fork()
        assert await anext(root) == 0
        assert await anext(f) == 0
        (pump,) = others()
        await root.aclose()
        assert src.closed_count == 0
        assert await anext(f) == 1  # the open fork still reads, and pulls
        assert src.closed_count == 0
        await f.aclose()
        assert src.closed_count == 1
        assert src.finally_task is pump
        assert src.finally_task is not asyncio.current_task()
        assert src.ctx_ok is True
        assert pump.done()
        with pytest.raises(StopAsyncIteration):
            await anext(f)
        with pytest.raises(StopAsyncIteration):
            await anext(root)
        await f.aclose()  # idempotent
        assert src.closed_count == 1

    arun(main)


def test_forker_async_with_break_closes_the_source(arun):
    """`async with aiter_forker(src) as root:` and a break mid-stream: source closed by its pump."""

    async def main():
        src = Src(None)
        async with aiter_forker(src) as root:
            async for x in root:
                if x == 3:
                    break
            (pump,) = others()
        assert src.closed_count == 1
        assert src.finally_task is pump
        assert src.ctx_ok is True
        assert pump.done()
        assert src.pulls == 4

    arun(main)


def test_forker_async_with_exit_cancels_the_pull_in_flight(arun):
    """Leaving the block with a pull in flight: it is cancelled and awaited, waiters end."""

    async def main():
        gate = asyncio.Event()
        gate.set()
        src = Src(None, gate=gate)
        async with aiter_forker(src) as root:
            f = root.fork()
            assert [await anext(root) for _ in range(3)] == [0, 1, 2]
            gate.clear()
            tf = asyncio.create_task(drain(f))
            await turns(10)
            assert not tf.done()  # f read 0..2 and now waits on the pull of 3
            assert src.pulls == 3
        assert src.closed_count == 1  # before the block is left, not some turns later
        assert src.ctx_ok is True
        assert await asyncio.wait_for(tf, BOUND) == [0, 1, 2]
        assert src.pulls == 3
        with pytest.raises(StopAsyncIteration):
            await anext(root)

    arun(main)


def test_forker_max_lag_blocks_the_fork_ahead(arun):
    """max_lag=2: fork A blocks 2 items ahead of idle fork B; reading one from B releases A."""

    async def main():
        src = Src(10)
        async with aiter_forker(src, max_lag=2) as a:
            b = a.fork()
            assert [await anext(a) for _ in range(2)] == [0, 1]
            ta = asyncio.create_task(anext(a))
            done, _ = await asyncio.wait({ta}, timeout=QUIET)  # the block, not an error
            assert not done
            assert src.pulls == 2
            assert await anext(b) == 0
            assert await asyncio.wait_for(ta, BOUND) == 2
            assert src.pulls == 3
            tb = asyncio.create_task(anext(a))  # 3 - 1 = 2 ahead again
            done, _ = await asyncio.wait({tb}, timeout=QUIET)
            assert not done
            assert await anext(b) == 1
            assert await asyncio.wait_for(tb, BOUND) == 3

    arun(main)


def test_forker_max_lag_released_when_the_slow_fork_closes(arun):
    """A fork held by max_lag goes on when the slow fork is closed."""

    async def main():
        src = Src(10)
        async with aiter_forker(src, max_lag=1) as a:
            b = a.fork()
            assert await anext(a) == 0
            ta = asyncio.create_task(anext(a))
            await turns(10)
            assert not ta.done()
            await b.aclose()
            assert await asyncio.wait_for(ta, BOUND) == 1
            assert src.closed_count == 0

    arun(main)


def test_forker_dropping_every_fork_closes_the_source(arun):
    """del of every fork: the pump is cancelled and closes the source within a few turns."""

    async def main():
        src = Src(None)
        root = aiter_forker(src)
        f = root.fork()
        assert await anext(root) == 0
        assert await anext(f) == 0
        (pump,) = others()
        del root
        await turns()
        assert src.closed_count == 0  # f is still open
        del f
        await turns()
        assert src.closed_count == 1
        assert src.finally_task is pump
        assert src.ctx_ok is True

    arun(main)


def test_forker_plain_async_for_break_closes_the_source(arun):
    """The seed form: a plain `async for ... in aiter_forker(src)` that breaks closes src."""

    async def main():
        src = Src(None)
        async for x in aiter_forker(src):
            if x == 2:
                break
        await turns()
        assert src.closed_count == 1
        assert src.finally_task is not asyncio.current_task()
        assert src.ctx_ok is True

    arun(main)


def test_forker_and_sharable_built_outside_a_loop_over_sync_iterables(arun):
    """Built before any loop, over lists: no warning, and they read the items in the loop."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        root = aiter_forker([1, 2, 3])
        f = root.fork()
        s = sharable_aiter(range(5))

    async def main():
        assert await drain(root) == [1, 2, 3]
        assert await drain(f) == [1, 2, 3]
        assert await drain(s) == [0, 1, 2, 3, 4]

    arun(main)


def test_forker_closes_a_sync_generator_source(arun):
    """An owned sync generator is closed when the block is left early."""

    async def main():
        closed = []

        def gen():
            try:
                yield from range(100)
            finally:
                closed.append(True)

        async with aiter_forker(gen()) as root:
            assert await anext(root) == 0
        assert closed == [True]

    arun(main)


@pytest.mark.parametrize(
    "args, kwargs, exc",
    [
        ((5,), {}, TypeError),
        ((None,), {}, TypeError),
        (([1],), {"max_lag": 0}, ValueError),
        (([1],), {"max_lag": -1}, ValueError),
        (([1],), {"max_lag": 1.5}, TypeError),
        (([1],), {"max_lag": True}, TypeError),
    ],
)
def test_forker_bad_arguments(args, kwargs, exc):
    """A non-iterable source or a bad max_lag is refused at once."""
    with pytest.raises(exc):
        aiter_forker(*args, **kwargs)


def test_forker_tasks_sharing_one_fork_both_progress(arun):
    """Two tasks read one fork; one takes an item and goes busy: the other gets the next."""

    async def main():
        src = Src(10)
        async with aiter_forker(src) as root:
            hold = asyncio.Event()

            async def busy() -> int:
                x = await anext(root)
                await hold.wait()
                return x

            t1 = asyncio.create_task(busy())
            t2 = asyncio.create_task(anext(root))  # both wait for the pull of item 0
            try:
                await turns(20)  # t1 takes 0 and goes busy; a pull of 1 takes ~3 turns
                assert t2.done()
                assert t2.result() == 1
                assert src.pulls == 2
            finally:
                hold.set()
                t2.cancel()
                await asyncio.gather(t2, return_exceptions=True)
                assert await t1 == 0

    arun(main)


def test_forker_fork_of_a_closed_family_ends(arun):
    """After the last fork closed the source, a fork made from it ends at once."""

    async def main():
        src = Src(None)
        root = aiter_forker(src)
        assert await anext(root) == 0
        await root.aclose()
        assert src.closed_count == 1
        late = root.fork()
        t = asyncio.create_task(read_or_end(late))
        await turns(10)
        try:
            assert t.done()
            assert t.result() is END
        finally:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    arun(main)


# =============================================================================================
# sharable_aiter
# =============================================================================================


def test_sharable_each_item_to_exactly_one_of_four_consumers(arun):
    """4 tasks read sharable_aiter(Src(1000)): 0..999 each once, no 'already running' error."""

    async def main():
        src = Src(1000)
        s = sharable_aiter(src)
        got: list[list[int]] = [[] for _ in range(4)]

        async def consumer(i: int) -> None:
            async for x in s:
                got[i].append(x)

        consumers = [asyncio.create_task(consumer(i)) for i in range(4)]
        await asyncio.gather(*consumers)
        union = [x for part in got for x in part]
        assert len(union) == 1000
        assert sorted(union) == list(range(1000))
        assert all(part == sorted(part) for part in got)
        assert src.pulls == 1000
        assert src.closed_count == 1
        assert src.finally_task not in {asyncio.current_task(), *consumers}
        assert src.ctx_ok is True

    arun(main)


@pytest.mark.parametrize("second_waits", ["before_cancel", "after_cancel"])
def test_sharable_cancelled_holder_leaves_the_item_to_the_next(arun, second_waits):
    """Consumer 1 waits on a pull in flight; cancel it: consumer 2 gets the item, source alive."""

    async def main():
        gate = asyncio.Event()
        src = Src(None, gate=gate)
        async with sharable_aiter(src) as s:
            c1 = asyncio.create_task(anext(s))
            await turns(5)
            assert not c1.done()
            assert src.pulls == 0  # the pull is in flight, held at the gate
            c2 = asyncio.create_task(anext(s)) if second_waits == "before_cancel" else None
            await turns(3)
            c1.cancel()
            with pytest.raises(asyncio.CancelledError):
                await c1
            assert c1.cancelled()
            if c2 is None:
                c2 = asyncio.create_task(anext(s))
            gate.set()
            assert await asyncio.wait_for(c2, BOUND) == 0
            await turns(5)
            assert src.pulls == 1
            assert src.closed_count == 0  # not finalized by the cancellation
            assert await anext(s) == 1
        assert src.closed_count == 1

    arun(main)


def test_sharable_error_reaches_every_consumer(arun):
    """The source raises after 3 items: items spread over 3 consumers, each ends with the error."""

    async def main():
        src = Src(fail_at=3)
        s = sharable_aiter(src)

        async def consumer() -> tuple[list[int], BaseException | None]:
            got = []
            try:
                async for x in s:
                    got.append(x)
            except ValueError as e:
                return got, e
            return got, None

        results = await asyncio.gather(*(consumer() for _ in range(3)))
        assert sorted(x for got, _ in results for x in got) == [0, 1, 2]
        errors = [e for _, e in results]
        assert all(isinstance(e, ValueError) for e in errors)
        assert str(errors[0]) == "source failed at 3"
        with pytest.raises(ValueError, match="source failed at 3"):  # and again
            await anext(s)
        assert src.closed_count == 1
        assert src.ctx_ok is True

    arun(main)


def test_sharable_end_reaches_every_consumer(arun):
    """The source ends: every consumer's loop ends, the items spread, none duplicated."""

    async def main():
        src = Src(3)
        s = sharable_aiter(src)
        results = await asyncio.gather(*(drain(s) for _ in range(3)))
        assert sorted(x for got in results for x in got) == [0, 1, 2]
        with pytest.raises(StopAsyncIteration):
            await anext(s)
        assert src.closed_count == 1

    arun(main)


def test_sharable_aclose_closes_the_source_in_its_pump(arun):
    """aclose() stops the pump, which closes the source before aclose returns; later reads end."""

    async def main():
        src = Src(None)
        s = sharable_aiter(src)
        assert [await anext(s) for _ in range(2)] == [0, 1]
        (pump,) = others()
        await s.aclose()
        assert src.closed_count == 1
        assert src.finally_task is pump
        assert src.ctx_ok is True
        assert pump.done()
        with pytest.raises(StopAsyncIteration):
            await anext(s)
        await s.aclose()  # idempotent
        assert src.closed_count == 1
        assert src.pulls == 2

    arun(main)


def test_sharable_async_with_exit_cancels_the_pull_in_flight(arun):
    """Leaving `async with` while a pull waits at the gate: cancelled, source closed, no tasks."""

    async def main():
        gate = asyncio.Event()
        src = Src(None, gate=gate)
        async with sharable_aiter(src) as s:
            t = asyncio.create_task(read_or_end(s))
            await turns(5)
            assert src.pulls == 0
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
        assert src.closed_count == 1
        assert src.pulls == 0
        assert src.finally_task is not asyncio.current_task()

    arun(main)


def test_sharable_dropped_after_a_break_closes_the_source(arun):
    """A plain `async for` over sharable_aiter that breaks: the source is closed within turns."""

    async def main():
        src = Src(None)
        async for x in sharable_aiter(src):
            if x == 1:
                break
        await turns()
        assert src.closed_count == 1
        assert src.finally_task is not asyncio.current_task()

    arun(main)


@pytest.mark.parametrize("bad", [5, None, object()])
def test_sharable_refuses_a_non_iterable(bad):
    """sharable_aiter(5) is a TypeError at once."""
    with pytest.raises(TypeError, match="sharable_aiter"):
        sharable_aiter(bad)


def test_sharable_aclose_ends_a_waiting_consumer(arun):
    """A consumer waiting when another task calls aclose() ends with StopAsyncIteration."""

    async def main():
        gate = asyncio.Event()
        src = Src(None, gate=gate)
        s = sharable_aiter(src)
        t = asyncio.create_task(read_or_end(s))
        await turns(5)
        await s.aclose()
        assert src.closed_count == 1
        await turns(5)
        try:
            assert t.done()
            assert t.result() is END
        finally:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    arun(main)
