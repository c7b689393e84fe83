"""Regression tests for defects found in review of the core (one test per defect)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading

import _faults
import pytest
from _timing import BOUND, PATIENCE

from inparallel import RemoteError, SpawnError, task
from inparallel._core import _spawn


def test_large_writable_result_is_private_to_the_parent() -> None:
    np = pytest.importorskip("numpy")  # in the test extra; the numpy array is the common case
    # A >= 1 MiB array arrives through shared memory; the parent's copy must be private, so
    # that a later child's in-place change stays in that child.
    arr = task(lambda: np.zeros(1 << 18))().result(timeout=BOUND)

    @task
    def mutate() -> float:
        arr[:] = 7.0
        return float(arr[0])

    assert mutate().result(timeout=BOUND) == 7.0
    assert arr[0] == 0.0
    arr[0] = 1.0  # and it is writable in the parent
    assert arr[0] == 1.0


def test_task_forked_from_a_callback_can_wait_for_nested_tasks() -> None:
    @task
    def leaf() -> int:
        return 1

    @task
    def outer() -> int:
        return leaf().result(timeout=BOUND)  # waits inside the child

    box, ready = [], threading.Event()

    def callback(_: object) -> None:
        box.append(outer())  # runs on the supervisor thread
        ready.set()

    leaf().add_done_callback(callback)
    assert ready.wait(BOUND)
    assert box[0].result(timeout=BOUND) == 1


NESTED_SPARES = """
import sys
from inparallel import task
from inparallel._core import _child

@task
def spares_are_live():
    plan = _child.plan(1)  # any open fd stands for the result pipe here
    return plan.stdout is sys.stdout, plan.stderr is sys.stderr

print(spares_are_live().result(timeout=10))
"""


def test_nested_tasks_get_fresh_streams() -> None:
    # Inside a task, the spare streams kept for its own children must not be the task's live
    # sys.stdout/sys.stderr (a grandchild would reuse their buffers and locks). Run with real
    # standard streams, outside pytest's capture.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", NESTED_SPARES],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        cwd=root,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(False, False)"


def test_failed_fork_after_parking_keeps_watching_other_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_spawn, "PARK", True)  # the 3.12+ path, on every version
    r, w = os.pipe()
    try:

        @task
        def waits() -> str:
            os.read(r, 1)
            return "done"

        fut = waits()

        def failing_fork() -> int:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

        with monkeypatch.context() as m:
            m.setattr(os, "fork", failing_fork)
            with pytest.raises(SpawnError) as info:
                waits()
        assert info.value.errno == errno.EAGAIN
        os.write(w, b"x")
        assert fut.result(timeout=BOUND) == "done"  # the supervisor was not left parked
    finally:
        os.close(r)
        os.close(w)


def test_exception_the_parent_cannot_rebuild_keeps_its_report() -> None:
    @task
    def fails() -> None:
        class Local(Exception):
            pass

        # A module-level name that exists in the child only: it pickles here, and the
        # parent's lookup of it fails.
        Local.__module__, Local.__qualname__ = __name__, "OnlyInChild"
        globals()["OnlyInChild"] = Local
        raise Local("disk quota exceeded on /data")

    exc = fails().exception(timeout=BOUND)
    assert isinstance(exc, RemoteError), repr(exc)
    assert exc.type_name.endswith("OnlyInChild")
    assert exc.message == "disk quota exceeded on /data"
    assert "in fails" in exc.traceback_text
    assert "could not be unpickled in the parent" in exc.reason


def test_large_result_of_a_non_dumpable_task_arrives() -> None:
    # A task that hardens itself (PR_SET_DUMPABLE 0) cannot lend its fds through /proc: its
    # big result takes the pipe instead of shared memory.
    @task
    def hardened() -> bytes:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
        return b"h" * (3 << 20)

    assert hardened().result(timeout=BOUND) == b"h" * (3 << 20)


FD_LIMIT = """
import os, resource
from inparallel import SpawnError, task

@task
def waits(r):
    os.read(r, 1)
    return 1

r, w = os.pipe()
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 24, 4096))
futures = []
try:
    for _ in range(100):
        futures.append(waits(r))
except SpawnError as exc:
    error = exc
os.write(w, b"x" * len(futures))
assert all(f.result(timeout=10) == 1 for f in futures)
print(len(futures), type(error).__name__, error.errno, isinstance(error, OSError))
"""


def test_fd_exhaustion_is_spawn_error_and_the_rest_completes() -> None:
    # catalogue G1: past RLIMIT_NOFILE a call raises SpawnError (EMFILE) synchronously; the
    # tasks already started are still watched and finish.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", FD_LIMIT], capture_output=True, text=True, timeout=PATIENCE, cwd=root
    )
    assert out.returncode == 0, out.stderr
    started, name, code, is_oserror = out.stdout.split()
    assert int(started) >= 3
    assert (name, code, is_oserror) == ("SpawnError", str(errno.EMFILE), "True")


def test_a_supervisor_thread_that_cannot_start_leaves_nothing_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import _thread

    from inparallel._core import _supervisor

    @task(timeout=PATIENCE)  # its deadline holds whether anyone waits or not: a thread
    def one() -> int:
        return 1

    assert _faults.supervisor_idle(BOUND)  # no thread runs: the next call must start one

    def refuse(*args: object) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(_thread, "start_new_thread", refuse)
    with pytest.raises(RuntimeError, match="interpreter shutdown"):
        one()
    monkeypatch.undo()
    supervisor = _supervisor.get()
    assert not supervisor.thread_alive()
    assert supervisor.statistics().in_flight == 0  # the abandoned child is forgotten
    assert one().result(timeout=BOUND) == 1  # and the next call starts a thread again
