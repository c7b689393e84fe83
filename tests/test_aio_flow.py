"""Flow control in `inparallel.aio`: gated, stoppable, preload, active and join_aiters.

The cases are research/async.md sections 6.2 (the ported gated/preload/join rows), 6.5 and
6.7. Every async body runs under the `arun` harness (debug mode, both task factories, no task
left behind). Ordering is driven by `asyncio.Event` gates and `turns()`, never by sleeps.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from inparallel.aio import (
    active_aiter,
    gated_aiter,
    iter_to_aiter,
    join_aiters,
    preload_aiter,
    push_aiter,
    stoppable_aiter,
)
from tests._aio import CTX, Src, arun, turns

FIXTURES = (arun,)  # pytest finds the `arun` fixture by its name in this module

# -- helpers ---------------------------------------------------------------------------------


async def take(it: AsyncIterator[Any], n: int) -> list[Any]:
    """Read exactly ``n`` items with ``__anext__`` (the stream is left open)."""
    return [await it.__anext__() for _ in range(n)]


async def drain(it: AsyncIterator[Any]) -> list[Any]:
    """Read until the end."""
    return [x async for x in it]


def others() -> set[asyncio.Task[Any]]:
    """The tasks running besides the current one."""
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


def named(prefix: str) -> list[asyncio.Task[Any]]:
    """The other tasks whose name starts with ``prefix``."""
    return [t for t in others() if t.get_name().startswith(prefix)]


async def at_once(aw: Any) -> Any:
    """Await ``aw`` in a task and require it done within 10 loop turns (it waits for nothing)."""
    task = asyncio.ensure_future(aw)
    await turns(10)
    assert task.done(), "expected the read to finish at once, it is waiting"
    return await task


async def pending(aw: Any) -> asyncio.Future[Any]:
    """Start ``aw`` as a task, let the loop run, and require it to be still waiting."""
    task = asyncio.ensure_future(aw)
    await turns()
    assert not task.done(), f"expected a waiting read, got {task!r}"
    return task


class Items:
    """A tracked async source of given objects (like `Src`); ``hang``: then wait for ever."""

    def __init__(self, items: Iterable[Any], *, hang: bool = False) -> None:
        self.items, self.hang = list(items), hang
        self.pulls = 0
        self.closed_count = 0
        self.finally_task: asyncio.Task[Any] | None = None
        self.ctx_ok: bool | None = None
        self._gen = self._run()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen

    async def _run(self) -> AsyncIterator[Any]:
        token = CTX.set("items")
        try:
            for item in self.items:
                self.pulls += 1
                yield item
            if self.hang:
                await asyncio.Event().wait()
        finally:
            self.closed_count += 1
            self.finally_task = asyncio.current_task()
            try:
                CTX.reset(token)
                self.ctx_ok = True
            except ValueError:
                self.ctx_ok = False


class Tagged:
    """Yields ``(tag, x)`` for each ``x`` of a `Src`; closing it closes the `Src`."""

    def __init__(self, tag: str, src: Src) -> None:
        self.tag, self.src = tag, src
        self._it = src.__aiter__()

    def __aiter__(self) -> Tagged:
        return self

    async def __anext__(self) -> tuple[str, int]:
        return (self.tag, await self._it.__anext__())

    async def aclose(self) -> None:
        await self._it.aclose()  # type: ignore[attr-defined]


class FailsWhenCancelled:
    """An async iterator that waits for ever and turns its cancellation into ``KeyError``."""

    def __init__(self) -> None:
        self.closed_count = 0
        self.cancelled = False

    def __aiter__(self) -> FailsWhenCancelled:
        return self

    async def __anext__(self) -> Any:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise KeyError("failed while being cancelled") from None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self.closed_count += 1


class FailsToClose:
    """Yields 1 and 2 and ends; its ``aclose()`` raises ``RuntimeError("close failed")``."""

    def __init__(self) -> None:
        self.i = 0
        self.close_calls = 0

    def __aiter__(self) -> FailsToClose:
        return self

    async def __anext__(self) -> int:
        await asyncio.sleep(0)
        self.i += 1
        if self.i > 2:
            raise StopAsyncIteration
        return self.i

    async def aclose(self) -> None:
        self.close_calls += 1
        raise RuntimeError("close failed")


# -- gated_aiter -----------------------------------------------------------------------------


def test_gated_old_credit_sequence(arun):
    """push(9); read 3; read 4; push(11); stop; drain -> range(20), pulled exactly 20 times."""

    async def main():
        src = Src(None)
        gate = gated_aiter(src)
        gate.push(9)
        r = await take(gate, 3)
        r += await take(gate, 4)
        gate.push(11)
        gate.stop()
        r += await drain(gate)
        assert r == list(range(20))
        assert src.pulls == 20
        assert src.closed_count == 1

    arun(main)


def test_gated_old_credit_sequence_huge_range(arun):
    """The original test's source, ``iter_to_aiter(range(3e9))``, gives the same 20 items."""

    async def main():
        gate = gated_aiter(iter_to_aiter(range(3_000_000_000)))
        gate.push(9)
        r = []
        async for x in gate:  # a plain async for with break leaves the gate open
            r.append(x)
            if len(r) == 3:
                break
        async for x in gate:
            r.append(x)
            if len(r) == 7:
                break
        gate.push(11)
        gate.stop()
        async for x in gate:
            r.append(x)
        assert r == list(range(20))

    arun(main)


def test_gated_pulls_exactly_the_credit(arun):
    """push(3) then 3 reads pull the source 3 times (the original pulled a 4th, old D10)."""

    async def main():
        src = Src(None)
        gate = gated_aiter(src)
        gate.push(3)
        assert await take(gate, 3) == [0, 1, 2]
        await turns()
        assert src.pulls == 3
        waiting = await pending(gate.__anext__())  # no credit: it waits, pulls nothing
        assert src.pulls == 3
        gate.stop()
        with pytest.raises(StopAsyncIteration):
            await waiting
        assert src.pulls == 3
        assert src.closed_count == 1

    arun(main)


