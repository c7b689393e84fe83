"""Fork-safety, nesting, and the fork DeprecationWarning of Python 3.12+.

Locks held by other threads at fork, heavy concurrent submission, RNG reseeding, tasks that
start tasks, fork, or use multiprocessing and subprocess themselves, and the warnings a
program sees (checked in fresh interpreters, where the warning filters are the program's own).
"""

from __future__ import annotations

import ast
import concurrent.futures
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import _faults
import pytest
from _faults import alive, survivors
from _timing import BOUND, PATIENCE, PROMPT

from inparallel import WorkerDied, task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Children report through the `beacon` fixture (conftest): one ``send`` per line.


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@task
def value(x):
    return x


# -- F1: a logging handler lock held by another thread at fork -------------------------------


class SlowInParent(logging.Handler):
    """Blocks inside emit() in the parent; in a child, writes the message to a pipe."""

    def __init__(self, parent_pid: int, out_fd: int) -> None:
        super().__init__()
        self.parent_pid = parent_pid
        self.out_fd = out_fd
        self.in_emit = threading.Event()
        self.let_go = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() == self.parent_pid:
            self.in_emit.set()
            self.let_go.wait(BOUND)
        else:
            os.write(self.out_fd, (record.getMessage() + "\n").encode())  # one record, one write


def test_child_can_log_while_a_parent_thread_holds_the_handler_lock(beacon):
    handler = SlowInParent(os.getpid(), beacon.w)
    logger = logging.getLogger("inparallel-test-f1")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    holder = threading.Thread(target=logger.info, args=("from the parent thread",))
    try:
        holder.start()
        assert handler.in_emit.wait(BOUND)  # the holder is inside emit(), holding the lock

        @task(timeout=BOUND)
        def log_in_child(i):
            logger.info("from child %d", i)
            return i

        futs = [log_in_child(i) for i in range(5)]
        assert [f.result(timeout=BOUND * 2) for f in futs] == list(range(5))
        assert sorted(beacon.lines(5)) == [f"from child {i}" for i in range(5)]
    finally:
        handler.let_go.set()
        holder.join(BOUND)
        logger.removeHandler(handler)


# -- F3: stress, nested tasks while the supervisor resolves others ---------------------------


@task
def inner_double(x):
    return 2 * x


@task(timeout=PATIENCE)
def outer(x):
    return inner_double(x).result(timeout=BOUND) + 1


def _nested_stress(total: int, threads: int, window: int) -> None:
    per_thread = total // threads
    errors: list[BaseException] = []

    def submitter(base):
        try:
            in_flight = {}
            pending = list(range(base, base + per_thread))
            while pending or in_flight:
                while pending and len(in_flight) < window:
                    x = pending.pop()
                    in_flight[outer(x)] = x
                done, _ = concurrent.futures.wait(
                    in_flight, timeout=BOUND, return_when=concurrent.futures.FIRST_COMPLETED
                )
                assert done, f"no nested task finished within {BOUND} s"
                for f in done:
                    x = in_flight.pop(f)
                    assert f.result() == 2 * x + 1
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=submitter, args=(k * per_thread,)) for k in range(threads)]
    for t in ts:
        t.start()
    assert _faults.join_all(ts, PATIENCE) == []
    assert errors == []


def test_nested_tasks_under_concurrent_submission():
    _nested_stress(total=120, threads=2, window=4)


@pytest.mark.soak
def test_nested_tasks_under_concurrent_submission_soak():
    _nested_stress(total=2000, threads=4, window=4)


# -- F7: RNG streams -------------------------------------------------------------------------


def test_stdlib_random_is_reseeded_in_every_child():
    random.seed(42)  # the parent's state is the same for every fork

    @task
    def draw():
        return random.random(), random.getrandbits(64)

    futs = [draw() for _ in range(50)]
    values = [f.result(timeout=BOUND) for f in futs]
    assert len({v[0] for v in values}) == 50
    assert len({v[1] for v in values}) == 50


# -- F9: thread-safe submission --------------------------------------------------------------


@task
def echo(tid, j):
    return tid, j, os.getpid()


