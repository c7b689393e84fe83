"""The cancellation and cleanup matrix (research/async.md 6.9) for every stream with tasks.

The streams that run background tasks or concurrent calls: `preload_aiter`, `active_aiter`,
`join_aiters`, `map_aiter` with ``worker_count=3``, `parallel_map`, `aiter_forker` and
`sharable_aiter`. For each, a cancel lands (a) while the reader waits for the first item,
(b) while it waits in mid-stream, (c) while it is in its loop body between items, and comes
from ``task.cancel()``, from `asyncio.timeout`, or from a sibling failing in an enclosing
`asyncio.TaskGroup`. In every cell the reader uses ``async with stream:`` and the test checks
the exception, ``Task.cancelling()``, that each source was closed exactly once and by the task
that read it (a pump or join task; for the concurrent maps a pull task of the map's own, in
the one context all its pulls share: see ``_aio/_pull.py``), and (through the harness) that
no task is left and nothing was logged.

Where the cancel lands is set up with gates and events, never with sleeps: `Tickets` lets a
source yield ``n`` items and then blocks it, and tells the test when it blocked.
"""

# ruff: noqa: F401, F811 - `arun` is a fixture imported from tests._aio so that pytest sees it

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _faults import child_pids
from _timing import BOUND

from inparallel import aio
from tests._aio import Src, arun, turns

STREAMS = ["preload", "active", "join", "map", "parallel_map", "forker", "sharable"]
POSITIONS = ["first", "mid", "body"]
TRIGGERS = ["cancel", "timeout", "taskgroup"]

#: Items a source lets through before it blocks, per position. "mid" needs more than a
#: map's window (6 for map_aiter(worker_count=3)), because a map pulls ahead before it yields.
TICKETS = {"first": 0, "mid": 8, "body": 8}


class SiblingFailed(Exception):
    """Raised by the sibling task in the TaskGroup cases."""


class Tickets:
    """A gate for `Src` (it awaits ``gate.wait()`` before each item): ``n`` items pass.

    After that every ``wait()`` blocks for ever, and `blocked` is set once ``blockers``
    sources are waiting at the same time.
    """

    def __init__(self, n: int, blockers: int = 1) -> None:
        self.left = n
        self.blockers = blockers
        self.waiting = 0
        self.blocked = asyncio.Event()

    async def wait(self) -> None:
        if self.left > 0:
            self.left -= 1
            return
        self.waiting += 1
        if self.waiting >= self.blockers:
            self.blocked.set()
        try:
            await asyncio.get_running_loop().create_future()  # for ever
        finally:
            self.waiting -= 1


class Outer(Src):
    """A tracked source (`Src` bookkeeping) that yields the given sub-sources."""

    def __init__(self, subs: list[Any]) -> None:
        self.subs = subs
        super().__init__(len(subs), checkpoint=False)

    async def _run(self) -> AsyncIterator[Any]:  # type: ignore[override]
        async with contextlib.aclosing(super()._run()) as numbers:
            async for i in numbers:
                yield self.subs[i]


async def ident(x: int) -> int:
    await asyncio.sleep(0)
    return x


class Case:
    """One stream under test, with its sources and who must close each of them."""

    def __init__(self, kind: str, tickets: Tickets | None) -> None:
        self.kind = kind

        def src() -> Src:
            return Src(None, gate=tickets)  # type: ignore[arg-type]

        self.sources: list[Src] = []
        if kind == "join":
            subs = [src(), src()]
            outer = Outer(subs)
            self.sources = [*subs, outer]
            self.stream: Any = aio.join_aiters(outer)
            return
        s = src()
        self.sources = [s]
        self.stream = make_stream(kind, s)

    def take_stream(self) -> Any:
        """Return the stream and forget it, so that only the caller holds it."""
        stream, self.stream = self.stream, None
        return stream

    def check_order(self, got: list[int]) -> None:
        """Each source's items arrive in order (join: two sources of 0, 1, 2, ... merged)."""
        if self.kind == "join":
            assert all(got.count(x) <= 2 for x in got), got
            for x in got:
                assert x == 0 or x - 1 in got, got
        else:
            assert got == list(range(len(got))), got

    def check_closed(self, reader: asyncio.Task[Any] | None) -> None:
        """Every source closed once, in its own context, by the task that read it."""
        for s in self.sources:
            assert s.closed_count == 1, (self.kind, s)
            assert s.ctx_ok is True, self.kind
            assert s.finally_task is not None
        names = [s.finally_task.get_name() for s in self.sources]  # type: ignore[union-attr]
        if self.kind in ("map", "parallel_map"):
            # Read and closed by the map's Puller: small tasks sharing one context (ctx_ok).
            assert self.sources[0].finally_task is not reader
            assert not names[0].startswith("inparallel.aio"), names
        elif self.kind == "join":
            assert names[0].startswith("inparallel.aio join sub"), names
            assert names[1].startswith("inparallel.aio join sub"), names
            assert names[0] != names[1]
            assert names[2] == "inparallel.aio join outer", names
        else:
            assert names[0].startswith("inparallel.aio pump"), names
        for s in self.sources:
            assert s.finally_task is not reader


