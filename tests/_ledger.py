"""The ledger harness: thousands of tasks under random faults, each accounted for exactly once.

Run it from the repository root; a failure found by the test suite replays with the same seed::

    python -m tests._ledger N CONC SEED [--stall SECONDS] [--storm]

Every input id ``0..N-1`` gets a plan drawn from ``random.Random(SEED)``: what the task does in
its child (return its id, raise, kill itself, segfault, ``os._exit``, ``sys.exit``, sleep, return
a few MiB, return or raise something unpicklable, overrun its ``timeout=``, print tagged lines)
and whether the harness strikes it from outside while it runs (``kill()`` or ``cancel()``, a few
loop iterations after the call). All tasks go through ``waitfor(in_flight, CONC)``::

    plan per id --> @task call --> in_flight --> waitfor --> yielded future --> classify
                        |                                                  ^
                        +-- done-callback (supervisor thread): count, snapshot state

With ``--storm``, a thread sends SIGINT to the main thread every few milliseconds, and each one
that lands while a call is being made raises ``KeyboardInterrupt`` there (the others are
dropped, so that the harness's own bookkeeping is never interrupted). An interrupted call either
started nothing, and the id is called again, or carries its started future as ``exc.future``;
the ledger below then proves that no id ran twice and none was lost.

The harness then checks the ledger (research notes, section 6.1):

* every id was called once, its done-callback ran exactly once, waitfor yielded it exactly once,
  and the state seen by the callback is the state the loop later saw;
* its outcome is one its plan allows (an id struck by a ``kill()`` that was delivered may also
  end as ``WorkerDied(-9)``; one whose ``cancel()`` returned True must end cancelled), values
  equal what the task returned, and ``exitcode``/``rusage`` were set before it was marked done;
* afterwards no child, fd or thread is left, the supervisor's counters add up, and nothing reached
  ``threading.excepthook``, ``sys.unraisablehook`` or the ``concurrent.futures`` logger.

Stdout is the part only an outside observer can audit, because lost or duplicated output is
the point: the parent prints ``done:<id>`` for each yielded id (left in its buffer, so a fork that
copied it would duplicate it) and every ``spam`` task prints `SPAM_LINES` lines
``spam:<id>:<j>``. The last stdout line is a JSON summary naming the ids whose lines must all
appear once (`audit_hint`); tests/test_ledger.py counts them. The process exits 0 when the
ledger holds, 1 otherwise, and then prints the first failing ids to stderr as well.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import faulthandler
import functools
import heapq
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from types import FrameType
from typing import Any

from inparallel import RemoteError, ResultNotPicklable, TaskTimeout, WorkerDied, task, waitfor
from inparallel._core import _supervisor

from . import _faults
from ._timing import BOUND, PATIENCE

#: Relative weights of the in-task behaviours.
WEIGHTS = {
    "ok": 30,
    "slow": 10,
    "spam": 8,
    "crash": 8,
    "sigkill": 6,
    "segv": 6,
    "exit": 6,
    "sysexit": 6,
    "unpicklable_result": 5,
    "unpicklable_error": 5,
    "timeout": 3,
    "big": 1,
}
KILL_RATE = 0.03  # share of ids the harness SIGKILLs through fut.kill()
CANCEL_RATE = 0.02  # share of ids the harness cancel()s
SPAM_LINES = 10  # lines per spam task: about 200 bytes, one atomic pipe write when flushed
TIMEOUT = 0.05  # timeout= of the "timeout" tasks, which sleep far longer
BIG_SIZES = (3 << 19, 3 << 20)  # 1.5-3 MiB: above the shared-memory threshold of the wire
MAX_REPORTED = 20  # failing ids listed in the summary


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one id does in its child, and what the harness does to it from outside."""

    kind: str
    arg: int = 0
    chaos: str | None = None  # "kill", "cancel" or None
    delay: int = 0  # loop iterations between the call and the strike

    def expected(self) -> frozenset[str]:
        """Return the outcome labels (see `classify`) this plan allows without chaos."""
        label = {
            "crash": "ValueError",
            "sigkill": "died:-9",
            "segv": "died:-11",
            "exit": f"died:{self.arg}",
            "sysexit": f"SystemExit:{self.arg}",
            "unpicklable_result": "ResultNotPicklable",
            "unpicklable_error": "RemoteError",
            "timeout": "TaskTimeout",
        }.get(self.kind, "value")
        return frozenset({label})


