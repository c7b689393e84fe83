"""Where a fresh task process runs: off the caller's CPU, when it is the only task.

Some kernels queue a forked child on the CPU of the thread that forked it, and run it there
only once that thread blocks, even with another CPU idle. (Seen on virtual machines whose
scheduler packs work onto few vCPUs: the child of a sequential call waited for the caller's
whole post-fork work, its registration, its future and its wait, about 0.3 ms a call.) A
hand-written fork that blocks in ``read()`` at once never notices; a library that registers
the child and returns a future before anyone waits pays that work on the child's path.

So when the new child is the only task and the caller's thread the only Python thread (a
sequential call), the parent moves it off its own CPU right after the fork (`move_off`): for
a task that has not run yet this is a cheap call, and an idle CPU takes it at once. The task
must still see the affinity it was forked with, so the two processes hand over explicitly:

- the parent narrows the child's mask by the CPU it ran on just before the fork (where such
  a kernel queues the child), then *always* posts, on a page shared with the child, the
  child's ticket and the CPU it took away (or none: the move was not made or was refused);
- the child waits for its ticket before anything of the task runs (asleep on the post's word,
  a futex the parent wakes after each post), and adds that CPU back (`settle`). It widens
  only what the parent narrowed, so a mask changed from outside in the meantime is kept; and
  until the post the child runs nothing that could exit, so the pid the parent moves is
  still its child's (short of someone killing it and reaping it first).

With other tasks running nothing is moved: the kernel spreads them once the CPU is busy, and
moving every child measured no better at 2 in flight (``benchmarks/RESULTS.rst``). With other
Python threads nothing is moved either: one of them could hold the GIL between the fork and
the move, and the child would wait for it. Nor when no CPU is free (the kernel's count of
runnable threads): the child would queue behind another process instead of behind us.

64-bit Linux on a machine whose futex call's number is known (``sched_getcpu``,
``sched_setaffinity``, the futex): elsewhere nothing is moved.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import sys
import threading
import time
from collections.abc import Callable

from ._native import buffer_address, futex_wait, futex_waker, has_futex, libc

__all__ = ("SETTLE_LIMIT", "move_off", "settle", "ticket")

#: The longest a child waits for its parent's post (a parent thread stopped right after the
#: fork, by a debugger say). Past it the task runs, with one CPU fewer if the move comes later.
SETTLE_LIMIT = 10.0

#: A post: (CPU taken away + 1) << 32 | the ticket's low 32 bits, one aligned 8-byte word
#: (high half 0: none taken). Its low half is the futex the child sleeps on: it changes with
#: every post, and is never 0, what a new page holds (no ticket's low 32 bits are 0).
_POST = struct.Struct("=q")
_LOW = 0xFFFFFFFF

#: What `futex_wait` may return that calls for another look at the post: woken, the word had
#: changed, a signal, the time given.
_WAIT_AGAIN = frozenset({0, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT})

_enabled = hasattr(os, "sched_setaffinity")
_page: mmap.mmap | None = None  # shared with the children forked after it was made
_page_owner = 0  # the process that made it
_word = 0  # the address of the post's low 32 bits: the futex the child waits on
_wake: Callable[[], object] | None = None  # wakes the waiting child (`futex_waker`)
_tickets = 0  # under the fork lock
_cpu = -1  # the CPU the parent ran on when it took the last ticket


def ticket(alone: bool) -> int | None:
    """In the parent, under the fork lock, before the fork: the child's ticket, or None.

    ``alone``: no other task of ours is running. None means the child is left where the
    kernel puts it: other tasks or Python threads run, no CPU is free, or the platform (or
    a seccomp policy) has no affinity calls or no shared futex. A ticket binds the parent to
    call `move_off`; taking one reads the CPU this thread runs on (call it last before the
    fork).
    """
    global _cpu, _tickets
    if not (alone and _enabled) or threading.active_count() != 1:
        return None
    getcpu = libc("sched_getcpu")
    if getcpu is None or not _a_cpu_is_free():
        return None
    if _page_owner != os.getpid() and not _make_page():
        return None
    # The CPU this thread runs on, where such a kernel queues the child: read before the
    # fork, as every page the parent writes between the fork and its wait is copied.
    _cpu = getcpu()
    _tickets += 1
    if not _tickets & _LOW:  # never a multiple of 2**32: a new page holds 0 (see `_POST`)
        _tickets += 1
    return _tickets


def _make_page() -> bool:
    # This process's page, shared with the children it forks from now on (a task process makes
    # its own for its children); False where the page or the futex is missing (moves off).
    global _enabled, _page, _page_owner, _wake, _word
    if not has_futex():
        _enabled = False
        return False
    try:
        page = mmap.mmap(-1, _POST.size)  # anonymous and shared
    except OSError:
        return False
    address = buffer_address(page)  # never closed: the address stays good
    word = address + (0 if sys.byteorder == "little" else 4)  # the post's low half
    wake = futex_waker(word)
    if wake() < 0:  # a sandbox that refuses futexes on shared memory: a child could not wait
        _enabled = False
        return False
    _page, _page_owner, _word, _wake = page, os.getpid(), word, wake
    return True


def _a_cpu_is_free() -> bool:
    # Whether fewer threads are runnable, this one included, than this thread has CPUs: the
    # kernel's count of the moment, from /proc/loadavg (a few microseconds). Moved to a busy
    # CPU the child would wait behind what runs there, not for our blocking: slower than not
    # moving it at all (measured with the other CPU busy: 5.2 against 3.8 ms a call).
    try:
        fd = os.open("/proc/loadavg", os.O_RDONLY)
        try:
            fields = os.read(fd, 128).split()
        finally:
            os.close(fd)
        running = int(fields[3].split(b"/")[0])
        return running < len(os.sched_getaffinity(0))
    except (OSError, IndexError, ValueError):
        return False


def move_off(pid: int, ticket: int) -> None:
    """In the parent, right after forking ``pid`` with ``ticket``: move it, then post.

    Never raises, and posts whatever happens. A refusal other than "no such process" turns
    the moves off for the rest of this process's life.
    """
    global _enabled
    taken = -1
    try:
        mask = os.sched_getaffinity(pid)  # what the child inherited
        if _cpu in mask and len(mask) > 1:
            os.sched_setaffinity(pid, mask - {_cpu})
            taken = _cpu
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            _enabled = False
    finally:
        assert _page is not None and _wake is not None  # `ticket` made them
        _POST.pack_into(_page, 0, (taken + 1) << 32 | ticket & _LOW)
        _wake()  # always: whether the child waits already is not known here


def settle(ticket: int) -> None:
    """In the child, before the task runs: wait for the parent's post, take back its CPU.

    Blocks until the post for ``ticket`` (microseconds after the fork, unless the parent's
    thread is held up), at most `SETTLE_LIMIT`, asleep in the kernel (a futex on the post's
    word, which the parent wakes after posting). Never raises.
    """
    page = _page
    assert page is not None
    deadline = 0.0
    mine = ticket & _LOW
    while (post := _POST.unpack_from(page)[0]) & _LOW != mine:
        now = time.monotonic()
        if not deadline:
            deadline = now + SETTLE_LIMIT
        elif now >= deadline:
            return
        failed = futex_wait(_word, post & _LOW, deadline - now)  # until the post and its wake
        if failed not in _WAIT_AGAIN:
            return  # a futex refused for good (a sandbox): the task runs, a CPU short at worst
    taken = (post >> 32) - 1
    if taken >= 0:
        try:  # noqa: SIM105 - in the fresh child: no context manager objects (copied pages)
            os.sched_setaffinity(0, os.sched_getaffinity(0) | {taken})
        except OSError:
            pass