def make_stream(kind: str, source: Any) -> Any:
    """Build the stream of kind ``kind`` over ``source`` (join: ``source`` is the outer)."""
    if kind == "preload":
        return aio.preload_aiter(2, source)
    if kind == "active":
        return aio.active_aiter(source)
    if kind == "join":
        return aio.join_aiters(source)
    if kind == "map":
        return aio.map_aiter(ident, source, worker_count=3)
    if kind == "parallel_map":
        return aio.parallel_map(lambda x: x, source, concurrency=2)
    if kind == "forker":
        return aio.aiter_forker(source)
    if kind == "sharable":
        return aio.sharable_aiter(source)
    raise AssertionError(kind)


async def no_children_left() -> None:
    """Wait (on pidfds) until every child of the test process has exited."""
    loop = asyncio.get_running_loop()
    waits = []
    fds = []
    try:
        for pid in child_pids():
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            fds.append(fd)
            fut = loop.create_future()
            loop.add_reader(fd, lambda f=fut: f.done() or f.set_result(None))
            waits.append(fut)
        if waits:
            # Killed children die at once; the bound is for a loaded machine.
            _, pending = await asyncio.wait(waits, timeout=BOUND)
            assert not pending, "children of parallel_map were left running"
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)
        for fut in waits:
            fut.cancel()


async def read_block(case: Case, position: str, got: list[int], in_body: asyncio.Event) -> None:
    """The reader: ``async with stream: async for ...``; in "body" it waits after 2 items."""
    async with case.stream as stream:
        async for x in stream:
            got.append(x)
            if position == "body" and len(got) == 2:
                in_body.set()
                await asyncio.Event().wait()  # the cancel lands here
    raise AssertionError("the stream ended")


# -- the matrix ----------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", TRIGGERS)
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kind", STREAMS)
def test_cancel_matrix(arun: Any, kind: str, position: str, trigger: str) -> None:
    """The right exception, cancelling() restored, every source closed once by its reader."""

    async def main() -> None:
        me = asyncio.current_task()
        assert me is not None
        loop = asyncio.get_running_loop()
        tickets = Tickets(TICKETS[position], blockers=2 if kind == "join" else 1)
        case = Case(kind, tickets)
        got: list[int] = []
        in_body = asyncio.Event()

        async def reached() -> None:
            await (in_body if position == "body" else tickets.blocked).wait()
            await turns(5)  # the reader takes what is buffered and waits (or sits in its body)
            if position == "first":
                assert got == []
            elif position == "mid":
                # How many of the items let through reached the reader by now depends on the
                # stream's buffering (and parallel_map's on its children): at least one.
                assert len(got) >= 1
            else:
                assert len(got) == 2

        if trigger == "cancel":
            reader = asyncio.create_task(read_block(case, position, got, in_body))
            await reached()
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            assert reader.cancelled()
        elif trigger == "timeout":
            reader = me
            before = me.cancelling()
            scopes: list[asyncio.Timeout] = []

            async def fire() -> None:
                await reached()
                scopes[0].reschedule(loop.time())

            firing = asyncio.create_task(fire())
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(None) as scope:
                    scopes.append(scope)
                    await read_block(case, position, got, in_body)
            assert scope.expired()
            assert me.cancelling() == before
            await firing
        else:
            reader = me
            before = me.cancelling()

            async def sibling() -> None:
                await reached()
                raise SiblingFailed("the sibling failed")

            with pytest.raises(ExceptionGroup) as info:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(sibling())
                    await read_block(case, position, got, in_body)
            assert [type(e) for e in info.value.exceptions] == [SiblingFailed]
            assert str(info.value.exceptions[0]) == "the sibling failed"
            assert me.cancelling() == before

        case.check_order(got)
        case.check_closed(reader)
        with pytest.raises(StopAsyncIteration):
            await anext(case.stream)  # closed by leaving ``async with``
        if kind == "parallel_map":
            await no_children_left()

    arun(main)


