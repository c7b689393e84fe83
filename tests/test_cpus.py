"""Where a task process runs (``_core/_cpus``).

A sequential call's child is moved off the caller's CPU right after the fork; the task must
still see the CPU affinity it was forked with, however late that move comes, and its own
affinity changes are never undone. Nothing is moved while other tasks or Python threads run,
while every CPU is busy, or where the caller's thread has a single CPU.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import _faults
import pytest
from _timing import BOUND

from inparallel import task
from inparallel._core import _cpus, _native

real_a_cpu_is_free = _cpus._a_cpu_is_free

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs sched_setaffinity and two CPUs",
)


@task
def affinity() -> frozenset[int]:
    return frozenset(os.sched_getaffinity(0))


@task
def affinity_after(gate: _faults.Gate) -> frozenset[int]:
    assert gate.wait(BOUND)
    return frozenset(os.sched_getaffinity(0))


@task
def pin_after(gate: _faults.Gate, cpu: int) -> frozenset[int]:
    os.sched_setaffinity(0, {cpu})
    assert gate.wait(BOUND)
    return frozenset(os.sched_getaffinity(0))


@task
def affinity_and_switches(gate: _faults.Gate) -> tuple[frozenset[int], int]:
    assert gate.wait(BOUND)
    return frozenset(os.sched_getaffinity(0)), resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


@task
def pin_to(cpu: int) -> frozenset[int]:
    os.sched_setaffinity(0, {cpu})
    return frozenset(os.sched_getaffinity(0))


@pytest.fixture(autouse=True)
def a_cpu_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether a CPU is free is the kernel's count of the moment: these tests say it is."""
    monkeypatch.setattr(_cpus, "_a_cpu_is_free", lambda: True)


@pytest.fixture
def busy_cpus() -> Iterator[None]:
    """Every CPU of this thread taken by a process that loops (killed at the end)."""
    loop = "print('looping', flush=True)\nwhile True: pass"
    hogs = [
        subprocess.Popen([sys.executable, "-c", loop], stdout=subprocess.PIPE)
        for _ in os.sched_getaffinity(0)
    ]
    try:
        for hog in hogs:
            assert hog.stdout is not None
            assert hog.stdout.readline() == b"looping\n"  # runnable from now on
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(BOUND)
            assert hog.stdout is not None
            hog.stdout.close()


def test_no_cpu_is_free_while_every_cpu_is_busy(busy_cpus: None) -> None:
    assert not real_a_cpu_is_free()


def test_nothing_is_moved_to_a_busy_cpu(
    monkeypatch: pytest.MonkeyPatch, moves: list[int], busy_cpus: None
) -> None:
    monkeypatch.setattr(_cpus, "_a_cpu_is_free", real_a_cpu_is_free)
    assert affinity().result(timeout=BOUND) == frozenset(os.sched_getaffinity(0))
    assert moves == []


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The pids the parent moved (the real move is still made)."""
    moved: list[int] = []
    real = _cpus.move_off

    def spy(pid: int, ticket: int) -> None:
        moved.append(pid)
        real(pid, ticket)

    monkeypatch.setattr(_cpus, "move_off", spy)
    yield moved


def stall_moves(monkeypatch: pytest.MonkeyPatch, seconds: float, gate: _faults.Gate) -> None:
    """Hold up the parent's thread between the fork and the move, then release ``gate``."""
    real = _cpus.move_off

    def stalled(pid: int, ticket: int) -> None:
        threading.Event().wait(seconds)  # the hold-up itself, not a synchronisation
        real(pid, ticket)
        gate.release()  # the task looks at its mask only after the move

    monkeypatch.setattr(_cpus, "move_off", stalled)


def test_a_sequential_calls_task_is_moved_and_sees_the_callers_affinity(
    moves: list[int],
) -> None:
    mine = frozenset(os.sched_getaffinity(0))
    futures = []
    for _ in range(10):
        fut = affinity()
        assert fut.result(timeout=BOUND) == mine
        futures.append(fut)
    assert moves == [fut.pid for fut in futures]


def test_nothing_is_moved_while_another_task_runs(moves: list[int], gate: _faults.Gate) -> None:
    mine = frozenset(os.sched_getaffinity(0))
    first = affinity_after(gate)  # alone: moved
    second = affinity()
    assert second.result(timeout=BOUND) == mine
    gate.release()
    assert first.result(timeout=BOUND) == mine
    assert moves == [first.pid]


def test_nothing_is_moved_while_another_python_thread_runs(moves: list[int]) -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert affinity().result(timeout=BOUND) == frozenset(os.sched_getaffinity(0))
    finally:
        stop.set()
        other.join(BOUND)
    assert moves == []


def test_a_caller_on_one_cpu_is_not_moved_from(moves: list[int]) -> None:
    mine = os.sched_getaffinity(0)
    cpu = min(mine)
    os.sched_setaffinity(0, {cpu})  # this thread only
    try:
        fut = affinity()
        assert fut.result(timeout=BOUND) == {cpu}
    finally:
        os.sched_setaffinity(0, mine)
    assert moves == [fut.pid]  # asked, and nothing taken away: the child still settles


