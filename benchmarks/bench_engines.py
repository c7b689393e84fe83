"""Engines: the fork engine against a local Dask cluster, per call and for a 1,000-task map.

    python -m benchmarks.bench_engines             # 5 repeats, 3 for the map (~1.5-2 min)
    python -m benchmarks.bench_engines --quick     # smoke mode: small sizes, 2 repeats

This module is run on its own, not by ``python -m benchmarks.run`` (it exposes no ``CASES``):
it starts a ``distributed.LocalCluster`` of 2 worker processes with 1 thread each on 127.0.0.1
from under ``if __name__ == "__main__"`` (dask starts its workers by spawning, which imports the
main module again), measures both cases with the harness of `benchmarks._harness` (interleaved
repeats, medians) and closes the cluster at the end. The work functions are defined here, in
``__main__``, so cloudpickle sends them to the workers by value.

The ``vs fork`` column is the ratio of medians to the case's first row, the fork engine in this
process. This process has imported distributed and holds the client and the cluster's scheduler
(threads, sockets, some 60 MiB): every fork copies that, so a fork here costs about twice what
it costs in a bare interpreter. The ``fork, bare interpreter`` rows show the latter: a fresh
``python -m benchmarks.bench_engines --bare WHAT N`` that never imports distributed, started
in each repeat and timing its own calls (its start-up is not counted), under the same load.

One `DaskExecutor` and one ``client.get_executor(pure=False)`` are made before the timing and
serve every run, like the warm pools of the other modules; the cluster's start-up is not timed
(it is printed in the header).

``engines.roundtrip``
    N = 50 sequential trivial calls, each waited for (``result(timeout=60)``) before the next,
    reported per call: ``ForkExecutor().submit`` (the reference) and a ``@task`` call on fork;
    ``DaskExecutor(client).submit``; a raw ``client.submit(fn, i, pure=False)``; and
    ``client.get_executor(pure=False).submit`` (dask's own ``concurrent.futures`` adapter). A
    warm-up round precedes the first measured one.
``engines.map``
    1,000 calls of a trivial function, results checked (in order, or sorted for the loops):
    ``process_map(inc, range(1000))`` on fork (the reference); the same with
    ``executor=DaskExecutor(client)`` (in chunks, each chunk one ``submit``);
    ``StreamExecutor(executor=dask).map`` with its defaults (one call per item,
    ``concurrency(dask)`` in flight); a ``waitfor`` loop submitting the 1,000 calls to the
    `DaskExecutor` with ``inparallel.concurrency(dask)`` in flight; and raw
    ``client.map(..., pure=False)`` + ``client.gather`` for reference. The same ``waitfor`` loop
    on fork (``concurrency()``: the CPU count in flight) runs in the bare interpreter only.

``--quick``: 20 calls, a 200-task map, 2 repeats.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from contextlib import ExitStack
from typing import Any

from benchmarks._harness import (
    Case,
    Impl,
    Plan,
    Row,
    Settings,
    Stopwatch,
    check,
    log,
    measure,
    render_table,
)

RESULT_TIMEOUT = 60.0
WARM = "made once, outside the timing"
BARE_NOTE = "a fresh python without distributed; it times its own calls"
#: Repeats of engines.map when --repeats is not given (one round of it takes 20-30 s here).
MAP_REPEATS = 3


# -- work run by the engines ------------------------------------------------------------------


def identity(x: int) -> int:
    """Return *x* (the trivial call)."""
    return x


def inc(x: int) -> int:
    """Return ``x + 1`` (the trivial mapped function)."""
    return x + 1


# -- helpers ----------------------------------------------------------------------------------


def _sequential(submit: Callable[[int], Future[Any]], n: int) -> float:
    """Submit ``i`` for i < n, each waited for before the next; check; return the seconds."""
    with Stopwatch() as sw:
        got = [submit(i).result(timeout=RESULT_TIMEOUT) for i in range(n)]
    check(got == list(range(n)), "wrong results")
    return sw.elapsed


def _submitter(executor: Executor) -> Callable[[int], Future[Any]]:
    """Return ``i -> executor.submit(identity, i)``."""
    return lambda i: executor.submit(identity, i)


def _waitfor_loop(executor: Executor, n: int, width: int) -> list[int]:
    """Submit ``inc(i)`` for i < n to *executor*, *width* in flight; results as they finish."""
    from inparallel import waitfor

    items = iter(range(n))
    active: list[Future[int]] = []
    got: list[int] = []
    for future in waitfor(active, width):
        if future is not None:
            got.append(future.result(timeout=RESULT_TIMEOUT))
        elif (i := next(items, None)) is not None:
            active.append(executor.submit(inc, i))
    return got


def _fork_roundtrip(n: int) -> float:
    """Time *n* sequential ``ForkExecutor().submit`` round trips (after one untimed call)."""
    import inparallel

    fork = inparallel.ForkExecutor()
    fork.submit(identity, 0).result(timeout=RESULT_TIMEOUT)
    return _sequential(_submitter(fork), n)


def _fork_map(n: int) -> float:
    """Time ``process_map(inc, range(n))`` on fork (after one small untimed map)."""
    import inparallel

    check(list(inparallel.process_map(inc, range(4))) == [1, 2, 3, 4], "wrong results")
    with Stopwatch() as sw:
        got = list(inparallel.process_map(inc, range(n)))
    check(got == [x + 1 for x in range(n)], "wrong results")
    return sw.elapsed


def _fork_waitfor(n: int) -> float:
    """Time the `_waitfor_loop` of *n* calls on fork at ``concurrency()`` (after one call)."""
    import inparallel

    fork = inparallel.ForkExecutor()
    fork.submit(identity, 0).result(timeout=RESULT_TIMEOUT)
    with Stopwatch() as sw:
        got = _waitfor_loop(fork, n, inparallel.concurrency())
    check(sorted(got) == [x + 1 for x in range(n)], "wrong results")
    return sw.elapsed


#: What ``--bare WHAT N`` runs in a fresh interpreter that never imports distributed.
BARE: dict[str, Callable[[int], float]] = {
    "roundtrip": _fork_roundtrip,
    "map": _fork_map,
    "waitfor": _fork_waitfor,
}


def _bare(what: str, n: int) -> Impl:
    """The fork engine timed in a fresh interpreter, which reports its own seconds."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))),
    }
    argv = [sys.executable, "-m", "benchmarks.bench_engines", "--bare", what, str(n)]

    def run() -> float:
        out = subprocess.run(
            argv, capture_output=True, text=True, env=env, check=False, timeout=RESULT_TIMEOUT
        )
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        check(out.returncode == 0, f"--bare {what}: exit {out.returncode}: {last}")
        return float(out.stdout)

    label = {
        "roundtrip": "ForkExecutor().submit",
        "map": "process_map",
        "waitfor": f"waitfor loop, {os.cpu_count()} in flight",
    }[what]
    return Impl(f"bare-{what}", f"fork, bare interpreter: {label}", run, note=BARE_NOTE)


