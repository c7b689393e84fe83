"""Break the library on purpose, one line at a time, and check that the tests notice.

A hand-written mutation pass: each `Mutation` below replaces one exact snippet of the library
(a line, or a few lines that are one statement) with a broken version, runs the tests that
should catch it, and reports whether they did. A mutation the tests survive is a hole in the
suite: a behaviour they claim to check and do not.

Run it from the repository root (pytest does not collect this file)::

    python -m tests.mutate              # every mutation; exit 1 if any survived
    python -m tests.mutate --list       # what each one breaks, and which tests should notice
    python -m tests.mutate --only stdin-redirect --only lifeline-owner

Each mutation runs in a scratch copy of the working tree, made in a temporary directory: the
tree itself is never edited (other people may be working in it). The tests run there with the
copy first on ``PYTHONPATH``; before anything runs, the script checks that ``inparallel`` is
imported from the copy and not from an editable install. A snippet that is not found exactly
once stops the whole run before any test starts: the code moved, and the mutation must be
updated, not silently skipped. By default the selected tests first run once on the unmutated
copy (``--no-baseline`` skips that): a mutation is only "killed" by tests that pass without it.

Exit status: 0 if every mutation was killed, 1 if any survived, 2 if the run could not judge
(a snippet not found, a baseline that fails, an import from the wrong tree).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: What a scratch copy leaves out: version control, virtual environments and caches.
IGNORED = (".git", ".venv*", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache")

#: Seconds one pytest run may take before it counts as hung (a hang fails the mutation too).
RUN_TIMEOUT = 900.0


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One deliberate break of the library."""

    name: str  #: short, unique; for ``--only``
    file: str  #: path relative to the repository root
    snippet: str  #: exact text that must occur exactly once in ``file``
    replacement: str  #: what the snippet becomes
    tests: tuple[str, ...]  #: pytest arguments: test files, node ids, ``-k`` expressions
    breaks: str  #: the behaviour this takes away, in a few words


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "stdin-redirect",
        "inparallel/_core/_stdio.py",
        "    os.dup2(null, 0)\n",
        "    os.dup2(0, 0)  # mutated\n",
        ("tests/test_child.py",),
        "a task's stdin is the parent's, not /dev/null",
    ),
    Mutation(
        "at-fork-closes-private-fds",
        "inparallel/_core/_spawn.py",
        "    for fd in _inherited_pipe:\n        _close_quietly(fd)\n",
        "    for fd in []:  # mutated\n        _close_quietly(fd)\n    _keep = _private_fds\n",
        ("tests/test_forksafety.py", "tests/test_wire.py", "-k", "c9 or c6 or grandchild"),
        "a forked child keeps its parent's result pipe and the maps' private pipes",
    ),
    Mutation(
        "at-fork-resets-supervisor",
        "inparallel/_core/_spawn.py",
        "    _supervisor.reset_in_child()\n",
        "    pass  # mutated\n",
        ("tests/test_child.py", "tests/test_lifecycle.py"),
        "a forked child inherits the supervisor's fds and records",
    ),
    Mutation(
        "inherited-supervisor-signals",
        "inparallel/_core/_events.py",
        "        if self._inherited:  # a fork's copy",
        "        if False:  # mutated",
        ("tests/test_task.py", "-k", "cancel_in_a_child"),
        "a fork's copy of a future signals the parent's task (or a reused fd number or pid)",
    ),
    Mutation(
        "final-result-takes-the-lock",
        "inparallel/_core/_localfuture.py",
        "        if state == FINISHED:  # final: read without the lock",
        "        if False:  # mutated",
        ("tests/test_forksafety.py", "-k", "whatever_lock"),
        "a fork's copy of a finished future waits for a lock a thread of the parent held",
    ),
    Mutation(
        "close-all-runs",
        "inparallel/_core/_supervisor.py",
        "            os.closerange(first, last + 1)\n            first = fd",
        "            os.closerange(first, fd + 1)  # mutated\n            first = fd",
        ("tests/test_supervisor.py", "-k", "close_all"),
        "a forked child closes fds that are not the library's, between two runs of its own",
    ),
    Mutation(
        "at-fork-forgets-spares",
        "inparallel/_core/_spawn.py",
        "    _stdio.forget_spares()  # the spares may be this process's live streams now\n",
        "    pass  # mutated\n",
        ("tests/test_regressions.py",),
        "a nested task reuses its parent task's live stdout/stderr objects",
    ),
    Mutation(
        "exit-by-polling",
        "inparallel/_core/_events.py",
        "                selector.register(child.pidfd, (child, EXIT))\n",
        "                self._polled.add(child)  # mutated\n",
        ("tests/test_supervisor.py", "tests/test_wire.py", "-k", "sleeps or reaped or c4"),
        "the supervisor polls for exits instead of blocking on the pidfd",
    ),
    Mutation(
        "exit-waits-for-eof",
        "inparallel/_core/_events.py",
        "            self._on_readable(child)  # the last bytes the child wrote before it exited\n",
        "            self._on_readable(child)  # mutated\n"
        "            if child.rfd is not None:\n"
        "                return\n",
        ("tests/test_wire.py", "-k", "c6"),
        "a child's death is seen only once its result pipe reaches EOF",
    ),
    Mutation(
        "timeout-never-kills",
        "inparallel/_core/_events.py",
        "            child.timed_out = True\n            self.send_signal(child, signal.SIGKILL)\n",
        "            child.timed_out = True  # mutated\n",
        ("tests/test_supervisor.py",),
        "timeout= expires but the child is not killed",
    ),
    Mutation(
        "deadline-ignores-transfer",
        "inparallel/_core/_events.py",
        "                if now - child.last_progress < TRANSFER_STALL:\n",
        "                if False:  # mutated\n",
        ("tests/test_supervisor.py", "-k", "deadline"),
        "timeout= kills a child whose result is arriving (research D4)",
    ),
    Mutation(
        "waitfor-none-spam",
        "inparallel/_waitfor.py",
        "                stalled = watch_new() == 0\n",
        "                stalled = False  # mutated\n",
        ("tests/test_waitfor.py",),
        "waitfor asks for work again at once when none was added (a busy loop)",
    ),
    Mutation(
        "waitfor-asks-when-full",
        "inparallel/_waitfor.py",
        "            if limit is not None and not stalled and len(in_flight) < limit:\n",
        "            if limit is not None and not stalled and len(in_flight) <= limit:  # mut\n",
        ("tests/test_waitfor.py",),
        "waitfor asks for more work with concurrency_factor futures already in flight",
    ),
    Mutation(
        "waitfor-ctrl-c-cancels",
        "inparallel/_waitfor.py",
        "                item.cancel()\n",
        "                pass  # mutated\n",
        ("tests/test_waitfor.py",),
        "a Ctrl-C inside waitfor leaves the unfinished futures running",
    ),
    Mutation(
        "aio-map-window",
        "inparallel/_aio/_map.py",
        "        return 2 * workers\n",
        "        return workers  # mutated\n",
        ("tests/test_aio_transform.py", "tests/test_aio_fork.py", "tests/test_aio_cancel.py"),
        "an async map starts nothing ahead of a slow item (window = workers, not 2 x)",
    ),
    Mutation(
        "map-stopiteration",
        "inparallel/_chunks.py",
        "        error = stray_stop(exc, describe(call))\n",
        "        error = exc  # mutated\n",
        ("tests/test_map.py",),
        "a StopIteration raised by process_map's function ends the map quietly",
    ),
    Mutation(
        "stream-map-stopiteration",
        "inparallel/_streammap.py",
        "            raise stray_stop(exc, state.name) from exc\n",
        "            raise  # mutated\n",
        ("tests/test_stream.py",),
        "a StopIteration raised by StreamExecutor.map's function ends the map quietly",
    ),
    Mutation(
        "frame-size-cap",
        "inparallel/_core/_reader.py",
        "        if body > self.max_size:\n",
        "        if False:  # mutated\n",
        ("tests/test_wire.py", "-k", "b12"),
        "max_result_size is not enforced: any result is read, however big",
    ),
    Mutation(
        "frame-header-check",
        "inparallel/_core/_reader.py",
        "        if magic != MAGIC or kind >= len(_KINDS) or memfd < IN_MEMORY:"
        "  # kind is unsigned\n",
        "        if False:  # mutated\n",
        ("tests/test_wire.py", "-k", "c8 or b12"),
        "a corrupt frame header is read as if it were valid",
    ),
    Mutation(
        "result-pipe-identity",
        "inparallel/_core/_child.py",
        "        if _identity(wfd) != plan.pipe:\n",
        "        if False:  # mutated\n",
        ("tests/test_wire.py", "-k", "c8"),
        "a task that replaced its result pipe writes its frame to whatever is on the fd",
    ),
    Mutation(
        "cancel-keeps-child",
        "inparallel/_core/_future.py",
        "        if self._send_signal(signal.SIGKILL):\n",
        "        if False:  # mutated\n",
        ("tests/test_supervisor.py", "tests/test_forksafety.py"),
        "cancel() marks a running task cancelled but leaves its child running",
    ),
    Mutation(
        "lifeline-owner",
        "inparallel/_core/_child.py",
        "        if plan.setown is None or plan.setown(wfd, _F_SETOWN, os.getpid()) != 0:\n"
        "            fcntl.fcntl(wfd, _F_SETOWN, os.getpid())  # raises what went wrong\n",
        "        pass  # mutated\n",
        ("tests/test_lifecycle.py",),
        "the result pipe's lifeline has no owner: a SIGKILLed parent's tasks live on",
    ),
    Mutation(
        "lifeline-deathsig",
        "inparallel/_core/_child.py",
        "        plan.deathsig(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)\n",
        "        pass  # mutated\n",
        ("tests/test_lifecycle.py",),
        "no PR_SET_PDEATHSIG: a task that closed its fds outlives a SIGKILLed parent",
    ),
    Mutation(
        "child-ignores-sigint",
        "inparallel/_core/_child.py",
        "    setsignal(_SIGINT, _SIG_IGN)\n",
        "    pass  # mutated\n",
        ("tests/test_lifecycle.py",),
        "a task is interrupted by the Ctrl-C meant for its parent",
    ),
    Mutation(
        "memory-limit-error",
        "inparallel/_core/_child.py",
        "    if options.memory_limit and memory:\n",
        "    if False:  # mutated\n",
        ("tests/test_child.py", "-k", "n3"),
        "a MemoryError under memory_limit= is not reported as MemoryLimitExceeded",
    ),
    Mutation(
        "unflushed-output",
        "inparallel/_core/_spawn.py",
        "    _stdio.flush_stdio(Exception)  # else the child would copy (and repeat) our output\n",
        "    pass  # mutated\n",
        ("tests/test_child.py", "-k", "a7 or j1 or j2"),
        "the parent's unflushed output is copied into each child and printed twice",
    ),
    Mutation(
        "sigint-hold",
        "inparallel/_core/_interrupts.py",
        "    setsignal(_SIGINT, _hold)\n",
        "    pass  # mutated\n",
        ("tests/test_interrupts.py",),
        "a Ctrl-C is not held during a library call that must be atomic",
    ),
    Mutation(
        "sigint-release-drops",
        "inparallel/_core/_interrupts.py",
        "        handler(signum, None)\n",
        "        pass  # mutated\n",
        ("tests/test_interrupts.py",),
        "a Ctrl-C held during a library call is never delivered",
    ),
    Mutation(
        "caller-never-drives",
        "inparallel/_core/_drive.py",
        "            driving = self._role.acquire(blocking=False)\n",
        "            driving = False  # mutated\n",
        ("tests/test_driving.py",),
        "a caller waiting for its tasks never watches them itself: a thread starts for each",
    ),
    Mutation(
        "spawn-never-looks",
        "inparallel/_core/_drive.py",
        "        if unclaimed > 1:\n            self.drive(_never, 0.0)\n",
        "        if False:  # mutated\n            self.drive(_never, 0.0)\n",
        ("tests/test_driving.py", "-k", "pile_up"),
        "fire-and-forget calls pile up unreaped while no thread runs (zombies, fds)",
    ),
    Mutation(
        "child-block-buffered",
        "inparallel/_core/_stdio.py",
        '        (like.encoding, like.errors or "strict", True, like.write_through)\n',
        '        (like.encoding, like.errors or "strict", like.line_buffering, False)  # mutated\n',
        ("tests/test_output.py", "-k", "inherit_delivers or unbuffered"),
        "a task's stdout on a pipe is block-buffered: a killed task loses what it printed",
    ),
    Mutation(
        "threads-take-sigint",
        "inparallel/_core/_thread.py",
        "    with sigint_blocked():\n        thread.start()\n",
        "    thread.start()  # mutated\n",
        ("tests/test_interrupts.py", "-k", "library_thread"),
        "a library thread may receive the Ctrl-C, leaving the main thread asleep in a wait",
    ),
    Mutation(
        "output-never-finished",
        "inparallel/_core/_events.py",
        "        out, err = streams.finish()  # writes tag and group output to our stdout/stderr\n",
        "        out, err = None, None  # mutated\n",
        ("tests/test_output.py", "-k", "capture or group"),
        "a task's captured or grouped output is never read when it ends",
    ),
    Mutation(
        "moved-child-not-settled",
        "inparallel/_core/_child.py",
        "            settle(plan.ticket)  #",
        "            pass  # mutated #",
        ("tests/test_cpus.py",),
        "a sequential call's task runs with one CPU fewer than its caller's affinity",
    ),
    Mutation(
        "settle-before-the-move",
        "inparallel/_core/_cpus.py",
        "    while (post := _POST.unpack_from(page)[0]) & _LOW != mine:\n",
        "    post = _POST.unpack_from(page)[0]\n    while False:  # mutated\n",
        ("tests/test_cpus.py",),
        "a move the parent makes late narrows the task's affinity for its whole life",
    ),
    Mutation(
        "moved-to-a-busy-cpu",
        "inparallel/_core/_cpus.py",
        "        return running < len(os.sched_getaffinity(0))\n",
        "        return True  # mutated\n",
        ("tests/test_cpus.py",),
        "a sequential call's child is moved to a busy CPU, where it waits behind another process",
    ),
    Mutation(
        "settle-polls",
        "inparallel/_core/_cpus.py",
        "        failed = futex_wait(_word, post & _LOW, deadline - now)",
        "        failed = time.sleep(0.001) or 0  # mutated",
        ("tests/test_cpus.py",),
        "a child whose parent is held up polls for the post instead of sleeping until its wake",
    ),
    Mutation(
        "ticket-like-a-new-page",
        "inparallel/_core/_cpus.py",
        "    if not _tickets & _LOW:",
        "    if False:  # mutated",
        ("tests/test_cpus.py",),
        "a ticket can look posted on a new page: its child runs before the move, narrowed",
    ),
    Mutation(
        "settle-not-woken",
        "inparallel/_core/_cpus.py",
        "        _wake()  # always",
        "        pass  # mutated",
        ("tests/test_cpus.py",),
        "a child that waits for its parent's post sleeps to the time limit instead of waking at it",
    ),
)


