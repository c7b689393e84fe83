"""Shared fixtures: every test is checked for leaked child processes, threads and fds."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

SETTLE = 5.0  # seconds a test's children, threads and fds get to wind down (research P2-P4)


def child_pids() -> set[int]:
    """Return the pids (running or zombie) whose parent is this process."""
    me = os.getpid()
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised command name, which may contain spaces.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == me:
            pids.add(int(entry))
    return pids


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")} - {_probe_fd()}


def _probe_fd() -> int:
    # listdir opens one fd of its own; it is the highest free number at the time, so find it.
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    return fd


def live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


def os_threads() -> set[str]:
    """OS-level thread ids: they include threads `threading` does not know about."""
    return set(os.listdir("/proc/self/task"))


def _wait_until(check: object, deadline: float) -> bool:
    while True:
        if check():  # type: ignore[operator]
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # polling a /proc snapshot in a test fixture; nothing to wait on


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a child process, a thread or an fd behind."""
    if request.node.get_closest_marker("leaks_ok"):
        yield
        return
    pids0 = child_pids()
    fds0 = open_fds()
    threads0 = live_threads()
    os_threads0 = os_threads()
    yield
    deadline = time.monotonic() + SETTLE
    ok_pids = _wait_until(lambda: child_pids() <= pids0, deadline)
    ok_threads = _wait_until(lambda: live_threads() <= threads0, deadline)
    ok_os_threads = _wait_until(lambda: os_threads() <= os_threads0, deadline)
    ok_fds = _wait_until(lambda: open_fds() <= fds0, deadline)
    problems = []
    if not ok_pids:
        problems.append(f"child processes left: {sorted(child_pids() - pids0)}")
    if not ok_threads:
        problems.append(f"threads left: {[t.name for t in live_threads() - threads0]}")
    if not ok_os_threads:
        problems.append(f"OS threads left (tids): {sorted(os_threads() - os_threads0)}")
    if not ok_fds:
        leaked = {}
        for fd in sorted(open_fds() - fds0):
            try:
                leaked[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                leaked[fd] = "?"
        problems.append(f"fds left: {leaked}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "leaks_ok: the test manages its own leak accounting")
