"""Timing, medians, ratios and the reStructuredText table shared by every benchmark module.

A benchmark module ``benchmarks/bench_<topic>.py`` exposes ``CASES``, a sequence of `Case`.
For the current `Settings` a case builds a `Plan`: the implementations (`Impl`) that do the
same work, the floor among them. ``benchmarks.run`` measures every implementation of a case
``repeats`` times, interleaved (repeat 1 of every implementation, then repeat 2, ... with the
order rotated each round) so that load drift on a shared machine hits all of them alike, and
reports the median, the best run and the ratio of medians to the floor.

An implementation's ``run()`` does the work once. The harness times the call with
`time.perf_counter`; a ``run()`` that must keep set-up out of the measurement (a warm pool,
decorating a function) times its own region with `Stopwatch` and returns the seconds.
A ``run()`` checks its results (`check`) so that no implementation can win by skipping work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import importlib
import os
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, TypeVar

__all__ = (
    "FLOOR",
    "BenchmarkError",
    "Case",
    "Impl",
    "Limit",
    "MeasurementTimeout",
    "Plan",
    "Row",
    "Settings",
    "Stopwatch",
    "Target",
    "check",
    "log",
    "measure",
    "release_memory",
    "render_table",
)

T = TypeVar("T")

#: Key of the floor implementation: the work written by hand with os.fork + os.pipe + pickle.
FLOOR = "floor"


class BenchmarkError(Exception):
    """An implementation produced a wrong result; its timing is not reported."""


def check(condition: bool, message: str) -> None:
    """Raise `BenchmarkError` with *message* unless *condition* holds (survives ``-O``)."""
    if not condition:
        raise BenchmarkError(message)


@dataclass(frozen=True)
class Settings:
    """How hard to run: ``quick`` is a smoke mode with smaller sizes and fewer repeats.

    ``timeout`` bounds one measurement, in seconds (0: no bound): a hung implementation is
    reported as an error and skipped for the rest of the run instead of stalling it.
    """

    quick: bool = False
    repeats: int = 5
    timeout: float = 120.0

    def pick(self, full: T, quick: T) -> T:
        """Return *quick* in quick mode, else *full*."""
        return quick if self.quick else full


@dataclass(frozen=True)
class Target:
    """A SPEC target: ``median(impl) / median(ref)`` must not exceed ``max_ratio``.

    A ``max_ratio`` below 1 reads as "at least ``1 / max_ratio`` times faster than *ref*".
    """

    max_ratio: float
    ref: str = FLOOR

    def describe(self) -> str:
        """Return the target in words, e.g. ``<= 1.25x floor``."""
        if self.max_ratio >= 1:
            return f"<= {self.max_ratio:g}x {self.ref}"
        return f">= {1 / self.max_ratio:g}x faster than {self.ref}"

    def judge(self, ratio: float) -> str:
        """Return the target, the verdict and the measured figure in the target's terms."""
        verdict = "met" if ratio <= self.max_ratio else "MISSED"
        shown = f"{ratio:.2f}x" if self.max_ratio >= 1 else f"{1 / ratio:.1f}x faster"
        return f"{self.describe()}: {verdict} ({shown})"


@dataclass(frozen=True)
class Limit:
    """A SPEC target in absolute terms: the median per call must not exceed ``seconds``.

    For what no peer can be a reference for (``import inparallel`` <= 15 ms); "per call" is
    the plan's ``per`` (a plan of one job: the whole job).
    """

    seconds: float

    def describe(self) -> str:
        """Return the target in words, e.g. ``<= 15 ms``."""
        return f"<= {self.seconds * 1e3:.3g} ms"

    def judge(self, seconds: float) -> str:
        """Return the target, the verdict and the measured seconds per call, in milliseconds."""
        verdict = "met" if seconds <= self.seconds else "MISSED"
        return f"{self.describe()}: {verdict} ({seconds * 1e3:.3g} ms)"