def test_gated_stop_with_no_credit_ends_at_once(arun):
    """push(2); read 2; stop(); the next read raises StopAsyncIteration without waiting."""

    async def main():
        src = Src(None)
        gate = gated_aiter(src)
        gate.push(2)
        assert await take(gate, 2) == [0, 1]
        gate.stop()
        with pytest.raises(StopAsyncIteration):
            await at_once(gate.__anext__())
        assert src.pulls == 2
        assert src.closed_count == 1
        with pytest.raises(StopAsyncIteration):  # and stays ended
            await gate.__anext__()

    arun(main)


def test_gated_stop_uses_granted_credit_first(arun):
    """stop() after push(3) still lets the 3 granted items through, then ends."""

    async def main():
        src = Src(None)
        gate = gated_aiter(src)
        gate.push(3)
        gate.stop()
        assert await drain(gate) == [0, 1, 2]
        assert src.pulls == 3
        assert src.closed_count == 1

    arun(main)


def test_gated_waiting_reader_ends_on_stop(arun):
    """A reader waiting without credit gets StopAsyncIteration when stop() is called."""

    async def main():
        src = Src(None)
        gate = gated_aiter(src)
        reader = await pending(gate.__anext__())
        gate.stop()
        await turns(5)  # the wake-up goes through a shielded future: a few turns, not one
        assert reader.done()
        with pytest.raises(StopAsyncIteration):
            await reader
        assert src.pulls == 0
        assert src.closed_count == 0  # never started: a generator's finally has not run
        assert src._gen.ag_frame is None  # but it was closed (aclose'd before its first step)

    arun(main)


def test_gated_cancelled_read_keeps_its_pull_for_the_next_read(arun):
    """push(1); a read cancelled while it awaits the source: the next read gets that pull's item."""

    async def main():
        q: push_aiter[int] = push_aiter()
        gate = gated_aiter(q)
        gate.push(1)
        reader = await pending(gate.__anext__())  # credit spent, waiting on the source
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        gate.push(0)  # a no-op push changes nothing
        assert "credit 0" in repr(gate)  # the credit stays spent on the pull still running
        q.push(7, 8)
        await turns()
        assert len(q) == 1  # the pull took 7 (and only 7), nobody has read it yet
        assert await at_once(gate.__anext__()) == 7  # the pull's item, no new credit needed
        assert "credit 0" in repr(gate)
        third = await pending(gate.__anext__())  # no credit left, although 8 is there
        assert len(q) == 1
        gate.push(1)
        assert await third == 8
        assert len(q) == 0
        await gate.aclose()

    arun(main)


def test_gated_cancelled_read_does_not_finalize_a_generator_source(arun):
    """A read cancelled inside an async generator source leaves it alive: nothing is lost."""

    async def main():
        ready = asyncio.Event()
        src = Src(None, gate=ready)
        gate = gated_aiter(src)
        gate.push(1)
        reader = await pending(gate.__anext__())  # credit spent, the pull waits at the gate
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await turns()
        assert src.closed_count == 0  # the generator survived the cancelled read
        assert "credit 0" in repr(gate)
        second = await pending(gate.__anext__())  # waits for the same pull, not for credit
        assert src.pulls == 0
        ready.set()
        assert await second == 0
        assert src.pulls == 1  # pulled exactly once for the one credit
        third = await pending(gate.__anext__())  # the source is ready, but there is no credit
        assert src.pulls == 1
        gate.push(1)
        assert await third == 1
        assert src.pulls == 2
        await gate.aclose()
        assert src.closed_count == 1
        assert src.ctx_ok is True
        assert src.finally_task is not asyncio.current_task()
        assert src.finally_task not in (reader, second, third)

    arun(main)


def test_gated_push_after_stop_is_ignored(arun):
    """push() after stop() grants nothing."""

    async def main():
        src = Src(None)
        gate = gated_aiter(src)
        gate.push(2)
        gate.stop()
        gate.push(5)
        assert await drain(gate) == [0, 1]
        assert src.pulls == 2

    arun(main)


@pytest.mark.parametrize(
    ("count", "exc"),
    [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("3", TypeError), (None, TypeError)],
)
def test_gated_push_rejects_bad_counts(count, exc):
    """push() takes an int >= 0 (not a bool, float or str); a refused push grants nothing."""
    gate = gated_aiter([1, 2, 3])
    with pytest.raises(exc, match=r"gated_aiter\.push\(\)"):
        gate.push(count)
    assert "credit 0" in repr(gate)


def test_gated_and_stoppable_refuse_non_iterables():
    """A non-iterable source is a TypeError at construction."""
    with pytest.raises(TypeError, match=r"gated_aiter\(\): aiter must be an async iterable"):
        gated_aiter(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"stoppable_aiter\(\): aiter must be an async iterable"):
        stoppable_aiter(5)  # type: ignore[arg-type]


def test_gated_concurrent_readers_are_served_fifo(arun):
    """Three readers waiting for credit get the items in the order they asked."""

    async def main():
        src = Src(None)
        gate = gated_aiter(src)
        readers = []
        for _ in range(3):
            readers.append(asyncio.ensure_future(gate.__anext__()))
            await turns(2)
        assert not any(r.done() for r in readers)
        gate.push(1)
        await turns()
        assert [r.done() for r in readers] == [True, False, False]
        assert readers[0].result() == 0
        gate.push(2)
        assert await asyncio.gather(*readers) == [0, 1, 2]
        assert src.pulls == 3
        await gate.aclose()
        assert src.closed_count == 1

    arun(main)


def test_gated_concurrent_readers_all_end_on_stop(arun):
    """stop() ends every reader queued without credit."""

    async def main():
        src = Src(None)
        gate = gated_aiter(src)
        readers = [asyncio.ensure_future(gate.__anext__()) for _ in range(3)]
        await turns()
        gate.stop()
        outcomes = await asyncio.gather(*readers, return_exceptions=True)
        assert [type(o) for o in outcomes] == [StopAsyncIteration] * 3
        assert src.pulls == 0

    arun(main)


