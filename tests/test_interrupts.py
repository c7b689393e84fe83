"""Ctrl-C at every instruction of a task call: the call starts the task or starts nothing.

A tracer raises SIGINT at the k-th bytecode instruction that the library runs in the calling
thread during one call, for every k. Whatever k is, the call either raises
``KeyboardInterrupt`` having started nothing (no child, no fd, no record), or the task runs and
its future resolves (returned, or carried by the exception as ``.future``); the interrupt always
reaches the caller; the fork lock is never left held; and the library never closes an fd the
program opened afterwards.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import _faults
import conftest
import pytest
from _faults import InterruptAt, child_pids
from _timing import BOUND, PATIENCE

from inparallel import task
from inparallel._core import _interrupts, _spawn, _supervisor

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="needs the main thread"
)


@task
def double(x: int) -> int:
    return 2 * x


def _call_counted() -> int:
    with InterruptAt(-1) as tracer:
        fut = double(1)
    assert fut.result(timeout=BOUND) == 2
    return tracer.seen


def _idle() -> bool:
    return _faults.supervisor_idle(BOUND)


def test_ctrl_c_at_every_instruction_of_a_call_starts_the_task_or_nothing(
    sigint_default: None,
) -> None:
    double(0).result(timeout=BOUND)  # warm up: hooks, spares, imports
    assert _idle()
    total = _call_counted()
    assert total > 30  # the tracer sees the library's own code
    stats0 = _supervisor.statistics()
    started = nothing = 0
    user_fds: list[int] = []
    # A call passes a few more or fewer check points from one run to the next (waiting for the
    # kernel to drop a thread loops), so the trials go on until the tracer no longer fires.
    for k in range(2 * total):
        assert _idle()
        fds0 = conftest.open_fds()
        pids0 = child_pids()
        future = None
        interrupted = False
        try:
            with InterruptAt(k) as tracer:
                future = double(k)
        except KeyboardInterrupt as exc:
            interrupted = True
            future = getattr(exc, "future", None)
        # The program opens fds of its own right away: their numbers may be ones the
        # library just released, and the library must never touch them.
        user_fds.extend(os.pipe())
        assert interrupted == tracer.fired, f"the interrupt at check point {k} was lost"
        if future is not None:
            assert future.result(timeout=BOUND) == 2 * k
            started += 1
        else:
            nothing += 1
            assert child_pids() <= pids0, f"a child was left at instruction {k}"
        assert _idle(), f"the supervisor did not wind down at instruction {k}"
        assert conftest.open_fds() - set(user_fds) <= fds0, f"an fd leaked at instruction {k}"
        assert _spawn._fork_lock.acquire(timeout=0)  # never left held
        _spawn._fork_lock.release()
        assert not _interrupts.should_hold() or signal.getsignal(signal.SIGINT) is (
            signal.default_int_handler
        )
        if not tracer.fired:
            break  # past the call's last check point
    stats = _supervisor.statistics()
    assert stats.in_flight == 0
    assert stats.spawned - stats0.spawned == started
    assert stats.completed - stats0.completed == started
    assert started > 0 and nothing > 0
    for fd in user_fds:
        os.fstat(fd)  # still ours: the library closed none of them
        os.close(fd)


def test_a_sigint_handler_that_returns_lets_the_call_go_on() -> None:
    calls: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        total = _call_counted()
        fired = 0
        for k in range(0, total, max(1, total // 40)):
            with InterruptAt(k) as tracer:
                fut = double(k)
            assert fut.result(timeout=BOUND) == 2 * k
            fired += tracer.fired
        assert len(calls) == fired > 0  # the handler ran once per interrupt, and returned
    finally:
        signal.signal(signal.SIGINT, previous)
    assert _idle()


def test_the_held_handler_never_outlives_a_call(sigint_default: None) -> None:
    total = _call_counted()
    for k in range(total):
        future = None
        try:
            with InterruptAt(k) as tracer:
                future = double(k)
        except KeyboardInterrupt as exc:
            future = getattr(exc, "future", None)
        else:
            assert not tracer.fired, f"the interrupt at check point {k} was lost"
        if future is not None:
            future.result(timeout=BOUND)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert _idle()


STORM = r"""
import os, random, signal, sys, threading, time
from inparallel import task
from inparallel._core import _supervisor