# -- the cases --------------------------------------------------------------------------------


def _roundtrip(s: Settings, client: Any, dask: Executor, client_ex: Executor) -> Plan:
    import inparallel

    n = s.pick(50, 20)
    fork = inparallel.ForkExecutor()
    ident = inparallel.task(identity)
    impls = [
        Impl("floor", "fork: ForkExecutor().submit", lambda: _sequential(_submitter(fork), n)),
        Impl("task", "fork: @task call", lambda: _sequential(ident, n)),
        _bare("roundtrip", n),
        Impl(
            "dask",
            "dask: DaskExecutor(client).submit",
            lambda: _sequential(_submitter(dask), n),
            note=WARM,
        ),
        Impl(
            "client",
            "dask: client.submit(pure=False)",
            lambda: _sequential(lambda i: client.submit(identity, i, pure=False), n),
        ),
        Impl(
            "client-ex",
            "dask: client.get_executor(pure=False).submit",
            lambda: _sequential(_submitter(client_ex), n),
            note=WARM,
        ),
    ]
    return Plan(impls, per=n, detail=f"N={n} sequential calls, each submit -> result")


def _map(s: Settings, client: Any, dask: Executor) -> Plan:
    import inparallel

    n = s.pick(1000, 200)
    expected = [x + 1 for x in range(n)]
    width = inparallel.concurrency(dask)

    def fork_map() -> None:
        check(list(inparallel.process_map(inc, range(n))) == expected, "wrong results")

    def dask_map() -> None:
        got = list(inparallel.process_map(inc, range(n), executor=dask))
        check(got == expected, "wrong results")

    def stream() -> None:
        with inparallel.StreamExecutor(executor=dask) as ex:
            got = list(ex.map(inc, range(n), timeout=RESULT_TIMEOUT))
        check(got == expected, "wrong results")

    def loop() -> None:
        check(sorted(_waitfor_loop(dask, n, width)) == expected, "wrong results")

    def raw() -> None:
        got = client.gather(client.map(inc, range(n), pure=False))
        check(got == expected, "wrong results")

    impls = [
        Impl("floor", "fork: process_map", fork_map),
        _bare("map", n),
        Impl("dask-map", "dask: process_map(executor=DaskExecutor)", dask_map),
        Impl("dask-stream", "dask: StreamExecutor(executor=dask).map", stream),
        Impl("dask-waitfor", f"dask: waitfor loop, {width} in flight", loop),
        Impl("client", "dask: client.map + client.gather", raw),
        _bare("waitfor", n),
    ]
    return Plan(impls, detail=f"{n} x inc(x); wall time of the whole map")