def test_gated_aclose_closes_the_source(arun):
    """aclose() closes the source (in the context its pulls read it in); idempotent."""

    async def main():
        src = Src(None)
        gate = gated_aiter(src)
        gate.push(1)
        assert await take(gate, 1) == [0]
        await gate.aclose()
        assert src.closed_count == 1
        assert src.finally_task is not asyncio.current_task()  # closed by the Puller's task
        assert src.finally_task.done()  # which aclose() awaited
        assert src.ctx_ok is True  # in the context the pulls read it in
        with pytest.raises(StopAsyncIteration):
            await gate.__anext__()
        await gate.aclose()  # idempotent
        assert src.closed_count == 1
        assert src.pulls == 1

    arun(main)


@pytest.mark.parametrize("how", ["aclose", "error", "exhausted"])
def test_gated_reads_after_the_end_with_credit_left_stop(arun, how):
    """Once ended, a gate with credit left still answers StopAsyncIteration on every read."""

    async def main():
        src = Src(2, fail_at=1) if how == "error" else Src(2)
        gate = gated_aiter(src)
        gate.push(10)
        assert await gate.__anext__() == 0
        if how == "aclose":
            await gate.aclose()
        elif how == "error":
            with pytest.raises(ValueError, match="source failed at 1"):
                await gate.__anext__()
        else:
            assert await gate.__anext__() == 1
            with pytest.raises(StopAsyncIteration):
                await gate.__anext__()
        assert src.closed_count == 1
        assert src.ctx_ok is True
        for _ in range(2):
            with pytest.raises(StopAsyncIteration):
                await gate.__anext__()
        assert src.closed_count == 1

    arun(main)


def test_gated_aclose_while_another_task_reads(arun):
    """aclose() during another task's read: pull cancelled, source closed once, read ends."""

    async def main():
        ready = asyncio.Event()
        src = Src(None, gate=ready)
        gate = gated_aiter(src)
        gate.push(2)
        reader = await pending(gate.__anext__())  # inside the source, waiting at its gate
        (pull,) = others() - {reader}
        closer = asyncio.ensure_future(gate.aclose())
        await closer  # no error
        assert src.closed_count == 1  # before aclose() returned
        assert pull.cancelled()
        assert src.finally_task is pull  # the cancelled pull closes it, in its context
        assert src.ctx_ok is True
        await turns(5)
        assert reader.done()
        assert not reader.cancelled()
        assert isinstance(reader.exception(), StopAsyncIteration)
        ready.set()
        await turns()
        assert src.pulls == 0
        assert src.closed_count == 1
        with pytest.raises(StopAsyncIteration):
            await gate.__anext__()
        await gate.aclose()  # idempotent
        assert src.closed_count == 1

    arun(main)


def test_gated_async_with_closes_the_source(arun):
    """Leaving ``async with`` closes the source."""

    async def main():
        src = Src(None)
        async with gated_aiter(src) as gate:
            gate.push(5)
            assert await take(gate, 2) == [0, 1]
        assert src.closed_count == 1
        assert src.pulls == 2

    arun(main)


def test_gated_source_error_is_raised_once(arun):
    """A source error reaches the reader after the items before it; later reads end."""

    async def main():
        src = Src(10, fail_at=2)
        gate = gated_aiter(src)
        gate.push(3)  # spent exactly (credit left over: see the test above)
        assert await take(gate, 2) == [0, 1]
        with pytest.raises(ValueError, match="source failed at 2"):
            await gate.__anext__()
        assert src.closed_count == 1
        with pytest.raises(StopAsyncIteration):
            await gate.__anext__()

    arun(main)


def test_gated_close_error_reaches_the_reader(arun):
    """A source whose aclose() fails: the reader gets that error after the items."""

    async def main():
        src = FailsToClose()
        gate = gated_aiter(src)
        gate.push(5)
        out = []
        with pytest.raises(RuntimeError, match="close failed"):
            async for x in gate:
                out.append(x)
        assert out == [1, 2]
        assert src.close_calls == 1

    arun(main)


def test_gated_seed_call_form(arun):
    """``aiter = gated_aiter(...); aiter.push(3)``, built outside the loop, then ``async for``."""
    gate = gated_aiter(iter_to_aiter(range(10)))  # nothing binds a loop here
    gate.push(3)

    async def main():
        out = []
        async for x in gate:
            out.append(x)
            if len(out) == 3:
                gate.stop()
        assert out == [0, 1, 2]

    arun(main)


# -- stoppable_aiter -------------------------------------------------------------------------


def test_stoppable_stop_between_items_ends_the_stream(arun):
    """stop() between items: the next read ends at once and the source is closed."""

    async def main():
        src = Src(10)
        s = stoppable_aiter(src)
        assert await take(s, 2) == [0, 1]
        assert s.is_stopped() is False
        s.stop()
        assert s.is_stopped() is True
        with pytest.raises(StopAsyncIteration):
            await at_once(s.__anext__())
        assert src.closed_count == 1
        assert src.pulls == 2
        with pytest.raises(StopAsyncIteration):
            await s.__anext__()
        s.stop()  # idempotent
        assert src.closed_count == 1

    arun(main)


def test_stoppable_stop_between_items_keeps_the_source_context(arun):
    """After stop() between items the source's finally runs in the context it was read in."""

    async def main():
        src = Src(10)
        s = stoppable_aiter(src)
        assert await take(s, 2) == [0, 1]
        s.stop()
        with pytest.raises(StopAsyncIteration):
            await s.__anext__()
        assert src.closed_count == 1
        assert src.ctx_ok is True
        assert src.finally_task is not asyncio.current_task()  # the Puller's closing task

    arun(main)


def test_stoppable_stop_ends_a_reader_waiting_on_an_idle_source(arun):
    """stop() while a reader waits: it ends at once, the pull is cancelled, the source closed."""

    async def main():
        src = Src(None, gate=asyncio.Event())  # idle: never yields
        s = stoppable_aiter(src)
        reader = await pending(s.__anext__())
        (pull,) = others() - {reader}  # one pull task, waiting in the source
        s.stop()
        await turns(10)  # its own cleanup only: the source never yields
        assert reader.done()
        with pytest.raises(StopAsyncIteration):
            await reader
        assert pull.cancelled()
        assert src.closed_count == 1
        assert src.pulls == 0
        assert src.finally_task is not asyncio.current_task()
        assert src.finally_task is pull  # closed by the pull it cancelled, in its context
        assert src.ctx_ok is True
        assert others() == set()

    arun(main)


