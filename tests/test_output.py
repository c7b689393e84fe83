"""Task output end to end: ``@task(output=..., max_output=..., name=...)`` in a real parent.

Each test runs its parent in a fresh interpreter (`Parent`) whose fds 1 and 2 are pipes (so
its stdio is block-buffered, as under a pipe or in a log file) or pseudo-terminals (as in a
shell), and reads what reaches them. The scripts synchronise with `_faults.Beacon` and
`_faults.Gate` pipes, or with a gate fd the test itself holds (`go_pipe`): a test that must see
a line *before* the task goes on reads it from the parent's fd while the task is blocked.

The mechanism on its own (line splitting, tails, decoding, option checks) is tested in
``test_output_unit.py``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import inspect
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import _faults
import pytest
from _timing import BOUND, PATIENCE

TERMINALS = [pytest.param(False, id="pipe"), pytest.param(True, id="pty")]

#: The window a pseudo-terminal reports (rows, columns): tqdm sizes its bar from it.
WINDOW = (24, 100)

#: Every script starts with these imports (``_faults`` and ``_timing`` come from ``tests/``).
PREAMBLE = """\
import json, os, signal, subprocess, sys
import _faults
from _timing import BOUND
from inparallel import task, waitfor
"""

SH = '["sh", "-c", "echo from sh; echo err from sh >&2"]'


@dataclass
class Screen:
    """What a parent wrote: its exit code, and its stdout and stderr as text.

    On a terminal, ``"\\r\\n"`` (the terminal's end of line) reads as ``"\\n"``; ``raw`` keeps
    the bytes of stdout as they came.
    """

    code: int
    out: str
    err: str
    raw: bytes = b""


class Parent:
    """A fresh interpreter running ``script`` (with ``args`` in ``sys.argv[1:]``) as a parent.

    Its stdin is ``/dev/null``; its fds 1 and 2 are two pipes or two pseudo-terminals, or one
    of them for both with ``merged``. ``flags`` go to the interpreter (``-u``); ``pass_fds`` are
    inherited with their numbers. Everything is bounded by ``timeout`` s from the start: a
    hung parent dumps its threads' stacks to stderr shortly before and the test fails. Use as
    a context manager: the process is killed and reaped, every fd closed.
    """

    def __init__(
        self,
        script: str,
        *args: str,
        terminal: bool,
        merged: bool = False,
        flags: Sequence[str] = (),
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        timeout: float = PATIENCE,
    ) -> None:
        self.deadline = time.monotonic() + timeout
        self.terminal = terminal
        self.data = {"out": bytearray(), "err": bytearray()}
        self.reading: dict[int, str] = {}  # our reading ends still open, and their stream
        self.proc: subprocess.Popen[bytes] | None = None
        opened: list[int] = []
        try:
            out_r, out_w = _endpoints(terminal, opened)
            err_r, err_w = (out_r, out_w) if merged else _endpoints(terminal, opened)
            watchdog = max(timeout - 3.0, 1.0)
            prologue = (
                f"import faulthandler; faulthandler.dump_traceback_later({watchdog}, exit=True)\n"
            )
            environment = dict(_faults.python_env() if env is None else env)
            for name in ("COLUMNS", "LINES"):  # the terminal's own size, not the test runner's
                environment.pop(name, None)
            self.proc = subprocess.Popen(
                # -W error: a warning (CPython's multi-threaded fork one) fails the script.
                [sys.executable, "-W", "error", *flags, "-c", prologue + PREAMBLE + script, *args],
                cwd=_faults.REPO_ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=pass_fds,
            )
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        self.reading = {out_r: "out"} if merged else {out_r: "out", err_r: "err"}
        for fd in opened:
            if fd not in self.reading:
                os.close(fd)  # the writing ends are the parent's alone: EOF once it is gone

    def __enter__(self) -> Parent:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(BOUND)
        for fd in self.reading:
            os.close(fd)
        self.reading = {}

    def _pump(self, done: Callable[[], bool] | None, deadline: float) -> bool:
        # Read whatever comes until ``done()`` (without it: until every stream has ended), or
        # until the deadline; return whether that happened.
        while self.reading if done is None else not done():
            left = min(deadline, self.deadline) - time.monotonic()
            if left <= 0 or not self.reading:
                return False
            ready, _, _ = select.select(list(self.reading), [], [], left)
            for fd in ready:
                try:
                    chunk = os.read(fd, 1 << 16)
                except OSError as exc:  # a terminal whose last writer is gone says EIO
                    if exc.errno != errno.EIO:
                        raise
                    chunk = b""
                if chunk:
                    self.data[self.reading[fd]] += chunk
                else:
                    os.close(fd)
                    del self.reading[fd]
        return True

    def text(self, stream: str = "out") -> str:
        """Return what ``stream`` (``"out"`` or ``"err"``) carried so far, as text."""
        text = self.data[stream].decode("utf-8", "replace")
        return text.replace("\r\n", "\n") if self.terminal else text

    def read_until(self, text: str, stream: str = "out", timeout: float = BOUND) -> None:
        """Read until ``stream`` has carried ``text``; fail after ``timeout`` s."""

        if not self._pump(lambda: text in self.text(stream), time.monotonic() + timeout):
            pytest.fail(
                f"{text!r} did not reach the parent's std{stream} within {timeout} s\n"
                f"stdout so far:\n{self.text('out')}\nstderr so far:\n{self.text('err')}"
            )

    def hang_up(self, stream: str = "out") -> None:
        """Close the reading end of ``stream``: a pipe's reader or a terminal that went away."""
        [fd] = [fd for fd, name in self.reading.items() if name == stream]
        del self.reading[fd]
        os.close(fd)

    def finish(self, *, check: bool = True) -> Screen:
        """Read until the parent has exited and its streams ended; return what it wrote.

        With ``check``, fail unless it exited 0.
        """
        assert self.proc is not None
        ended = self._pump(None, self.deadline)
        code = None
        if ended:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(max(self.deadline - time.monotonic(), 0.1))
        screen = Screen(-1 if code is None else code, self.text(), self.text("err"))
        screen.raw = bytes(self.data["out"])
        if code is None:
            pytest.fail(f"the parent did not finish in time\n{_show(screen)}")
        if check and code != 0:
            pytest.fail(f"the parent exited {code}\n{_show(screen)}")
        return screen


def _endpoints(terminal: bool, opened: list[int]) -> tuple[int, int]:
    # (read end, write end): a pipe, or a pseudo-terminal's master and slave.
    if terminal:
        master, slave = os.openpty()
        opened += (master, slave)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *WINDOW, 0, 0))
        return master, slave
    r, w = os.pipe()
    opened += (r, w)
    return r, w


