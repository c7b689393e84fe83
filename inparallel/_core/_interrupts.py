"""Holding back Ctrl-C while the library makes a change that must happen all at once.

CPython raises ``KeyboardInterrupt`` in the main thread at the next *check point* after SIGINT
arrives, and every call is one (the check runs right after ``os.fork()`` returns, before its
value is stored). A Ctrl-C that lands between creating a resource and recording it leaks the
resource; one that lands between recording it and handing it on leaves a record of something
nobody owns (a child that is killed while the supervisor still watches its fds, whose numbers
are then reused by the program). Catching the exception cannot fix this: the handler is
itself Python code with check points of its own.

So the few calls that must be atomic *hold* the interrupt (`atomic`): for their duration
SIGINT's Python-level handler is `_hold`, which only notes the signal. `release` puts the
program's own handler back and, if a signal was held, calls that handler then, at a point where
the state is consistent again; with Python's default handler that raises ``KeyboardInterrupt``
right there. Before its point of no return a call may give up instead (`give_up_if_pending`):
it undoes what it did, the interrupt is delivered, and nothing was started. Once past it, the
call finishes and the interrupt carries what the call returned, as ``exc.future``. The holding
frame must be the library's outermost one: any frame above it would have a check point between
the release and the caller storing the result, and would lose it.

Only the main thread ever receives ``KeyboardInterrupt``, and only it may change signal
handlers, so other threads hold nothing. A handler that is not a Python callable (``SIG_IGN``,
``SIG_DFL``, one installed from C) raises nothing and is left alone. Cost: five calls into
``_signal`` per held section (about a microsecond).

**The signal calls of the library.** This module also hands the rest of the library
`getsignal`, `setsignal` and `sigmask`: the C functions of ``_signal``, the stable extension
module that ``signal`` wraps. The wrappers convert every number and handler to an enum; in a
freshly forked child one such call costs about 0.1 ms and 50 copied pages (measured), more
than the rest of the child's start-up. Numbers and handlers are plain ints here (``SIG_DFL``
is 0, ``SIG_IGN`` 1). This is the library's one use of ``_signal``.

The held section must not block for long: a Ctrl-C cannot end it.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub: the C module `signal` wraps
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, ParamSpec, TypeVar

__all__ = (
    "GiveUp",
    "atomic",
    "getsignal",
    "give_up_if_pending",
    "hold",
    "release",
    "setsignal",
    "should_hold",
    "sigint_blocked",
    "sigmask",
)

#: ``signal.getsignal`` without the enum conversion (see the module docstring).
getsignal: Callable[[int], Any] = _signal.getsignal
#: ``signal.signal`` without the enum conversions; returns the previous handler.
setsignal: Callable[[int, Any], Any] = _signal.signal
#: ``signal.pthread_sigmask`` without the enum conversions; returns a set of ints.
sigmask: Callable[[int, Any], set[int]] = _signal.pthread_sigmask

P = ParamSpec("P")
R = TypeVar("R")

_SIGINT = int(_signal.SIGINT)
_SIG_BLOCK, _SIG_SETMASK = int(_signal.SIG_BLOCK), int(_signal.SIG_SETMASK)
_held: list[int] = []  # signals noted by `_hold` since the section began
_saved: Any = None  # the program's own handler, put back by `release`


def _hold(signum: int, frame: FrameType | None) -> None:
    _held.append(signum)


def should_hold() -> bool:
    """Return whether this thread should hold SIGINT for a section.

    True in the main thread when no outer section holds it already (sections nest: the
    outermost one holds and releases). Other threads never receive ``KeyboardInterrupt``.
    """
    main = threading.get_ident() == threading.main_thread().ident
    return main and getsignal(_SIGINT) is not _hold


def hold() -> None:
    """Start holding SIGINT, if its handler is a Python callable. Main thread only.

    Call it, when `should_hold` says so, as the first statement inside ``try`` with `release`
    in ``finally``: an interrupt raised while `hold` runs leaves either nothing held or a hold
    that `release` undoes, because the saved handler is recorded before ours goes in.
    """
    global _saved
    current = getsignal(_SIGINT)
    if current is _hold or not callable(current):
        return
    _held.clear()  # what a previous section held was already delivered
    _saved = current
    setsignal(_SIGINT, _hold)


class GiveUp(Exception):
    """Raised by `give_up_if_pending`: undo what the call did, and let `atomic` deliver."""


def give_up_if_pending() -> None:
    """Raise `GiveUp` if a SIGINT arrived while held (call it before a point of no return).

    Raises:
        GiveUp: A SIGINT is held. The caller undoes its work and lets it propagate to the
            `atomic` frame, which delivers the interrupt (and retries the call if the
            program's handler returns instead of raising).
    """
    if _held and threading.get_ident() == threading.main_thread().ident:
        raise GiveUp


def atomic(fn: Callable[P, R]) -> Callable[P, R]:
    """Make ``fn`` hold SIGINT while it runs when it is the library's outermost frame.

    Nested calls run as they are. A held interrupt is delivered when ``fn`` returns; if it
    raises, the exception carries ``fn``'s result as ``.future`` (the call finished: what it
    started runs on). A call that gave up (`GiveUp`) started nothing; the interrupt is
    delivered, and if the program's handler returns instead of raising, ``fn`` runs again.
    """
    nothing = object()

    @functools.wraps(fn)
    def held(*args: P.args, **kwargs: P.kwargs) -> R:
        if not should_hold():
            return fn(*args, **kwargs)
        while True:
            result: Any = nothing
            try:
                hold()
                result = fn(*args, **kwargs)
            except GiveUp:
                pass
            finally:
                try:
                    release()
                except BaseException as exc:
                    if result is not nothing:
                        exc.future = result  # type: ignore[attr-defined]
                        exc.add_note("inparallel: the call had finished; exc.future is its result")
                    raise
            if result is not nothing:
                return result  # type: ignore[no-any-return]

    return held


def release() -> None:
    """Stop holding SIGINT and deliver a held one now, through the program's own handler.

    Main thread only, from the section that called `hold`.

    Raises:
        KeyboardInterrupt: A SIGINT arrived while held (with Python's default handler; a
            handler of the program's own does whatever it does).
    """
    if getsignal(_SIGINT) is not _hold:
        return
    handler = _saved
    setsignal(_SIGINT, handler)
    if _held:
        signum = _held[0]
        _held.clear()
        handler(signum, None)


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread for the block; threads started in it inherit the mask.

    Start every library thread under it. A SIGINT sent to the process goes to one of its
    threads that does not block it; if that is not the main thread, the main thread's Python
    handler is flagged but nothing wakes the main thread from a blocking wait (a lock, a
    condition), and the Ctrl-C waits for an unrelated wake-up. A thread that blocks SIGINT
    from its first instruction never receives it. While the block runs, a SIGINT for this
    thread waits in the kernel and is delivered at its end.
    """
    previous = sigmask(_SIG_BLOCK, (_SIGINT,))
    try:
        yield
    finally:
        sigmask(_SIG_SETMASK, previous)
