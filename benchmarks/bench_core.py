"""Core cases of SPEC section 6: fork-per-call latency, throughput, big data in and out, sleepers.

Every case runs the same work through the hand-written floor (`benchmarks._floor`), inparallel
and its peers. Work functions live at module level so that ProcessPoolExecutor can pickle them
by name; peers are imported inside the implementations, so a missing peer only skips its row.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import multiprocessing
import random
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from benchmarks import _floor
from benchmarks._harness import Case, Impl, Plan, Settings, Stopwatch, Target, check

_FORK = multiprocessing.get_context("fork")
_MIB = 1 << 20
_PAGE = 4096

IP = "inparallel"
IP_LABEL = "inparallel @task"
FLOOR_LABEL = "floor: fork+pipe+pickle"
PEBBLE_LABEL = "pebble concurrent.process"
WARM_PPE = "warm pool of {}, created outside the timing"


# -- work run in the children ------------------------------------------------------------------


def identity(x: int) -> int:
    """Return *x* (the trivial task)."""
    return x


def sleeper(seconds: float, i: int) -> int:
    """Sleep, then return *i*."""
    time.sleep(seconds)
    return i


def slice_crc(data: Any, k: int, parts: int) -> int:
    """Return the CRC-32 of the *k*-th of *parts* slices of the buffer *data*."""
    view = memoryview(data).cast("B")
    step = len(view) // parts
    return zlib.crc32(view[k * step : (k + 1) * step])


def shared_slice_crc(data: Any, k: int, parts: int) -> int:
    """`slice_crc` with mpire's argument order (shared object first)."""
    return slice_crc(data, k, parts)


def make_bytes(k: int, n: int) -> bytes:
    """Return *n* bytes of value ``65 + k``."""
    return bytes([65 + k]) * n


def make_array(k: int, n: int) -> Any:
    """Return a numpy uint8 array of *n* elements of value ``65 + k``."""
    np = _peer("numpy")
    return np.full(n, 65 + k, dtype=np.uint8)


# -- peer adapters ----------------------------------------------------------------------------


def _peer(name: str) -> Any:
    """Import an optional module where it is used, so that a missing one only skips its rows."""
    return importlib.import_module(name)


def _ip(fn: Callable[..., Any]) -> Callable[..., cf.Future[Any]]:
    return _peer("inparallel").task(fn)  # type: ignore[no-any-return]


def _waitfor(active: list[cf.Future[Any]], factor: int | None = None) -> Iterator[Any]:
    return _peer("inparallel").waitfor(active, concurrency_factor=factor)  # type: ignore[no-any-return]


def _pebble(fn: Callable[..., Any]) -> Callable[..., cf.Future[Any]]:
    return _peer("pebble.concurrent").process(mp_context=_FORK)(fn)  # type: ignore[no-any-return]


def _warm_ppe(workers: int) -> cf.ProcessPoolExecutor:
    """Return a fork-context pool whose *workers* processes are already running."""
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=_FORK)
    for fut in [pool.submit(sleeper, 0.05, i) for i in range(workers)]:
        fut.result()
    return pool


def _in_flight(fn: Callable[..., cf.Future[Any]], n: int, width: int) -> list[Any]:
    """Call ``fn(i)`` for i < n keeping *width* futures in flight; results in completion order."""
    items = iter(range(n))
    live: set[cf.Future[Any]] = set()
    got: list[Any] = []
    while True:
        while len(live) < width and (i := next(items, None)) is not None:
            live.add(fn(i))
        if not live:
            return got
        done, live = cf.wait(live, return_when=cf.FIRST_COMPLETED)
        got.extend(f.result() for f in done)


# -- 1, 2: sequential latency -----------------------------------------------------------------