@task
def ident(x):
    return x

random.seed(int(sys.argv[1]))
me = threading.main_thread().ident
stop = threading.Event()
calling = False
landed = 0

def on_sigint(signum, frame):
    # Interrupt the calls only: the script's own bookkeeping is not what is under test.
    global landed
    if calling:
        landed += 1
        raise KeyboardInterrupt

def storm():
    while not stop.is_set():
        time.sleep(random.random() * 0.004)
        signal.pthread_kill(me, signal.SIGINT)

signal.signal(signal.SIGINT, on_sigint)
fds0 = set(os.listdir("/proc/self/fd"))
futures = {}
storm_thread = threading.Thread(target=storm)
storm_thread.start()
for i in range(int(sys.argv[2])):
    while i not in futures:
        try:
            calling = True
            futures[i] = ident(i)
        except KeyboardInterrupt as exc:
            if getattr(exc, "future", None) is not None:
                futures[i] = exc.future
        finally:
            calling = False
stop.set()
storm_thread.join()
results = {i: fut.result(timeout=30) for i, fut in futures.items()}
assert results == {i: i for i in range(int(sys.argv[2]))}, "an input was lost or repeated"
assert _supervisor._SUPERVISOR is None or _supervisor._SUPERVISOR.thread.wait_ended(10)
stats = _supervisor.statistics()
assert stats.in_flight == 0 and stats.spawned == len(futures), stats
assert set(os.listdir("/proc/self/fd")) <= fds0, "fds leaked"
print("interrupts", landed)
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_a_ctrl_c_storm_during_submission_loses_and_leaks_nothing(seed: int) -> None:
    # A real storm: SIGINT from another thread at random moments while the main thread
    # submits. A thread of the program's own is alive, so CPython 3.12+ rightly warns.
    proc = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", STORM, str(seed), "400"],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env=_faults.python_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "could not watch" not in proc.stderr and "supervisor" not in proc.stderr, proc.stderr
    interrupts = int(proc.stdout.split()[-1])
    assert interrupts > 20  # the storm did land during the calls


def test_release_delivers_a_held_interrupt_once(sigint_default: None) -> None:
    assert _interrupts.should_hold()
    with pytest.raises(KeyboardInterrupt):
        try:
            _interrupts.hold()
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            with pytest.raises(_interrupts.GiveUp):
                _interrupts.give_up_if_pending()
            assert not _interrupts.should_hold()  # nested sections leave it to this one
        finally:
            _interrupts.release()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _interrupts.give_up_if_pending()  # nothing is left held


def test_other_threads_hold_nothing(sigint_default: None) -> None:
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(_interrupts.should_hold()))
    thread.start()
    thread.join(BOUND)
    assert seen == [False]


def test_a_call_that_gives_up_starts_nothing_and_delivers_the_interrupt(
    sigint_default: None,
) -> None:
    # A Ctrl-C that arrives before the fork: the call gives up, and nothing is started.
    stats0 = _supervisor.statistics()

    @_interrupts.atomic
    def interrupted_before_the_fork() -> int:
        signal.raise_signal(signal.SIGINT)  # held
        return double(1).result(timeout=BOUND)

    with pytest.raises(KeyboardInterrupt) as info:
        interrupted_before_the_fork()
    assert not hasattr(info.value, "future")
    assert _supervisor.statistics().spawned == stats0.spawned


