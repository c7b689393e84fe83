"""The program's own forks (os.fork, multiprocessing) beside inparallel: no warning of ours.

CPython 3.12+ warns when a multi-threaded process forks. The supervisor is a thread of the
library's, so an at-fork hook keeps it out of the program's forks where CPython allows: it
waits out a supervisor that has just ended (all versions), and on 3.12 parks a running one for
the fork and restarts it after. From 3.13 CPython counts threads after the after-fork hooks,
so a fork made while the supervisor thread watches tasks warns there, rightly: our thread is
alive then. Tasks that nobody waits for yet are watched by no thread (whoever waits for them
watches them), so forks beside them never warn.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import _faults
import pytest
from _timing import PATIENCE

HARNESS = """
import os, sys, warnings
warnings.simplefilter("always")
from inparallel import task

gate_r, gate_w = os.pipe()

@task
def blocked():
    os.read(gate_r, 1)
    return "done"

@task
def quick(i):
    return i

def fork_and_reap():
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7

for i in range(30):                 # just after a task: the supervisor is ending on its own
    assert quick(i).result(timeout=10) == i
    fork_and_reap()
print("IDLE-DONE", flush=True)
if sys.argv[1] in ("in-flight", "watched"):
    futures = [blocked() for _ in range(3)]
    if sys.argv[1] == "watched":    # something waits without driving: the supervisor thread runs
        for future in futures:
            future.add_done_callback(lambda _: None)
    for _ in range(30):             # while tasks are in flight
        fork_and_reap()
    os.write(gate_w, b"xxx")
    assert [f.result(timeout=10) for f in futures] == ["done"] * 3
    assert quick(1).result(timeout=10) == 1   # the supervisor works after all of this
print("DONE", flush=True)
"""

WARNING = "may lead to deadlocks in the child"


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HARNESS), mode],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env=_faults.python_env(),
    )


def test_forks_beside_an_idle_library_never_warn() -> None:
    proc = _run("idle")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["IDLE-DONE", "DONE"]
    assert proc.stderr.count(WARNING) == 0, proc.stderr[:2000]


def test_forks_while_tasks_nobody_waits_for_are_in_flight_never_warn() -> None:
    # No thread watches tasks that nobody waits for yet (the caller that waits watches them).
    proc = _run("in-flight")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["IDLE-DONE", "DONE"]
    assert proc.stderr.count(WARNING) == 0, proc.stderr[:2000]


def test_forks_while_the_supervisor_thread_watches_tasks() -> None:
    proc = _run("watched")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["IDLE-DONE", "DONE"]
    expected = 0 if sys.version_info[:2] <= (3, 12) else 30
    assert proc.stderr.count(WARNING) == expected, proc.stderr[:2000]


@pytest.mark.skipif(sys.version_info[:2] != (3, 12), reason="only 3.12 parks for such forks")
def test_a_parked_supervisor_restarts_after_the_programs_fork() -> None:
    # Covered by the harness's last call; said again here so that a failure names it.
    proc = _run("in-flight")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["IDLE-DONE", "DONE"], proc.stderr