def _latency_impls(n: int, *, with_ppe: bool) -> list[Impl]:
    expected = list(range(n))

    def floor() -> None:
        check([_floor.call(identity, i) for i in range(n)] == expected, "floor: wrong results")

    def inparallel() -> float:
        f = _ip(identity)
        with Stopwatch() as sw:
            got = [f(i).result() for i in range(n)]
        check(got == expected, "inparallel: wrong results")
        return sw.elapsed

    def pebble() -> float:
        f = _pebble(identity)
        with Stopwatch() as sw:
            got = [f(i).result() for i in range(n)]
        check(got == expected, "pebble: wrong results")
        return sw.elapsed

    def ppe() -> float:
        with _warm_ppe(2) as pool, Stopwatch() as sw:
            got = [pool.submit(identity, i).result() for i in range(n)]
        check(got == expected, "PPE: wrong results")
        return sw.elapsed

    impls = [
        Impl("floor", FLOOR_LABEL, floor),
        Impl(IP, IP_LABEL, inparallel, (IP,), targets=(Target(1.25),)),
        Impl("pebble", PEBBLE_LABEL, pebble, ("pebble",)),
    ]
    if with_ppe:
        impls.append(Impl("PPE", "PPE(fork) submit().result()", ppe, note=WARM_PPE.format(2)))
    return impls


def _latency(s: Settings) -> Plan:
    n = s.pick(200, 40)
    return Plan(_latency_impls(n, with_ppe=True), per=n, detail=f"N={n} sequential calls")


@contextmanager
def _latency_resident(s: Settings) -> Iterator[Plan]:
    n, size = s.pick(200, 30), 256 * _MIB
    ballast = bytearray(size)
    ballast[::_PAGE] = b"\x01" * (size // _PAGE)  # touch every page: resident, not just mapped
    yield Plan(_latency_impls(n, with_ppe=False), per=n, detail=f"N={n}, 256 MiB touched")
    del ballast


# -- 3: throughput at concurrency 2 -----------------------------------------------------------


def _throughput(s: Settings) -> Plan:
    n = s.pick(2000, 200)
    expected = list(range(n))

    def floor() -> None:
        check(_floor.run_all(identity, ((i,) for i in range(n)), 2) == expected, "floor: wrong")

    def inparallel() -> float:
        f, items = _ip(identity), iter(range(n))
        active: list[cf.Future[Any]] = []
        got: list[int] = []
        with Stopwatch() as sw:
            for fut in _waitfor(active, 2):
                if fut is not None:
                    got.append(fut.result())
                elif (i := next(items, None)) is not None:
                    active.append(f(i))
        check(sorted(got) == expected, "inparallel: wrong results")
        return sw.elapsed

    def pebble() -> float:
        f = _pebble(identity)
        with Stopwatch() as sw:
            got = _in_flight(f, n, 2)
        check(sorted(got) == expected, "pebble: wrong results")
        return sw.elapsed

    def ppe() -> float:
        with _warm_ppe(2) as pool, Stopwatch() as sw:
            futures = [pool.submit(identity, i) for i in range(n)]
            got = [f.result() for f in cf.as_completed(futures)]
        check(sorted(got) == expected, "PPE: wrong results")
        return sw.elapsed

    impls = [
        Impl("floor", "floor: 2 in flight, selector", floor),
        Impl(
            IP,
            "inparallel waitfor(concurrency_factor=2)",
            inparallel,
            (IP,),
            targets=(Target(1.3),),  # issue 13: <= 1.3x the floor
        ),
        Impl("pebble", "pebble, 2 in flight", pebble, ("pebble",)),
        Impl("PPE", "PPE(fork, 2) submit all + as_completed", ppe, note=WARM_PPE.format(2)),
    ]
    return Plan(impls, per=n, detail=f"{n} trivial tasks, concurrency 2")


# -- 4: a big input read by 8 tasks -----------------------------------------------------------


def _random_buffer(n: int) -> Any:
    try:
        np = _peer("numpy")
    except ImportError:
        return random.Random(0).randbytes(n)
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)


