"""The ledger: thousands of tasks under random faults, every input accounted for exactly once.

The harness, ``tests/_ledger.py``, runs in its own interpreter with ``PYTHONUNBUFFERED`` unset
and its stdout on a pipe, so stdio is block-buffered as in a real batch job. It checks the ledger
from inside (exactly-once callbacks and yields, allowed outcome per plan, values, no residue) and
prints a JSON summary as its last line. Here we audit what only an outside observer can: every
``done:<id>`` line the parent printed appears exactly once, and every ``spam:<id>:<j>`` line a
task printed appears at most once, all of them for the tasks that returned. A failure names the
seed and the command that replays it.

Set ``INPARALLEL_LEDGER_SEED`` to run the default tests with another seed.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from typing import Any

import _faults
import pytest

SEED = int(os.environ.get("INPARALLEL_LEDGER_SEED", "20240607"))

#: Seconds without any task finishing after which the harness reports a stall.
STALL = 20.0

KINDS = {
    "ok",
    "slow",
    "spam",
    "crash",
    "sigkill",
    "segv",
    "exit",
    "sysexit",
    "unpicklable_result",
    "unpicklable_error",
    "timeout",
    "big",
}

_DONE = re.compile(r"done:(-?\d+)")
_SPAM = re.compile(r"spam:(\d+):(\d+)")


def run_ledger(
    n: int,
    concurrency: int,
    seed: int,
    *,
    timeout: float,
    flags: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
) -> tuple[dict[str, Any], list[str], str]:
    """Run the harness; return its summary, its other stdout lines and its stderr.

    The harness fails by itself, naming the pending ids, after `STALL` seconds without any
    task finishing; ``timeout`` only bounds a harness that hangs past that.
    """
    args = [*flags, "-m", "tests._ledger", str(n), str(concurrency), str(seed), *options]
    command = [sys.executable, "-X", "faulthandler", *args, "--stall", str(STALL)]
    replay = " ".join(["python", *args])
    try:
        proc = subprocess.run(
            command,
            cwd=_faults.REPO_ROOT,
            env=_faults.python_env(),  # PYTHONUNBUFFERED unset
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        err = (exc.stderr or b"").decode(errors="replace")
        pytest.fail(f"ledger harness hung (seed {seed}); replay: {replay}\n{err[-4000:]}")
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    lines = out.splitlines()
    try:
        summary = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(
            f"ledger harness printed no summary (exit {proc.returncode}, seed {seed});"
            f" replay: {replay}\nstdout tail: {out[-2000:]}\nstderr: {err[-4000:]}"
        )
    summary["returncode"] = proc.returncode
    summary["replay"] = replay
    return summary, lines[:-1], err


def audit_stdout(lines: list[str], summary: dict[str, Any]) -> list[str]:
    """Return what is wrong with the harness's stdout: lost, duplicated or stray lines."""
    n = summary["n"]
    hint = summary["audit_hint"]
    per_task = hint["spam_lines"]
    complete, partial = set(hint["spam_complete"]), set(hint["spam_partial"])
    done: collections.Counter[int] = collections.Counter()
    spam: collections.Counter[tuple[int, int]] = collections.Counter()
    stray = []
    for line in lines:
        if m := _DONE.fullmatch(line):
            done[int(m[1])] += 1
        elif m := _SPAM.fullmatch(line):
            spam[int(m[1]), int(m[2])] += 1
        else:
            stray.append(line)
    problems = []
    if bad := sorted(i for i in set(done) | set(range(n)) if done[i] != 1):
        problems.append(f"done:<id> lines not printed exactly once for ids {bad[:20]}")
    if dup := sorted(key for key, count in spam.items() if count != 1):
        problems.append(f"duplicated spam lines (id, line): {dup[:20]}")
    if foreign := sorted(
        (i, j) for i, j in spam if i not in complete | partial or not 0 <= j < per_task
    ):
        problems.append(f"spam lines from tasks that did not print them: {foreign[:20]}")
    lost = sorted((i, j) for i in complete for j in range(per_task) if spam[i, j] != 1)
    if lost:
        problems.append(f"lost spam lines of tasks that returned (id, line): {lost[:20]}")
    if stray:
        problems.append(f"{len(stray)} stray stdout lines, e.g. {stray[:5]}")
    return problems


def check(summary: dict[str, Any], lines: list[str], err: str) -> None:
    """Fail with the seed, the replay command and the first failing ids, unless all held."""
    problems = list(summary["general"])
    for failure in summary["failures"]:
        problems.append(f"id {failure['id']} {failure['plan']}: {failure['problems']}")
    if summary["failure_count"] > len(summary["failures"]):
        problems.append(f"... {summary['failure_count']} failing ids in all")
    problems.extend(audit_stdout(lines, summary))
    # The harness reports its own failures on stderr after "ledger FAILED"; nothing else may be
    # there (a child's internal error, a traceback from a thread, a warning).
    noise = err.split("ledger FAILED", 1)[0]
    if noise.strip():
        problems.append(f"stderr is not empty:\n{noise[-4000:]}")
    if summary["returncode"] != (0 if summary["ok"] else 1):
        problems.append(f"harness exit code {summary['returncode']}")
    # The run must have exercised what it claims to: every behaviour and both kinds of strike.
    if missing := KINDS - set(summary["plans"]):
        problems.append(f"behaviours never planned: {sorted(missing)}")
    for strike in ("kill:True", "cancel:True"):
        if not summary["strikes"].get(strike):
            problems.append(f"no {strike.split(':')[0]}() ever landed on a running task")
    if problems:
        pytest.fail(
            f"ledger failed: seed {summary['seed']}, Python {summary['python']},"
            f" {summary['failure_count']} failing ids;"
            f" replay: {summary['replay']}\n" + "\n".join(problems),
            pytrace=False,
        )


# About 10-25 s on 2 cores; the limits leave room for a loaded machine.
@pytest.mark.timeout(180)
def test_ledger() -> None:
    summary, lines, err = run_ledger(2000, 8, SEED, timeout=170)
    check(summary, lines, err)
    assert summary["n"] == 2000


@pytest.mark.timeout(180)
def test_ledger_with_warnings_as_errors() -> None:
    # -W error turns any warning (the 3.12+ fork DeprecationWarning among them) into an error;
    # an exception in a thread or a callback then shows up in the harness's hooks or on stderr.
    summary, lines, err = run_ledger(1000, 8, SEED + 1, timeout=170, flags=("-W", "error"))
    check(summary, lines, err)


@pytest.mark.timeout(180)
def test_ledger_under_a_ctrl_c_storm() -> None:
    # SIGINT every 0-3 ms, raised inside the calls: each id still runs exactly once, and no
    # child, fd or thread is left. The storm is a thread of the program's own, so on 3.12+
    # CPython rightly warns about forking beside it.
    summary, lines, err = run_ledger(
        1000,
        8,
        SEED + 2,
        timeout=170,
        flags=("-W", "ignore::DeprecationWarning"),
        options=("--storm",),
    )
    check(summary, lines, err)
    assert summary["storm"]["landed"] > 50, summary["storm"]


@pytest.mark.soak
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [SEED + 100, SEED + 200, SEED + 300])
def test_ledger_soak(seed: int) -> None:
    summary, lines, err = run_ledger(10_000, 8, seed, timeout=880)
    check(summary, lines, err)
