"""inparallel.aio: async iterator tools on asyncio, and async bridges to forked tasks.

The names of Richard Kiss's ``aiter`` toolkit, with its call forms, on today's asyncio:

* **Queues and sharing:** `push_aiter` (push, stop, fork), `aiter_forker` (broadcast),
  `sharable_aiter` (several readers, one item each).
* **Flow control:** `preload_aiter`, `active_aiter`, `gated_aiter`, `stoppable_aiter`.
* **Transforms:** `map_aiter`, `map_filter_aiter`, `azip`, `flatten_aiter`, `join_aiters`,
  `iter_to_aiter`, `aiter_to_iter`.
* **Forked tasks:** ``await`` a `TaskFuture` (cancelling the awaiting task kills the child)
  and `parallel_map`, one forked child per item.

The rules every tool keeps:

* Nothing binds an event loop when it is built (build at import time, use in ``asyncio.run``).
* `asyncio.CancelledError` always reaches the cancelled task; cancelling one reader never
  ends a stream for the others, and an item already taken from a source is never lost (a
  sequential `map_aiter` runs the call in the reader's task: cancelling the reader cancels
  that call, as in a hand-written loop). A source finalized by a cancelled read (an async
  generator read in the reader's own task) makes the next read raise, not end quietly.
* A source's error reaches the reader after the items before it; nothing is logged and
  dropped (``on_error="skip"`` on the maps is the explicit opt-in).
* Every buffer a tool fills on its own is bounded (`active_aiter` is unbounded only when you
  write ``maxsize=math.inf``). The queues you fill yourself are bounded when you say so:
  `push_aiter` (``maxsize=``; the queue object is itself a reader that holds what it has not
  read, so a producer that only pushes should ``aclose()`` it) and the broadcast of
  `aiter_forker` (``max_lag=``).
* A tool owns the iterators it is given and closes them when it ends, fails or is closed.
  Tools that run background tasks start them at the first read and stop them (cancelled and
  awaited; each source closed in the task, or the context, that read it) on ``aclose()``
  and when an ``async with`` block is left; when the stream is dropped (a ``break`` out of
  a plain ``async for``) they are cancelled at once, and finish their cleanup in the loop.

Importing inparallel never imports `asyncio`, nor does importing this module: its names come from
``inparallel._aio``, imported when one of them is first used. A `TaskFuture` imports asyncio
when it is awaited (by then asyncio is loaded anyway).
"""

from __future__ import annotations

from . import _lazy

# Type checkers treat this name as true: they see the real names below (see inparallel's own
# ``__init__``, which does the same).
TYPE_CHECKING = False

if TYPE_CHECKING:
    from ._aio._base import Stream
    from ._aio._fork import parallel_map
    from ._aio._gate import gated_aiter, stoppable_aiter
    from ._aio._join import join_aiters
    from ._aio._map import map_aiter, map_filter_aiter
    from ._aio._push import QueueFull, QueueStopped, push_aiter
    from ._aio._shared import Fork, active_aiter, aiter_forker, preload_aiter, sharable_aiter
    from ._aio._transform import aiter_to_iter, azip, flatten_aiter, iter_to_aiter

__all__ = (
    "Fork",
    "QueueFull",
    "QueueStopped",
    "Stream",
    "active_aiter",
    "aiter_forker",
    "aiter_to_iter",
    "azip",
    "flatten_aiter",
    "gated_aiter",
    "iter_to_aiter",
    "join_aiters",
    "map_aiter",
    "map_filter_aiter",
    "parallel_map",
    "preload_aiter",
    "push_aiter",
    "sharable_aiter",
    "stoppable_aiter",
)

# The module that defines each name (the imports above, for the interpreter). They import
# asyncio, several times the cost of the aio modules themselves: PEP 562 lets them wait.
_HOMES = {
    "Fork": "._aio._shared",
    "QueueFull": "._aio._push",
    "QueueStopped": "._aio._push",
    "Stream": "._aio._base",
    "active_aiter": "._aio._shared",
    "aiter_forker": "._aio._shared",
    "aiter_to_iter": "._aio._transform",
    "azip": "._aio._transform",
    "flatten_aiter": "._aio._transform",
    "gated_aiter": "._aio._gate",
    "iter_to_aiter": "._aio._transform",
    "join_aiters": "._aio._join",
    "map_aiter": "._aio._map",
    "map_filter_aiter": "._aio._map",
    "parallel_map": "._aio._fork",
    "preload_aiter": "._aio._shared",
    "push_aiter": "._aio._push",
    "sharable_aiter": "._aio._shared",
    "stoppable_aiter": "._aio._gate",
}

if not TYPE_CHECKING:
    # Hidden from type checkers: they see the real names above, and a module-level
    # ``__getattr__`` would make them accept any misspelt name as ``Any``.
    __getattr__, __dir__ = _lazy.exports(globals(), _HOMES, __all__)
