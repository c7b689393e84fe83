"""The parent's life: Ctrl-C, exit, being killed, signals, and other code that forks or reaps.

Cases that end or signal the parent run in an outer harness: a fresh interpreter started with
``subprocess`` that prints its task pids, so this process can check from the outside that no
task outlives it. A task pid counts as gone once it has exited (a zombie that init has not
reaped yet counts as gone); exits are watched through pidfds, which work for any process.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import _faults
import pytest
from _faults import Beacon, Gate, alive
from _faults import process_state as proc_state
from _timing import BOUND, PATIENCE, PROMPT

from inparallel import WorkerDied, task
from inparallel._core import _supervisor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shared by every harness: pipes that tasks use to say they have started, and a gate.
PRELUDE = """
import os, sys, signal, threading, time, json
# Ctrl-C as in a program started from a terminal, even if this test run ignores SIGINT (a
# background job does, and its children inherit that).
signal.signal(signal.SIGINT, signal.default_int_handler)
from inparallel import task, WorkerDied
started_r, started_w = os.pipe()
gate_r, gate_w = os.pipe()

def wait_started(n):
    got = 0
    while got < n:
        got += len(os.read(started_r, n - got))

@task
def blocked(i):
    os.write(started_w, b"x")
    os.read(gate_r, 1)
    return i * 10

@task
def sleeper(i):
    os.write(started_w, b"x")
    time.sleep(60)  # far longer than any test; the parent's end must end it
"""


def harness_env() -> dict[str, str]:
    """The environment of a harness: inparallel and the test helpers importable, no warnings
    configuration of the test run's own."""
    env = _faults.python_env()
    env.pop("PYTHONWARNINGS", None)
    return env


def harness(body: str, **kwargs: object) -> subprocess.Popen[str]:
    env = harness_env()
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_harness(body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        cwd=REPO,
        env=harness_env(),
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )


def read_line(proc: subprocess.Popen[str], prefix: str) -> list[str]:
    """Read harness stdout up to the line starting with ``prefix``; return its other words."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], PATIENCE)
    assert ready, "harness did not report in time"
    line = proc.stdout.readline()
    assert line.startswith(prefix), (line, proc.stderr.read() if proc.poll() is not None else "")
    return line.split()[1:]


class Watch:
    """Pidfds on processes that are not our children, to wait for their exit."""

    def __init__(self, pids: list[int]) -> None:
        self.fds: dict[int, int] = {}
        for pid in pids:
            assert alive(pid), f"task {pid} is not running (state {proc_state(pid)})"
            self.fds[os.pidfd_open(pid)] = pid

    def survivors(self, timeout: float) -> list[int]:
        """Wait up to ``timeout`` seconds for every process to exit; return those still alive."""
        poller = select.poll()
        for fd in self.fds:
            poller.register(fd, select.POLLIN)
        pending = set(self.fds)
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in poller.poll(left * 1000):
                pending.discard(fd)
                poller.unregister(fd)
        return sorted(self.fds[fd] for fd in pending)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate(timeout=BOUND)
    return out, err


def assert_no_task_survives_a_killed_parent(
    proc: subprocess.Popen[str], ready: Callable[[list[int]], bool]
) -> None:
    """Read the harness's ``READY <pid>...`` line, SIGKILL it, and see every task die promptly.

    ``ready(pids)`` checks the pids (and may wait for the tasks to reach their state).
    """
    pids: list[int] = []
    watch = None
    try:
        pids = [int(p) for p in read_line(proc, "READY")]
        assert ready(pids), pids
        watch = Watch(pids)
        proc.kill()
        proc.wait(BOUND)
        assert watch.survivors(PROMPT) == []
    finally:
        if watch:
            watch.close()
        kill_leftovers(pids)
        finish(proc)


# -- E1/E2: Ctrl-C ---------------------------------------------------------------------------


def test_ctrl_c_while_waiting_interrupts_the_parent_not_the_children():
    proc = harness(
        """
        futs = [blocked(i) for i in range(4)]
        wait_started(4)
        try:
            print("READY", *[f.pid for f in futs], flush=True)
            futs[0].result()
        except KeyboardInterrupt:
            print("KI", time.monotonic(), flush=True)
        print("PENDING", sum(not f.done() for f in futs), flush=True)
        os.write(gate_w, b"xxxx")
        print("RESULTS", *[f.result(timeout=10) for f in futs], flush=True)
        """,
        start_new_session=True,
    )
    try:
        read_line(proc, "READY")
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        (t_ki,) = read_line(proc, "KI")
        assert float(t_ki) - t0 < PROMPT
        assert read_line(proc, "PENDING") == ["4"]  # no child was interrupted
        assert read_line(proc, "RESULTS") == ["0", "10", "20", "30"]
        assert proc.wait(BOUND) == 0
    finally:
        _, err = finish(proc)
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err


def test_unhandled_ctrl_c_exits_promptly_and_leaves_no_task():
    proc = harness(
        """
        futs = [sleeper(i) for i in range(4)]
        wait_started(4)
        print("READY", *[f.pid for f in futs], flush=True)
        futs[0].result()
        """,
        start_new_session=True,
    )
    pids: list[int] = []
    watch = None
    try:
        pids = [int(p) for p in read_line(proc, "READY")]
        watch = Watch(pids)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(BOUND)
        assert time.monotonic() - t0 < PROMPT, "the interpreter took too long to exit"
        assert rc == -signal.SIGINT  # CPython's exit for an unhandled KeyboardInterrupt
        assert watch.survivors(PROMPT) == []
    finally:
        if watch:
            watch.close()
        kill_leftovers(pids)
        _, err = finish(proc)
    assert err.count("Traceback (most recent call last)") == 1, err  # the parent's own only


# -- E3/E5: the parent is SIGKILLed ----------------------------------------------------------


def test_parent_sigkilled_no_task_survives_including_tasks_from_finished_threads():
    proc = harness(
        """
        futs = [sleeper(i) for i in range(4)]
        from_threads = []
        def call(i):
            from_threads.append(sleeper(i))
        threads = [threading.Thread(target=call, args=(i,)) for i in range(4, 8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tids = {str(t.native_id) for t in threads}
        while tids & set(os.listdir("/proc/self/task")):
            time.sleep(0.001)  # join() may return before the OS thread is gone (3.12)
        wait_started(8)
        print("READY", *[f.pid for f in futs + from_threads], flush=True)
        sys.stdin.read()
        """
    )
    # Watch asserts all 8 alive: the finished threads did not take theirs.
    assert_no_task_survives_a_killed_parent(proc, lambda pids: len(pids) == 8)


def _wait_comm(pid: int, name: str) -> None:
    def became() -> bool:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip() == name

    # Polling /proc: nothing to wait on for another process's exec.
    assert _faults.wait_until(became, BOUND), f"process {pid} did not become {name}"


def test_parent_sigkilled_no_task_survives_an_exec_or_closed_fds():
    """A task that execs, closes its fds, or both, dies with its parent (Linux)."""
    proc = harness(
        """
        def announce_then(action):
            os.write(started_w, b"x")
            action()

        def closerange():
            os.closerange(3, 1 << 16)

        def execute():
            os.execv("/bin/sleep", ["sleep", "60"])

        @task
        def execs():
            announce_then(execute)

        @task
        def closes_fds():
            announce_then(closerange)
            time.sleep(60)

        @task
        def closes_fds_then_execs():
            announce_then(closerange)
            execute()

        futs = [execs(), closes_fds(), closes_fds_then_execs()]
        # From a thread that has ended: the lifeline fd survives the exec.
        thread = threading.Thread(target=lambda: futs.append(execs()))
        thread.start()
        thread.join()
        wait_started(4)
        print("READY", *[f.pid for f in futs], flush=True)
        sys.stdin.read()
        """
    )

    def execs_done(pids: list[int]) -> bool:
        for pid in (pids[0], pids[2], pids[3]):
            _wait_comm(pid, "sleep")  # the exec has happened: it is /bin/sleep now
        return len(pids) == 4

    assert_no_task_survives_a_killed_parent(proc, execs_done)


def test_task_outlives_the_thread_that_called_it(gate, beacon):
    """E5: a task started from a thread that then exits completes normally."""

    @task
    def work(x):
        beacon.send()
        assert gate.wait(PATIENCE)
        return x * 10

    box = []

    def call():
        box.append(work(7))
        beacon.receive()  # the child is running before this thread ends

    t = threading.Thread(target=call)
    t.start()
    assert _faults.join_all([t], BOUND) == []
    # join() may return before the OS thread is gone (3.12).
    gone = _faults.wait_until(lambda: str(t.native_id) not in os.listdir("/proc/self/task"))
    assert gone, "the calling thread's OS thread never ended"
    [fut] = box
    assert not fut.done()
    gate.release()
    assert fut.result(timeout=BOUND) == 70
    assert fut.exitcode == 0


def test_task_from_a_thread_pool_worker_after_shutdown(gate, beacon):
    from concurrent.futures import ThreadPoolExecutor

    @task
    def work(x):
        beacon.send()
        assert gate.wait(PATIENCE)
        return x + 1

    with ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(work, i).result(timeout=BOUND) for i in range(4)]
        beacon.receive(4)
    gate.release(4)
    assert [f.result(timeout=BOUND) for f in futs] == [1, 2, 3, 4]


# -- E4: exit with tasks in flight -----------------------------------------------------------


@pytest.mark.parametrize("how", ["sys.exit(0)", "raise SystemExit(0)", "pass"])
def test_exit_with_tasks_in_flight_is_prompt_and_leaves_no_task(how):
    proc = harness(
        f"""
        futs = [sleeper(i) for i in range(8)]
        wait_started(8)
        print("READY", *[f.pid for f in futs], flush=True)
        sys.stdin.readline()
        {how}
        """
    )
    pids: list[int] = []
    watch = None
    try:
        pids = [int(p) for p in read_line(proc, "READY")]
        watch = Watch(pids)
        t0 = time.monotonic()
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        rc = proc.wait(BOUND)
        assert time.monotonic() - t0 < PROMPT, "exit was held up by tasks in flight"
        assert rc == 0
        assert watch.survivors(PROMPT) == []
    finally:
        if watch:
            watch.close()
        kill_leftovers(pids)
        _, err = finish(proc)
    assert err == "", err


# -- E6: SIGCHLD ignored ---------------------------------------------------------------------


def test_sigchld_ignored_results_still_arrive():
    proc = run_harness(
        """
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        from inparallel import TaskTimeout

        @task
        def fail():
            raise ValueError("boom")

        @task
        def die():
            os._exit(3)

        @task(timeout=0.3)
        def hang():
            time.sleep(60)

        out = {"values": [blocked(i) for i in range(3)]}
        wait_started(3)
        os.write(gate_w, b"xxx")
        out["values"] = [f.result(timeout=10) for f in out["values"]]
        try:
            fail().result(timeout=10)
        except ValueError as e:
            out["fail"] = str(e)
        try:
            die().result(timeout=10)
        except WorkerDied as e:
            out["die"] = [e.exitcode, e.signal]
        try:
            hang().result(timeout=10)
        except TaskTimeout:
            out["hang"] = "timeout"
        print(json.dumps(out), flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["values"] == [0, 10, 20]
    assert out["fail"] == "boom"
    assert out["die"] == [None, None]  # the kernel discarded the status; never a hang
    assert out["hang"] == "timeout"


# -- E7: user code that reaps children -------------------------------------------------------


def test_subprocess_exit_codes_are_kept_while_tasks_run(gate, beacon):
    @task
    def work(x):
        beacon.send()
        assert gate.wait(PATIENCE)
        return x

    @task
    def quick(x):
        return x

    slow = [work(i) for i in range(3)]
    beacon.receive(3)
    for i in range(15):
        fut = quick(i)  # finishes, and is reaped, while the subprocess runs
        rc = subprocess.run(["sh", "-c", "exit 3"], timeout=BOUND).returncode
        assert rc == 3
        assert fut.result(timeout=BOUND) == i
    p = subprocess.Popen(["sh", "-c", "exit 5"])
    assert quick("x").result(timeout=BOUND) == "x"
    assert p.wait(BOUND) == 5
    gate.release(3)
    assert [f.result(timeout=BOUND) for f in slow] == [0, 1, 2]


@pytest.mark.parametrize("outcome", ["value", "exit"])
def test_user_reaping_our_child_does_not_hang_and_keeps_a_delivered_result(outcome, gate):
    """E7: user code steals a task's exit status while the supervisor is busy."""
    in_callback = threading.Event()
    release = threading.Event()

    @task
    def b_task():
        assert gate.wait(PATIENCE)
        if outcome == "exit":
            os._exit(3)
        return 7

    with Gate() as hold:

        @task
        def a_task():
            assert hold.wait(PATIENCE)
            return "a"

        b = b_task()
        a = a_task()
        a.add_done_callback(lambda f: (in_callback.set(), release.wait(BOUND)))
        hold.release()
    try:
        assert in_callback.wait(BOUND)  # the supervisor is now busy in a's callback
        gate.release()
        # The user reaps b first (os.wait(): b is this process's only child at this point).
        # Wait for its exit on a pidfd first, so that a hang fails instead of blocking here.
        assert _faults.survivors([b.pid], BOUND) == [], "the task never exited"
        pid, status = os.wait() if outcome == "exit" else os.waitpid(b.pid, 0)
        assert pid == b.pid
        assert os.waitstatus_to_exitcode(status) == (3 if outcome == "exit" else 0)
        release.set()
        if outcome == "value":
            assert b.result(timeout=BOUND) == 7
        else:
            err = b.exception(timeout=BOUND)
            assert isinstance(err, WorkerDied)
            assert err.exitcode is None
            assert "could not be collected" in str(err)
        assert b.exitcode is None
        assert a.result(timeout=BOUND) == "a"
    finally:
        release.set()


def test_user_wait_loop_in_another_thread_does_not_hang_tasks():
    proc = run_harness(
        """
        @task
        def value(i):
            return i

        @task
        def die(i):
            os._exit(4)

        stop = threading.Event()
        stolen = []

        def reaper():
            while not stop.is_set():
                try:
                    stolen.append(os.waitpid(-1, os.WNOHANG))
                except ChildProcessError:
                    pass
                time.sleep(0.001)  # a careless user reaper, polling on purpose

        t = threading.Thread(target=reaper, daemon=True)  # a failure must not hang the exit
        t.start()
        results = []
        for i in range(30):
            f = value(i) if i % 3 else die(i)
            try:
                results.append(f.result(timeout=10))
            except WorkerDied as e:
                results.append(["died", e.exitcode])
            except TimeoutError:
                from _faults import process_state
                state = process_state(f.pid)
                print("UNRESOLVED", i, repr(f), "child state", state, flush=True)
                raise
        stop.set()
        t.join(10)
        print(json.dumps(results), flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for i, r in enumerate(results):
        if i % 3:
            assert r == i
        else:
            assert r[0] == "died"
            assert r[1] in (4, None)


# -- E8: asyncio wakeup fd -------------------------------------------------------------------


def test_child_does_not_write_into_the_parents_signal_wakeup_fd():
    @task
    def child_signals_itself():
        previous = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(previous)  # put back whatever the library left, then trip it
        handler = signal.getsignal(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, lambda *a: None)
        os.kill(os.getpid(), signal.SIGUSR1)
        return previous, handler == signal.SIG_DFL

    calls = []

    async def main():
        loop = asyncio.get_running_loop()
        got = asyncio.Event()

        def on_usr1():
            calls.append(time.monotonic())
            got.set()

        loop.add_signal_handler(signal.SIGUSR1, on_usr1)
        try:
            previous, reset = await asyncio.wait_for(child_signals_itself(), BOUND)
            os.kill(os.getpid(), signal.SIGUSR1)  # one real signal: the only one to see
            await asyncio.wait_for(got.wait(), BOUND)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        return previous, reset

    previous, reset = asyncio.run(main())
    assert previous == -1, "the child inherited the parent's wakeup fd"
    assert reset, "the parent's Python signal handler was not reset in the child"
    assert len(calls) == 1, "the child's signal woke the parent's event loop"


def test_parent_signal_handlers_do_not_run_in_the_child():
    hits_r, hits_w = os.pipe()

    def parent_handler(signum, frame):
        os.write(hits_w, b"P")

    old = signal.signal(signal.SIGTERM, parent_handler)
    try:

        @task
        def report():
            return (
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
            )

        assert report().result(timeout=BOUND) == (True, True)
    finally:
        signal.signal(signal.SIGTERM, old)
        os.close(hits_r)
        os.close(hits_w)


# -- E9: the user forks while tasks are in flight --------------------------------------------


def test_user_fork_while_tasks_in_flight_gets_a_clean_library(gate, beacon):
    @task
    def work(x):
        beacon.send()
        assert gate.wait(PATIENCE)
        return x

    @task
    def inner(x):
        return x * 2

    before = set(_faults.fd_table())
    futs = [work(i) for i in range(3)]
    beacon.receive(3)
    library_fds = set(_faults.fd_table()) - before
    assert library_fds  # result pipes and pidfds at least
    with Beacon() as reports:
        pid = os.fork()
        if pid == 0:  # the user's child
            report = {}
            try:
                signal.alarm(int(BOUND))
                mine = set(_faults.fd_table())
                report["inherited"] = sorted(mine & library_fds)
                report["in_flight"] = _supervisor.statistics().in_flight
                report["values"] = [inner(i).result(timeout=BOUND) for i in range(3)]
            except BaseException as exc:
                report["error"] = repr(exc)
            finally:
                reports.send((json.dumps(report) + "\n").encode())
                os._exit(0)
        try:
            (line,) = reports.lines(1, PATIENCE)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the user's forked child hung") from None
        finally:
            _, status = os.waitpid(pid, 0)  # it has reported (and exits at once) or is killed
    report = json.loads(line)
    assert os.waitstatus_to_exitcode(status) == 0  # the library did not reap it
    assert "error" not in report, report
    assert report["inherited"] == [], "library fds leaked into a user fork"
    assert report["in_flight"] == 0
    assert report["values"] == [0, 2, 4]
    gate.release(3)
    assert [f.result(timeout=BOUND) for f in futs] == [0, 1, 2]


PARENT_EXECS = """
import os, sys
from inparallel import task

@task
def job():
    os.write(1, b"the task ran\\n")
    return 1

@task
def noop():
    return 0

noop().result(timeout=10)  # the library's at-fork hooks go first, then this gate:
gate_r, gate_w = os.pipe()
os.set_inheritable(gate_w, True)
os.register_at_fork(after_in_child=lambda: os.read(gate_r, 1))
fut = job()  # its child waits at the gate, its lifeline not armed yet
program = (
    f"import os; os.write({gate_w}, b'x'); "
    f"print('exit', os.waitstatus_to_exitcode(os.waitpid({fut.pid}, 0)[1]))"
)
os.execv(sys.executable, [sys.executable, "-c", program])  # our read end closes; we live on
"""


def test_a_task_whose_parent_execs_before_it_is_armed_does_not_run() -> None:
    # No death signal reports an exec, and no owner was set yet: the closed pipe tells.
    out = _faults.run_python(PARENT_EXECS)
    assert out.returncode == 0, out.stderr.decode()
    assert b"the task ran" not in out.stdout
    assert out.stdout.strip().endswith(b"exit 70"), out.stdout  # INTERNAL_ERROR, at once