def test_stoppable_cancelled_reader_does_not_lose_the_item(arun):
    """A reader cancelled while waiting leaves the pending pull to the next read."""

    async def main():
        gate = asyncio.Event()
        src = Src(None, gate=gate)
        s = stoppable_aiter(src)
        first = await pending(s.__anext__())
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert src.closed_count == 0  # the source was not finalized
        assert s.is_stopped() is False
        gate.set()
        assert await s.__anext__() == 0  # the same pull, reused
        assert src.pulls == 1
        assert await s.__anext__() == 1
        assert src.pulls == 2
        await s.aclose()
        assert src.closed_count == 1

    arun(main)


def test_stoppable_readers_queue_in_order(arun):
    """Readers waiting together get the items in the order they asked; stop ends the rest."""

    async def main():
        gate = asyncio.Event()
        src = Src(None, gate=gate)
        s = stoppable_aiter(src)
        readers = []
        for _ in range(3):
            readers.append(asyncio.ensure_future(s.__anext__()))
            await turns(2)
        assert not any(r.done() for r in readers)
        gate.set()
        assert await readers[0] == 0
        assert await readers[1] == 1
        assert await readers[2] == 2
        gate.clear()
        late = [await pending(s.__anext__()), await pending(s.__anext__())]
        s.stop()
        outcomes = await asyncio.gather(*late, return_exceptions=True)
        assert [type(o) for o in outcomes] == [StopAsyncIteration] * 2
        assert src.closed_count == 1
        assert src.pulls == 3

    arun(main)


def test_stoppable_natural_end_keeps_the_source_context(arun):
    """Read to the end: all items, source closed once, its context variable consistent."""

    async def main():
        src = Src(5)
        s = stoppable_aiter(src)
        assert await drain(s) == [0, 1, 2, 3, 4]
        assert src.closed_count == 1
        assert src.ctx_ok is True
        assert src.finally_task is not asyncio.current_task()  # the pull task
        assert s.is_stopped() is True
        with pytest.raises(StopAsyncIteration):
            await s.__anext__()

    arun(main)


def test_stoppable_source_error_is_raised_once(arun):
    """A source error arrives after the items before it; the stream is then closed."""

    async def main():
        src = Src(10, fail_at=2)
        s = stoppable_aiter(src)
        assert await take(s, 2) == [0, 1]
        with pytest.raises(ValueError, match="source failed at 2"):
            await s.__anext__()
        assert src.closed_count == 1
        assert src.ctx_ok is True
        with pytest.raises(StopAsyncIteration):
            await s.__anext__()

    arun(main)


def test_stoppable_aclose_ends_a_waiting_reader(arun):
    """aclose() while a reader waits: the reader ends with StopAsyncIteration, not cancelled."""

    async def main():
        src = Src(None, gate=asyncio.Event())
        s = stoppable_aiter(src)
        reader = await pending(s.__anext__())
        (pull,) = others() - {reader}
        await s.aclose()
        assert src.closed_count == 1  # before aclose() returned
        assert pull.cancelled()
        assert src.pulls == 0
        assert src.ctx_ok is True
        await turns(5)
        assert reader.done()
        outcome = (await asyncio.gather(reader, return_exceptions=True))[0]
        assert not reader.cancelled()
        assert isinstance(outcome, StopAsyncIteration)
        assert s.is_stopped() is True
        assert src.closed_count == 1

    arun(main)


def test_stoppable_stop_before_any_read(arun):
    """stop() before the first read: the stream is empty and the source never pulled."""
    src = Src(10)
    s = stoppable_aiter(src)  # built outside the loop
    s.stop()

    async def main():
        assert await drain(s) == []
        assert src.pulls == 0

    arun(main)


def test_stoppable_async_with_closes_the_source(arun):
    """Leaving ``async with`` closes the source (a pull in flight is cancelled)."""

    async def main():
        gate = asyncio.Event()
        gate.set()
        src = Src(None, gate=gate)
        async with stoppable_aiter(src) as s:
            assert await take(s, 2) == [0, 1]
            gate.clear()
            reader = await pending(s.__anext__())
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
        assert src.closed_count == 1
        assert others() == set()

    arun(main)


# -- preload_aiter ---------------------------------------------------------------------------


def test_preload_old_counts(arun):
    """The original preload test: 1000 queued, preload 50: 1000, 949, 939, 0 left."""

    async def main():
        q: push_aiter[int] = push_aiter()
        q.push(*range(1000))
        q.stop()
        assert len(q) == 1000
        p = preload_aiter(50, q)
        await turns()
        assert len(q) == 1000  # nothing pulled before the first read

        assert await take(p, 1) == [0]
        await turns()
        assert len(q) == 949

        assert await take(p, 10) == list(range(1, 11))
        await turns()
        assert len(q) == 939

        assert await drain(p) == list(range(11, 1000))
        assert len(q) == 0

    arun(main)


@pytest.mark.parametrize("k", [0, 1, 7, 98])
def test_preload_invariant(arun, k):
    """After k reads of Src(100) and a few turns: pulls == min(100, k + 5) (0 before a read)."""

    async def main():
        src = Src(100)
        p = preload_aiter(5, src)
        for i in range(k):
            assert await p.__anext__() == i
            assert src.pulls <= i + 1 + 5  # never more than read + preload_size
        await turns(20)
        assert src.pulls == (min(100, k + 5) if k else 0)
        await p.aclose()
        assert src.closed_count == (1 if k else 0)  # a never-started generator has no finally

    arun(main)


def test_preload_bound_holds_at_every_turn(arun):
    """A watcher checks pulls <= read + preload_size on every loop turn of a full read."""

    async def main():
        src = Src(60)
        p = preload_aiter(5, src)
        read = 0
        worst = 0
        done = False

        async def watch():
            nonlocal worst
            while not done:
                worst = max(worst, src.pulls - read)
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        async for x in p:
            assert x == read
            read += 1
            await turns(2)  # a slow reader: the pump runs ahead meanwhile
        done = True
        await watcher
        assert read == 60
        assert worst == 5  # reached, never exceeded

    arun(main)


