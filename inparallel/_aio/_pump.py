"""`Pump`: one background task that reads a source into a queue, as far as a rule allows.

The streams that read ahead (`preload_aiter`, `active_aiter`), share a source between readers
(`sharable_aiter`) or broadcast it (`aiter_forker`) all need the same thing: the source is
read by *one* task, never by the readers themselves. So

* a pull is single-flight: readers that want an item share the pull in progress;
* cancelling a reader never cancels the pull: the item it would have had is pushed anyway and
  goes to the next reader (cancelling ``agen.__anext__()`` would also finalize a generator);
* the source is read and closed in one task, so its context variables and ``finally`` blocks
  run where it was iterated.

The rule (``allowed``) says whether one more pull may start; the pump waits for a `poke`
after the readers changed what the rule sees. The pump holds the queue's shared state and the
source, never the stream object, so a stream nobody references any more is collected, and its
finalizer cancels the pump.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from ._base import cancel_soon, close_soon, close_source, keep_task, next_of, settle
from ._push import Shared

__all__ = ("Pump",)

#: Pulls between two yields to the loop, for a source that has its items ready at once (a
#: sync iterable): without it, reading ahead would hold the loop for the whole read-ahead.
YIELD_EVERY = 64


class Pump:
    """Read ``source`` into ``shared`` from a background task, while ``allowed()`` says so.

    The task starts on the first `poke` (so in the loop that first reads), and ends when the
    source is exhausted or fails (the queue then ends, with the error after the items), or
    when `aclose`/`cancel` stop it. The source is closed by the task itself in every case.
    """

    def __init__(self, source: AsyncIterator[Any], shared: Shared, allowed: Callable[[], bool]):
        self._source: AsyncIterator[Any] | None = source
        self._shared = shared
        self._allowed = allowed
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._closing = False
        self.pulls = 0  #: items taken from the source

    def poke(self) -> None:
        """Tell the pump the rule may have changed (start it on first use)."""
        if self._closing:
            return
        if self._task is None:
            source, self._source = self._source, None
            if source is None:
                return
            task = asyncio.get_running_loop().create_task(self._run(source), name=_name(source))
            self._task = keep_task(task)
        elif self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _run(self, source: AsyncIterator[Any]) -> None:
        shared = self._shared
        try:
            while True:
                while not self._allowed():
                    self._wakeup = asyncio.get_running_loop().create_future()
                    await self._wakeup
                try:
                    item = await next_of(source)
                except StopAsyncIteration:
                    error = None
                    break
                except Exception as exc:
                    error = exc
                    break
                self.pulls += 1
                shared.append((item,))
                if self.pulls % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a source that never suspends must not hold the loop
        except asyncio.CancelledError:
            if not self._closing:  # not ours (a loop shutting down): readers must not hang
                shared.end(RuntimeError("the task reading the source was cancelled"))
            await close_source(source)
            raise
        # The end: close the source first, so that an error closing it reaches the readers.
        try:
            await close_source(source)
        except Exception as exc:
            error = error or exc
        shared.end(error)

    async def aclose(self) -> None:
        """Stop the task and wait until it has closed the source (or close it if none ran).

        Raises:
            Exception: Closing the source raised it.
        """
        self._closing = True
        source, self._source = self._source, None
        if source is not None:
            await close_source(source)
        task = self._task
        if task is None:
            return
        task.cancel()
        await settle(task)

    def cancel(self) -> None:
        """Stop the task without waiting (from a finalizer; any thread)."""
        self._closing = True
        if self._task is not None:
            cancel_soon(self._task)
        source, self._source = self._source, None
        if source is not None:  # never started: nothing else will close it
            close_soon([source])

    @property
    def closing(self) -> bool:
        """Whether `aclose` or `cancel` was called: no pull will start any more."""
        return self._closing


def _name(source: object) -> str:
    return f"inparallel.aio pump of {type(source).__name__}"