def test_ctrl_c_at_every_check_point_of_waitfor_loses_no_finished_future(
    sigint_default: None,
) -> None:
    from concurrent.futures import Future

    from inparallel import waitfor

    def finished(i: int) -> Future[int]:
        future: Future[int] = Future()
        future.set_result(i)
        return future

    with InterruptAt(-1) as counter:
        in_flight = [finished(i) for i in range(5)]
        assert len(list(waitfor(in_flight))) == 5
    assert counter.seen > 10
    for k in range(counter.seen):
        in_flight = [finished(i) for i in range(5)]
        everything = list(in_flight)
        yielded = []
        with contextlib.suppress(KeyboardInterrupt), InterruptAt(k):
            for future in waitfor(in_flight):
                yielded.append(future)
        kept = {id(f) for f in yielded} | {id(f) for f in in_flight}
        assert kept == {id(f) for f in everything}, f"a finished future was lost at {k}"


FULL_PIPE = r"""
import fcntl, os, signal, sys, threading
from inparallel import task

# A shell's background job starts with SIGINT ignored, and then Python installs no handler.
signal.signal(signal.SIGINT, signal.default_int_handler)

@task
def f():
    return 1

sys.stdout.write("pending, in the buffer\n")
flags = fcntl.fcntl(1, fcntl.F_GETFL)
fcntl.fcntl(1, fcntl.F_SETFL, flags | os.O_NONBLOCK)
try:
    while True:
        os.write(1, b"x" * 4096)  # fill the pipe: nobody reads it
except BlockingIOError:
    pass
fcntl.fcntl(1, fcntl.F_SETFL, flags)
threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
try:
    f()  # flushes stdout before the fork: blocks on the full pipe
except KeyboardInterrupt:
    os.write(2, b"KeyboardInterrupt reached the caller\n")
os._exit(0)  # not sys.exit: the interpreter would flush stdout into the full pipe again
"""


def test_ctrl_c_ends_a_call_blocked_flushing_stdout_into_a_full_pipe() -> None:
    # A paused reader (| less): the pre-fork flush blocks, and Ctrl-C must still end the call.
    # Only stderr is read until the script has answered: its stdout stays full.
    proc = subprocess.Popen(
        [sys.executable, "-c", FULL_PIPE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_faults.python_env(),
    )
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], PATIENCE)
        line = proc.stderr.readline() if ready else b"(nothing within PATIENCE)"
    finally:
        proc.kill()
        proc.communicate()
    assert line == b"KeyboardInterrupt reached the caller\n", line


def _blocks_sigint(native_id: int) -> bool:
    with open(f"/proc/self/task/{native_id}/status") as status:
        for line in status:
            if line.startswith("SigBlk:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    raise AssertionError("no SigBlk line")


def test_every_library_thread_blocks_sigint_from_its_start(gate: _faults.Gate) -> None:
    # A SIGINT delivered to another thread than the main one flags the handler but leaves
    # the main thread asleep in a blocking wait: no library thread may ever receive one.
    from inparallel import StreamExecutor, process_map, thread_preload

    @task(timeout=PATIENCE)  # a deadline: the supervisor thread runs
    def held() -> int:
        gate.wait(PATIENCE)
        return 1

    def slow_source() -> Iterator[int]:
        yield 1
        gate.wait(PATIENCE)

    fut = held()
    preload = thread_preload(iter(slow_source()), 1)
    executor = StreamExecutor(max_workers=1, mode="thread")
    call = executor.submit(gate.wait, PATIENCE)
    mapped = process_map(lambda x: x, slow_source())
    try:
        assert next(iter(mapped)) == 1  # its input reader thread is waiting in the source
        names = {"inparallel-supervisor", "inparallel-preload", "inparallel-stream"}
        seen = set()
        for thread in threading.enumerate():
            if thread.name.startswith("inparallel") and thread.native_id is not None:
                assert _blocks_sigint(thread.native_id), thread.name
                seen.add(thread.name)
        assert names <= seen, seen
        assert not _blocks_sigint(threading.get_native_id())  # the caller's mask is as it was
    finally:
        gate.release(8)
        assert fut.result(timeout=BOUND) == 1
        call.result(timeout=BOUND)
        executor.shutdown()
        preload.close()
        mapped.close()