def test_preload_zero_is_a_rendezvous(arun):
    """preload_size=0: pulls == consumed after each read; +1 only while a read is in flight."""

    async def main():
        gate = asyncio.Event()
        gate.set()
        src = Src(None, gate=gate)
        p = preload_aiter(0, src)
        consumed = 0
        for _ in range(5):
            assert await p.__anext__() == consumed
            consumed += 1
            await turns()
            assert src.pulls == consumed
        gate.clear()
        reader = await pending(p.__anext__())
        assert src.pulls == consumed  # the pull is waiting at the source's gate
        gate.set()
        assert await reader == consumed
        consumed += 1
        await turns()
        assert src.pulls == consumed

        worst = 0
        done = False

        async def watch():
            nonlocal worst
            while not done:
                worst = max(worst, src.pulls - consumed)
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        for _ in range(20):
            await p.__anext__()
            consumed += 1
            await turns(2)
        done = True
        await watcher
        assert worst <= 1
        assert src.pulls == consumed
        await p.aclose()

    arun(main)


def test_preload_error_order(arun):
    """Source fails at 3, preload 10: 0, 1, 2, then the error, and the error again."""

    async def main():
        src = Src(10, fail_at=3)
        p = preload_aiter(10, src)
        out = []
        with pytest.raises(ValueError, match="source failed at 3"):
            async for x in p:
                out.append(x)
        assert out == [0, 1, 2]
        with pytest.raises(ValueError, match="source failed at 3"):
            await p.__anext__()
        assert src.closed_count == 1
        assert src.finally_task is not None
        assert src.finally_task.get_name().startswith("inparallel.aio pump")
        assert src.ctx_ok is True

    arun(main)


def test_preload_break_from_plain_async_for_closes_the_source(arun):
    """A break out of a plain ``async for``: the pump closes the source within a few turns."""

    async def main():
        src = Src(None)
        pumps: list[asyncio.Task[Any]] = []

        async def consume():
            async for x in preload_aiter(5, src):
                if x == 0:
                    pumps.extend(named("inparallel.aio pump"))
                if x == 2:
                    break

        await consume()
        await turns()
        assert len(pumps) == 1
        assert src.closed_count == 1
        assert src.finally_task is pumps[0]
        assert src.ctx_ok is True
        assert others() == set()

    arun(main)


def test_preload_async_with_closes_before_exit_returns(arun):
    """Leaving ``async with`` stops the pump and closes the source before the block ends."""

    async def main():
        src = Src(None)
        async with preload_aiter(5, src) as p:
            async for x in p:
                if x == 0:
                    pumps = named("inparallel.aio pump")
                if x == 3:
                    break
        assert src.closed_count == 1
        assert src.finally_task is pumps[0]
        assert src.ctx_ok is True
        assert others() == set()
        with pytest.raises(StopAsyncIteration):
            await p.__anext__()

    arun(main)


def test_preload_aclose_closes_before_it_returns(arun):
    """``await p.aclose()`` returns with the pump gone and the source closed."""

    async def main():
        src = Src(None)
        p = preload_aiter(5, src)
        assert await take(p, 2) == [0, 1]
        await p.aclose()
        assert src.closed_count == 1
        assert src.finally_task is not asyncio.current_task()
        assert others() == set()
        await p.aclose()  # idempotent
        assert src.closed_count == 1

    arun(main)


@pytest.mark.parametrize("where", ["waiting", "body"])
def test_preload_consumer_cancelled_inside_async_with(arun, where):
    """Cancel the consumer (waiting / in its loop body): CancelledError, the source closed."""

    async def main():
        gate = asyncio.Event()
        src = Src(None, gate=gate)
        got: list[int] = []
        seen: dict[str, Any] = {}
        if where == "body":
            gate.set()

        async def consumer():
            try:
                async with preload_aiter(5, src) as p:
                    async for x in p:
                        got.append(x)
                        if len(got) == 3:
                            await asyncio.Event().wait()  # parked in the loop body
            except asyncio.CancelledError:
                seen["closed_at_exit"] = src.closed_count
                seen["tasks_at_exit"] = named("inparallel.aio pump")
                raise

        task = await pending(consumer())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert seen["closed_at_exit"] == 1  # closed before the block was left
        assert seen["tasks_at_exit"] == []
        assert src.closed_count == 1
        assert src.finally_task is not task
        assert src.finally_task.get_name().startswith("inparallel.aio pump")
        assert src.ctx_ok is True
        assert got == ([0, 1, 2] if where == "body" else [])

    arun(main)


def test_preload_outer_timeout_reaches_through(arun):
    """``asyncio.timeout(0.05)`` around a stalled preload raises TimeoutError out of the block."""

    async def main():
        src = Src(None, gate=asyncio.Event())  # stalls for ever
        got = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):  # the stimulus, not an ordering device
                async with preload_aiter(5, src) as p:
                    async for x in p:
                        got.append(x)
        assert got == []
        assert src.closed_count == 1
        assert src.finally_task.get_name().startswith("inparallel.aio pump")
        assert asyncio.current_task().cancelling() == 0
        assert others() == set()

    arun(main)


def test_preload_pump_cancelled_from_outside_fails_the_reader(arun):
    """A pump task cancelled by someone else (not aclose) fails the reader, never hangs it."""

    async def main():
        src = Src(None, gate=asyncio.Event())
        p = preload_aiter(2, src)
        reader = await pending(p.__anext__())
        (pump,) = named("inparallel.aio pump")
        pump.cancel()
        with pytest.raises(RuntimeError, match="the task reading the source was cancelled"):
            await reader
        assert src.closed_count == 1
        assert src.finally_task is pump
        with pytest.raises(RuntimeError, match="the task reading the source was cancelled"):
            await p.__anext__()

    arun(main)