# -- the run ----------------------------------------------------------------------------------


def _header(argv: Sequence[str], mode: str, cluster: str) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join(
        [
            f"Command: python -m benchmarks.bench_engines {' '.join(argv)}".rstrip(),
            f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
            f"Python: {platform.python_implementation()} {platform.python_version()} "
            f"on {platform.platform()}",
            f"CPUs: {os.cpu_count()}; load average at start: {load}",
            cluster,
            mode,
        ]
    )


def _resident_mib() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    except (OSError, ValueError, IndexError):
        return 0


def _table(rows: Sequence[Row]) -> str:
    # The harness calls its reference "floor"; here it is the fork engine.
    lines = render_table(rows).splitlines()
    lines[1] = lines[1].replace("vs floor", " vs fork")
    return "\n".join(lines)


def _run(args: argparse.Namespace, argv: Sequence[str], stack: ExitStack) -> None:
    quick = args.quick
    repeats = args.repeats if args.repeats is not None else (2 if quick else 5)
    map_repeats = args.repeats if args.repeats is not None else (2 if quick else MAP_REPEATS)
    settings = Settings(quick=quick, repeats=repeats, timeout=args.timeout)
    map_settings = Settings(quick=quick, repeats=map_repeats, timeout=args.timeout)

    import distributed

    from inparallel.backends.dask import DaskExecutor

    log("starting the LocalCluster")
    start = time.perf_counter()
    cluster = stack.enter_context(
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            worker_dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    )
    client = stack.enter_context(distributed.Client(cluster, set_as_default=False))
    dask = DaskExecutor(client)
    stack.callback(dask.shutdown, wait=True)
    client_ex = client.get_executor(pure=False)
    stack.callback(client_ex.shutdown, wait=False)
    stack.callback(log, "closing the cluster")
    check(dask.submit(identity, 1).result(timeout=RESULT_TIMEOUT) == 1, "dask is not up")
    started = time.perf_counter() - start

    cluster_line = (
        f"Cluster: distributed {distributed.__version__}, LocalCluster(n_workers=2, "
        f"threads_per_worker=1, processes=True) on 127.0.0.1: {dask.worker_slots()} worker "
        f"slots; start to first result {started:.2f} s (not timed below); "
        f"parent RSS {_resident_mib()} MiB"
    )
    mode = (
        f"Mode: {'quick' if quick else 'full'}, {repeats} repeats per implementation "
        f"({map_repeats} for engines.map), median reported"
    )
    print(_header(argv, mode, cluster_line), end="\n\n", flush=True)
    cases = (
        (
            Case(
                "engines.roundtrip",
                "Per-call round trip of a trivial call, sequential",
                lambda s: _roundtrip(s, client, dask, client_ex),
                warmup=True,
            ),
            settings,
        ),
        (
            Case("engines.map", "A map of a trivial function", lambda s: _map(s, client, dask)),
            map_settings,
        ),
    )
    rows: list[Row] = []
    legend = []
    for case, case_settings in cases:
        log(f"== {case.name}: {case.title}")
        case_rows, text = measure(case, case_settings)
        rows.extend(case_rows)
        legend.append(f"- ``{case.name}``: {text}")
    print(_table(rows), "", *legend, sep="\n", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the cluster, run both cases, print the table, close the cluster."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_engines")
    parser.add_argument("--quick", action="store_true", help="smoke mode: small sizes, 2 repeats")
    parser.add_argument(
        "--repeats",
        type=int,
        help=f"measurements per implementation (default 5, and {MAP_REPEATS} for engines.map)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds one measurement may take"
    )
    parser.add_argument("--bare", nargs=2, metavar=("WHAT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(args_list)
    if args.bare:  # a fork-only run in this fresh interpreter: print its seconds
        what, n = args.bare
        print(BARE[what](int(n)))
        return 0
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    warnings.filterwarnings(
        "ignore", r"This process \(pid=\d+\) is multi-threaded", DeprecationWarning
    )
    with ExitStack() as stack:
        _run(args, args_list, stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
