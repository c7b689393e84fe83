"""Parking the supervisor thread around a fork (Python 3.12+).

CPython warns (``DeprecationWarning``) when a process with more than one OS thread forks. Our
supervisor thread is such a thread, so before each of our forks we *park* it: ask it to stop,
wait for its end, and then until the kernel has torn the thread down (the thread signals its
end just before the OS thread exits). The fork then really is single-threaded and the warning
is not emitted because there is nothing to warn about; nothing is lost meanwhile (results wait
in their pipes, exits in their pidfds) and the thread restarts right after ``os.fork()``
returns. We park only when the supervisor is the one extra thread: when the user's own threads
are alive the fork is not single-threaded, CPython's warning is right, and we let it through.
Filtering the warning instead would hide real hazards and is not thread-safe
(``catch_warnings`` mutates global state). Parking costs a thread stop and start per fork (the
thread is started bare, without ``Thread.start()``'s handshake, so this stays a small fraction
of the fork itself); 3.11 does not warn and skips it.

The program's own forks (``os.fork``, multiprocessing) go through an at-fork hook
(`before_fork`) that parks a supervisor with no child left (it is ending anyway), so an idle
inparallel never makes them warn. On 3.12 the hook also parks a busy supervisor and restarts
it after the fork. From 3.13 CPython counts threads after the after-fork hooks, where the
restarted thread would be counted, so a fork of the program's own made while tasks are in
flight warns there: our thread is alive then, and needed.
"""

from __future__ import annotations

import sys
import threading

from . import _supervisor

__all__ = ("OS_THREAD_WAIT", "PARK", "after_fork_in_parent", "before_fork", "park")

#: Whether forking with another thread alive emits a DeprecationWarning (gh-100228).
PARK = sys.version_info >= (3, 12)

#: Whether the program's own forks park the supervisor too. Only 3.12 counts threads before
#: the after-fork hooks run; from 3.13 a supervisor restarted by the hook would be counted,
#: so there a fork made while tasks are in flight warns (our thread really is alive then).
PARK_FOREIGN = sys.version_info[:2] == (3, 12)

#: How long a fork waits for the supervisor to park. It only waits this long when a
#: done-callback is blocking the supervisor; the fork then goes ahead with it alive.
PARK_TIMEOUT = 0.5

#: The parked thread releases its baton in its last instructions, before the OS thread is
#: gone; wait at most this long for the kernel to tear that thread down. (It takes
#: microseconds on an idle machine, and more when the thread waits for a CPU.)
OS_THREAD_WAIT = 0.25

_parked = False  # whether `before_fork` parked the supervisor (for `after_fork_in_parent`)


def park(supervisor: _supervisor.Supervisor) -> bool:
    """Park ``supervisor``'s thread for a fork; return whether it was parked (and is gone).

    Under the fork lock. Blocks up to `PARK_TIMEOUT` (a done-callback blocking the thread)
    plus `OS_THREAD_WAIT`. Also waits out a thread that ended on its own a moment ago: it may
    still be in its last instructions.
    """
    if not supervisor.thread_alive():
        supervisor.thread.wait_gone(OS_THREAD_WAIT)
        return False
    me = threading.get_ident()
    if any(t.ident not in (me, supervisor.ident) for t in threading.enumerate()):
        return False  # the program's threads are alive: the fork is not single-threaded
    if not supervisor.park(PARK_TIMEOUT):
        return False
    supervisor.thread.wait_gone(OS_THREAD_WAIT)
    return True


def before_fork(ours: bool) -> None:
    """Before *any* fork in this process, under the fork lock, with SIGINT blocked.

    For the program's own forks (os.fork, multiprocessing); ``ours``: the fork is a task's,
    whose `spawn` has parked already.
    """
    global _parked
    supervisor = _supervisor._SUPERVISOR
    if supervisor is None or ours:
        return
    if PARK_FOREIGN:
        _parked = park(supervisor)
    elif supervisor.idle():
        park(supervisor)  # ending anyway: nothing to restart after the fork


def after_fork_in_parent() -> None:
    """After any fork, in the parent (also when fork() failed): restart what was parked."""
    global _parked
    if _parked:
        _parked = False
        supervisor = _supervisor._SUPERVISOR
        if supervisor is not None:
            supervisor.resume()
