"""Where a fresh task process runs: off the caller's CPU, when it is the only task.

Some kernels queue a forked child on the CPU of the thread that forked it, and run it there
only once that thread blocks, even with another CPU idle. (Seen on virtual machines whose
scheduler packs work onto few vCPUs: the child of a sequential call waited for the caller's
whole post-fork work, its registration, its future and its wait, about 0.3 ms a call.) A
hand-written fork that blocks in ``read()`` at once never notices; a library that registers
the child and returns a future before anyone waits pays that work on the child's path.

So when the new child is the only task (a sequential call), the parent moves it off its own
CPU right after the fork (`move_off`): for a task that has not run yet this is a cheap call,
and an idle CPU takes it at once. The child puts back the mask it inherited before anything
of the task runs (`settle`), so the task sees the affinity it would have had. Only the parent
narrows the mask and only the child widens it again, so the child first waits until the
narrowing is visible (bounded by `SETTLE_WAIT`): a late narrowing would otherwise stay for
the task's life. With other tasks running nothing is moved: they are spread already, and a
move per fork made 200 concurrent sleepers slower (measured; see ``benchmarks/RESULTS.rst``).

Linux only (``sched_getcpu``, ``sched_setaffinity``); elsewhere nothing is moved.
"""

from __future__ import annotations

import errno
import os
import time

from ._native import libc

__all__ = ("SETTLE_WAIT", "move_off", "settle", "spread")

#: How long a child waits for the parent's narrowing before it settles anyway. The parent
#: narrows a few microseconds after the fork; only a parent thread descheduled for longer
#: than this leaves the task one CPU short (never a hang).
SETTLE_WAIT = 0.05

_enabled = hasattr(os, "sched_setaffinity")


def spread(alone: bool) -> frozenset[int] | None:
    """In the parent, before the fork: the CPUs the child must end up with, or None.

    ``alone``: no other task of ours is running. None means the child is left where the
    kernel puts it: other tasks run, this thread may use a single CPU, or the platform (or a
    seccomp policy, seen once) has no affinity calls.
    """
    if not (alone and _enabled) or libc("sched_getcpu") is None:
        return None
    try:
        cpus = frozenset(os.sched_getaffinity(0))
    except OSError:
        return None
    return cpus if len(cpus) > 1 else None


def move_off(pid: int, cpus: frozenset[int]) -> None:
    """In the parent, right after forking ``pid`` with `spread`'s ``cpus``: narrow its mask.

    Never raises. A refusal other than "no such process" turns the moves off for the rest of
    this process's life; that child then settles after `SETTLE_WAIT`.
    """
    global _enabled
    getcpu = libc("sched_getcpu")
    assert getcpu is not None  # `spread` checked it
    cpu = getcpu()
    # The CPU this thread runs on (where such a kernel queued the child), or, if this thread
    # was moved out of its own mask meanwhile, any one: the child must see a change.
    narrowed = cpus - {cpu if cpu in cpus else min(cpus)}
    try:
        os.sched_setaffinity(pid, narrowed)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            _enabled = False


def settle(cpus: frozenset[int]) -> None:
    """In the child, before the task runs: take back ``cpus``, the mask it was forked with.

    Waits (yielding the CPU) until the parent's `move_off` has narrowed the mask, at most
    `SETTLE_WAIT`. Never raises.
    """
    try:
        if os.sched_getaffinity(0) == cpus:
            deadline = time.monotonic() + SETTLE_WAIT
            while os.sched_getaffinity(0) == cpus and time.monotonic() < deadline:
                os.sched_yield()
        os.sched_setaffinity(0, cpus)
    except OSError:
        pass
