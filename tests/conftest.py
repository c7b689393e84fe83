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
    if request.node.get_closest_marker("dask_cluster"):
        if "engine" in request.fixturenames:
            request.getfixturevalue("dask_executor")  # the cluster is not this test's leak
        yield from _no_leaks_beside_dask()
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


def _ours(thread: threading.Thread) -> bool:
    return thread.name.startswith("inparallel")


def _no_leaks_beside_dask() -> Iterator[None]:
    """The leak check for tests beside a live dask client.

    Dask opens sockets, starts threads and spawns processes of its own as it sees fit; the
    library's children, its threads and its pipes are still checked.
    """
    pids0 = child_pids()
    threads0 = {t for t in live_threads() if _ours(t)}
    pipes0 = {fd for fd in open_fds() if _is_pipe(fd)}
    yield
    deadline = time.monotonic() + SETTLE
    problems = []
    if not _wait_until(lambda: child_pids() <= pids0, deadline):
        problems.append(f"child processes left: {sorted(child_pids() - pids0)}")
    if not _wait_until(lambda: {t for t in live_threads() if _ours(t)} <= threads0, deadline):
        problems.append(f"threads left: {[t.name for t in live_threads() - threads0 if _ours(t)]}")
    if not _wait_until(lambda: {fd for fd in open_fds() if _is_pipe(fd)} <= pipes0, deadline):
        problems.append("pipes left")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def _is_pipe(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    except OSError:
        return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "leaks_ok: the test manages its own leak accounting")
    config.addinivalue_line("markers", "dask_cluster: the test runs beside the session's cluster")


# -- engines ------------------------------------------------------------------------------------
#
# Tests that use the Dask cluster run last (a session-scoped cluster keeps dask's threads alive
# from its first test on, and every later fork would happen beside them), and only they
# tolerate CPython's multi-threaded fork warning (3.12+): it is right to warn there.

DASK_FIXTURES = {"dask_executor", "dask_client"}
FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"


def uses_dask(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    engine = callspec.params.get("engine") if callspec is not None else None
    marked = item.get_closest_marker("dask_cluster") is not None
    return marked or bool(names & DASK_FIXTURES) or engine == "dask"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    dask_items = [item for item in items if uses_dask(item)]
    for item in dask_items:
        item.add_marker(pytest.mark.filterwarnings(FORK_WARNING))
        item.add_marker(pytest.mark.dask_cluster)
    others = [item for item in items if not uses_dask(item)]
    items[:] = others + dask_items


@pytest.fixture(scope="session")
def dask_client() -> Iterator[object]:
    """A real two-process LocalCluster on 127.0.0.1 (no dashboard), for the whole session."""
    import logging

    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        worker_dashboard_address=None,
        silence_logs=logging.CRITICAL,
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(2, timeout=120)
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="session")
def dask_executor(dask_client: object) -> Iterator[object]:
    """A `DaskExecutor` on the session cluster, warmed up so that a test sees no new thread."""
    from inparallel.backends.dask import FETCH_THREADS, adapt

    executor = adapt(dask_client)  # the one use(client) and executor=client give too
    assert executor is not None
    # Start every fetch thread and open the client's connections to both workers now.
    gate = threading.Barrier(FETCH_THREADS + 1)
    for _ in range(FETCH_THREADS):
        executor._fetch.submit(gate.wait, 30)
    gate.wait(30)
    for future in [executor.submit(abs, -i) for i in range(20)]:
        future.result(60)
    yield executor
    executor.shutdown(wait=True)


@pytest.fixture(params=["fork", "dask"])
def engine(request: pytest.FixtureRequest) -> object:
    """Each engine in turn: the fork engine, then the session's Dask cluster."""
    if request.param == "fork":
        from inparallel import ForkExecutor

        return ForkExecutor()
    return request.getfixturevalue("dask_executor")