def _show(screen: Screen) -> str:
    return f"stdout:\n{screen.out}\nstderr:\n{screen.err}"


def run(script: str, *args: str, terminal: bool, **options: Any) -> Screen:
    """Run ``script`` in a `Parent` to its end; return what it wrote (it must exit 0)."""
    with Parent(script, *args, terminal=terminal, **options) as parent:
        return parent.finish()


@pytest.fixture
def go_pipe() -> Iterator[tuple[int, int, dict[str, str]]]:
    """A pipe whose read end a `Parent` inherits (as ``TEST_GO_FD``): the test's own gate.

    Yields ``(read end, write end, environment)``. Closing the write end (done at the end)
    unblocks every reader.
    """
    r, w = os.pipe()
    env = _faults.python_env({"TEST_GO_FD": str(r)})
    try:
        yield r, w, env
    finally:
        os.close(r)
        os.close(w)


# -- inherit -------------------------------------------------------------------------------------

AT_EXIT = """
mode = sys.argv[1]
beacon = _faults.Beacon()

@task(output=mode, name="t")
def work():
    print("written before the exit")
    beacon.send()
    signal.pause()

fut = work()
beacon.receive(timeout=BOUND)
print("parent: exiting", flush=True)
"""


@pytest.mark.parametrize("mode", ["tag", "group"])
def test_a_task_killed_at_interpreter_exit_still_shows_its_output(mode: str) -> None:
    # The exit handler kills the task, then writes what it had printed (tag's lines not yet
    # forwarded, group's whole block), as its end would have.
    screen = run(AT_EXIT, mode, terminal=False)
    line = "[t] written before the exit" if mode == "tag" else "written before the exit"
    assert sorted(screen.out.splitlines()) == sorted([line, "parent: exiting"]), _show(screen)


