"""The asyncio test harness: run a test under debug mode and fail on anything the loop reports.

`run` fails a test that leaves a task behind, lets a task be "destroyed but pending", leaves
a coroutine never awaited, an exception never retrieved, an async generator that failed to
close, or blocks the loop longer than ``SLOW`` seconds; and one whose loop runs longer than
`PATIENCE`. `Src` is a source that records what happened to it; `turns` lets the loop run,
`until` waits for a condition only ``/proc`` can show.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import _faults
import pytest
from _timing import BOUND, PATIENCE, SETTLE

T = TypeVar("T")

#: A callback that runs longer than this counts as blocking the loop (debug mode reports it).
#: Generous: forks of a big test process and a loaded CI machine must not trip it.
SLOW = 0.5

#: Task factories each async test runs with. The eager one (new in 3.12) runs on 3.13+: the
#: newest interpreter covers it, and the suite stays short on the others.
FACTORIES = ["default"] + (["eager"] if sys.version_info >= (3, 13) else [])


def run(test: Callable[[], Awaitable[T]], *, factory: str = "default") -> T:
    """Run ``test()`` in a new loop with asyncio debug mode; fail on any loop complaint."""
    problems: list[str] = []
    handler = _Recorder(problems)
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: problems.append(f"unraisable: {u.exc_value!r} in {u.object!r}")

    def on_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        problems.append(f"loop exception handler: {context.get('message')}: {context!r}")

    async def main() -> T:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(on_exception)
        loop.slow_callback_duration = SLOW
        if factory == "eager":
            loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        try:
            return await test()
        finally:
            await _settle(problems)

    try:
        with _faults.deadline(PATIENCE, "the event loop"):
            result = asyncio.run(main(), debug=True)
        gc.collect()  # destroyed-but-pending tasks and never-awaited coroutines show up now
    finally:
        sys.unraisablehook = old_hook
        logger.removeHandler(handler)
    if problems:
        pytest.fail("the event loop reported:\n" + "\n".join(problems), pytrace=False)
    return result


async def _settle(problems: list[str]) -> None:
    me = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE
    while True:
        for _ in range(5):
            await asyncio.sleep(0)  # cancelled background tasks finish their cleanup
        left = [t for t in asyncio.all_tasks() if t is not me]
        if not left:
            return
        if loop.time() > deadline:
            problems.append(f"tasks left running after the test: {left!r}")
            for t in left:
                t.cancel()
            return
        await asyncio.wait(left, timeout=0.05)


class _Recorder(logging.Handler):
    def __init__(self, problems: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.problems = problems

    def emit(self, record: logging.LogRecord) -> None:
        self.problems.append(f"asyncio logged: {record.getMessage()}")


@pytest.fixture(params=FACTORIES)
def arun(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[Any]]], Any]:
    """`run`, once with the default task factory and once (3.13+) with eager tasks."""
    return lambda test: run(test, factory=request.param)


CTX: contextvars.ContextVar[str] = contextvars.ContextVar("CTX", default="unset")


class Src:
    """A tracked async source: ``Src(n)`` yields ``0 .. n-1`` (``n=None``: for ever).

    Records ``pulls`` (items yielded), ``closed_count`` (times its ``finally`` ran),
    ``finally_task`` (the task that ran it) and ``ctx_ok`` (whether a context variable set
    before the loop could be reset in its ``finally``: False when the generator was closed in
    another context). ``fail_at=i`` raises ``exc`` instead of yielding ``i``; ``gate`` (an
    `asyncio.Event`) is awaited before each item; ``checkpoint`` awaits ``sleep(0)`` each item.
    """

    def __init__(
        self,
        n: int | None = None,
        *,
        fail_at: int | None = None,
        exc: type[BaseException] = ValueError,
        gate: asyncio.Event | None = None,
        checkpoint: bool = True,
    ) -> None:
        self.n, self.fail_at, self.exc, self.gate = n, fail_at, exc, gate
        self.checkpoint = checkpoint
        self.pulls = 0
        self.closed_count = 0
        self.finally_task: asyncio.Task[Any] | None = None
        self.ctx_ok: bool | None = None
        self._gen = self._run()

    def __aiter__(self) -> AsyncIterator[int]:
        return self._gen

    async def _run(self) -> AsyncIterator[int]:
        token = CTX.set("source")
        try:
            i = 0
            while self.n is None or i < self.n:
                if self.gate is not None:
                    await self.gate.wait()
                if self.checkpoint:
                    await asyncio.sleep(0)
                if self.fail_at == i:
                    raise self.exc(f"source failed at {i}")
                self.pulls += 1
                yield i
                i += 1
        finally:
            self.closed_count += 1
            self.finally_task = asyncio.current_task()
            try:
                CTX.reset(token)
                self.ctx_ok = True
            except ValueError:
                self.ctx_ok = False


async def turns(n: int = 10) -> None:
    """Let the loop run ``n`` times (background pumps refill; no wall-clock sleep)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def until(check: Callable[[], object], timeout: float = BOUND) -> bool:
    """Wait up to ``timeout`` s for ``check()`` to be true, the loop running meanwhile.

    The async `_faults.wait_until`: for conditions only ``/proc`` can show (a child that a
    pump task forks). Anything with an event or a future waits on that instead.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            return bool(check())
        await asyncio.sleep(0.001)  # polling /proc: there is no event to wait on
    return True