def test_preload_close_error_reaches_the_reader(arun):
    """A source whose aclose() fails: a plain ``async for`` gets that error after the items."""

    async def main():
        src = FailsToClose()
        out = []
        with pytest.raises(RuntimeError, match="close failed"):
            async for x in preload_aiter(2, src):
                out.append(x)
        assert out == [1, 2]
        assert src.close_calls == 1

    arun(main)


@pytest.mark.parametrize(
    ("size", "exc"), [(-1, ValueError), ("5", TypeError), (2.0, TypeError), (True, TypeError)]
)
def test_preload_rejects_bad_sizes(size, exc):
    """preload_size must be an int >= 0."""
    with pytest.raises(exc, match="preload_size"):
        preload_aiter(size, [1, 2])


def test_preload_rejects_non_iterables():
    """A non-iterable source is a TypeError at once."""
    with pytest.raises(TypeError, match=r"preload_aiter\(\): aiter must be an async iterable"):
        preload_aiter(5, 7)  # type: ignore[arg-type]


def test_preload_seed_call_form(arun):
    """``async for x in preload_aiter(5, source)``, built outside any loop; lists work too."""
    stream = preload_aiter(5, iter_to_aiter(range(20)))
    from_list = preload_aiter(2, [3, 1, 2])

    async def main():
        out = []
        async for x in stream:
            out.append(x)
        assert out == list(range(20))
        assert [x async for x in from_list] == [3, 1, 2]
        assert [x async for x in preload_aiter(5, Src(7))] == list(range(7))

    arun(main)


# -- active_aiter ----------------------------------------------------------------------------


@pytest.mark.parametrize("maxsize", [1, 3, 10, 100])
def test_active_drains_up_to_maxsize(arun, maxsize):
    """After one read, with no reader reading: pulls == min(n, 1 + maxsize)."""

    async def main():
        n = 30
        src = Src(n, checkpoint=False)
        async with active_aiter(src, maxsize=maxsize) as a:
            assert await a.__anext__() == 0
            await turns()
            assert src.pulls == min(n, 1 + maxsize)
            await turns()
            assert src.pulls == min(n, 1 + maxsize)  # and no further
            rest = await drain(a)
        assert rest == list(range(1, n))
        assert src.closed_count == 1

    arun(main)


def test_active_default_maxsize_is_10000(arun):
    """The default read-ahead is 10000 items."""
    assert inspect.signature(active_aiter).parameters["maxsize"].default == 10_000

    async def main():
        src = Src(20_000, checkpoint=False)
        async with active_aiter(src) as a:
            assert await a.__anext__() == 0
            await turns(400)  # the pump yields to the loop every 64 items it pulls
            assert src.pulls == 10_001
        assert src.closed_count == 1

    arun(main)


def test_active_accepts_math_inf(arun):
    """maxsize=math.inf drains the whole source without a reader."""

    async def main():
        src = Src(500, checkpoint=False)
        a = active_aiter(src, maxsize=math.inf)
        assert await a.__anext__() == 0
        await turns()
        assert src.pulls == 500
        assert src.closed_count == 1  # exhausted: closed by the pump
        assert src.finally_task.get_name().startswith("inparallel.aio pump")
        assert await drain(a) == list(range(1, 500))

    arun(main)