KILLED_INHERIT = """
how = sys.argv[1]
beacon = _faults.Beacon()

@task(timeout=1.0 if how == "timeout" else None)
def work():
    print("the task's line on stdout")
    print("the task's line on stderr", file=sys.stderr)
    beacon.send()
    if how == "exit":
        os._exit(3)
    signal.pause()

fut = work()
beacon.receive(timeout=BOUND)
if how == "cancel":
    fut.cancel()
elif how == "kill":
    fut.kill()
try:
    fut.result(timeout=BOUND)
except BaseException as exc:
    print("parent saw", type(exc).__name__, flush=True)
"""


@pytest.mark.parametrize("terminal", TERMINALS)
@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("timeout", "TaskTimeout"),
        ("cancel", "CancelledError"),
        ("kill", "WorkerDied"),
        ("exit", "WorkerDied"),
    ],
)
def test_inherit_delivers_each_complete_line_of_a_killed_task(
    terminal: bool, how: str, error: str
) -> None:
    # On a pipe the parent's stdout is block-buffered: a child that kept that buffering would
    # lose its line when killed (nothing flushes it).
    screen = run(KILLED_INHERIT, how, terminal=terminal)
    assert screen.out == f"the task's line on stdout\nparent saw {error}\n", _show(screen)
    assert screen.err == "the task's line on stderr\n", _show(screen)


GATED = """
mode, waiter = sys.argv[1], sys.argv[2]
go = int(os.environ["TEST_GO_FD"])

@task(output=mode, name="gated")
def work():
    print("waiting at the gate")
    os.read(go, 1)
    print("through the gate")
    return 7

fut = work()
if waiter == "busy":
    os.read(go, 1)  # the parent does something else; nobody waits for the task
print("parent got", fut.result(timeout=BOUND), flush=True)
"""


@pytest.mark.parametrize("terminal", TERMINALS)
@pytest.mark.parametrize(
    ("mode", "waiter"), [("inherit", "result"), ("tag", "result"), ("tag", "busy")]
)
def test_a_line_shows_while_the_task_is_still_blocked(
    terminal: bool, mode: str, waiter: str, go_pipe: tuple[int, int, dict[str, str]]
) -> None:
    r, w, env = go_pipe
    prefix = "[gated] " if mode == "tag" else ""
    with Parent(GATED, mode, waiter, terminal=terminal, env=env, pass_fds=[r]) as parent:
        # The task cannot go on before the test writes to the gate: what arrives now was
        # delivered while it was blocked.
        parent.read_until(f"{prefix}waiting at the gate\n")
        assert "through" not in parent.text()
        os.write(w, b"gg")
        screen = parent.finish()
    assert screen.out == (
        f"{prefix}waiting at the gate\n{prefix}through the gate\nparent got 7\n"
    ), _show(screen)
    assert screen.err == ""


PARTIAL = """
go = int(os.environ["TEST_GO_FD"])

@task
def work():
    sys.stdout.write("half a line on stdout")
    sys.stderr.write("half a line on stderr")
    signal.pause()

fut = work()
os.read(go, 1)
fut.kill()
print(f"\\nparent saw {type(fut.exception(timeout=BOUND)).__name__}", flush=True)
"""


@pytest.mark.parametrize("terminal", TERMINALS)
@pytest.mark.parametrize("unbuffered", ["-u", "PYTHONUNBUFFERED=1"])
def test_unbuffered_parents_have_write_through_tasks(
    terminal: bool, unbuffered: str, go_pipe: tuple[int, int, dict[str, str]]
) -> None:
    r, w, env = go_pipe
    flags = ["-u"] if unbuffered == "-u" else []
    if unbuffered != "-u":
        env = _faults.python_env({"TEST_GO_FD": str(r)}, unbuffered=True)
    with Parent(PARTIAL, terminal=terminal, flags=flags, env=env, pass_fds=[r]) as parent:
        # No newline, and the task is alive and blocked: only writing through delivers them.
        parent.read_until("half a line on stdout")
        parent.read_until("half a line on stderr", "err")
        os.write(w, b"g")
        screen = parent.finish()
    assert screen.out == "half a line on stdout\nparent saw WorkerDied\n", _show(screen)
    assert screen.err == "half a line on stderr"


