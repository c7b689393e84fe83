"""Interpreter exit for `StreamExecutor`: drain, then stop, every live executor.

Both run in the parent. When the main thread ends (before non-daemon threads are joined and
before any ``atexit`` handler) each executor waits for the calls that must run to their end
(``_drain_at_exit``); then, in ``atexit`` and before the core's own handler kills every child,
each one stops starting anything (``_stop_at_exit``). The executors are held weakly: one that
is garbage-collected is simply not there at exit. Nothing is registered until the first
executor is made.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

from ._core._spawn import install_hooks

__all__ = ("Exiting", "stop_at_exit")


class Exiting(Protocol):
    """What interpreter exit needs of a `StreamExecutor`."""

    def _drain_at_exit(self) -> None:
        """When the main thread ends: wait for the calls that must run to their end."""

    def _stop_at_exit(self) -> None:
        """In ``atexit``, before the core kills every child: start nothing more."""


_exiting: weakref.WeakSet[Exiting] = weakref.WeakSet()
_exit_lock = threading.Lock()
_exit_hooks = False


def stop_at_exit(obj: Exiting) -> None:
    """Drain and then stop ``obj`` at interpreter exit, before the core kills every child.

    Daemon threads keep running while ``atexit`` handlers do; without this a feeder or a
    dispatcher would go on forking while the interpreter tears itself down. (Stopping an
    executor cuts its maps off: they are not recorded themselves.)
    """
    global _exit_hooks
    with _exit_lock:
        if not _exit_hooks:
            install_hooks()  # registered first, so the core's handler runs after ours
            atexit.register(_stop_all)
            _when_main_thread_ends(_drain_all)
            _exit_hooks = True
        _exiting.add(obj)


def _when_main_thread_ends(callback: Callable[[], None]) -> None:
    # This module's one CPython private: threading._register_atexit (3.9+) runs
    # ``callback`` when the main thread ends, before non-daemon threads are joined and before
    # any atexit handler; concurrent.futures.thread uses it to finish its calls at exit. The
    # public ways fall short: an atexit handler runs after handlers registered later (which
    # may have torn down what the calls use), and 3.12 refuses to start threads or fork in
    # one; non-daemon workers would make exit wait for the calls of an abandoned map too.
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # a Python without it: the atexit order, registered after _stop_all
        atexit.register(callback)
        return
    with contextlib.suppress(RuntimeError):  # already exiting: nothing submitted can wait
        register(callback)


def _drain_all() -> None:
    for obj in list(_exiting):
        obj._drain_at_exit()


def _stop_all() -> None:
    for obj in list(_exiting):
        obj._stop_at_exit()
