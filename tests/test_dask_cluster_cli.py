"""A real external cluster: ``dask scheduler`` and ``dask worker`` started as commands.

A `LocalCluster`'s workers inherit the test process's ``sys.path``, so they import the tests'
own modules and hide code that is not shipped. These workers start from an empty directory
without the tests on their path: only installed packages (inparallel among them) and what the
calls carry by value reach them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest
from _faults import REPO_ROOT
from _timing import BOUND, PATIENCE

# Sorted last with the other cluster tests, with their leak check and warning filter (conftest).
# The first test also starts the cluster: START_TIMEOUT + 2 x EXAMPLE_TIMEOUT stays below 180.
pytestmark = [pytest.mark.timeout(180), pytest.mark.dask_cluster]

#: A scheduler and two worker processes started as commands, until both workers are connected.
START_TIMEOUT = 2 * PATIENCE

#: One run of examples/cluster.py: an interpreter start, a client's connection, a few calls.
EXAMPLE_TIMEOUT = PATIENCE + BOUND


def _dask_command() -> list[str]:
    script = pathlib.Path(sys.executable).with_name("dask")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dask"]


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the workers must not see the tests
    env.pop("INPARALLEL_EXECUTOR", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a command and everything it started (it leads its own process group)."""
    for sig, wait in ((signal.SIGTERM, BOUND), (signal.SIGKILL, BOUND)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    proc.wait(BOUND)
    with contextlib.suppress(ProcessLookupError):  # the nannies, if they outlived the leader
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def scheduler_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    distributed = pytest.importorskip("distributed")
    home = tmp_path_factory.mktemp("cluster")
    path = home / "scheduler.json"
    probe = subprocess.run(
        [sys.executable, "-c", "import inparallel"], cwd=home, env=_clean_env(), check=False
    )
    assert probe.returncode == 0, "install inparallel (pip install -e .) for the workers to use"
    common: dict[str, Any] = {
        "cwd": home,
        "env": _clean_env(),
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "start_new_session": True,
    }
    scheduler = subprocess.Popen(
        [
            *_dask_command(),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            "127.0.0.1:0",
            "--no-dashboard",
            "--scheduler-file",
            str(path),
        ],
        **common,
    )
    worker = None
    deadline = time.monotonic() + START_TIMEOUT  # for the whole start
    try:
        while not (path.exists() and path.stat().st_size):
            assert scheduler.poll() is None, "dask scheduler exited"
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.05)  # waiting for another program to write its file
        worker = subprocess.Popen(
            [
                *_dask_command(),
                "worker",
                "--scheduler-file",
                str(path),
                "--nworkers",
                "2",
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--death-timeout",
                "30",
            ],
            **common,
        )
        client = distributed.Client(scheduler_file=str(path), set_as_default=False, timeout=BOUND)
        try:
            client.wait_for_workers(2, timeout=max(deadline - time.monotonic(), 1.0))
            assert json.loads(path.read_text())["address"].startswith("tcp://127.0.0.1:")
        finally:
            client.close(timeout=BOUND)
        yield path
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                _stop(proc)


def _run_example(*, engine: str | None, cwd: pathlib.Path) -> list[str]:
    env = _clean_env()
    if engine is not None:
        env["INPARALLEL_EXECUTOR"] = engine
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "cluster.py")],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=EXAMPLE_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout.decode().splitlines()


def test_the_example_gives_the_same_output_on_fork_and_on_the_cluster(
    scheduler_file: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    local = _run_example(engine=None, cwd=tmp_path)
    remote = _run_example(engine=f"dask:{scheduler_file}", cwd=tmp_path)
    assert local[0] == "engine: ForkExecutor"
    assert remote[0] == "engine: DaskExecutor"
    assert remote[1:] == local[1:]
    assert len(local) == 5


def by_reference(x: int) -> tuple[int, int]:
    return x * 2, os.getpid()


def test_code_not_on_the_workers_is_named_then_ships_by_value(
    scheduler_file: pathlib.Path,
) -> None:
    from inparallel.backends.dask import DaskExecutor

    executor = DaskExecutor(str(scheduler_file))  # opens and owns its client
    try:
        with pytest.raises(ImportError) as info:
            executor.submit(by_reference, 1).result(PATIENCE)
        assert "register_pickle_by_value" in " ".join(getattr(info.value, "__notes__", []))
        module = sys.modules[__name__]
        cloudpickle.register_pickle_by_value(module)
        try:
            results = [executor.submit(by_reference, i).result(PATIENCE) for i in range(6)]
        finally:
            cloudpickle.unregister_pickle_by_value(module)
        assert [value for value, _ in results] == [0, 2, 4, 6, 8, 10]
        assert os.getpid() not in {pid for _, pid in results}
        echoed = executor.submit(
            lambda x, key, priority: (x, key, priority), 1, key="k", priority=3
        )
        assert echoed.result(PATIENCE) == (1, "k", 3)
    finally:
        # A call left pending by a failure above is cancelled, not waited for.
        executor.shutdown(wait=True, cancel_futures=True)
    assert executor.client.status == "closed"
