"""`to_asyncio`: a `concurrent.futures.Future` seen from an asyncio loop.

Like `asyncio.wrap_future`, with two differences that matter to tasks: cancelling the asyncio
side cancels the source (for a task: kills its child), and a `StopIteration` outcome arrives as
a `RuntimeError` caused by it (asyncio refuses to store one, and the await would hang).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from typing import TYPE_CHECKING, TypeVar

from ._errors import stray_stop

if TYPE_CHECKING:
    import asyncio

__all__ = ("to_asyncio",)

R = TypeVar("R")


def to_asyncio(source: Future[R], loop: asyncio.AbstractEventLoop, what: str) -> asyncio.Future[R]:
    """Return a future of ``loop`` that finishes like ``source`` (as `asyncio.wrap_future`).

    Cancelling the returned future cancels ``source`` (for a task: kills its child). Unlike
    `asyncio.wrap_future`, a `StopIteration` or `StopAsyncIteration` outcome arrives as a
    `RuntimeError` caused by it (`stray_stop`): asyncio refuses to store a StopIteration in a
    future (it logs a TypeError and the future never finishes), and either would end the
    iteration of an awaiting ``__anext__`` in silence. Any other outcome is passed as it is.

    Args:
        source: Any `concurrent.futures.Future`; its callbacks may run on any thread.
        loop: The loop of the returned future (the running one, when called from it).
        what: Names the call in the message of a converted StopIteration.
    """
    dest: asyncio.Future[R] = loop.create_future()

    # The callbacks take the future they follow as an argument instead of closing over it:
    # ``source`` keeps its callbacks for ever, and a callback that referred back to it would
    # make a cycle that holds its result until the garbage collector runs.
    def copy(done: Future[R]) -> None:  # on the loop's thread
        if dest.done():  # cancelled meanwhile by its awaiter
            return
        if done.cancelled():
            dest.cancel()
            return
        error = done.exception()
        if error is None:
            dest.set_result(done.result())
        else:
            dest.set_exception(stray_stop(error, what))

    def on_source_done(done: Future[R]) -> None:  # on the thread that finished it
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits any more
            loop.call_soon_threadsafe(copy, done)

    def on_dest_done(awaited: asyncio.Future[R]) -> None:  # asyncio drops it once called
        if awaited.cancelled():
            source.cancel()

    dest.add_done_callback(on_dest_done)
    source.add_done_callback(on_source_done)
    return dest