@dataclass(frozen=True)
class Impl:
    """One implementation of a case's work.

    Attributes:
        key: Short id used by targets (``floor``, ``inparallel``, ``pebble``, ``PPE``...).
        label: What the table shows.
        run: Does the work once; returns None (the harness times the call) or the seconds of
            its own timed region.
        requires: Modules that must import, else the row says "skipped" (never a crash).
        note: Shown in the table, e.g. "pool created outside the timing".
        targets: SPEC targets this implementation is held to: ratios to another row's median
            (`Target`) or absolute limits (`Limit`).
    """

    key: str
    label: str
    run: Callable[[], float | None]
    requires: tuple[str, ...] = ()
    note: str = ""
    targets: tuple[Target | Limit, ...] = ()


@dataclass(frozen=True)
class Plan:
    """A case's implementations for one run; ``per`` > 1 reports milliseconds per call."""

    impls: Sequence[Impl]
    per: int = 1
    detail: str = ""


@dataclass(frozen=True)
class Case:
    """A named benchmark; ``build`` returns a `Plan` or a context manager yielding one.

    Use the context-manager form when the case needs a fixture (a big buffer held in the
    parent): the buffer is created on entry and released on exit, before the next case.
    """

    name: str
    title: str
    build: Callable[[Settings], Plan | AbstractContextManager[Plan]]
    warmup: bool = False


@dataclass
class Row:
    """One line of the results table."""

    case: str
    label: str
    median: str = "-"
    best: str = "-"
    ratio: str = "-"
    target: str = ""
    note: str = ""


class Stopwatch:
    """Context manager timing its body with `time.perf_counter`; read ``elapsed`` after."""

    def __init__(self) -> None:
        self.elapsed = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.elapsed = time.perf_counter() - self._start


@dataclass
class _Result:
    impl: Impl
    times: list[float] = field(default_factory=list)
    kept: int = 0  # most bytes one run left resident in the parent
    skipped: str = ""
    error: str = ""


class MeasurementTimeout(Exception):
    """One measurement ran past ``Settings.timeout``."""


#: Keys of implementations that hung in this run: whatever state they left behind (a dead
#: helper thread, children in flight) would hang their later cases too, so those are skipped.
_HUNG: set[str] = set()


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise `MeasurementTimeout` in the main thread once *seconds* have passed.

    SIGALRM interrupts the blocking waits of the main thread (lock and condition waits,
    ``select``); interval timers are not inherited by forked children.
    """
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if seconds <= 0 or not usable:
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise MeasurementTimeout(f"no result after {seconds:g} s (hung?)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _missing(impl: Impl) -> str:
    if impl.key in _HUNG:
        return f"skipped: {impl.key} hung earlier in this run"
    for module in impl.requires:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure means "not available here"
            return f"skipped: {module} not importable ({type(exc).__name__})"
    return ""


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the kernel.

    Fork time grows with the parent's mapped memory, so freed memory that the C allocator
    keeps after a big run would slow every later fork. ``malloc_trim`` is glibc's; elsewhere
    only the collection happens.
    """
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


