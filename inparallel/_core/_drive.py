"""A caller that waits for its own tasks runs the supervisor loop itself (`Driving.drive`).

The loop runs on one thread at a time, whichever holds the *role* lock: the supervisor thread,
or a caller about to block in ``result()``, ``exception()``, ``done()`` or `waitfor` while no
thread runs. Driving is the half of the `Supervisor` that lets a caller hold the role: it
waits with Ctrl-C deliverable, handles what it finds with Ctrl-C held, and hands the role over
as soon as a thread starts. `Driving.poll` is the spawning caller's brief look, so that calls
nobody waits for do not pile up unreaped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from . import _future, _interrupts
from ._events import Events
from ._record import Child

__all__ = ("POLL_EVERY", "Driving")

#: How many calls nobody has waited for yet may pile up before a call looks for finished
#: ones among them (`Driving.poll`): at most this many zombies and 2x as many fds.
POLL_EVERY = 32


class Driving(Events):
    """The loop run by a waiting caller (the state is the `Supervisor`'s)."""

    _role: threading.Lock
    _running: bool

    def poll(self, new: Child) -> None:
        """Take in what finished among the children nobody has waited for yet; never blocks.

        For the spawning caller, right after forking ``new``: fire-and-forget calls must not
        pile up unreaped (zombies, open fds, results held in their children) while no thread
        runs. Looks when the children watched number one more than a multiple of `POLL_EVERY`
        (in a loop of calls nobody waits for: once every `POLL_EVERY` calls), if two or more
        are ones nobody has waited for; never while the thread runs, nor for children a
        caller waits for (a ``waitfor`` loop's: their completions are the loop's to see).
        """
        with self._lock:
            if self._running:
                return
            # Counted from the number watched, not from those nobody waited for: reading every
            # record to count them is a page copied per record while the children live.
            watched = len(self._children)
            if watched < 2 or (watched - 1) % POLL_EVERY:
                return
            unclaimed = sum(1 for child in self._children.values() if not child.claimed())
        # Every POLL_EVERY of them: a look costs the caller about a millisecond while many
        # children share its pages (each page it writes is copied), and a burst of calls that
        # are all still running has nothing to take in.
        if unclaimed > 1:
            self.drive(_never, 0.0)

    def drive(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Run the loop in the calling thread until ``done()`` is true or ``timeout`` passes.

        A caller about to block on its own children watches them itself while no thread
        does: nothing runs on another thread, and on 3.12+ the next fork has no thread to
        park. Results are unpickled and done-callbacks run here, in the supervisor's role
        (`_future.on_supervisor`), with Ctrl-C held; a Ctrl-C while the loop waits raises
        `KeyboardInterrupt` with nothing half done. Blocks until one of the returns below.

        Returns:
            True when ``done()`` is true, ``timeout`` passed or no child is left; False, at
            once or later, when a thread runs the loop or another caller drives it: the
            caller then waits as usual (after `watch`, if it is not sure a thread runs).
        """
        held = _interrupts.should_hold()
        previous = getattr(_future.on_supervisor, "active", False)
        driving = False
        try:
            if held:
                _interrupts.hold()
            driving = self._role.acquire(blocking=False)
            if not driving:
                return False
            _future.on_supervisor.active = True
            return self._drive(done, timeout, held)
        finally:
            try:
                if held:
                    _interrupts.hold()  # again, if the interrupt came while the loop waited
                if driving:
                    with self._lock:
                        if not (self._children or self._running):
                            self._want_thread = False  # a wish for a thread ends with them
                            if self._selector is not None:
                                self._close()  # an idle process holds no library fd
            finally:
                if driving:
                    _future.on_supervisor.active = previous
                    self._role.release()
                if held:
                    _interrupts.release()

    def _drive(self, done: Callable[[], bool], timeout: float | None, held: bool) -> bool:
        # The loop of `drive`, with Ctrl-C held (``held``) except while it waits.
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            with self._lock:
                selector = self._selector
                if self._running or selector is None:
                    return selector is None
                self._register_pending(selector)
                if not self._children:
                    return True
                wait = self._timeout()
                if deadline is not None:
                    left = max(0.0, deadline - time.monotonic())
                    wait = left if wait is None else min(wait, left)
            if held:
                _interrupts.release()  # a Ctrl-C now, or while waiting, finds nothing half done
            ready = selector.wait(wait)  # level-triggered: what an interrupt skips stays
            if held:
                _interrupts.hold()
            self._handle(ready)
            if deadline is not None and time.monotonic() >= deadline:
                break
        return True


def _never() -> bool:
    return False
