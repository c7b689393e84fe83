"""A caller waiting for its own tasks watches their children itself while no thread does.

``result()``, ``exception()``, ``done()`` and `waitfor` run the supervisor's loop in the
calling thread; the supervisor thread starts only for what waits without them (a done-callback,
`concurrent.futures.wait`, a timeout, a cancelled or killed child), and a caller driving the
loop hands it over to that thread. These tests pin both halves: no thread where none is needed,
and never a future left unfinished because nobody watches it.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import _faults
import conftest
import pytest
from _faults import InterruptAt, child_pids
from _timing import BOUND, PATIENCE

from inparallel import TaskFuture, WorkerDied, task, waitfor
from inparallel._core import _supervisor, _thread


@task
def double(x: int) -> int:
    return 2 * x


def held_task(gate: _faults.Gate, beacon: _faults.Beacon) -> Any:
    """A task that says it started, then waits for the gate and returns its argument."""

    @task
    def held(x: int) -> int:
        beacon.send()
        gate.wait(PATIENCE)
        return x

    return held


@pytest.fixture
def thread_starts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the supervisor threads started during the test (after earlier ones ended)."""
    assert _faults.supervisor_idle(BOUND)
    started: list[str] = []
    original = _thread.BareThread.start

    def counting(self: _thread.BareThread, target: Any) -> None:
        started.append(self.name)
        original(self, target)

    monkeypatch.setattr(_thread.BareThread, "start", counting)
    yield started


def test_sequential_calls_start_no_thread(thread_starts: list[str]) -> None:
    for i in range(20):
        assert double(i).result(timeout=BOUND) == 2 * i
    futures = [double(i) for i in range(5)]
    assert [f.exception(timeout=BOUND) for f in futures] == [None] * 5
    assert [f.result() for f in futures] == [0, 2, 4, 6, 8]
    assert thread_starts == []
    assert _supervisor.statistics().supervisor_alive is False


def test_waitfor_watches_its_tasks_without_a_thread(thread_starts: list[str]) -> None:
    todo = list(range(30))
    in_flight: list[TaskFuture[int]] = []
    got = []
    for fut in waitfor(in_flight, concurrency_factor=2):
        if fut is None:
            if todo:
                in_flight.append(double(todo.pop()))
        else:
            got.append(fut.result())
    assert sorted(got) == [2 * i for i in range(30)]
    assert thread_starts == []


def test_done_polls_the_child_without_a_thread(thread_starts: list[str]) -> None:
    fut = double(21)
    with _faults.deadline(BOUND, "polling done()"):
        while not fut.done():
            pass
    assert fut.result() == 42
    assert fut.exitcode == 0
    assert thread_starts == []


def test_a_waiter_that_does_not_drive_starts_the_thread(
    thread_starts: list[str], gate: _faults.Gate, tracked: list[Any]
) -> None:
    @task
    def held(x: int) -> int:
        gate.wait(PATIENCE)
        return x

    called = []
    fut = held(1)
    tracked.append(fut)
    assert thread_starts == []
    fut.add_done_callback(lambda f: called.append(threading.current_thread().name))
    assert thread_starts == [_supervisor.THREAD_NAME]
    gate.release()
    done, _ = cf.wait([fut], timeout=BOUND)  # a waiter of its own: the thread finishes it
    assert done == {fut}
    assert called == [_supervisor.THREAD_NAME]
    assert _faults.supervisor_idle(BOUND)


def test_a_caller_driving_hands_over_to_the_thread(
    gate: _faults.Gate, beacon: _faults.Beacon, tracked: list[Any]
) -> None:
    held = held_task(gate, beacon)
    first, second = held(1), held(2)
    tracked += [first, second]
    beacon.receive(2)
    called = threading.Event()
    outcome: list[int] = []

    def other_thread() -> None:
        # The main thread is blocked in first.result(), watching both children itself.
        assert _faults.wait_until(lambda: _supervisor.get()._role.locked(), BOUND)
        second.add_done_callback(lambda f: called.set())  # starts the thread: it takes over
        assert _faults.supervisor_native_id(BOUND) is not None
        gate.release(2)
        outcome.append(second.result(timeout=BOUND))

    helper = threading.Thread(target=other_thread)
    helper.start()
    try:
        assert first.result(timeout=BOUND) == 1
    finally:
        helper.join(BOUND)
    assert outcome == [2]
    assert called.wait(BOUND)