@pytest.mark.parametrize(
    ("maxsize", "exc"),
    [
        (0, ValueError),
        (0.5, ValueError),
        (-3, ValueError),
        (math.nan, ValueError),
        ("10", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_active_rejects_bad_maxsize(maxsize, exc):
    """maxsize must be a number >= 1."""
    with pytest.raises(exc, match="maxsize"):
        active_aiter([1], maxsize=maxsize)


def test_active_cleanup_after_break_in_async_with(arun):
    """Old D9: break after 1 item inside ``async with``: no tasks, source closed by the pump."""

    async def main():
        src = Src(None)
        async with active_aiter(src) as a:
            async for x in a:
                pumps = named("inparallel.aio pump")
                assert x == 0
                break
        assert others() == set()
        assert src.closed_count == 1
        assert src.finally_task is pumps[0]
        assert src.ctx_ok is True

    arun(main)


def test_active_seed_call_form(arun):
    """``async for x in active_aiter(aiter)`` (plain, no ``async with``)."""

    async def main():
        assert [x async for x in active_aiter(iter_to_aiter(range(10)))] == list(range(10))
        src = Src(4)
        assert [x async for x in active_aiter(src)] == [0, 1, 2, 3]
        assert src.closed_count == 1

    arun(main)


# -- join_aiters -----------------------------------------------------------------------------


def test_join_keeps_per_source_order(arun):
    """3 sources of 50 tagged items: each tag's subsequence is increasing, 150 in total."""

    async def main():
        srcs = {tag: Src(50) for tag in "abc"}
        out = await drain(join_aiters([Tagged(tag, s) for tag, s in srcs.items()]))
        assert len(out) == 150
        for tag in "abc":
            assert [x for t, x in out if t == tag] == list(range(50))
        assert all(s.closed_count == 1 and s.ctx_ok for s in srcs.values())
        assert len({t for t, _ in out[:10]}) > 1  # merged as items come, not one after another

    arun(main)


def test_join_old_upstream_lists(arun):
    """Upstream test_join_aiters: ints and a string, each in its own order."""

    async def main():
        int_vals, str_vals = [1, 2, 3, 4], "abcdefg"
        outer = iter_to_aiter([iter_to_aiter(int_vals), iter_to_aiter(str_vals)])
        r = await drain(join_aiters(outer))
        assert [x for x in r if isinstance(x, int)] == int_vals
        assert [x for x in r if isinstance(x, str)] == list(str_vals)

    arun(main)


def test_join_max_active(arun):
    """max_active=2 over 5 gated sources: at most 2 have started and not ended at any time."""

    async def main():
        gates = [asyncio.Event() for _ in range(5)]
        srcs = [Src(3, gate=g) for g in gates]
        worst = 0

        def running() -> int:
            return sum(1 for s in srcs if s.pulls > 0 and s.closed_count == 0)

        out: list[int] = []

        async def read():
            nonlocal worst
            async for x in join_aiters(srcs, max_active=2):
                out.append(x)
                worst = max(worst, running())

        reader = await pending(read())
        for g in gates[2:]:
            g.set()  # ready, but no slot
        await turns()
        assert [s.pulls for s in srcs] == [0] * 5
        gates[0].set()  # source 0 ends, its slot goes to 2, then 3, then 4
        await turns(60)
        assert [s.pulls for s in srcs] == [3, 0, 3, 3, 3]
        assert [s.closed_count for s in srcs] == [1, 0, 1, 1, 1]
        assert len(out) == 12
        assert not reader.done()
        gates[1].set()
        await reader
        assert len(out) == 15
        assert worst <= 2
        assert all(s.closed_count == 1 for s in srcs)

    arun(main)


def test_join_buffer_zero_backpressure(arun):
    """buffer=0 and a slow reader: per source, pulls - consumed <= 1 at every step."""

    async def main():
        srcs = {tag: Src(20) for tag in "abc"}
        consumed = dict.fromkeys(srcs, 0)
        worst = 0
        async for tag, _ in join_aiters([Tagged(t, s) for t, s in srcs.items()]):
            consumed[tag] += 1
            for _ in range(5):  # a slow reader: the sub tasks run meanwhile
                await asyncio.sleep(0)
                for t, s in srcs.items():
                    worst = max(worst, s.pulls - consumed[t])
        assert consumed == dict.fromkeys(srcs, 20)
        assert worst == 1

    arun(main)


def test_join_buffer_bounds_the_read_ahead(arun):
    """buffer=3, one source: the sub task stops once the reader is more than 3 behind."""

    async def main():
        src = Src(100)
        async with join_aiters([src], buffer=3) as j:
            assert await j.__anext__() == 0
            await turns(20)
            assert src.pulls == 1 + 3 + 1  # read + buffer + the item pushed before waiting
            assert await take(j, 4) == [1, 2, 3, 4]
            await turns(20)
            assert src.pulls == 5 + 3 + 1
        assert src.closed_count == 1

    arun(main)


def test_join_error_cancels_siblings(arun):
    """Source B fails: its error is raised unwrapped after B's items; A and C are closed."""

    async def main():
        a, b, c = Src(None), Src(10, fail_at=3), Src(None)
        j = join_aiters([Tagged("a", a), Tagged("b", b), Tagged("c", c)])
        out = []
        with pytest.raises(ValueError, match="source failed at 3") as info:
            async for item in j:
                out.append(item)
        assert type(info.value) is ValueError
        assert [x for t, x in out if t == "b"] == [0, 1, 2]
        assert others() == set()  # every task was cancelled and awaited
        for s in (a, b, c):
            assert s.closed_count == 1
            assert s.ctx_ok is True
            assert s.finally_task.get_name().startswith("inparallel.aio join sub")
        assert len({a.finally_task, b.finally_task, c.finally_task}) == 3
        with pytest.raises(ValueError, match="source failed at 3"):  # again on the next read
            await j.__anext__()

    arun(main)


def test_join_two_errors_make_an_exception_group(arun):
    """A fails, and B fails while being cancelled: both recorded, raised as an ExceptionGroup."""

    async def main():
        a, b = Src(5, fail_at=1), FailsWhenCancelled()
        out = []
        with pytest.raises(ExceptionGroup) as info:
            async for x in join_aiters([a, b]):
                out.append(x)
        assert out == [0]
        assert "several sources failed" in str(info.value)
        kinds = sorted(type(e).__name__ for e in info.value.exceptions)
        assert kinds == ["KeyError", "ValueError"]
        assert b.cancelled is True
        assert a.closed_count == 1
        assert b.closed_count == 1
        assert others() == set()

    arun(main)


def test_join_simultaneous_failures_first_error_wins(arun):
    """A and B fail on the same wake-up: A's error cancels B first, so A's error alone."""

    async def main():
        go = asyncio.Event()
        a = Src(5, fail_at=0, gate=go, checkpoint=False, exc=ValueError)
        b = Src(5, fail_at=0, gate=go, checkpoint=False, exc=KeyError)
        j = join_aiters([a, b])
        reader = await pending(j.__anext__())
        go.set()  # both sub tasks wake in this loop iteration
        with pytest.raises(ValueError, match="source failed at 0") as info:
            await reader
        assert type(info.value) is ValueError  # a single error is never wrapped
        assert a.closed_count == 1
        assert b.closed_count == 1  # cancelled before it could fail
        assert a.pulls == b.pulls == 0
        assert others() == set()

    arun(main)


def test_join_break_early_closes_everything_in_its_own_task(arun):
    """Break after the first item (plain async for): every sub and the outer closed by its task."""

    async def main():
        subs = [Src(None), Src(None), Src(None)]
        outer = Items(subs, hang=True)

        async def consume():
            async for x in join_aiters(outer):
                assert x == 0
                break

        await consume()
        await turns()
        assert others() == set()
        assert outer.closed_count == 1
        assert outer.ctx_ok is True
        assert outer.finally_task.get_name() == "inparallel.aio join outer"
        # The outer is not read further while the reader is behind: the subs it handed out
        # (at least the first) were read and closed by their own tasks; the rest never began.
        started = [s for s in subs if s.pulls or s.closed_count]
        assert started and started == subs[: len(started)]
        for n, s in enumerate(started, 1):
            assert s.closed_count == 1
            assert s.ctx_ok is True
            assert s.finally_task is not asyncio.current_task()
            assert s.finally_task.get_name() == f"inparallel.aio join sub {n}"
        assert len({s.finally_task for s in started}) == len(started)

    arun(main)


def test_join_async_with_closes_everything_before_exit(arun):
    """Leaving ``async with`` after the first item: all closed, by their own tasks, at once."""

    async def main():
        subs = [Src(None), Src(None), Src(None)]
        outer = Items(subs, hang=True)
        async with join_aiters(outer) as j:
            assert await j.__anext__() == 0
        assert others() == set()
        assert outer.closed_count == 1
        assert outer.finally_task.get_name() == "inparallel.aio join outer"
        started = [s for s in subs if s.pulls or s.closed_count]  # see the test above
        assert started and started == subs[: len(started)]
        for n, s in enumerate(started, 1):
            assert s.closed_count == 1
            assert s.ctx_ok is True
            assert s.finally_task.get_name() == f"inparallel.aio join sub {n}"
        with pytest.raises(StopAsyncIteration):
            await j.__anext__()

    arun(main)


def test_join_sub_iterators_added_late(arun):
    """Upstream test_join_aiters_1: children pushed over time; nothing dropped; ends last."""

    async def main():
        main_q: push_aiter[Any] = push_aiter()
        children: list[push_aiter[int]] = []
        j = join_aiters(main_q)

        children.append(push_aiter())
        children[0].push(100)
        main_q.push(children[0])
        assert await take(j, 1) == [100]

        children.append(push_aiter())
        children[0].push(101)
        children[1].push(200)
        children[1].push(201)
        main_q.push(children[1])
        assert set(await take(j, 3)) == {101, 200, 201}

        for _ in range(3):
            children.append(push_aiter())
            main_q.push(children[-1])
        for i, child in enumerate(children):
            child.push((i + 1) * 100, (i + 1) * 100 + 1)
        got = await take(j, len(children) * 2)
        assert set(got) == {100, 101, 200, 201, 300, 301, 400, 401, 500, 501}

        children[-1].push(5000)
        main_q.stop()
        assert await take(j, 1) == [5000]

        children[0].push(6000)  # pushed after the outer's stop(): still arrives
        assert await take(j, 1) == [6000]

        for child in children[:-1]:
            child.push(99)
            child.stop()
        assert await take(j, 4) == [99] * 4
        last = await pending(j.__anext__())  # the outer stopped, but one child is open
        children[-1].push(99)
        assert await last == 99
        end = await pending(j.__anext__())
        children[-1].stop()
        with pytest.raises(StopAsyncIteration):
            await end
        assert others() == set()

    arun(main)


def test_join_sync_sub_iterables(arun):
    """Lists, strings and ranges as sub-iterables, in a list or an async outer."""

    async def main():
        subs: list[Any] = [[1, 2, 3], "ab", range(10, 13)]
        out = await drain(join_aiters(subs))
        assert sorted(map(str, out)) == sorted(map(str, [1, 2, 3, "a", "b", 10, 11, 12]))
        assert [x for x in out if isinstance(x, str)] == ["a", "b"]
        assert [x for x in out if isinstance(x, int) and x < 10] == [1, 2, 3]
        assert [x for x in out if isinstance(x, int) and x >= 10] == [10, 11, 12]
        mixed = Items([[1, 2], Src(3), iter_to_aiter("xy")])
        out = await drain(join_aiters(mixed))
        assert sorted(map(str, out)) == ["0", "1", "1", "2", "2", "x", "y"]
        assert mixed.closed_count == 1

    arun(main)


def test_join_non_iterable_sub_raises_type_error(arun):
    """A sub that is not iterable fails the stream with TypeError (after queued items)."""

    async def main():
        j = join_aiters([[1], 5, [2]])
        out = []
        with pytest.raises(TypeError, match=r"join_aiters\(\): sub-iterable 2 must be an async"):
            async for x in j:
                out.append(x)
        assert out == [1]  # sub 0's task queued its item before the outer reached the bad sub
        assert others() == set()

    arun(main)


def test_join_outer_error_cancels_the_subs(arun):
    """The outer iterable fails: its error is raised, the running sub is closed by its task."""

    async def main():
        sub = Src(None)

        async def outer():
            yield sub
            await asyncio.sleep(0)
            raise LookupError("outer failed")

        with pytest.raises(LookupError, match="outer failed"):
            async for _ in join_aiters(outer()):
                pass
        assert sub.closed_count == 1
        assert sub.finally_task.get_name() == "inparallel.aio join sub 1"
        assert others() == set()

    arun(main)


def test_join_sub_cancelled_from_outside_is_not_a_clean_end(arun):
    """A sub task cancelled by someone else fails the stream instead of truncating it."""

    async def main():
        a, b = Src(10), Src(10)
        j = join_aiters([a, b])
        out = [await j.__anext__()]
        (sub1,) = named("inparallel.aio join sub 1")
        sub1.cancel()
        with pytest.raises(RuntimeError, match="cancelled"):
            async for x in j:
                out.append(x)
        assert a.closed_count == 1
        assert b.closed_count == (1 if b.pulls else 0)  # b began only if the outer got to it

    arun(main)


def test_join_close_error_reaches_the_reader(arun):
    """A sub whose aclose() fails: the reader gets that error after the items."""

    async def main():
        src = FailsToClose()
        out = []
        with pytest.raises(RuntimeError, match="close failed"):
            async for x in join_aiters([src]):
                out.append(x)
        assert out == [1, 2]
        assert src.close_calls == 1

    arun(main)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"max_active": 0}, ValueError),
        ({"max_active": "2"}, TypeError),
        ({"max_active": True}, TypeError),
        ({"buffer": -1}, ValueError),
        ({"buffer": 1.0}, TypeError),
        ({"buffer_size": -1}, ValueError),
        ({"buffer_size": 1.0}, TypeError),
    ],
)
def test_join_rejects_bad_arguments(kwargs, exc):
    """max_active must be an int >= 1 (or None), buffer an int >= 0."""
    with pytest.raises(exc, match=next(iter(kwargs))):
        join_aiters([[1]], **kwargs)


def test_join_rejects_a_non_iterable_outer():
    """A non-iterable outer is a TypeError at once."""
    with pytest.raises(TypeError, match=r"join_aiters\(\): aiter_of_aiters must be"):
        join_aiters(5)  # type: ignore[arg-type]


def test_join_takes_buffer_size_and_its_earlier_name_buffer(arun):
    """buffer_size= is the name the other tools use; buffer= stays; both differently: error."""

    async def main():
        for kwargs in ({"buffer_size": 2}, {"buffer": 2}, {"buffer": 2, "buffer_size": 2}):
            async with join_aiters([[1, 2], [3]], **kwargs) as j:
                assert sorted([x async for x in j]) == [1, 2, 3]

    arun(main)
    with pytest.raises(TypeError, match=r"join_aiters\(\): give buffer_size= or buffer="):
        join_aiters([[1]], buffer=1, buffer_size=2)
