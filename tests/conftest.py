"""Shared fixtures: every test is checked for leaked child processes, threads and fds.

Also the pipe fixtures most process tests use (`gate`, `beacon`), `tracked`, which kills what
a failing test left running, and `sigint_default` for the tests of Ctrl-C. The helpers
themselves live in ``_faults``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import _faults
import pytest
from _faults import child_pids  # tests import it from here too
from _timing import BOUND, PATIENCE, SETTLE

if TYPE_CHECKING:
    from inparallel import TaskFuture


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
    _faults.mark_baseline()  # the fds this test starts with (see `_faults.result_pipe_fds`)
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


@pytest.fixture
def gate() -> Iterator[_faults.Gate]:
    """A `_faults.Gate`: tasks block on it until the test releases them (all of them at the end)."""
    with _faults.Gate() as g:
        yield g


@pytest.fixture
def beacon() -> Iterator[_faults.Beacon]:
    """A `_faults.Beacon`: tasks send bytes, the test receives them with a timeout."""
    with _faults.Beacon() as b:
        yield b


@pytest.fixture
def sigint_default() -> Iterator[None]:
    """Python's own Ctrl-C handler (`signal.default_int_handler`) for the test, then the old one.

    A run started with SIGINT ignored (nohup, a background job) has none to begin with.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def tracked() -> Iterator[list[TaskFuture[Any]]]:
    """Futures a test registers here are cancelled (their child killed) if left running."""
    futures: list[TaskFuture[Any]] = []
    yield futures
    for fut in futures:
        if not fut.done():
            fut.cancel()


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


def _attempt(what: str, call: Any) -> list[str]:
    """Run ``call()``; return a one-line problem report if it raised (teardown goes on)."""
    try:
        call()
    except Exception as exc:
        return [f"{what}: {type(exc).__name__}: {exc}"]
    return []


def _in_thread(call: Any, timeout: float) -> bool:
    """Run ``call()`` in a daemon thread; return whether it finished within ``timeout`` s."""
    thread = threading.Thread(target=call, name="conftest-teardown", daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


@pytest.fixture(scope="session")
def dask_client() -> Iterator[object]:
    """A real two-process LocalCluster on 127.0.0.1 (no dashboard), for the whole session.

    Its teardown is bounded, so that a wedged cluster fails the run instead of hanging it: the
    client and the cluster get `BOUND` seconds each to close, and worker processes still alive
    `SETTLE` seconds later are killed (and reported).
    """
    import logging

    distributed = pytest.importorskip("distributed")
    workers: list[int] = []
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        worker_dashboard_address=None,
        silence_logs=logging.CRITICAL,
    )
    client = None
    try:
        client = distributed.Client(cluster, set_as_default=False)
        client.wait_for_workers(2, timeout=PATIENCE)
        workers.extend(client.run(os.getpid).values())  # this process's children
        yield client
    finally:
        problems = []
        if client is not None:
            problems += _attempt("closing the client", lambda: client.close(timeout=BOUND))
        problems += _attempt("closing the cluster", lambda: cluster.close(timeout=BOUND))
        stray = _faults.survivors(workers, SETTLE)
        for pid in stray:
            _faults.reap(pid)  # SIGKILL and collect: no worker outlives the run
        if stray:
            problems.append(f"worker processes {stray} were still running after close: killed")
        if problems:
            pytest.fail("dask cluster teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def dask_executor(dask_client: object) -> Iterator[object]:
    """A `DaskExecutor` on the session cluster, warmed up so that a test sees no new thread.

    At the end it gets `BOUND` seconds to finish the calls it still has (a call whose result
    never comes would otherwise hang the run); after that they are cancelled and reported.
    """
    from inparallel.backends.dask import FETCH_THREADS, adapt

    executor = adapt(dask_client)  # the one use(client) and executor=client give too
    assert executor is not None
    # Start every fetch thread and open the client's connections to both workers now.
    gate = threading.Barrier(FETCH_THREADS + 1)
    for _ in range(FETCH_THREADS):
        executor._fetch.submit(gate.wait, PATIENCE)
    gate.wait(PATIENCE)
    for future in [executor.submit(abs, -i) for i in range(20)]:
        future.result(PATIENCE)
    yield executor
    if not _in_thread(lambda: executor.shutdown(wait=True), BOUND):
        outstanding = repr(executor)
        executor.shutdown(wait=False, cancel_futures=True)
        pytest.fail(
            f"the session's DaskExecutor did not shut down within {BOUND} s ({outstanding}):"
            " a call's result never arrived",
            pytrace=False,
        )


@pytest.fixture(params=["fork", "dask"])
def engine(request: pytest.FixtureRequest) -> object:
    """Each engine in turn: the fork engine, then the session's Dask cluster."""
    if request.param == "fork":
        from inparallel import ForkExecutor

        return ForkExecutor()
    return request.getfixturevalue("dask_executor")