def test_two_threads_waiting_on_their_own_tasks(
    gate: _faults.Gate, beacon: _faults.Beacon, tracked: list[Any]
) -> None:
    held = held_task(gate, beacon)
    futures = [held(i) for i in range(2)]
    tracked += futures
    beacon.receive(2)
    results: dict[int, int] = {}
    waiting = threading.Barrier(3)

    def wait_for(i: int) -> None:
        waiting.wait(BOUND)
        results[i] = futures[i].result(timeout=BOUND)

    threads = [threading.Thread(target=wait_for, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    waiting.wait(BOUND)
    gate.release(2)
    assert _faults.join_all(threads) == []
    assert results == {0: 0, 1: 1}


def test_cancel_and_kill_reap_with_nobody_waiting(
    gate: _faults.Gate, beacon: _faults.Beacon, thread_starts: list[str]
) -> None:
    @task
    def held() -> None:
        beacon.send()
        gate.wait(PATIENCE)

    cancelled, killed = held(), held()
    beacon.receive(2)
    pids = {cancelled.pid, killed.pid}
    assert cancelled.cancel()
    assert killed.kill()
    # Nobody waits, yet both children are reaped and the killed one's future finishes.
    assert _faults.wait_until(lambda: not (pids & child_pids()), BOUND)
    assert _faults.wait_until(lambda: killed._state == "FINISHED", BOUND)
    assert isinstance(killed.exception(), WorkerDied)
    assert thread_starts == [_supervisor.THREAD_NAME]
    assert _faults.supervisor_idle(BOUND)


def test_a_timeout_holds_with_nobody_waiting(gate: _faults.Gate) -> None:
    @task(timeout=0.2)
    def hangs() -> None:
        gate.wait(PATIENCE)

    fut = hangs()
    pid = fut.pid
    # The deadline is enforced by the thread: the child dies though nobody waits for it.
    assert _faults.wait_until(lambda: pid not in child_pids(), BOUND)
    assert fut.exception(timeout=BOUND).__class__.__name__ == "TaskTimeout"


def test_ctrl_c_at_every_check_point_of_a_wait_loses_nothing(sigint_default: None) -> None:
    double(0).result(timeout=BOUND)  # warm up
    with InterruptAt(-1) as tracer:
        assert double(1).result(timeout=BOUND) == 2
    total = tracer.seen
    assert total > 10  # the tracer sees the loop's own code
    interrupted = 0
    for k in range(2 * total):
        fds0 = conftest.open_fds()
        fut = double(k)
        raised = False
        try:
            with InterruptAt(k) as tracer:
                fut.result(timeout=BOUND)
        except KeyboardInterrupt:
            raised = True
        assert raised == tracer.fired, f"the interrupt at check point {k} was lost"
        interrupted += raised
        # Interrupted or not, the outcome is there for the next wait, and nothing leaks.
        assert fut.result(timeout=BOUND) == 2 * k
        assert fut.pid not in child_pids()
        assert _faults.wait_until(lambda: conftest.open_fds() <= fds0, BOUND)
        assert not _supervisor.get()._role.locked()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        if not tracer.fired:
            break
    assert interrupted > 0


def test_a_callback_run_by_a_driving_caller_cannot_block_on_another_task(
    gate: _faults.Gate, tracked: list[Any]
) -> None:
    @task
    def held() -> int:
        gate.wait(PATIENCE)
        return 1

    blocked = held()
    tracked.append(blocked)
    errors: list[BaseException] = []

    def on_done(done: Any) -> None:
        try:
            blocked.result()
        except BaseException as exc:  # the callback runs in the supervisor's role
            errors.append(exc)

    fut = double(3)
    in_flight = [fut]
    fut._add_driven_callback(on_done)  # as waitfor's own callback: run by the caller
    for got in waitfor(in_flight):
        assert got.result() == 6
    assert len(errors) == 1 and "would deadlock" in str(errors[0])
    gate.release()
    assert blocked.result(timeout=BOUND) == 1


def test_forked_children_do_not_inherit_the_drive_role() -> None:
    @task
    def nested() -> int:
        return double(5).result(timeout=BOUND) + os.getpid() * 0

    assert nested().result(timeout=BOUND) == 10


def test_a_fork_racing_the_selector_close_is_clean(capfd: pytest.CaptureFixture[str]) -> None:
    from inparallel._core._poller import Poller

    # Another thread forked between the selector's close and its record's reset: the child
    # finds a closed selector, and must neither fail nor close a number it no longer owns.
    supervisor = _supervisor.get()
    assert _faults.supervisor_idle(BOUND) and supervisor._selector is None
    closed = Poller()
    closed.close()
    supervisor._selector = closed
    try:

        @task
        def inherits() -> int:
            return 7

        pid = os.fork()
        if pid == 0:  # the hooks ran; report what they left
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        supervisor._selector = None
    assert "Exception ignored" not in capfd.readouterr().err
    assert inherits().result(timeout=BOUND) == 7


def test_a_task_started_while_another_thread_drives_is_watched_too(
    gate: _faults.Gate, beacon: _faults.Beacon, tracked: list[Any]
) -> None:
    long = held_task(gate, beacon)(1)
    tracked.append(long)
    beacon.receive()
    driving = threading.Thread(target=lambda: long.result(timeout=PATIENCE))
    driving.start()
    try:
        assert _faults.wait_until(lambda: _supervisor.get()._role.locked(), BOUND)
        short = double(4)  # the driving thread is blocked on the other child
        with _faults.deadline(BOUND, "polling done() while another thread drives"):
            while not short.done():
                pass
        assert short.result() == 8
    finally:
        gate.release()
        driving.join(BOUND)


def test_waitfor_sleeps_once_its_tasks_are_done_and_an_executor_future_is_left() -> None:
    release = threading.Event()
    with cf.ThreadPoolExecutor(1) as pool:
        in_flight: list[Any] = [double(1), pool.submit(release.wait, BOUND)]
        got = []
        for fut in waitfor(in_flight):
            got.append(fut.result())
            if len(got) == 1:
                cpu = time.process_time()
                timer = threading.Timer(0.5, release.set)  # what waitfor waits for next
                timer.start()
        timer.join()
    assert got == [2, True]
    assert time.process_time() - cpu < 0.2  # it slept; it did not spin


def test_polling_running_ends_without_a_thread(thread_starts: list[str]) -> None:
    fut = double(5)
    with _faults.deadline(BOUND, "polling running()"):
        while fut.running():
            pass
    assert fut.result() == 10
    assert thread_starts == []


def test_fire_and_forget_calls_do_not_pile_up(thread_starts: list[str]) -> None:
    # Nobody waits for these: each call takes in what earlier ones finished, so zombies and
    # fds stay bounded by what is still running, with no thread.
    fds0 = len(conftest.open_fds())
    futures = []
    for i in range(200):
        futures.append(double(i))
        if i % 50 == 49:
            running = len(child_pids())
            assert running < 40, running  # what has not finished yet, not all 50
            assert len(conftest.open_fds()) - fds0 < 120
    assert [f.result(timeout=BOUND) for f in futures] == [2 * i for i in range(200)]
    assert thread_starts == []


def test_waitfor_in_a_task_over_its_own_and_an_inherited_finished_future() -> None:
    finished = double(3)
    assert finished.result(timeout=BOUND) == 6

    @task
    def inside() -> list[int]:
        own = double(4)
        return sorted(f.result() for f in waitfor([own, finished]))

    assert inside().result(timeout=PATIENCE) == [6, 8]


def test_a_parent_with_closed_stdio_keeps_its_result_pipes_off_fds_0_to_2() -> None:
    script = """
import os, sys
report = os.fdopen(os.dup(2), "w", buffering=1)
for fd in (0, 1, 2):
    os.close(fd)
from inparallel import task

@task(output="capture")
def chatty(x):
    print("to my own stdout")
    print("and my stderr", file=sys.stderr)
    return x

futures = [chatty(i) for i in range(3)]
report.write(repr([(f.result(timeout=10), f.stdout, f.stderr) for f in futures]) + "\\n")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env=_faults.python_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    expected = [(i, "to my own stdout\n", "and my stderr\n") for i in range(3)]
    assert proc.stderr == repr(expected) + "\n"


def test_a_thread_wished_for_after_the_last_child_ended_is_not_started_later(
    thread_starts: list[str],
) -> None:
    fut = double(2)
    assert fut.result(timeout=BOUND) == 4
    assert fut.kill() is False  # reaped already: nothing to watch
    _supervisor.get().watch()  # as a late kill() or cancel() does
    assert double(3).result(timeout=BOUND) == 6
    assert thread_starts == []


@pytest.mark.parametrize("timeout", [1e7, float("inf")])
def test_waits_and_deadlines_far_in_the_future_are_plain_waits(timeout: float) -> None:
    # Longer than the kernel's longest wait (about 24.8 days): no OverflowError, no hang,
    # whether the caller drives the loop (result's timeout) or the thread does (the task's,
    # which must be finite).
    @task
    def brief() -> int:
        time.sleep(0.05)  # so that the caller really waits
        return 7

    @task(timeout=min(timeout, 1e7))
    def deadline() -> int:
        time.sleep(0.05)
        return 8

    assert brief().result(timeout=timeout) == 7
    assert deadline().result() == 8