@contextmanager
def _big_input(s: Settings) -> Iterator[Plan]:
    n, parts = s.pick(200_000_000, 50_000_000), 8
    data = _random_buffer(n)
    kind = type(data).__name__
    expected = [slice_crc(data, k, parts) for k in range(parts)]

    def read(k: int) -> int:
        return slice_crc(data, k, parts)  # *data* reaches the child by fork, not by pickle

    def floor() -> None:
        check(_floor.run_all(read, ((k,) for k in range(parts))) == expected, "floor: wrong")

    def inparallel() -> float:
        f = _ip(read)
        with Stopwatch() as sw:
            got = [fut.result() for fut in [f(k) for k in range(parts)]]
        check(got == expected, "inparallel: wrong results")
        return sw.elapsed

    def ppe() -> float:
        with _warm_ppe(2) as pool, Stopwatch() as sw:
            got = list(pool.map(slice_crc, [data] * parts, range(parts), [parts] * parts))
        check(got == expected, "PPE: wrong results")
        return sw.elapsed

    def mpire() -> None:
        args = [(k, parts) for k in range(parts)]
        with _peer("mpire").WorkerPool(n_jobs=2, shared_objects=data, start_method="fork") as pool:
            got = pool.map(shared_slice_crc, args, chunk_size=1)
        check(got == expected, "mpire: wrong results")

    def joblib() -> float:
        joblib = _peer("joblib")
        delayed = joblib.delayed
        with joblib.Parallel(n_jobs=2) as par:
            par(delayed(identity)(i) for i in range(2))  # start the loky workers untimed
            with Stopwatch() as sw:
                got = par(delayed(slice_crc)(data, k, parts) for k in range(parts))
        # Stop loky's reusable workers and threads so that they do not linger into later cases.
        _peer("joblib.externals.loky").get_reusable_executor().shutdown(wait=True)
        check(got == expected, "joblib: wrong results")
        return sw.elapsed

    impls = [
        Impl("floor", "floor: fork inherits, 8 in flight", floor),
        Impl(
            IP,
            "inparallel @task, 8 in flight",
            inparallel,
            (IP,),
            targets=(Target(1.3), Target(1 / 25, "PPE")),
        ),
        Impl("PPE", "PPE(fork, 2) map, array pickled", ppe, note=WARM_PPE.format(2)),
        Impl(
            "mpire",
            "mpire shared_objects (fork)",
            mpire,
            ("mpire",),
            note="pool start inside the timing: it is how the array gets there",
        ),
        Impl(
            "joblib",
            "joblib loky (auto memmap)",
            joblib,
            ("joblib",),
            note="workers started outside the timing; array dumped to a memmap per call",
        ),
    ]
    # The closures hold *data*; it is released with the plan, when the case is over.
    yield Plan(impls, detail=f"{n // 1_000_000} MB {kind}, 8 tasks each CRC a slice")


# -- 5: four big results ----------------------------------------------------------------------


def _check_blob(blob: Any, k: int, n: int) -> None:
    # One byte per page: cheap, yet every page of a lazily mapped result must really arrive.
    sample = bytes(memoryview(blob).cast("B")[::_PAGE])
    check(len(blob) == n, f"result {k}: length {len(blob)} != {n}")
    check(sample == bytes([65 + k]) * len(sample), f"result {k}: wrong content")
    check(blob[-1] == 65 + k, f"result {k}: wrong last byte")