def test_sixteen_threads_submitting_get_their_own_results():
    value(0).result(timeout=BOUND)  # the library's lasting fds, if any, exist from here on
    assert _faults.supervisor_idle(BOUND)  # an idle supervisor holds no fd: count without it
    fds_before = fd_count()
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def submitter(tid):
        try:
            barrier.wait(BOUND)
            in_flight = []
            for j in range(100):
                in_flight.append((j, echo(tid, j)))
                if len(in_flight) >= 3:
                    k, f = in_flight.pop(0)
                    assert f.result(timeout=BOUND) == (tid, k, f.pid)
            for k, f in in_flight:
                assert f.result(timeout=BOUND) == (tid, k, f.pid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(tid,)) for tid in range(16)]
    for t in threads:
        t.start()
    assert _faults.join_all(threads, PATIENCE) == []
    assert errors == []
    # The supervisor closes its last fds as it winds down; it never closes one of ours.
    assert _faults.supervisor_idle(BOUND)
    assert fd_count() == fds_before


# -- I1/I2: tasks inside tasks ---------------------------------------------------------------


def test_task_inside_a_task():
    @task
    def part(i):
        return i * i

    @task
    def total(n):
        futs = [part(i) for i in range(n)]
        return sum(f.result(timeout=BOUND) for f in futs), os.getpid()

    fut = total(4)
    result, pid = fut.result(timeout=BOUND)
    assert result == 0 + 1 + 4 + 9
    assert pid == fut.pid


def test_killing_the_outer_task_kills_its_inner_tasks(beacon):
    @task
    def inner_sleeper():
        beacon.send(f"{os.getpid()}\n".encode())
        time.sleep(60)  # longer than the test: only the outer task's death may end it

    @task
    def outer_task():
        futs = [inner_sleeper() for _ in range(3)]
        for f in futs:
            f.result()

    fut = outer_task()
    inner_pids = [int(line) for line in beacon.lines(3)]
    try:
        assert all(alive(p) for p in inner_pids)
        assert fut.kill() is True
        err = fut.exception(timeout=BOUND)
        assert isinstance(err, WorkerDied)
        assert err.signal == signal.SIGKILL
        assert survivors(inner_pids, PROMPT) == []
    finally:
        for p in inner_pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_cancelling_the_outer_task_kills_its_inner_tasks(beacon):
    @task
    def inner_sleeper():
        beacon.send(f"{os.getpid()}\n".encode())
        time.sleep(60)  # longer than the test: only the outer task's death may end it

    @task
    def outer_task():
        inner_sleeper().result()

    fut = outer_task()
    [inner_pid] = [int(line) for line in beacon.lines(1)]
    try:
        assert fut.cancel() is True
        assert survivors([inner_pid], PROMPT) == []
    finally:
        if alive(inner_pid):
            os.kill(inner_pid, signal.SIGKILL)


# -- I3: a task that forks and does not wait -------------------------------------------------


def test_task_that_forks_a_lingering_grandchild_delivers_promptly(beacon, gate):
    before = _faults.fd_table()

    @task
    def forks():
        pid = os.fork()
        if pid == 0:
            new = sorted(t for fd, t in _faults.fd_table().items() if before.get(fd) != t)
            beacon.send((repr((os.getpid(), new)) + "\n").encode())
            gate.wait(PATIENCE)  # lingers, holding whatever it inherited, until released
            os._exit(0)
        return "delivered"

    t0 = time.monotonic()
    fut = forks()
    grandchild = None
    try:
        assert fut.result(timeout=BOUND) == "delivered"
        assert time.monotonic() - t0 < PROMPT
        grandchild, new_fds = ast.literal_eval(beacon.lines(1)[0])
        assert alive(grandchild)  # it lingers; its parent's result has arrived all the same
        # It inherited none of the library's fds: no pidfd, no epoll, no pipe (the at-fork
        # hook closes the task's own result pipe in its descendants too). Only the task's
        # stdin, /dev/null, may be new.
        assert [t for t in new_fds if t != "/dev/null"] == [], new_fds
        assert fut.exitcode == 0
    finally:
        gate.release()
        if grandchild is not None:
            assert survivors([grandchild], BOUND) == []


def test_task_that_forks_and_waits_gets_the_real_exit_status():
    @task
    def forks_and_waits():
        pid = os.fork()
        if pid == 0:
            os._exit(9)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    assert forks_and_waits().result(timeout=BOUND) == 9


# -- I4/I5: multiprocessing and subprocess inside a task -------------------------------------


def square(x):
    return x * x