TOOLS = """
from inparallel import StreamExecutor, process_map, process_parallel, process_preload

tool = sys.argv[1]

def show(x):
    print(f"child {x}")
    return x

def source():
    for x in range(6):
        print(f"child {x}")
        yield x

def consume(x):
    print(f"parent {x}", flush=True)

if tool == "process_map":
    for x in process_map(show, range(6), num_workers=2):
        consume(x)
elif tool == "process_preload":
    with process_preload(source(), buffer_size=2) as items:
        for x in items:
            consume(x)
elif tool == "process_parallel":
    process_parallel(range(6), show, consume, workers=2)
else:
    with StreamExecutor(2) as executor:
        for x in executor.map(show, range(6)):
            consume(x)
"""


@pytest.mark.parametrize("terminal", TERMINALS)
@pytest.mark.parametrize(
    "tool", ["process_map", "process_preload", "process_parallel", "StreamExecutor"]
)
def test_the_tools_children_print_line_by_line(terminal: bool, tool: str) -> None:
    # The parent prints about an item once it has it; the child printed about it before
    # sending it. A block-buffered child's lines would come at its end, or never.
    screen = run(TOOLS, tool, terminal=terminal)
    lines = screen.out.splitlines()
    assert sorted(lines) == sorted(f"{who} {x}" for who in ("child", "parent") for x in range(6))
    for x in range(6):
        assert lines.index(f"child {x}") < lines.index(f"parent {x}"), _show(screen)
    assert screen.err == ""


# -- capture -------------------------------------------------------------------------------------

CAPTURED = f"""
outcome = sys.argv[1]
beacon = _faults.Beacon()

@task(output="capture", timeout=1.5 if outcome == "timeout" else None)
def work():
    print("out: first")
    os.write(1, b"out: written to fd 1\\n")
    print("err: first", file=sys.stderr)
    subprocess.run({SH}, check=True, timeout=BOUND)
    print("out: last")
    print("err: last", file=sys.stderr)
    beacon.send()
    if outcome == "raised":
        raise ValueError("boom")
    if outcome == "segfault":
        _faults.segfault()
    if outcome == "exit":
        os._exit(3)
    if outcome != "ok":
        signal.pause()
    return 42

fut = work()
seen = []  # what a done-callback sees (on the supervisor thread)
fut.add_done_callback(lambda fut: seen.append([fut.stdout, fut.stderr]))
beacon.receive(timeout=BOUND)
error = None
if outcome == "cancelled":
    assert fut.cancel()
    assert fut.stdout is None  # not reaped yet: set once it is
    assert _faults.supervisor_idle()  # the thread reaps the child, then leaves
else:
    error = fut.exception(timeout=BOUND)
print(json.dumps({{
    "stdout": fut.stdout,
    "stderr": fut.stderr,
    "error": None if error is None else type(error).__name__,
    "notes": getattr(error, "__notes__", []),
    "cancelled": fut.cancelled(),
    "seen": seen,
}}))
"""


@pytest.mark.parametrize("terminal", TERMINALS)
@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        ("ok", None),
        ("raised", "ValueError"),
        ("timeout", "TaskTimeout"),
        ("cancelled", None),
        ("segfault", "WorkerDied"),
        ("exit", "WorkerDied"),
    ],
)
def test_capture_keeps_the_texts_whatever_the_end(
    terminal: bool, outcome: str, error: str | None
) -> None:
    screen = run(CAPTURED, outcome, terminal=terminal)
    # Nothing the task (or the program it ran) wrote reached the parent's fds.
    assert screen.err == "", _show(screen)
    [line] = screen.out.splitlines()
    report = json.loads(line)
    assert report["stdout"] == "out: first\nout: written to fd 1\nfrom sh\nout: last\n"
    assert report["stderr"] == "err: first\nerr from sh\nerr: last\n"
    assert report["error"] == error
    assert report["cancelled"] == (outcome == "cancelled")
    # A future resolves once its texts are set; a cancelled one at once, before the reaping.
    texts = [report["stdout"], report["stderr"]]
    assert report["seen"] == [[None, None] if outcome == "cancelled" else texts]
    if error in ("WorkerDied", "TaskTimeout"):
        assert report["notes"] == [
            "inparallel: the end of the task's stderr:\nerr: first\nerr from sh\nerr: last"
        ]
    else:
        assert report["notes"] == []


