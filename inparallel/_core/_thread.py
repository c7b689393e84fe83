"""A thread that a fork can wait out: started bare, ended on request, gone from the kernel.

The supervisor runs on one OS thread at a time, started for a burst of children and ended
when none is left or when a fork parks it (see ``_park``). This module owns the mechanics:

* It is a bare ``_thread`` thread, not ``threading.Thread``: ``Thread.start()`` waits until the
  new thread has run, and right after a fork that costs ~1 ms on 2 cores (measured) while the
  child takes the CPU. A *baton* lock, held for the thread's whole life, stands in for
  ``join()``.
* It registers with ``threading`` by name, as any foreign thread does (a "dummy" entry), so that
  logging, debuggers and ``threading.enumerate()`` see who it is; and it removes that entry as
  it ends, which ``threading`` itself never does for dummies (3.11). This is the library's one
  use of ``threading``'s private registry (``_active``, ``_active_limbo_lock``, stable names on
  3.11-3.13), looked up at use: a forked child gets new ones.
* The baton is released in the thread's last instructions, while the kernel still runs it;
  `BareThread.wait_gone` waits for the kernel's own entry to disappear, which a fork needs for
  CPython not to count the thread.
"""

from __future__ import annotations

import _thread
import os
import threading
import time
from collections.abc import Callable

from ._interrupts import sigint_blocked

__all__ = ("BareThread", "start", "wait_gone")


class BareThread:
    """One OS thread at a time, running a target; restartable once the previous one ended."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ident: int | None = None  #: the running thread's ident, once it runs
        self.native_id: int | None = None  #: the running thread's OS id, once it runs
        #: The OS id of the last thread started, kept after it ends (see `wait_gone`).
        self.last_native_id: int | None = None
        self._baton = _thread.allocate_lock()  # held for the whole life of a thread
        self._started = threading.Event()  # set once the running thread knows its ids

    def start(self, target: Callable[[], None]) -> None:
        """Start a thread running ``target``; wait first if the previous one is still ending.

        Raises:
            RuntimeError: No thread could be started (interpreter shutdown, resource limits).
        """
        self._started.clear()
        self._baton.acquire()  # the previous thread may be in its last instructions
        try:
            with sigint_blocked():  # never the thread that receives a Ctrl-C: see start()
                _thread.start_new_thread(self._main, (target,))
        except BaseException:
            self._baton.release()
            raise

    def _main(self, target: Callable[[], None]) -> None:
        self.ident, self.native_id = threading.get_ident(), threading.get_native_id()
        self.last_native_id = self.native_id
        threading.current_thread().name = self.name  # creates the dummy entry
        self._started.set()
        try:
            target()
        finally:
            with getattr(threading, "_active_limbo_lock"):  # noqa: B009
                getattr(threading, "_active").pop(threading.get_ident(), None)  # noqa: B009
            self.ident = self.native_id = None
            self._baton.release()

    def alive(self) -> bool:
        """Return whether a thread is running (or has not yet released its baton)."""
        return self._baton.locked()

    def is_current(self) -> bool:
        """Return whether the calling thread is this one."""
        return self.ident == threading.get_ident()

    def wait_ended(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the running thread to end; return whether it did."""
        if not self._baton.acquire(timeout=timeout):
            return False
        self._baton.release()
        return True

    def wait_gone(self, timeout: float) -> None:
        """After `wait_ended`: wait up to ``timeout`` seconds for the kernel to drop the thread.

        Only this thread's own entry is waited for, so threads the library does not own (a
        native library's) neither make it wait nor are hidden. Busy-yields: it takes
        microseconds on an idle machine, and a little more when the thread waits for a CPU.
        """
        if wait_gone(self.last_native_id, timeout):
            self.last_native_id = None  # gone for good: the next fork need not look again

    def started_native_id(self, timeout: float) -> int | None:
        """Return the running thread's OS id once it has one (waits up to ``timeout``)."""
        if not self.alive():
            return None
        self._started.wait(timeout)
        return self.native_id


def start(thread: threading.Thread) -> None:
    """Start a library thread that never receives a Ctrl-C (SIGINT blocked from its start).

    The main thread handles Ctrl-C anyway; a SIGINT delivered to another thread would leave
    the main thread asleep in a blocking wait until something else woke it (see
    `_interrupts.sigint_blocked`). A fork also blocks SIGINT in the forking thread to keep it
    out of its hooks (see ``_spawn``).

    Raises:
        RuntimeError: The thread could not be started.
    """
    with sigint_blocked():
        thread.start()


def wait_gone(native_id: int | None, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the kernel to drop an ended thread (by OS id).

    A thread that has signalled its end (released a lock, been joined) may still be in its
    last instructions, and CPython counts it at a fork. Busy-yields: it takes microseconds on
    an idle machine. ``None`` (no thread was started) returns at once. Returns whether the
    thread is gone.
    """
    if native_id is None:
        return True
    entry = f"/proc/self/task/{native_id}"
    deadline = time.monotonic() + timeout
    while os.path.exists(entry):
        if time.monotonic() >= deadline:
            return False
        os.sched_yield()
    return True
