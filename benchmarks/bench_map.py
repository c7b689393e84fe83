"""Map cases of SPEC section 6: tiny items, bounded memory, first result, result types.

Every pool here has 2 workers (the machine the targets were set on has 2 cores), and every pool
is started and stopped inside the timing, a fresh one per run: ``process_map`` forks its
workers for each pass, so a pool kept warm between runs would compare different work. The one
exception is the row labelled "warm", which shows ``Pool.imap`` without its start-up.

``map-tiny-list``, ``map-tiny-gen``
    200,000 calls of `inc`, ordered, collected with ``list()``; the input is a list, or a
    generator made afresh for each run. ``Pool.imap``'s chunksize is picked in the set-up
    (before the timed rounds): each of `CHUNKSIZES` and ``n // 8`` (``Pool.map``'s own choice,
    ``n / (4 x workers)``) runs a few times, interleaved, on a fresh pool; the lowest median
    wins, and the figures are in the legend. PPE and, for the generator, mpire get the same
    chunksize; joblib runs with ``batch_size="auto"``. The SPEC targets for ``process_map``
    are held against that best ``Pool.imap``. References: the warm ``Pool.imap``,
    ``thread_map`` and a serial ``list(map())``.
``map-rss-infinite``
    The first 1,000,000 results over ``itertools.count()``, with a consumer that stalls twice
    (so whatever reads ahead of it shows); Pool.imap's and PPE's input is capped with
    ``islice`` (PPE.map submits its whole input before its first result). Reported: the peak
    RSS growth of the process that maps, in a table of its own (below).
``first-result``
    Time to the first result of a map over ``itertools.count()`` (20 maps per run, closed
    after that result, outside the timing), and how many input items had been pulled by then.
``map-big-results``
    16 calls each returning 20 MB of ``bytes``, each result verified (length, one byte per
    page) as it arrives and then dropped.
``map-results-<type>``
    300,000 results of one type each (ints, floats, str, tuples, lists, dicts, small numpy
    arrays, dataclasses), against ``Pool.map`` at the best chunksize picked in the set-up as
    for ``Pool.imap`` above; described in ``benchmarks/README.rst``.

The floor: for a list, `benchmarks._floor.run_all` with one child per worker, each computing
a contiguous share read from its inherited copy; for streamed inputs, `hand_pool` (below), two
forked workers fed pickled chunks through a pipe each and sending results through another;
for the first result, `benchmarks._floor.call`; for big results, `benchmarks._floor.run_all`,
2 children at a time (a fork per item, so later forks copy the page tables of the results the
parent already holds).

Figures that are not times. The harness reports times only (``bench_core`` has no other
metric), so ``map-rss-infinite`` and ``first-result`` print a small table of their own on
stdout when they end, before the main table, in the same layout (``Best`` is the lowest run,
the note gives the highest). The peak RSS is ``VmHWM`` from ``/proc/self/status``, reset
before the map by writing ``5`` to ``/proc/self/clear_refs`` (see proc(5)); where that reset
is refused, ``VmRSS`` sampled every 8,192 items stands in. Growth is the peak minus the
resident set just before the map. Each run of that case is a fresh interpreter
(``python -m benchmarks.bench_map KEY N PAUSE``), which times its own map: see `_rss` for
why. The items pulled are read from the ``count()`` itself, warm-up round included.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import importlib
import itertools
import multiprocessing
import os
import pickle
import selectors
import signal
import statistics
import struct
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, NoReturn

from benchmarks import _floor
from benchmarks._harness import (
    Case,
    Impl,
    Plan,
    Row,
    Settings,
    Stopwatch,
    Target,
    check,
    log,
    render_table,
)

_FORK = multiprocessing.get_context("fork")
_MIB = 1 << 20
_PAGE = 4096

WORKERS = 2
IP = "inparallel"
#: Pool.imap chunksizes tried in the set-up of the tiny-item cases (``n // 8`` is added).
CHUNKSIZES = (100, 1000, 5000)
#: Items per message of the hand-written pool (the floor for streamed inputs).
FLOOR_CHUNK = 5000
FRESH = "fresh pool per run: start and shutdown timed"


# -- work run in the workers -------------------------------------------------------------------


def inc(x: int) -> int:
    """Return ``x + 1`` (the tiny item)."""
    return x + 1


def inc_slice(items: Sequence[int], start: int, stop: int) -> list[int]:
    """Return `inc` of ``items[start:stop]``."""
    return [x + 1 for x in items[start:stop]]


def make_bytes(k: int, n: int) -> bytes:
    """Return *n* bytes of value ``65 + k % 26``."""
    return bytes([65 + k % 26]) * n


@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    """A small dataclass result (`as_point`)."""

    x: int
    y: float


def as_float(x: int) -> float:
    """Return ``x / 2``."""
    return x / 2


def as_tuple(x: int) -> tuple[int, int]:
    """Return ``(x, x)``."""
    return (x, x)


def as_list(x: int) -> list[int]:
    """Return ``[x]``."""
    return [x]


def as_dict(x: int) -> dict[str, int]:
    """Return ``{"k": x}``."""
    return {"k": x}


def as_array(x: int) -> Any:
    """Return a 4-element ``numpy.int64`` array of *x* (numpy is imported by the case)."""
    return sys.modules["numpy"].full(4, x)


def as_point(x: int) -> Point:
    """Return ``Point(x, x / 2)``."""
    return Point(x, x / 2)


def apply_range(fn: Callable[[int], Any], start: int, stop: int) -> list[Any]:
    """Return ``[fn(x) for x in range(start, stop)]`` (the floor's share of a map)."""
    return [fn(x) for x in range(start, stop)]


# -- the hand-written pool: the floor for streamed inputs --------------------------------------

_LEN = struct.Struct("<Q")


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def _read_frame(fd: int) -> Any:
    """Read one frame (blocking); return None at a clean end of the pipe."""
    chunks, want, header = [], _LEN.size, True
    while want:
        chunk = os.read(fd, min(want, _floor.CHUNK))
        if not chunk:
            check(header and want == _LEN.size, "hand pool: pipe ended inside a frame")
            return None
        chunks.append(chunk)
        want -= len(chunk)
        if not want and header:
            (want,), chunks, header = _LEN.unpack(b"".join(chunks)), [], False
    return pickle.loads(b"".join(chunks))


def _serve(fn: Callable[[Any], Any], requests: int, replies: int) -> NoReturn:
    try:
        while (batch := _read_frame(requests)) is not None:
            view = memoryview(_frame([fn(x) for x in batch]))
            while view:
                view = view[os.write(replies, view) :]
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def hand_pool(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int, chunk: int
) -> Generator[Any, None, None]:
    """Yield ``fn(x)`` for *items* in order, from *workers* forked processes.

    Each worker holds at most two chunks (one computing, one queued). One selector waits on
    the result pipes and on the request pipes that have bytes still to go: the requests are
    written without blocking, so a worker writing a big result never waits on a parent stuck
    writing to it. Closing the generator early kills the workers.
    """
    source = iter(items)
    procs: list[tuple[int, int, int]] = []  # (pid, requests write end, replies read end)
    queues: dict[int, deque[int]] = {}  # replies fd -> numbers of the chunks its worker holds
    outbox: dict[int, bytearray] = {}  # requests fd -> bytes not written yet
    done: dict[int, list[Any]] = {}
    sent = ended = 0
    sel = selectors.DefaultSelector()
    try:
        for _ in range(workers):
            req_r, req_w = os.pipe()
            rep_r, rep_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                for fd in (req_w, rep_r, *(fd for p in procs for fd in p[1:])):
                    os.close(fd)
                _serve(fn, req_r, rep_w)
            os.close(req_r)
            os.close(rep_w)
            os.set_blocking(req_w, False)
            procs.append((pid, req_w, rep_r))
            queues[rep_r], outbox[req_w] = deque(), bytearray()
            sel.register(rep_r, selectors.EVENT_READ)
        writers = {r: w for _, w, r in procs}

        def feed(r: int) -> None:
            nonlocal sent
            if batch := list(itertools.islice(source, chunk)):
                w = writers[r]
                if not outbox[w]:
                    sel.register(w, selectors.EVENT_WRITE)
                outbox[w] += _frame(batch)
                queues[r].append(sent)
                sent += 1

        for r in [*queues, *queues]:
            feed(r)
        while ended < sent:
            for key, _ in sel.select():
                fd = int(key.fd)
                if fd in outbox:  # a request pipe has room
                    del outbox[fd][: os.write(fd, outbox[fd])]
                    if not outbox[fd]:
                        sel.unregister(fd)
                    continue
                values = _read_frame(fd)
                check(values is not None, "hand pool: a worker ended early")
                done[queues[fd].popleft()] = values
                feed(fd)
            while ended in done:
                yield from done.pop(ended)
                ended += 1
    finally:
        sel.close()
        for pid, w, r in procs:
            os.close(w)  # a worker ends at the end of its requests
            os.close(r)
            if ended < sent:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


# -- helpers ----------------------------------------------------------------------------------


def _peer(name: str) -> Any:
    """Import an optional module where it is used, so that a missing one only skips its rows."""
    return importlib.import_module(name)


def _pmap(fn: Callable[..., Any], *inputs: Iterable[Any]) -> Any:
    return _peer("inparallel").process_map(fn, *inputs, num_workers=WORKERS)


def _imap(items: Iterable[int], chunksize: int) -> list[int]:
    with _FORK.Pool(WORKERS) as pool:
        return list(pool.imap(inc, items, chunksize))


def _ppe() -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(WORKERS, mp_context=_FORK)


def _joblib(items: Iterable[int]) -> list[int]:
    joblib = _peer("joblib")
    try:
        return list(joblib.Parallel(n_jobs=WORKERS)(joblib.delayed(inc)(x) for x in items))
    finally:  # stop loky's reusable workers: the next run starts its own, like every pool here
        _peer("joblib.externals.loky").get_reusable_executor().shutdown(wait=True)


def _best_chunksize(source: Callable[[], Iterable[int]], n: int, reps: int) -> tuple[int, str]:
    """Time `_imap` for each candidate chunksize; return the best and the figures in words."""
    return _fastest("Pool.imap", lambda cs: _imap(source(), cs), n, reps)


def _fastest(what: str, run: Callable[[int], object], n: int, reps: int) -> tuple[int, str]:
    """Time ``run(chunksize)`` for `CHUNKSIZES` and ``n // 8``; return the best, and in words."""
    times: dict[int, list[float]] = {cs: [] for cs in sorted({*CHUNKSIZES, max(1, n // 8)})}
    for _ in range(reps):
        for cs, got in times.items():
            with Stopwatch() as sw:
                run(cs)
            got.append(sw.elapsed)
    medians = {cs: statistics.median(t) for cs, t in times.items()}
    best = min(medians, key=medians.__getitem__)
    figures = ", ".join(f"{cs}: {m * 1e3:.0f} ms" for cs, m in medians.items())
    log(f"{what} chunksize {best} ({figures})")
    return best, f"{what} chunksize {best}, picked in set-up from {figures} (medians of {reps})"


class SideTable:
    """A figure other than a time, collected per implementation, printed when the case ends.

    It uses the harness's table: ``Median`` and ``Best`` (the lowest) of the runs, and the
    highest in the note.
    """

    def __init__(self, case: str, title: str, fmt: Callable[[float], str]) -> None:
        self.case, self.title, self.fmt = case, title, fmt
        self.values: dict[str, list[float]] = {}
        self.notes: dict[str, str] = {}

    def add(self, label: str, value: float, note: str = "") -> None:
        """Record one run's figure for *label*."""
        self.values.setdefault(label, []).append(value)
        self.notes.setdefault(label, note)

    def show(self) -> None:
        """Print the title and the table on stdout."""
        rows = [
            Row(self.case, k, self.fmt(statistics.median(v)), self.fmt(min(v)))
            for k, v in self.values.items()
        ]
        for row, values in zip(rows, self.values.values(), strict=True):
            row.note = "; ".join(
                filter(None, (f"max {self.fmt(max(values))}", self.notes[row.label]))
            )
        print(f"{self.case}: {self.title}", render_table(rows), "", sep="\n", flush=True)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for text in status:
            if text.startswith(field):
                return int(text.split()[1]) << 10
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")  # reset VmHWM to the current resident set
    except OSError:
        return False
    return True


def _mib(value: float) -> str:
    return f"{value / _MIB:+.1f} MiB"


# -- 1, 2: 200,000 tiny items -----------------------------------------------------------------


def _timed(
    key: str, label: str, produce: Callable[[], list[int]], expected: list[int], **kw: Any
) -> Impl:
    def run() -> float:
        with Stopwatch() as sw:
            got = produce()
        check(got == expected, f"{key}: wrong results")
        return sw.elapsed

    return Impl(key, label, run, **kw)


def _tiny(s: Settings, *, gen: bool) -> Plan:
    n = s.pick(200_000, 50_000)
    items = list(range(n))
    expected = [x + 1 for x in items]

    def source() -> Iterable[int]:
        return (x for x in range(n)) if gen else items

    cs, picked = _best_chunksize(source, n, s.pick(3, 2))
    step = -(-n // WORKERS)

    def floor() -> list[int]:
        if gen:
            return list(hand_pool(inc, source(), WORKERS, FLOOR_CHUNK))
        parts = _floor.run_all(
            inc_slice, ((items, k * step, (k + 1) * step) for k in range(WORKERS))
        )
        return [v for part in parts for v in part]

    def imap_warm() -> float:
        with _FORK.Pool(WORKERS) as pool:
            pool.map(inc, range(WORKERS))  # both workers are up
            with Stopwatch() as sw:
                got = list(pool.imap(inc, source(), cs))
        check(got == expected, "imap-warm: wrong results")
        return sw.elapsed

    def ppe() -> list[int]:
        with _ppe() as pool:
            return list(pool.map(inc, source(), chunksize=cs))

    def mpire() -> list[int]:
        with _peer("mpire").WorkerPool(n_jobs=WORKERS, start_method="fork") as pool:
            return pool.map(inc, source(), chunk_size=cs if gen else None)  # type: ignore[no-any-return]

    floor_label = (
        f"floor: hand pool, chunks of {FLOOR_CHUNK}" if gen else "floor: 2 children, half each"
    )
    target = Target(1.0, "imap") if gen else Target(1 / 1.5, "imap")
    impls = [
        _timed("floor", floor_label, floor, expected),
        _timed(
            IP,
            "inparallel process_map",
            lambda: list(_pmap(inc, source())),
            expected,
            requires=(IP,),
            targets=(target,),
        ),
        _timed(
            "imap",
            f"Pool(2).imap, chunksize={cs}",
            lambda: _imap(source(), cs),
            expected,
            note=FRESH,
        ),
        Impl(
            "imap-warm",
            f"Pool(2).imap warm, chunksize={cs}",
            imap_warm,
            note="pool started outside the timing",
        ),
        _timed("PPE", f"PPE(fork, 2).map, chunksize={cs}", ppe, expected, note=FRESH),
        _timed(
            "mpire",
            f"mpire WorkerPool(2).map{f', chunk_size={cs}' if gen else ''}",
            mpire,
            expected,
            requires=("mpire",),
            note=FRESH + ("" if gen else "; mpire's own chunking (n / 8)"),
        ),
        _timed(
            "joblib",
            "joblib Parallel(2), batch_size=auto",
            lambda: _joblib(source()),
            expected,
            requires=("joblib",),
            note="loky workers started and stopped inside the timing",
        ),
    ]
    if not gen:
        impls += [
            _timed(
                "thread_map",
                "inparallel thread_map(num_workers=2)",
                lambda: list(_peer("inparallel").thread_map(inc, items, num_workers=WORKERS)),
                expected,
                requires=(IP,),
                note="threads: bound by the GIL",
            ),
            _timed(
                "serial",
                "serial list(map(inc, items))",
                lambda: list(map(inc, items)),
                expected,
                note="no parallelism: the work itself",
            ),
        ]
    what = "generator" if gen else "list"
    return Plan(impls, detail=f"{n:,} x inc(x), ordered, {what} input, 2 workers; {picked}")


# -- 3, 4: maps over itertools.count() --------------------------------------------------------

Opened = tuple[Iterator[Any], Callable[[], None]]


def _open_floor(source: Iterator[int]) -> Opened:
    gen = hand_pool(inc, source, WORKERS, FLOOR_CHUNK)
    return gen, gen.close


def _open_pmap(source: Iterator[int]) -> Opened:
    it = _pmap(inc, source)
    return it, it.close


def _open_stream(source: Iterator[int], chunksize: int = 1) -> Opened:
    ex = _peer("inparallel").StreamExecutor(WORKERS)
    it = ex.map(inc, source, chunksize=chunksize)

    def close() -> None:
        it.close()
        ex.shutdown()

    return it, close


def _open_imap(source: Iterator[int], chunksize: int = 1) -> Opened:
    pool = _FORK.Pool(WORKERS)
    return pool.imap(inc, source, chunksize), pool.terminate


def _open_ppe(source: Iterator[int], chunksize: int = 1) -> Opened:
    pool = _ppe()
    return pool.map(inc, source, chunksize=chunksize), pool.shutdown


def _open_preload(source: Iterator[int]) -> Opened:
    it = _peer("inparallel").process_preload(inc(x) for x in source)
    return it, it.close


def _consume(results: Iterator[int], n: int, pause: float, hwm: bool) -> tuple[int, int]:
    """Sum the first *n* results, stalling twice; return the sum and the peak RSS.

    The peak is ``VmHWM`` when *hwm* (it was reset before the map started), else the highest
    ``VmRSS`` sampled every 8,192 items.
    """
    total, peak, stalls = 0, 0, {1, n // 2}
    for i, value in enumerate(itertools.islice(results, n), 1):
        total += value
        if not hwm and not i & 8191:
            peak = max(peak, _status_bytes("VmRSS"))
        if i in stalls:
            time.sleep(pause)  # a consumer busy elsewhere (writing a batch out): who reads ahead?
    return total, _status_bytes("VmHWM") if hwm else max(peak, _status_bytes("VmRSS"))


#: map-rss-infinite's implementations: label, opener, and whether the input is capped.
RSS_MAPS: dict[str, tuple[str, Callable[..., Opened], bool]] = {
    "floor": (f"floor: hand pool, chunks of {FLOOR_CHUNK}", _open_floor, False),
    IP: ("inparallel process_map", _open_pmap, False),
    "StreamExecutor": (
        "StreamExecutor(2).map, chunksize=5000",
        functools.partial(_open_stream, chunksize=5000),
        False,
    ),
    "imap": ("Pool(2).imap, chunksize=1000", functools.partial(_open_imap, chunksize=1000), True),
    "PPE": ("PPE(fork, 2).map, chunksize=1000", functools.partial(_open_ppe, chunksize=1000), True),
}


def rss_run(key: str, n: int, pause: float) -> tuple[float, int, bool]:
    """Run map-rss-infinite's *key* once (in a fresh interpreter, see `_rss`).

    Returns:
        The seconds the map took, its peak RSS growth in bytes, and whether the peak is VmHWM.
    """
    _, open_map, capped = RSS_MAPS[key]
    with suppress(ImportError):
        _peer("inparallel")  # imported before the baseline is taken
    base, hwm, source = _status_bytes("VmRSS"), _reset_peak(), itertools.count()
    with Stopwatch() as sw:
        results, close = open_map(itertools.islice(source, n) if capped else source)
        try:
            total, peak = _consume(results, n, pause, hwm)
        finally:
            close()
    check(total == n * (n + 1) // 2, f"{key}: wrong results")
    return sw.elapsed, peak - base, hwm


@contextmanager
def _rss(s: Settings) -> Iterator[Plan]:
    """Each run is a fresh interpreter (``python -m benchmarks.bench_map KEY N PAUSE``).

    In the benchmark process, memory a run frees stays resident (the allocators keep it), and
    a later run reuses it without growing: the growth measured would depend on what ran
    before. A fresh interpreter starts every run from the same heap; it times its own map.
    """
    n, pause = s.pick(1_000_000, 200_000), s.pick(0.5, 0.2)
    table = SideTable("map-rss-infinite", "parent peak RSS growth per run", _mib)
    capped = f"input capped at {n:,} with islice"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))),
    }

    def measured(key: str, note: str = "", requires: tuple[str, ...] = ()) -> Impl:
        label = RSS_MAPS[key][0]

        def run() -> float:
            argv = [sys.executable, "-m", "benchmarks.bench_map", key, str(n), str(pause)]
            out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            check(out.returncode == 0, f"{key}: exit {out.returncode}: {last}")
            seconds, growth, hwm = out.stdout.split()
            table.add(
                label, float(growth), note if hwm == "1" else f"{note} (VmRSS sampled)".lstrip()
            )
            return float(seconds)

        return Impl(key, label, run, requires, note)

    impls = [
        measured("floor"),
        measured(IP, requires=(IP,)),
        measured("StreamExecutor", requires=(IP,)),
        measured("imap", capped),
        measured("PPE", f"{capped}: PPE.map submits all of it first"),
    ]
    detail = (
        f"first {n:,} of inc over itertools.count(); the consumer stalls {pause} s after the"
        f" first and the middle result; one fresh interpreter per run, which times its map;"
        f" peak RSS growth printed above (every result held at once: about"
        f" {n * 36 // _MIB} MiB)"
    )
    yield Plan(impls, detail=detail)
    table.show()


@contextmanager
def _first(s: Settings) -> Iterator[Plan]:
    reps = s.pick(20, 5)
    table = SideTable("first-result", "input items pulled by the first result", "{:.0f}".format)
    after = "read right after the first result"

    def first(
        key: str, label: str, open_map: Callable[..., Opened], bound: str = "", **kw: Any
    ) -> Impl:
        def run() -> float:
            total = 0.0
            for _ in range(reps):
                source = itertools.count()
                with Stopwatch() as sw:
                    results, close = open_map(source)
                    value = next(results)
                pulled = next(source)  # count() yields 0, 1, ...: its next value is the count
                close()
                check(value == 1, f"{key}: first result {value!r} != 1")
                if bound:
                    table.add(label, pulled, f"{after}; {bound}")
                total += sw.elapsed
            return total

        return Impl(key, label, run, **kw)

    def floor(source: Iterator[int]) -> Opened:
        return iter([_floor.call(inc, next(source))]), lambda: None

    impls = [
        first("floor", "floor: fork, pipe one result", floor),
        first(
            IP,
            "inparallel process_map",
            _open_pmap,
            "bound: 1 + 4 chunks per worker (a chunk grows to at most 4096)",
            requires=(IP,),
            targets=(Target(2.0),),
        ),
        first(
            "StreamExecutor",
            "StreamExecutor(2).map",
            _open_stream,
            "bound: 1 + buffer_size (10000)",
            requires=(IP,),
            targets=(Target(2.0),),
        ),
        first(
            "preload",
            "inparallel process_preload",
            _open_preload,
            requires=(IP,),
            note="the source runs in the child, inc too",
        ),
        first(
            "imap", "Pool(2).imap", _open_imap, "no bound: its task thread reads ahead", note=FRESH
        ),
    ]
    detail = f"inc over itertools.count(), {reps} maps per run, first result only"
    yield Plan(impls, per=reps, detail=detail)
    table.show()


# -- 5: big results ---------------------------------------------------------------------------


def _big_results(s: Settings) -> Plan:
    count, n = s.pick(16, 8), s.pick(20_000_000, 10_000_000)
    keys, sizes = range(count), [n] * count

    def verify(results: Iterable[Any]) -> None:
        seen = 0
        for k, blob in enumerate(results):  # each result is checked, then dropped
            sample = bytes(memoryview(blob).cast("B")[::_PAGE])
            check(len(blob) == n and blob[-1] == 65 + k % 26, f"result {k}: wrong length or end")
            check(sample == bytes([65 + k % 26]) * len(sample), f"result {k}: wrong content")
            seen += 1
        check(seen == count, f"{seen} results, not {count}")

    def imap() -> None:
        with _FORK.Pool(WORKERS) as pool:
            verify(pool.imap(functools.partial(make_bytes, n=n), keys))

    def ppe() -> None:
        with _ppe() as pool:
            verify(pool.map(make_bytes, keys, sizes))

    impls = [
        Impl(
            "floor",
            "floor: pipe, 2 in flight",
            lambda: verify(_floor.run_all(make_bytes, ((k, n) for k in keys), WORKERS)),
        ),
        Impl(IP, "inparallel process_map", lambda: verify(_pmap(make_bytes, keys, sizes)), (IP,)),
        Impl("imap", "Pool(2).imap", imap, note=FRESH),
        Impl("PPE", "PPE(fork, 2).map", ppe, note=FRESH),
        Impl(
            "thread_map",
            "inparallel thread_map(num_workers=2)",
            lambda: verify(
                _peer("inparallel").thread_map(make_bytes, keys, sizes, num_workers=WORKERS)
            ),
            (IP,),
            note="no process boundary: the memory-copy bound",
        ),
    ]
    return Plan(impls, detail=f"{count} x {n // 1_000_000} MB bytes, verified as they arrive")


# -- 6: result types --------------------------------------------------------------------------

#: map-results-*: the function giving each result type (at module level: pools pickle it).
RESULT_TYPES: dict[str, Callable[[int], Any]] = {
    "int": inc,
    "float": as_float,
    "str": str,
    "tuple": as_tuple,
    "list": as_list,
    "dict": as_dict,
    "numpy": as_array,
    "dataclass": as_point,
}


def _results(s: Settings, *, kind: str) -> Plan:
    fn = RESULT_TYPES[kind]
    n = s.pick(100_000, 20_000) if kind == "numpy" else s.pick(300_000, 50_000)
    same: Callable[[Any], Any] = (lambda a: a.tolist()) if kind == "numpy" else (lambda v: v)
    if kind == "numpy":
        try:
            _peer("numpy")  # in the parent before any pool forks, as in a program using it
        except ImportError:
            return Plan([Impl(IP, "inparallel process_map", lambda: None, requires=("numpy",))])
    expected = [same(fn(x)) for x in range(n)]

    def timed(key: str, label: str, produce: Callable[[], Iterable[Any]], **kw: Any) -> Impl:
        def run() -> float:
            with Stopwatch() as sw:
                got = list(produce())
            check(list(map(same, got)) == expected, f"{key}: wrong results")
            return sw.elapsed

        return Impl(key, label, run, **kw)

    def pool_map(chunksize: int) -> list[Any]:
        with _FORK.Pool(WORKERS) as pool:
            return pool.map(fn, range(n), chunksize)

    cs, picked = _fastest("Pool.map", pool_map, n, s.pick(3, 1))
    step = -(-n // WORKERS)
    shares = [(fn, k * step, min(n, (k + 1) * step)) for k in range(WORKERS)]
    impls = [
        timed(
            "floor",
            "floor: 2 children, half each",
            lambda: itertools.chain.from_iterable(_floor.run_all(apply_range, shares)),
        ),
        timed(
            IP,
            "inparallel process_map",
            lambda: _pmap(fn, range(n)),
            requires=(IP,),
            targets=(Target(1.0, "map"),),
        ),
        timed("map", f"Pool(2).map, chunksize={cs}", lambda: pool_map(cs), note=FRESH),
    ]
    return Plan(impls, detail=f"{n:,} x {fn.__name__}(x), range input, 2 workers; {picked}")


CASES: tuple[Case, ...] = (
    Case(
        "map-tiny-list",
        "process_map over tiny items, list input",
        functools.partial(_tiny, gen=False),
    ),
    Case(
        "map-tiny-gen",
        "process_map over tiny items, generator input",
        functools.partial(_tiny, gen=True),
    ),
    Case("map-rss-infinite", "Parent memory while mapping over itertools.count()", _rss),
    Case("first-result", "Time to the first result over itertools.count()", _first, warmup=True),
    Case("map-big-results", "process_map with big results", _big_results),
    *(
        Case(
            f"map-results-{kind}",
            f"process_map returning {kind} results",
            functools.partial(_results, kind=kind),
        )
        for kind in RESULT_TYPES
    ),
)


if __name__ == "__main__":  # one run of map-rss-infinite, in a fresh interpreter
    seconds, growth, hwm = rss_run(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
    print(seconds, growth, int(hwm))