CAPTURE_TAIL = """
@task(output="capture", max_output=1000)
def flood():
    for n in range(300):
        print(f"line {n:03}")
        print(f"err {n:03}", file=sys.stderr)
    os._exit(5)

fut = flood()
error = fut.exception(timeout=BOUND)
print(json.dumps({
    "stdout": fut.stdout,
    "stderr": fut.stderr,
    "error": type(error).__name__,
    "notes": error.__notes__,
}))
"""


@pytest.mark.parametrize("terminal", TERMINALS)
def test_capture_keeps_the_tail_of_each_stream(terminal: bool) -> None:
    screen = run(CAPTURE_TAIL, terminal=terminal)
    assert screen.err == "", _show(screen)
    report = json.loads(screen.out)
    assert report["error"] == "WorkerDied"
    pattern = r"\[inparallel: (\d+) bytes of earlier output dropped \(max_output=1000 bytes\)\]"
    for stream, word, size in (("stdout", "line", 9), ("stderr", "err", 8)):
        note, kept = report[stream].split("\n", 1)
        match = re.fullmatch(pattern, note)
        assert match, note
        lines = kept.splitlines()
        first = 300 - len(lines)
        assert lines == [f"{word} {n:03}" for n in range(first, 300)]  # whole lines, the last
        assert int(match[1]) == first * size
        assert 1000 - size <= len(kept) <= 1000  # a cut line's head goes too
    tail = "\n".join(f"err {n:03}" for n in range(290, 300))
    assert report["notes"] == [f"inparallel: the end of the task's stderr:\n{tail}"]


# -- tag -----------------------------------------------------------------------------------------

TAGGED = f"""
@task(output="tag", name="db")
def named():
    print("one")
    print("two", file=sys.stderr)
    subprocess.run({SH}, check=True, timeout=BOUND)
    sys.stdout.write("last, without a newline")
    return 1

@task(output="tag", name=lambda host, port=80: f"{{host}}:{{port}}")
def computed(host, port=80):
    print(f"hello from {{host}}")
    return 2

@task(output="tag")
def plain():
    print("plain line")
    return 3

for call in (named, lambda: computed("alpha", port=8080), plain):
    fut = call()
    value = fut.result(timeout=BOUND)
    print(f"parent got {{value}} from {{fut.name}} (pid {{fut.pid}})", flush=True)
"""


@pytest.mark.parametrize("terminal", TERMINALS)
def test_tag_prefixes_each_line_with_the_call_label(terminal: bool) -> None:
    screen = run(TAGGED, terminal=terminal)
    pids = re.findall(r"\(pid (\d+)\)", screen.out)
    assert len(pids) == 3, _show(screen)
    plain = f"plain:{pids[2]}"  # the default label: qualname:pid
    # Each task's lines come before its result() returns, its last line ended by a newline.
    assert screen.out == (
        "[db] one\n"
        "[db] from sh\n"
        "[db] last, without a newline\n"
        f"parent got 1 from db (pid {pids[0]})\n"
        "[alpha:8080] hello from alpha\n"
        f"parent got 2 from alpha:8080 (pid {pids[1]})\n"
        f"[{plain}] plain line\n"
        f"parent got 3 from {plain} (pid {pids[2]})\n"
    ), _show(screen)
    assert screen.err == "[db] two\n[db] err from sh\n"


TAG_KILLED = """
how = sys.argv[1]
beacon = _faults.Beacon()

@task(output="tag", name="doomed", timeout=1.0 if how == "timeout" else None)
def work():
    print("complete 1")
    print("complete 2")
    sys.stdout.write("partial")
    sys.stdout.flush()
    sys.stderr.write("err partial")
    sys.stderr.flush()
    beacon.send()
    signal.pause()

fut = work()
beacon.receive(timeout=BOUND)
if how == "kill":
    fut.kill()
if how == "cancel":
    assert fut.cancel()
    assert _faults.supervisor_idle()  # the thread reaps the child (and forwards), then leaves
    print("parent saw CancelledError", flush=True)
else:
    print("parent saw", type(fut.exception(timeout=BOUND)).__name__, flush=True)
"""