def test_task_uses_a_process_pool_executor():
    @task(timeout=PATIENCE)
    def uses_pool():
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
            return list(pool.map(square, range(8)))

    fut = uses_pool()
    assert fut.result(timeout=PATIENCE) == [x * x for x in range(8)]
    assert fut.exitcode == 0


def test_task_uses_a_multiprocessing_pool():
    @task(timeout=PATIENCE)
    def uses_pool():
        with multiprocessing.get_context("fork").Pool(2) as pool:
            return pool.map(square, range(8))

    fut = uses_pool()
    assert fut.result(timeout=PATIENCE) == [x * x for x in range(8)]
    assert fut.exitcode == 0


def test_task_runs_subprocess_and_keeps_its_exit_code():
    @task
    def run():
        first = subprocess.run(["sh", "-c", "exit 3"], timeout=BOUND).returncode
        out = subprocess.run(["echo", "hi"], capture_output=True, text=True, timeout=BOUND).stdout
        p = subprocess.Popen(["sh", "-c", "exit 5"])
        return first, out, p.wait(10)

    assert run().result(timeout=BOUND) == (3, "hi\n", 5)


# -- M: the fork DeprecationWarning (3.12+) --------------------------------------------------


FORK_WARNING = "may lead to deadlocks in the child"

WARN_HARNESS = """
import os, sys, threading
from inparallel import task

@task
def f(i):
    return i

user_thread = None
if sys.argv[1] == "user-thread":
    stop = threading.Event()
    user_thread = threading.Thread(target=stop.wait)
    user_thread.start()

for i in range(50):                                  # one at a time
    assert f(i).result(timeout=10) == i
for _ in range(5):                                   # bursts: forks while others are in flight
    batch = [f(i) for i in range(10)]
    assert [x.result(timeout=10) for x in batch] == list(range(10))

if user_thread is not None:
    stop.set()
    user_thread.join()
print("DONE", flush=True)
"""


def run_warn_harness(flags: list[str], mode: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(WARN_HARNESS), mode],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )


def test_no_fork_warning_when_only_library_threads_exist():
    proc = run_warn_harness(["-W", "always::DeprecationWarning"], "no-thread")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "DONE"
    assert proc.stderr.count(FORK_WARNING) == 0, proc.stderr[:2000]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="the fork warning exists from 3.12")
def test_fork_warning_is_shown_when_a_user_thread_is_alive():
    proc = run_warn_harness(["-W", "always::DeprecationWarning"], "user-thread")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "DONE"
    # Every fork with the user's thread alive warns, and none is hidden: 50 + 5 x 10 calls.
    assert proc.stderr.count(FORK_WARNING) == 100, proc.stderr[:2000]
    assert "DeprecationWarning" in proc.stderr


@pytest.mark.parametrize("mode", ["no-thread", "user-thread"])
def test_warnings_as_errors_break_nothing(mode):
    proc = run_warn_harness(["-W", "error"], mode)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "DONE"
    assert "Traceback" not in proc.stderr, proc.stderr[:2000]


HELD_AT_FORK = """
import os, sys, threading
from inparallel import task
from inparallel._core import _supervisor

@task
def quick():
    return 1

@task(timeout=5)
def use(f):
    return f.kill(), f.cancel(), f.done(), f.running(), f.cancelled(), f.exception(), f.result()

finished = quick()
assert finished.result() == 1
if sys.argv[1] == "supervisor":
    # Held over the fork by the forking thread itself (a plain lock: its copy stays held).
    lock = _supervisor.get()._lock
    os.register_at_fork(before=lock.acquire, after_in_parent=lock.release)
    print(use(finished).result())
else:
    # The future's lock is re-entrant: held by another thread of the parent over the fork.
    held, done = threading.Event(), threading.Event()
    def holder():
        with finished._condition:
            held.set()
            done.wait()
    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    call = use(finished)
    done.set()
    thread.join()
    print(call.result())
"""


@pytest.mark.parametrize("lock", ["supervisor", "future"])
def test_a_copy_of_a_finished_future_works_whatever_lock_was_held_at_the_fork(lock: str) -> None:
    # A fork's copy of a lock that a thread of the parent held at the fork stays held: the
    # copy's calls must not take it (kill(), cancel(), and the reads of a final state).
    proc = _faults.run_python(HELD_AT_FORK, timeout=PATIENCE, args=[lock])
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().strip() == "(False, False, True, False, False, None, 1)"