def test_the_tasks_own_affinity_is_kept() -> None:
    cpu = max(os.sched_getaffinity(0))
    assert pin_to(cpu).result(timeout=BOUND) == {cpu}


@pytest.mark.parametrize("stall", [0.02, 0.3])
def test_a_move_made_late_still_leaves_the_task_its_affinity(
    monkeypatch: pytest.MonkeyPatch, gate: _faults.Gate, stall: float
) -> None:
    # The parent's thread is held up between the fork and the move (a busy GIL, a debugger):
    # the child must not take its mask back before the move, or the move would stay for the
    # task's whole life, however long the hold-up.
    stall_moves(monkeypatch, stall, gate)
    mine = frozenset(os.sched_getaffinity(0))
    assert affinity_after(gate).result(timeout=BOUND) == mine


def test_a_move_made_late_does_not_undo_the_tasks_own_pin(
    monkeypatch: pytest.MonkeyPatch, gate: _faults.Gate
) -> None:
    stall_moves(monkeypatch, 0.3, gate)
    cpu = max(os.sched_getaffinity(0))
    assert pin_after(gate, cpu).result(timeout=BOUND) == {cpu}


def test_a_refused_move_turns_the_moves_off(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.sched_setaffinity

    def refuse_others(pid: int, mask: object) -> None:
        if pid != 0:  # the parent moving its child; the child's own call (pid 0) goes through
            raise PermissionError(errno.EPERM, "refused by policy")
        real(pid, mask)  # type: ignore[arg-type]

    monkeypatch.setattr(_cpus, "_enabled", True)
    monkeypatch.setattr(os, "sched_setaffinity", refuse_others)
    mine = frozenset(os.sched_getaffinity(0))
    assert affinity().result(timeout=BOUND) == mine  # the parent posted "nothing taken"
    assert _cpus.ticket(alone=True) is None
    assert affinity().result(timeout=BOUND) == mine


def test_a_child_gone_already_does_not_turn_the_moves_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_cpus, "_enabled", True)
    ticket = _cpus.ticket(alone=True)
    assert ticket is not None
    with open("/proc/sys/kernel/pid_max") as f:
        no_such_pid = int(f.read())  # pids are below pid_max
    _cpus.move_off(no_such_pid, ticket)  # ESRCH
    assert _cpus.ticket(alone=True) == ticket + 1


def in_futex_wait(pid: int) -> bool:
    """Whether ``pid``'s thread is blocked in the futex system call (``/proc/PID/syscall``)."""
    with open(f"/proc/{pid}/syscall") as f:
        return f.read().split()[0] == str(_native._futex_number())


def _can_read_syscalls() -> bool:
    # /proc/PID/syscall needs a kernel built with it, and ptrace access to PID.
    try:
        in_futex_wait(os.getpid())
    except (OSError, IndexError):
        return False
    return True


@pytest.mark.skipif(not _native.has_futex(), reason="no futex call known on this machine")
@pytest.mark.skipif(not _can_read_syscalls(), reason="/proc/PID/syscall cannot be read here")
def test_a_child_whose_move_comes_late_waits_asleep_and_wakes_at_the_post(
    monkeypatch: pytest.MonkeyPatch, gate: _faults.Gate
) -> None:
    # The parent's thread is held up until its child is seen asleep in the kernel, waiting for
    # the post: not spinning, not polling with sleeps; the post's wake lets it run the task.
    real = _cpus.move_off
    asleep: list[bool] = []

    def late(pid: int, ticket: int) -> None:
        deadline = time.monotonic() + BOUND
        while not in_futex_wait(pid) and time.monotonic() < deadline:
            time.sleep(0.001)  # polling /proc: the child's state has nothing to wait on
        asleep.append(in_futex_wait(pid))
        real(pid, ticket)
        gate.release()

    monkeypatch.setattr(_cpus, "move_off", late)
    monkeypatch.setattr(_cpus, "SETTLE_LIMIT", 3 * BOUND)  # a child not woken outwaits BOUND
    mine = frozenset(os.sched_getaffinity(0))
    mask, switches = affinity_and_switches(gate).result(timeout=BOUND)
    assert asleep == [True]
    assert mask == mine
    assert switches < 50  # a handful of sleeps, not one a millisecond


def test_no_ticket_looks_like_a_new_page(
    monkeypatch: pytest.MonkeyPatch, gate: _faults.Gate
) -> None:
    # A new page holds 0, and the child waits for the post's low 32 bits, its ticket's: a
    # ticket whose low bits were 0 would look posted before the parent posted, and its child
    # would run before the move and keep the narrowed mask for life.
    monkeypatch.setattr(_cpus, "_enabled", True)
    monkeypatch.setattr(_cpus, "_tickets", 2**32 - 1)
    assert _cpus.ticket(alone=True) == 2**32 + 1
    monkeypatch.setattr(_cpus, "_tickets", 3 * 2**32 - 1)
    monkeypatch.setattr(_cpus, "_page_owner", 0)  # the next ticket makes a new page (zeros)
    stall_moves(monkeypatch, 0.02, gate)  # the task reads its mask only after the move
    mine = frozenset(os.sched_getaffinity(0))
    assert affinity_after(gate).result(timeout=BOUND) == mine
    assert _cpus._tickets == 3 * 2**32 + 1