@pytest.mark.parametrize("terminal", TERMINALS)
@pytest.mark.parametrize(
    ("how", "error"),
    [("kill", "WorkerDied"), ("timeout", "TaskTimeout"), ("cancel", "CancelledError")],
)
def test_tag_forwards_a_killed_task_lines_and_its_last_partial_line(
    terminal: bool, how: str, error: str
) -> None:
    screen = run(TAG_KILLED, how, terminal=terminal)
    assert screen.out == (
        f"[doomed] complete 1\n[doomed] complete 2\n[doomed] partial\nparent saw {error}\n"
    ), _show(screen)
    assert screen.err == "[doomed] err partial\n"


def width(i: int, j: int) -> int:
    """The length of line ``j`` of task ``i``: up to 150 characters, and some over a page."""
    return (i * 7 + j * 13) % 150 + (5000 if j % 25 == 0 else 0)


CHATTY = (
    inspect.getsource(width)
    + """
import fcntl

tasks, lines = int(sys.argv[1]), int(sys.argv[2])
gate = _faults.Gate()

@task(output="tag", name=lambda i: f"w{i}")
def chatty(i):
    # A pipe of one page: a line longer than that reaches the parent in pieces.
    fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, 4096)
    gate.wait(BOUND)  # all of them write at once
    for j in range(lines):
        line = f"{i} {j} {'x' * width(i, j)}\\n".encode()
        cut = 1 + (i + j) % (len(line) - 1)  # two writes: the parent may read half a line
        os.write(1, line[:cut])
        os.write(1, line[cut:])
    print(f"bye {i}", file=sys.stderr)
    return i

in_flight = [chatty(i) for i in range(tasks)]
gate.release(tasks)
done = sorted(fut.result() for fut in waitfor(in_flight))
assert done == list(range(tasks)), done
print("parent: all done", flush=True)
"""
)


@pytest.mark.parametrize("terminal", TERMINALS)
def test_tag_lines_of_200_tasks_arrive_once_whole_and_in_order(terminal: bool) -> None:
    tasks, lines = 200, 100
    screen = run(CHATTY, str(tasks), str(lines), terminal=terminal)
    *forwarded, last = screen.out.splitlines()
    assert last == "parent: all done"
    seen: dict[int, list[int]] = {i: [] for i in range(tasks)}
    for text in forwarded:
        match = re.fullmatch(r"\[w(\d+)\] (\d+) (\d+) (x*)", text)
        assert match, f"a split or mixed line: {text[:200]!r}"
        i, j = int(match[2]), int(match[3])
        assert match[1] == match[2], text[:200]  # under its own task's label
        assert len(match[4]) == width(i, j), text[:200]
        seen[i].append(j)
    assert seen == {i: list(range(lines)) for i in range(tasks)}
    assert sorted(screen.err.splitlines()) == sorted(f"[w{i}] bye {i}" for i in range(tasks))


FLOOD = """
class Sink:
    # Stands for the terminal: checks what is forwarded, counts it, keeps none of it.
    encoding = "utf-8"

    def __init__(self):
        self.lines = self.chars = 0
        self.bad = []

    def write(self, text):
        for line in text.splitlines(keepends=True):
            if not (line.startswith("[flood] ") and line.endswith("\\n")):
                self.bad.append(line[:100])
            self.lines += 1
            self.chars += len(line) - len("[flood] \\n")
        return len(text)

    def flush(self):
        pass

@task(output="tag", name="flood")
def flood(lines, unbroken):
    block = (b"x" * 99 + b"\\n") * 10_000
    for _ in range(lines // 10_000):
        os.write(1, block)
    piece = b"y" * 2**20
    for start in range(0, unbroken, len(piece)):
        os.write(1, piece[: unbroken - start])
    return "done"

lines, unbroken = int(sys.argv[1]), int(sys.argv[2])
def status(field):
    # In KiB: VmRSS (now) or VmHWM (the peak since the last reset).
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(field + ":"))

sink = Sink()
sys.stdout = sink
flood(10_000, 0).result(timeout=BOUND)  # the first task's costs: the thread, the imports
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # the peak starts again from now (proc(5)), not from start-up's
before = status("VmRSS")
value = flood(lines, unbroken).result(timeout=BOUND * 2)
sys.stdout = sys.__stdout__
after = status("VmHWM")
print(json.dumps({
    "value": value, "lines": sink.lines, "chars": sink.chars, "bad": sink.bad[:5],
    "growth": (after - before) * 1024,
}))
"""