# -- the cancel lands inside aclose() ------------------------------------------------------------


class SlowClose(Src):
    """A tracked source whose ``finally`` must await (an event) before it is closed."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release
        self.closing = asyncio.Event()
        super().__init__(None)

    async def _run(self) -> AsyncIterator[int]:  # type: ignore[override]
        try:
            async with contextlib.aclosing(super()._run()) as numbers:
                async for i in numbers:
                    yield i
        finally:
            self.closing.set()
            await self.release.wait()


@pytest.mark.parametrize("kind", STREAMS)
def test_a_cancel_that_lands_in_aclose_still_finishes_the_cleanup(arun: Any, kind: str) -> None:
    """Cancelled while aclose() waits for a source to close: it closes once, then re-raises."""

    async def main() -> None:
        release = asyncio.Event()
        if kind == "join":
            src = SlowClose(release)
            stream = aio.join_aiters([src])
        else:
            src = SlowClose(release)
            stream = make_stream(kind, src)

        async def reader() -> None:
            async with stream:
                async for x in stream:
                    if x == 1:
                        break

        task = asyncio.create_task(reader())
        await src.closing.wait()  # aclose() has started, the source's finally waits
        await turns(3)
        assert not task.done()
        task.cancel()
        await turns(3)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await turns()
        assert src.closed_count == 1
        if kind == "parallel_map":
            await no_children_left()

    arun(main)


# -- plain ``async for`` and ``break`` (the stream is dropped) ---------------------------------


@pytest.mark.parametrize("kind", STREAMS)
def test_break_out_of_plain_async_for_stops_the_tasks_and_closes_the_sources(
    arun: Any, kind: str
) -> None:
    """No ``async with``: the dropped stream stops its tasks (children) and closes its sources."""

    async def main() -> None:
        case = Case(kind, Tickets(8, blockers=2 if kind == "join" else 1))
        got = []
        async for x in case.take_stream():  # only the loop holds the stream
            got.append(x)
            if len(got) == 2:
                break
        await turns()
        case.check_order(got)
        assert len(got) == 2
        case.check_closed(asyncio.current_task())
        if kind == "parallel_map":
            await no_children_left()

    arun(main)


# -- a user's async generator with a TaskGroup, yielding from a stream -----------------------------


@pytest.mark.parametrize("kind", STREAMS)
def test_a_generator_with_a_task_group_closed_early_gets_a_plain_generator_exit(
    arun: Any, kind: str
) -> None:
    """aclose() on such a generator: the aio code lets GeneratorExit through as it is.

    On CPython < 3.15 the user's own TaskGroup still wraps it in a BaseExceptionGroup
    (CPython #135736); that group is the user's TaskGroup's, not ours, and is the only one.
    """

    async def main() -> None:
        case = Case(kind, None)
        seen: list[BaseException] = []
        helper_done = asyncio.Event()

        async def helper() -> None:
            helper_done.set()

        async def user_gen() -> AsyncIterator[int]:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(helper())
                try:
                    async with case.stream as stream:
                        async for x in stream:
                            yield x
                except BaseException as exc:
                    seen.append(exc)
                    raise

        agen = user_gen()
        got = [await anext(agen), await anext(agen)]
        case.check_order(got)
        await helper_done.wait()
        try:
            await agen.aclose()
        except BaseExceptionGroup as group:
            assert sys.version_info < (3, 15), "CPython #135736 was fixed in 3.15"
            assert [type(e) for e in group.exceptions] == [GeneratorExit]
        assert [type(e) for e in seen] == [GeneratorExit]
        case.check_closed(asyncio.current_task())
        if kind == "parallel_map":
            await no_children_left()

    arun(main)