def _resident() -> int:
    """Return this process's resident set in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

#: A run that leaves the parent this much bigger (after collection) is flagged in the table:
#: memory kept by the parent makes every later fork slower, so it distorts the later figures.
KEPT_WARNING = 64 << 20


def _time_once(impl: Impl, settings: Settings) -> tuple[float, int]:
    """Run *impl* once; return its seconds and the bytes it left resident in the parent."""
    release_memory()
    before = _resident()
    with _deadline(settings.timeout):
        start = time.perf_counter()
        own = impl.run()
        elapsed = time.perf_counter() - start
    release_memory()
    return (elapsed if own is None else own), _resident() - before


def _fmt_time(seconds: float, plan: Plan) -> str:
    value, unit = (seconds / plan.per * 1e3, "ms") if plan.per > 1 else (seconds, "s")
    if value >= 100:
        return f"{value:.0f} {unit}"
    if value >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.3g} {unit}"


def log(message: str) -> None:
    """Print a progress line on stderr (the table goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def _run_plan(case: Case, plan: Plan, settings: Settings) -> list[_Result]:
    results = [_Result(impl, skipped=_missing(impl)) for impl in plan.impls]
    live = [r for r in results if not r.skipped]
    rounds = [*(["warm-up"] if case.warmup else []), *range(settings.repeats)]
    for rep in rounds:
        active = [r for r in live if not r.error]
        shift = rep % len(active) if active and isinstance(rep, int) else 0
        for res in active[shift:] + active[:shift]:
            try:
                seconds, kept = _time_once(res.impl, settings)
            except Exception as exc:
                res.error = traceback.format_exc(limit=-1).strip().splitlines()[-1]
                log(f"[{case.name}] {res.impl.label}: {res.error}")
                if isinstance(exc, MeasurementTimeout):
                    _HUNG.add(res.impl.key)
                continue
            if not isinstance(rep, int):
                continue
            res.times.append(seconds)
            res.kept = max(res.kept, kept)
            log(
                f"[{case.name}] {res.impl.label}: {rep + 1}/{settings.repeats} "
                f"{_fmt_time(seconds, plan)}"
            )
    return results


def _rows(case: Case, plan: Plan, results: list[_Result]) -> list[Row]:
    medians = {r.impl.key: statistics.median(r.times) for r in results if r.times and not r.error}
    floor = medians.get(FLOOR)
    rows = []
    for res in results:
        impl = res.impl
        row = Row(case.name, impl.label, note=res.skipped or impl.note)
        if res.kept >= KEPT_WARNING:
            kept = f"parent kept +{res.kept >> 20} MiB after a run"
            row.note = f"{row.note}; {kept}" if row.note else kept
        if res.error:
            row.note = f"error: {res.error}"
        elif impl.key in medians:
            median = medians[impl.key]
            row.median = _fmt_time(median, plan)
            row.best = _fmt_time(min(res.times), plan)
            if floor:
                row.ratio = f"{median / floor:.2f}x"
            verdicts = []
            for target in impl.targets:
                if isinstance(target, Limit):
                    verdicts.append(target.judge(median / plan.per))
                    continue
                ref = medians.get(target.ref)
                verdicts.append(
                    target.judge(median / ref)
                    if ref
                    else f"{target.describe()}: no {target.ref} figure"
                )
            row.target = "; ".join(verdicts)
        rows.append(row)
    return rows


def _measure(case: Case, settings: Settings) -> tuple[list[Row], str]:
    built = case.build(settings)
    if isinstance(built, Plan):
        plan = built
        results = _run_plan(case, plan, settings)
    else:
        with built as plan:
            results = _run_plan(case, plan, settings)
    legend = f"{case.title} ({plan.detail})" if plan.detail else case.title
    return _rows(case, plan, results), legend


def measure(case: Case, settings: Settings) -> tuple[list[Row], str]:
    """Run one case; return its table rows and its one-line description for the legend.

    The case's plan (and every buffer its closures hold) is released before this returns.
    """
    try:
        rows, legend = _measure(case, settings)
    except Exception:
        # A broken case must not take the whole run down; report it as one row.
        error = traceback.format_exc(limit=-1).strip().splitlines()[-1]
        log(f"[{case.name}] failed: {error}")
        rows, legend = [Row(case.name, "-", note=f"case failed: {error}")], case.title
    release_memory()
    return rows, legend


HEADERS = ("Case", "Implementation", "Median", "Best", "vs floor", "Target", "Note")
_RIGHT = {2, 3, 4}


def render_table(rows: Sequence[Row]) -> str:
    """Render *rows* as a reStructuredText simple table."""
    cells = [[r.case, r.label, r.median, r.best, r.ratio, r.target, r.note] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(HEADERS)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if i in _RIGHT else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("=" * w for w in widths)
    return "\n".join([rule, line(HEADERS), rule, *(line(c) for c in cells), rule])