def make_plans(n: int, seed: int, concurrency: int) -> list[Plan]:
    """Draw every id's plan from one seeded RNG, so a seed replays the same run."""
    rng = random.Random(seed)
    kinds = list(WEIGHTS)
    weights = list(WEIGHTS.values())
    plans = []
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0]
        arg = 0
        if kind == "slow":
            arg = rng.randint(1, 10)  # milliseconds
        elif kind in ("exit", "sysexit"):
            arg = rng.randint(0, 5)
        elif kind == "big":
            arg = rng.randrange(*BIG_SIZES, 8)
        roll = rng.random()
        chaos = "kill" if roll < KILL_RATE else "cancel" if roll < KILL_RATE + CANCEL_RATE else None
        delay = rng.randint(0, 2 * concurrency) if chaos else 0
        plans.append(Plan(kind, arg, chaos, delay))
    return plans


def big_payload(i: int, size: int) -> bytes:
    """Return the deterministic ``size``-byte payload of id ``i`` (its id, repeated)."""
    return i.to_bytes(8, "little") * (size // 8)


# -- the tasks (they run in the children) ----------------------------------------------------------


@task
def work(i: int, kind: str, arg: int) -> object:
    """Behave as planned for id ``i``; return ``i`` unless the plan says otherwise."""
    if kind == "slow":
        time.sleep(arg / 1000)  # the planned fault: a task that takes a few milliseconds
    elif kind == "spam":
        for j in range(SPAM_LINES):
            print(f"spam:{i}:{j}")
    elif kind == "big":
        return (i, big_payload(i, arg))
    elif kind == "crash":
        raise ValueError(f"boom {i}")
    elif kind == "sigkill":
        _faults.kill_self()
    elif kind == "segv":
        _faults.segfault()
    elif kind == "exit":
        os._exit(arg)
    elif kind == "sysexit":
        sys.exit(arg)
    elif kind == "unpicklable_result":
        return threading.Lock()
    elif kind == "unpicklable_error":
        raise _faults.UnpicklableError(f"locked {i}")
    return i


@task(timeout=TIMEOUT)
def overdue(i: int) -> int:
    """Sleep far past the deadline: the supervisor must kill it."""
    time.sleep(30)  # the planned fault: a task that overruns its timeout
    return i


def call(i: int, plan: Plan) -> Future[Any]:
    """Start id ``i`` as planned."""
    if plan.kind == "timeout":
        return overdue(i)
    return work(i, plan.kind, plan.arg)


class Storm:
    """SIGINT at random moments; a ``KeyboardInterrupt`` only inside `call_through`."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.calling = False
        self.sent = self.landed = self.retried = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-storm")

    def _run(self) -> None:
        main = threading.main_thread().ident
        assert main is not None
        while not self._stop.wait(self.random.random() * 0.003):
            signal.pthread_kill(main, signal.SIGINT)
            self.sent += 1

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.calling:
            self.landed += 1
            raise KeyboardInterrupt

    def call_through(self, i: int, plan: Plan) -> Future[Any]:
        """Call id ``i`` until it has started: exactly once, whatever the interrupts."""
        while True:
            try:
                self.calling = True
                return call(i, plan)
            except KeyboardInterrupt as exc:
                started = getattr(exc, "future", None)
                if started is not None:
                    return started  # type: ignore[no-any-return]
                self.retried += 1  # it started nothing: call it again
            finally:
                self.calling = False

    def __enter__(self) -> Storm:
        signal.signal(signal.SIGINT, self._on_sigint)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(BOUND)
        signal.signal(signal.SIGINT, signal.default_int_handler)


# -- classification --------------------------------------------------------------------------------


def _frames(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


def _exception_label(i: int, fut: Any, exc: BaseException, problems: list[str]) -> str:
    """Return the label of a failed future, adding to ``problems`` what is wrong in its details."""
    if isinstance(exc, WorkerDied):
        if exc.pid != fut.pid:
            problems.append(f"WorkerDied.pid {exc.pid} != future pid {fut.pid}")
        if exc.exitcode != fut.exitcode:
            problems.append(f"WorkerDied.exitcode {exc.exitcode} != future {fut.exitcode}")
        if exc.exitcode is not None and exc.exitcode < 0:
            name = signal.Signals(-exc.exitcode).name
            if exc.signal != -exc.exitcode or name not in str(exc):
                problems.append(f"WorkerDied signal {exc.signal} / message {str(exc)!r}")
        elif exc.signal is not None:
            problems.append(f"WorkerDied.signal {exc.signal} for exit code {exc.exitcode}")
        return f"died:{exc.exitcode}"
    if isinstance(exc, TaskTimeout):
        if exc.pid != fut.pid or exc.timeout != TIMEOUT or not isinstance(exc, TimeoutError):
            problems.append(f"TaskTimeout details: pid={exc.pid} timeout={exc.timeout}")
        return "TaskTimeout"
    if isinstance(exc, ResultNotPicklable):
        if not isinstance(exc, TypeError) or exc.__cause__ is None or "lock" not in str(exc):
            problems.append(f"ResultNotPicklable details: {exc!r} cause={exc.__cause__!r}")
        return "ResultNotPicklable"
    if isinstance(exc, RemoteError):
        if not exc.type_name.endswith("UnpicklableError"):
            problems.append(f"RemoteError {exc.type_name}: {exc.message!r:.200} ({exc.reason})")
            return f"RemoteError:{exc.type_name}"
        if exc.message != f"locked {i}" or "in work" not in exc.traceback_text:
            problems.append(f"RemoteError details: {exc.message!r} {exc.traceback_text!r:.200}")
        return "RemoteError"
    if isinstance(exc, SystemExit):
        return f"SystemExit:{exc.code}"
    if type(exc) is ValueError:
        if str(exc) != f"boom {i}" or "work" not in _frames(exc):
            problems.append(f"ValueError details: {exc!r}, child frames {_frames(exc)}")
        return "ValueError"
    problems.append(f"unexpected exception {exc!r:.200}")
    return type(exc).__qualname__


def classify(i: int, plan: Plan, fut: Any) -> tuple[str, list[str]]:
    """Return the outcome label of a finished future and what is wrong with its details."""
    problems: list[str] = []
    if fut.cancelled():
        return "cancelled", problems
    exc = fut.exception(timeout=0)
    if exc is not None:
        return _exception_label(i, fut, exc, problems), problems
    value = fut.result(timeout=0)
    want = (i, big_payload(i, plan.arg)) if plan.kind == "big" else i
    if value != want:
        problems.append(f"value {value!r:.80} != {want!r:.80}")
    return "value", problems


def snapshot(fut: Any) -> tuple[str, int | None, bool]:
    """Return (state, exitcode, has rusage) of a finished future, as its done-callback sees it."""
    if fut.cancelled():
        return ("cancelled", fut.exitcode, fut.rusage is not None)
    exc = fut.exception(timeout=0)
    state = "value" if exc is None else type(exc).__qualname__
    return (state, fut.exitcode, fut.rusage is not None)


# -- the ledger ------------------------------------------------------------------------------------


class Ledger:
    """Per-id accounting: callbacks (any thread), yields and outcomes (the loop's thread)."""

    def __init__(self, plans: list[Plan]) -> None:
        self.plans = plans
        n = len(plans)
        self._lock = threading.Lock()
        self.calls = [0] * n
        self.callbacks = [0] * n
        self.snapshots: list[tuple[str, int | None, bool] | None] = [None] * n
        self.yields = [0] * n
        self.outcomes: list[str | None] = [None] * n
        self.strikes: dict[int, tuple[str, bool]] = {}  # id -> (action, what it returned)
        self.failures: dict[int, list[str]] = collections.defaultdict(list)

    def on_done(self, i: int, fut: Any) -> None:
        """Done-callback of id ``i``; runs on the supervisor thread (or in cancel())."""
        state = snapshot(fut)
        with self._lock:
            self.callbacks[i] += 1
            self.snapshots[i] = state

    def yielded(self, i: int, fut: Any) -> None:
        """Check one future that waitfor yielded."""
        self.yields[i] += 1
        plan = self.plans[i]
        problems = self.failures[i]
        if not fut.done():
            problems.append("waitfor yielded an unfinished future")
            return
        label, details = classify(i, plan, fut)
        self.outcomes[i] = label
        problems.extend(details)
        action, sent = self.strikes.get(i, (None, False))
        allowed = set(plan.expected())
        if action == "kill" and sent:
            allowed.add("died:-9")
        if action == "cancel" and sent:
            allowed = {"cancelled"}
        if label not in allowed:
            problems.append(f"outcome {label!r} not in {sorted(allowed)}")
        with self._lock:
            seen = self.snapshots[i]
        if seen is None:
            problems.append("done-callback had not run when waitfor yielded the future")
        elif label != "cancelled":
            state, exitcode, has_rusage = seen
            if state != snapshot(fut)[0]:
                problems.append(f"state changed after the callback: {state} -> {label}")
            if exitcode is None or not has_rusage:
                problems.append(f"exitcode/rusage not set before done: {exitcode}, {has_rusage}")
            elif exitcode != fut.exitcode:
                problems.append(f"exitcode changed after the callback: {exitcode}")
            else:
                wanted = {int(label.split(":")[1]) if label.startswith("died:") else 0}
                if label == "TaskTimeout" or (action == "kill" and sent):
                    wanted.add(-signal.SIGKILL)
                if exitcode not in wanted:
                    problems.append(f"exitcode {exitcode} not in {sorted(wanted)}")

    def close(self) -> None:
        """Check the per-id counters once the loop has ended."""
        for i in range(len(self.plans)):
            for what, count in (
                ("called", self.calls[i]),
                ("done-callback ran", self.callbacks[i]),
                ("yielded", self.yields[i]),
            ):
                if count != 1:
                    self.failures[i].append(f"{what} {count} times")


# -- residue ---------------------------------------------------------------------------------------


class Hooks:
    """Record whatever reaches threading.excepthook, sys.unraisablehook or the futures logger."""

    def __init__(self) -> None:
        self.reports: list[str] = []
        previous_thread_hook = threading.excepthook
        previous_unraisable = sys.unraisablehook

        def describe(args: Any) -> str:
            where = traceback.extract_tb(args.exc_traceback)[-1:] if args.exc_traceback else []
            at = f" at {where[0].filename}:{where[0].lineno}" if where else ""
            return f"{args.exc_type.__name__}: {args.exc_value!r}{at}"

        def thread_hook(args: Any) -> None:
            self.reports.append(f"threading.excepthook: {describe(args)}")
            previous_thread_hook(args)

        def unraisable(args: Any) -> None:
            self.reports.append(f"sys.unraisablehook: {describe(args)}")
            previous_unraisable(args)

        threading.excepthook = thread_hook
        sys.unraisablehook = unraisable
        hooks = self

        class _Recorder(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                hooks.reports.append(f"concurrent.futures log: {record.getMessage()}")

        logging.getLogger("concurrent.futures").addHandler(_Recorder(logging.WARNING))


class Stalled(Exception):
    """No future finished for too long: something is never going to finish."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise Stalled


def settle(timeout: float) -> None:
    """Wait for every thread but this one to end (the supervisor exits once idle)."""
    deadline = time.monotonic() + timeout
    _faults.supervisor_idle(timeout)  # a bare thread, not joinable through threading
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.ident != _supervisor.get().ident:
            thread.join(max(0.0, deadline - time.monotonic()))


# -- the run ---------------------------------------------------------------------------------------


def drive(
    plans: list[Plan], ledger: Ledger, concurrency: int, stall: float, storm: Storm | None = None
) -> list[str]:
    """Push every id through ``waitfor``, striking some; return run-level problems (a stall).

    A stall is ``stall`` seconds without any future finishing: the longest planned task takes
    milliseconds, so on any machine that means a future that will never finish.
    """
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, stall)
    owner: dict[Future[Any], int] = {}
    futures: dict[int, Future[Any]] = {}  # started and not yet yielded
    strikes: list[tuple[int, int, str]] = []  # heap of (due tick, id, action)
    in_flight: list[Future[Any]] = []
    next_id = tick = 0
    try:
        for fut in waitfor(in_flight, concurrency_factor=concurrency):
            tick += 1
            if fut is None:
                if next_id < len(plans):
                    i, next_id = next_id, next_id + 1
                    new = storm.call_through(i, plans[i]) if storm else call(i, plans[i])
                    ledger.calls[i] += 1
                    new.add_done_callback(functools.partial(ledger.on_done, i))
                    owner[new] = i
                    futures[i] = new
                    in_flight.append(new)
                    if plans[i].chaos:
                        heapq.heappush(strikes, (tick + plans[i].delay, i, plans[i].chaos))
            else:
                signal.setitimer(signal.ITIMER_REAL, stall)
                i = owner.pop(fut)
                ledger.yielded(i, fut)
                del futures[i]  # drop big results as we go
                print(f"done:{i}")
            while strikes and strikes[0][0] <= tick:
                _, i, action = heapq.heappop(strikes)
                if (target := futures.get(i)) is not None:
                    sent = target.kill() if action == "kill" else target.cancel()
                    ledger.strikes[i] = (action, sent)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except Stalled:
        pending = sorted(futures)
        for i in pending[:MAX_REPORTED]:
            ledger.failures[i].append(f"still pending: {futures[i]!r}")
        faulthandler.dump_traceback(all_threads=True)
        return [
            f"stalled: nothing finished for {stall}s; {len(in_flight)} in flight,"
            f" {len(plans) - next_id} never started, pending ids {pending[:MAX_REPORTED]}"
        ]
    return []


def residue(ledger: Ledger, stats0: _supervisor.Statistics, fds0: dict[int, str]) -> list[str]:
    """Return what the run left behind: children, fds, threads, counters that do not add up."""
    n = len(ledger.plans)
    problems = []
    settle(BOUND)
    stats = _supervisor.statistics()
    now, then = dataclasses.asdict(stats), dataclasses.asdict(stats0)
    delta = {key: now[key] - then[key] for key in now if key != "supervisor_alive"}
    finished = delta["completed"] + delta["failed"] + delta["cancelled"] + delta["timed_out"]
    if delta["spawned"] != n or finished != n or stats.in_flight != 0:
        problems.append(f"supervisor counters do not add up to {n}: {stats} (delta {delta})")
    cancelled = ledger.outcomes.count("cancelled")
    timed_out = ledger.outcomes.count("TaskTimeout")
    if delta["cancelled"] != cancelled or delta["timed_out"] != timed_out:
        problems.append(f"counters say {delta}, the ledger {cancelled=} {timed_out=}")
    if stats.supervisor_alive:
        problems.append("the supervisor thread is still alive")
    if left := sorted(_faults.child_pids()):
        problems.append(f"child processes left: {left}")
    if set(fds := _faults.fd_table()) != set(fds0):
        problems.append(f"fds: before {fds0}, after {fds}")
    if threads := [t.name for t in threading.enumerate() if t is not threading.main_thread()]:
        problems.append(f"threads left: {threads}")
    return problems


def run(n: int, concurrency: int, seed: int, stall: float, storm: bool = False) -> dict[str, Any]:
    """Run the ledger and return the summary (``summary["ok"]`` says whether it held)."""
    plans = make_plans(n, seed, concurrency)
    ledger = Ledger(plans)
    hooks = Hooks()
    # Warm up first, so that whatever the library keeps between bursts is in the baseline.
    general = [] if work(-1, "ok", 0).result(timeout=PATIENCE) == -1 else ["warm-up task failed"]
    settle(BOUND)
    fds0 = _faults.fd_table()
    stats0 = _supervisor.statistics()
    started = time.monotonic()
    weather = Storm(seed) if storm else None
    if weather is None:
        general += drive(plans, ledger, concurrency, stall)
    else:
        with weather:
            general += drive(plans, ledger, concurrency, stall, weather)
    elapsed = time.monotonic() - started
    ledger.close()
    if not general:  # after a stall, the residue only repeats it
        general += residue(ledger, stats0, fds0)
    general += hooks.reports
    failing = sorted(i for i, problems in ledger.failures.items() if problems)
    spam = [i for i, plan in enumerate(plans) if plan.kind == "spam"]
    return {
        "ok": not general and not failing,
        "seed": seed,
        "n": n,
        "concurrency": concurrency,
        "python": sys.version.split()[0],
        "elapsed": round(elapsed, 3),
        "tasks_per_second": round(n / elapsed, 1),
        "general": general,
        "failure_count": len(failing),
        "failures": [
            {"id": i, "plan": dataclasses.asdict(plans[i]), "problems": ledger.failures[i]}
            for i in failing[:MAX_REPORTED]
        ],
        "plans": dict(collections.Counter(plan.kind for plan in plans)),
        "outcomes": dict(collections.Counter(str(label) for label in ledger.outcomes)),
        "strikes": dict(collections.Counter(f"{a}:{s}" for a, s in ledger.strikes.values())),
        "audit_hint": {
            "spam_lines": SPAM_LINES,
            "spam_complete": [i for i in spam if ledger.outcomes[i] == "value"],
            "spam_partial": [i for i in spam if ledger.outcomes[i] != "value"],
        },
        "replay": f"python -m tests._ledger {n} {concurrency} {seed}" + (" --storm" * storm),
        "storm": None
        if weather is None
        else {"sent": weather.sent, "landed": weather.landed, "retried": weather.retried},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests._ledger",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("n", type=int, help="number of tasks (input ids 0..N-1)")
    parser.add_argument("concurrency", type=int, help="waitfor concurrency_factor")
    parser.add_argument("seed", type=int, help="seed of the plan RNG")
    parser.add_argument(
        "--stall", type=float, default=20.0, help="seconds without a completion that fail the run"
    )
    parser.add_argument(
        "--storm", action="store_true", help="interrupt calls with SIGINT at random moments"
    )
    args = parser.parse_args(argv)
    summary = run(args.n, args.concurrency, args.seed, args.stall, args.storm)
    print(json.dumps(summary, sort_keys=True))
    if not summary["ok"]:
        print(
            f"ledger FAILED (seed {args.seed}; replay: {summary['replay']})",
            *summary["general"],
            *(f"id {f['id']} {f['plan']}: {f['problems']}" for f in summary["failures"]),
            sep="\n",
            file=sys.stderr,
        )
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