def test_a_task_flooding_its_tag_stream_does_not_grow_the_parent() -> None:
    lines, unbroken = 400_000, 10_000_000  # 50 MB: 40 in lines of 100 bytes, 10 in one line
    screen = run(FLOOD, str(lines), str(unbroken), terminal=False)
    report = json.loads(screen.out)
    assert report["value"] == "done"
    assert report["bad"] == []
    pieces = -(-unbroken // 2**16)  # a line longer than 64 KiB goes in pieces
    assert report["lines"] == 10_000 + lines + pieces
    assert report["chars"] == (10_000 + lines) * 99 + unbroken
    # The parent held a few reads' worth at a time, not the output (nor a tenth of it).
    assert report["growth"] < 5 * 2**20, report


# -- group ---------------------------------------------------------------------------------------

GROUPED = """
gate = _faults.Gate()

@task(output="group")
def chatty(i):
    for j in range(10):
        print(f"g{i} {j}")
    print(f"g{i} err 0", file=sys.stderr)
    gate.wait(BOUND)  # all of them write their second half at once
    for j in range(10, 20):
        line = f"g{i} {j}\\n".encode()
        os.write(1, line[:3])
        os.write(1, line[3:])
    print(f"g{i} err 1", file=sys.stderr)
    return i

in_flight = [chatty(i) for i in range(50)]
gate.release(50)
for fut in waitfor(in_flight):
    fut.result()
print("parent: all done", flush=True)
"""


def blocks(lines: list[str]) -> dict[str, list[str]]:
    """Group consecutive lines by their first word; fail if a word's lines are not one run."""
    runs: dict[str, list[str]] = {}
    previous = None
    for line in lines:
        key = line.split()[0]
        if key != previous:
            assert key not in runs, f"the block of {key} is split: {lines}"
            runs[key] = []
            previous = key
        runs[key].append(line)
    return runs


@pytest.mark.parametrize("terminal", TERMINALS)
def test_group_blocks_of_50_tasks_are_never_mixed(terminal: bool) -> None:
    screen = run(GROUPED, terminal=terminal)
    *grouped, last = screen.out.splitlines()
    assert last == "parent: all done"
    assert blocks(grouped) == {f"g{i}": [f"g{i} {j}" for j in range(20)] for i in range(50)}
    assert blocks(screen.err.splitlines()) == {
        f"g{i}": [f"g{i} err 0", f"g{i} err 1"] for i in range(50)
    }


GROUP_ORDER = """
first, second = _faults.Gate(), _faults.Gate()

@task(output="group")
def step(name, gate):
    print(f"{name} starts")
    gate.wait(BOUND)
    print(f"{name} ends")
    return name

a, b = step("a", first), step("b", second)
second.release()
print("parent got", b.result(timeout=BOUND), flush=True)
first.release()
print("parent got", a.result(timeout=BOUND), flush=True)
"""


@pytest.mark.parametrize("terminal", TERMINALS)
def test_group_writes_a_block_when_its_task_ends(terminal: bool) -> None:
    # "a starts" is written before b ends, but shown only with the rest of a's block.
    screen = run(GROUP_ORDER, terminal=terminal)
    expected = "b starts\nb ends\nparent got b\na starts\na ends\nparent got a\n"
    assert screen.out == expected, _show(screen)


GROUP_ENDED = f"""
how = sys.argv[1]
beacon = _faults.Beacon()

@task(output="group")
def work():
    print("before the end")
    subprocess.run({SH}, check=True, timeout=BOUND)
    print("on stderr", file=sys.stderr)
    sys.stdout.write("without a newline")
    sys.stdout.flush()
    beacon.send()
    if how == "segfault":
        _faults.segfault()
    signal.pause()

fut = work()
beacon.receive(timeout=BOUND)
if how == "cancel":
    assert fut.cancel()
    assert _faults.supervisor_idle()  # the thread reaps the child (and writes), then leaves
    print("parent saw CancelledError", flush=True)
else:
    error = fut.exception(timeout=BOUND)
    print("parent saw", type(error).__name__, signal.Signals(error.signal).name, flush=True)
"""


@pytest.mark.parametrize("terminal", TERMINALS)
@pytest.mark.parametrize(
    ("how", "seen"), [("segfault", "WorkerDied SIGSEGV"), ("cancel", "CancelledError")]
)
def test_group_writes_the_block_of_a_crashed_or_cancelled_task(
    terminal: bool, how: str, seen: str
) -> None:
    screen = run(GROUP_ENDED, how, terminal=terminal)
    assert screen.out == (f"before the end\nfrom sh\nwithout a newline\nparent saw {seen}\n"), (
        _show(screen)
    )
    assert screen.err == "err from sh\non stderr\n"


# -- a parent whose stdout went away ------------------------------------------------------------

HUNG_UP = """
go = int(os.environ["TEST_GO_FD"])

@task(output=sys.argv[1], name="chatty")
def chatty(n):
    for j in range(n):
        print(f"line {j}")
    return n

print("parent: started", flush=True)
os.read(go, 1)  # stdout has no reader any more
results = [chatty(2000).result(timeout=BOUND) for _ in range(3)]
print("parent got", results, file=sys.stderr, flush=True)
os._exit(0)  # the interpreter's last flush of stdout would only fail
"""


@pytest.mark.parametrize("terminal", TERMINALS)
@pytest.mark.parametrize("mode", ["tag", "group"])
def test_forwarding_into_a_closed_stdout_fails_no_task(
    terminal: bool, mode: str, go_pipe: tuple[int, int, dict[str, str]]
) -> None:
    # As under `| head -1`, or in a terminal that was closed: the lines are dropped.
    r, w, env = go_pipe
    with Parent(HUNG_UP, mode, terminal=terminal, env=env, pass_fds=[r]) as parent:
        parent.read_until("parent: started\n")
        parent.hang_up("out")
        os.write(w, b"g")
        screen = parent.finish()
    assert screen.err == "parent got [2000, 2000, 2000]\n"


# -- a progress bar ------------------------------------------------------------------------------

PROGRESS = """
mode, hosts = sys.argv[1], int(sys.argv[2])

@task(output=mode, name=lambda i: f"host{i}")
def check(i):
    for j in range(4):
        print(f"line {j} of host {i}")
    return i

in_flight, pending = [], list(range(hosts))
for fut in waitfor(in_flight, 4, progress=True):
    if fut is None:
        if pending:
            in_flight.append(check(pending.pop(0)))
        continue
    fut.result()
print("parent: all done", flush=True)
"""


@pytest.mark.parametrize("mode", ["tag", "group"])
def test_forwarded_lines_go_above_a_progress_bar(mode: str) -> None:
    pytest.importorskip("tqdm")
    hosts = 24
    # One terminal for stdout (the lines) and stderr (the bar), as in a shell.
    screen = run(PROGRESS, mode, str(hosts), terminal=True, merged=True)
    prefix = r"\[host(?P<label>\d+)\] " if mode == "tag" else ""
    line = re.compile(prefix + r"line (?P<line>\d) of host (?P<host>\d+)")
    seen = []
    bar_drawn = False
    # The bar redraws itself after a carriage return; a line written above it is what is left
    # after the last one before the newline. Every other piece is a bar or blanks.
    for row in screen.out.split("\n"):
        *drawn, shown = row.split("\r")
        for piece in drawn:
            assert "host" not in piece and "line" not in piece, f"a garbled line: {row!r}"
        bar_drawn = bar_drawn or f"{hosts}/{hosts}" in row
        if "host" in shown or "line" in shown:
            match = line.fullmatch(shown)
            assert match, f"a garbled line: {row!r}"
            if mode == "tag":
                assert match["label"] == match["host"], row
            seen.append((int(match["host"]), int(match["line"])))
    assert bar_drawn, screen.raw
    assert sorted(seen) == [(i, j) for i in range(hosts) for j in range(4)]
    assert "parent: all done" in screen.out.split("\n")