def select(names: list[str] | None) -> list[Mutation]:
    """Return the mutations named (all of them if None); exit 2 on an unknown name."""
    by_name = {m.name: m for m in MUTATIONS}
    if len(by_name) != len(MUTATIONS):
        raise SystemExit("mutate: two mutations share a name")
    if not names:
        return list(MUTATIONS)
    unknown = [name for name in names if name not in by_name]
    if unknown:
        print(f"mutate: unknown mutation(s) {unknown}; see --list", file=sys.stderr)
        raise SystemExit(2)
    return [by_name[name] for name in names]


def check_snippets(mutations: list[Mutation], root: Path) -> list[str]:
    """Return a problem report for each mutation whose snippet is not in its file exactly once."""
    problems = []
    for m in mutations:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        count = path.read_text().count(m.snippet)
        if count != 1:
            where = "is not found" if count == 0 else f"occurs {count} times"
            problems.append(f"{m.name}: the snippet {m.snippet!r} {where} in {m.file}")
    return problems


def scratch_copy(root: Path, parent: Path) -> Path:
    """Copy the working tree (its current state, uncommitted changes included) under ``parent``."""
    dest = parent / "tree"
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)
    return dest


def apply(mutation: Mutation, tree: Path) -> None:
    path = tree / mutation.file
    text = path.read_text()
    assert text.count(mutation.snippet) == 1, mutation.name  # checked before any run
    path.write_text(text.replace(mutation.snippet, mutation.replacement))


def environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


def check_import(python: str, tree: Path) -> None:
    """Exit 2 unless ``inparallel`` imports from ``tree`` (not from an editable install)."""
    probe = subprocess.run(
        [python, "-c", "import inparallel; print(inparallel.__file__)"],
        cwd=tree,
        env=environment(tree),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = probe.stdout.strip()
    if probe.returncode != 0 or not Path(found).is_relative_to(tree):
        print(
            f"mutate: inparallel is imported from {found or probe.stderr.strip()!r},"
            f" not from the scratch copy {tree}",
            file=sys.stderr,
        )
        raise SystemExit(2)


@dataclasses.dataclass
class Run:
    """The outcome of one pytest run."""

    passed: bool
    seconds: float
    detail: str


def run_tests(python: str, tree: Path, args: tuple[str, ...], *, first_failure: bool) -> Run:
    """Run pytest on ``args`` in ``tree``; stop at the first failure if ``first_failure``."""
    command = [python, "-m", "pytest", "-q", *(["-x"] if first_failure else []), *args]
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            command,
            cwd=tree,
            env=environment(tree),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its whole process group is ended on a hang
        )
        try:
            code = proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return Run(False, time.monotonic() - start, f"hung for {RUN_TIMEOUT:.0f} s")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind
        log.seek(0)
        output = log.read()
    seconds = time.monotonic() - start
    if code == 0:
        counts = re.findall(r"^=*\s*(\d+ passed.*?) in [\d.]+s", output, re.MULTILINE)
        return Run(True, seconds, counts[-1] if counts else "passed")
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    if failures:
        why = re.search(r"^E\s+(.+)$", output, re.MULTILINE)  # the first assertion's message
        more = " ..." if len(failures) > 1 else ""
        return Run(False, seconds, failures[0] + more + (f": {why[1][:120]}" if why else ""))
    tail = " | ".join(output.strip().splitlines()[-3:])
    return Run(False, seconds, f"pytest exit status {code}: {tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.mutate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutation only")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip running the tests unmutated first"
    )
    parser.add_argument("--python", default=sys.executable, help="the interpreter to test with")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    options = parser.parse_args(argv)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # Started in the background (nohup, ``&``): SIGINT is ignored, and every test run would
        # inherit that, which fails the Ctrl-C tests. A Python handler resets to the default
        # in the programs started from here.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    mutations = select(options.only)
    problems = check_snippets(mutations, ROOT)
    if options.list:
        for m in mutations:
            print(f"{m.name:28} {m.file}")
            print(f"{'':28} breaks: {m.breaks}")
            print(f"{'':28} tests: {' '.join(m.tests)}")
        for problem in problems:
            print(f"SNIPPET MISSING: {problem}")
        return 2 if problems else 0
    if problems:
        print("mutate: the code moved; update these mutations:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2

    scratch = Path(tempfile.mkdtemp(prefix="inparallel-mutate-"))
    try:
        return _run_all(mutations, options, scratch)
    finally:
        if options.keep:
            print(f"scratch copies kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _run_all(mutations: list[Mutation], options: argparse.Namespace, scratch: Path) -> int:
    baseline_tree = scratch_copy(ROOT, scratch / "baseline")
    check_import(options.python, baseline_tree)
    broken: dict[tuple[str, ...], str] = {}
    if not options.no_baseline:
        for args in dict.fromkeys(m.tests for m in mutations):
            run = run_tests(options.python, baseline_tree, args, first_failure=True)
            print(f"baseline  {' '.join(args)}: {'ok' if run.passed else run.detail}", flush=True)
            if not run.passed:
                broken[args] = run.detail
    rows = []
    for m in mutations:
        if m.tests in broken:
            rows.append((m, "NOT RUN", 0.0, f"fails unmutated: {broken[m.tests]}"))
            continue
        home = scratch / m.name
        tree = scratch_copy(ROOT, home)
        apply(m, tree)
        check_import(options.python, tree)
        run = run_tests(options.python, tree, m.tests, first_failure=True)
        verdict = "SURVIVED" if run.passed else "killed"
        rows.append((m, verdict, run.seconds, run.detail))
        print(f"{verdict:8}  {m.name:28} {run.seconds:6.1f} s  {run.detail}", flush=True)
        if not options.keep:
            shutil.rmtree(home, ignore_errors=True)
    _report(rows)
    if any(verdict == "NOT RUN" for _, verdict, _, _ in rows):
        return 2
    return 1 if any(verdict == "SURVIVED" for _, verdict, _, _ in rows) else 0


def _report(rows: list[tuple[Mutation, str, float, str]]) -> None:
    print()
    print(f"{'mutation':28} {'result':9} {'seconds':>7}  detail (what it breaks)")
    for m, verdict, seconds, detail in rows:
        print(f"{m.name:28} {verdict:9} {seconds:7.1f}  {detail}")
        print(f"{'':28} {'':9} {'':7}  ({m.breaks})")
    survived = [m.name for m, verdict, _, _ in rows if verdict == "SURVIVED"]
    killed = sum(verdict == "killed" for _, verdict, _, _ in rows)
    print(
        f"\n{killed} killed, {len(survived)} survived, {len(rows) - killed - len(survived)} not run"
    )
    if survived:
        print("survivors (the tests do not check what these break): " + ", ".join(survived))


if __name__ == "__main__":
    sys.exit(main())