def _results_plan(make: Callable[[int, int], Any], n: int, what: str, req: tuple[str, ...]) -> Plan:
    count = 4

    def verify(got: Sequence[Any]) -> None:
        check(len(got) == count, "wrong number of results")
        for k, blob in enumerate(got):
            _check_blob(blob, k, n)

    # Each implementation checks its results inside the timing: using a result is part of
    # getting it (a memory-mapped result pays its page faults there). Freeing them is not timed.
    def floor() -> float:
        with Stopwatch() as sw:
            got = _floor.run_all(make, ((k, n) for k in range(count)))
            verify(got)
        return sw.elapsed

    def inparallel() -> float:
        f = _ip(make)
        with Stopwatch() as sw:
            got = [fut.result() for fut in [f(k, n) for k in range(count)]]
            verify(got)
        return sw.elapsed

    def ppe() -> float:
        with _warm_ppe(count) as pool, Stopwatch() as sw:
            got = list(pool.map(make, range(count), [n] * count))
            verify(got)
        return sw.elapsed

    def threads() -> float:
        with cf.ThreadPoolExecutor(count) as pool, Stopwatch() as sw:
            got = list(pool.map(make, range(count), [n] * count))
            verify(got)
        return sw.elapsed

    impls = [
        Impl("floor", "floor: pipe, 4 in flight", floor, req),
        Impl(
            IP,
            "inparallel @task, 4 in flight",
            inparallel,
            (*req, IP),
            targets=(Target(0.4, "PPE"),),
        ),
        Impl("PPE", "PPE(fork, 4) map", ppe, req, note=WARM_PPE.format(count)),
        Impl(
            "threads",
            "threads (ThreadPoolExecutor, 4)",
            threads,
            req,
            note="no process boundary: the memory-copy bound",
        ),
    ]
    return Plan(impls, detail=f"4 x {n // 1_000_000} MB {what}, verified")


def _results_bytes(s: Settings) -> Plan:
    return _results_plan(make_bytes, s.pick(100_000_000, 20_000_000), "bytes", ())


def _results_numpy(s: Settings) -> Plan:
    return _results_plan(make_array, s.pick(100_000_000, 20_000_000), "numpy uint8", ("numpy",))


# -- 6: many sleepers in flight ---------------------------------------------------------------


def _sleepers(s: Settings) -> Plan:
    n, seconds = s.pick(200, 50), s.pick(0.5, 0.2)
    expected = list(range(n))

    def floor() -> None:
        got = _floor.run_all(sleeper, ((seconds, i) for i in range(n)))
        check(got == expected, "floor: wrong results")

    def inparallel() -> None:
        f = _ip(sleeper)
        active = [f(seconds, i) for i in range(n)]
        got = [fut.result() for fut in _waitfor(active)]
        check(sorted(got) == expected, "inparallel: wrong results")

    def ppe() -> None:
        with cf.ProcessPoolExecutor(max_workers=n, mp_context=_FORK) as pool:
            futures = [pool.submit(sleeper, seconds, i) for i in range(n)]
            got = [fut.result() for fut in cf.as_completed(futures)]
        check(sorted(got) == expected, "PPE: wrong results")

    def pebble() -> None:
        f = _pebble(sleeper)
        futures = [f(seconds, i) for i in range(n)]
        got = [fut.result() for fut in cf.as_completed(futures)]
        check(sorted(got) == expected, "pebble: wrong results")

    impls = [
        Impl("floor", "floor: fork all, selector, waitpid", floor),
        Impl(IP, "inparallel: calls, then waitfor()", inparallel, (IP,), targets=(Target(1.15),)),
        Impl(
            "PPE",
            f"PPE(fork, max_workers={n})",
            ppe,
            note="pool start and shutdown inside the timing",
        ),
        Impl("pebble", PEBBLE_LABEL, pebble, ("pebble",)),
    ]
    return Plan(impls, detail=f"{n} tasks sleeping {seconds} s, all in flight; wall time")


CASES: tuple[Case, ...] = (
    Case("core.latency", "Per-call latency, trivial task, sequential", _latency, warmup=True),
    Case(
        "core.latency_256M",
        "Per-call latency with 256 MiB resident in the parent",
        _latency_resident,
    ),
    Case("core.throughput", "Throughput of trivial tasks at concurrency 2", _throughput),
    Case("core.big_input", "Big array in the parent read by 8 tasks", _big_input),
    Case("core.results_bytes", "Four big results (bytes)", _results_bytes),
    Case("core.results_numpy", "Four big results (numpy)", _results_numpy),
    Case("core.sleepers", "Many sleeping tasks in flight at once", _sleepers),
)
