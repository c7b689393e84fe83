"""`Puller`: read one source in small tasks that share one context, safe to cancel.

Reading ``await source.__anext__()`` in the reader's own task has two flaws when the reader
is cancelled or must also watch something else: the cancellation is thrown into the source
(an async generator is finalized by it, and reading on looks like a normal end), and the
reader cannot wait for "the next item or something else". So the streams that need either
(the concurrent maps, `gated_aiter`, `stoppable_aiter`) read through a `Puller`:

* each pull is a small task; a reader cancelled while it waits leaves the pull running, and
  the next read takes its item (nothing is lost, the source is not finalized);
* every pull, and the final ``aclose()``, run in one `contextvars.Context`, so the source's
  context variables and ``finally`` blocks see one consistent context;
* on 3.12+ a pull starts eagerly, and a sync iterator is read at once: a source that has
  its item ready costs no loop turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
from collections.abc import AsyncIterator
from typing import Any

from ._base import (
    SyncSource,
    close_soon,
    close_source,
    consume_outcome,
    keep_task,
    next_or_end,
    report,
    settle,
)

__all__ = ("Puller",)

#: Whether tasks can start eagerly (``Task(eager_start=True)``, Python 3.12+).
EAGER = sys.version_info >= (3, 12)


class Puller:
    """Reads ``source`` one item at a time (see the module docstring); owns and closes it."""

    def __init__(self, source: AsyncIterator[Any]) -> None:
        self.source: AsyncIterator[Any] | None = source
        self.pending: asyncio.Future[Any] | None = None  #: the pull in progress, if any
        self._context: contextvars.Context | None = None  # the first reader's, at its first read
        self._loop: asyncio.AbstractEventLoop | None = None  # where the source is read

    def start(self) -> asyncio.Future[Any]:
        """Return the pull in progress, starting one if there is none.

        Its result is the item or `END`; its exception is the source's.
        """
        pull = self.pending
        if pull is None:
            if self.source is None:
                raise RuntimeError("the source was closed")
            if self._context is None:
                self._context = contextvars.copy_context()
                self._loop = asyncio.get_running_loop()
            pull = self.pending = _start(self.source, self._context)
        return pull

    def take(self) -> Any:
        """Return the finished pull's outcome (item or `END`) and forget it; raise its error."""
        pull, self.pending = self.pending, None
        if pull is None or not pull.done():
            raise RuntimeError("no finished read to take (the stream was closed meanwhile)")
        if pull.cancelled():
            raise RuntimeError("the task reading the source was cancelled")
        return pull.result()

    async def aclose(self) -> None:
        """Cancel a pull in progress and close the source in its own context; idempotent.

        Raises:
            Exception: Closing the source raised it.
        """
        source, self.source = self.source, None
        pull, self.pending = self.pending, None
        if pull is not None and not pull.done():
            pull.cancel()
            await asyncio.wait((pull,))
        if source is None:
            return
        loop = asyncio.get_running_loop()
        await settle(keep_task(loop.create_task(close_source(source), context=self._context)))

    def drop(self) -> None:
        """From a finalizer (any thread): stop the pull and close the source soon, in its loop."""
        source = self.source
        if source is None:
            return
        if isinstance(source, SyncSource):
            self.source = None
            source.close()
            return
        loop = self._loop
        if loop is None:  # never read: close it in this thread's loop, if one runs
            self.source = None
            close_soon([source])
            return
        if loop.is_closed():
            return  # its loop is gone: left to the source's own finalizer
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            self._drop_here()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._drop_here)

    def _drop_here(self) -> None:
        source, self.source = self.source, None
        pull, self.pending = self.pending, None
        if source is None:
            return
        if pull is not None:
            pull.cancel()
        loop = asyncio.get_running_loop()
        report(loop.create_task(_close_after(pull, source), context=self._context))


def _start(source: AsyncIterator[Any], context: contextvars.Context) -> asyncio.Future[Any]:
    loop = asyncio.get_running_loop()
    if isinstance(source, SyncSource):  # next() cannot suspend, nor be cancelled halfway
        done = loop.create_future()
        try:
            done.set_result(source.next_now())
        except Exception as exc:
            done.set_exception(exc)
        return done
    if EAGER:
        task = asyncio.Task(next_or_end(source), loop=loop, context=context, eager_start=True)  # type: ignore[call-arg]
    else:
        task = loop.create_task(next_or_end(source), context=context)
    task.add_done_callback(consume_outcome)
    return task


async def _close_after(pull: asyncio.Future[Any] | None, source: AsyncIterator[Any]) -> None:
    try:
        if pull is not None:
            await asyncio.wait((pull,))
    finally:  # also when the loop's shutdown cancels this wait
        await close_source(source)
