"""Fault injectors and process helpers shared by the test suite.

Import it as ``import _faults`` (pytest puts ``tests/`` on ``sys.path``; subprocess harnesses get
it through `python_env`). Everything here is usable from any test, including the ledger:

* **Objects that misbehave while crossing the result pipe.** Their classes live at module level,
  so the parent can unpickle them by reference. Pickling runs in the child (the task's process),
  unpickling in the parent. ``*AtPickle`` classes fail in the child, ``*AtUnpickle`` classes fail
  only in the process that imported this module first (`PARENT_PID`), so a round-trip check made
  in the child still succeeds and the failure really happens in the parent.
* **Exceptions that do not survive a plain pickle round trip** (`BadInitError`, `KwOnlyError`,
  `UnpicklableError`, `FrozenError`, `ParentOnlyError`).
* **Ways to die** without leaving core files or faulthandler noise (`segfault`, `abort`,
  `kill_self`), and `on_exit`, which runs a hook at the moment the child leaves through
  ``os._exit`` (after its result was sent).
* **Raw access to the child's result pipe** (`result_pipe_fds`, `write_result_pipe`), found by
  inspecting ``/proc/self/fd``, so tests can forge frames without knowing the wire format.
* **Grandchildren** that hold the task's result pipe and every inherited fd open
  (`fork_holder`), `subreaper` so that orphans come back to the test process, and `reap` to
  kill and collect them.
* **Synchronisation without sleeps**: `Gate` (parent releases children) and `Beacon` (children
  signal the parent), both plain pipes inherited through fork; `wait_exception`, `join_all` and
  `deadline` bound the waits that take no timeout of their own.
* **Ctrl-C at a chosen point**: `InterruptAt` raises SIGINT at the k-th check point the
  library passes in the calling thread (or only counts them).
* **Measurements from /proc**: `fd_table`, `stat_fields` (the one ``/proc/<pid>/stat`` parser),
  `process_state`, `child_pids`, `bytes_read`, `context_switches`, `thread_blocked`, and
  `stop_mid_stream`, which freezes a child while its result is half transferred.
* **Deterministic payloads** (`blob`, `ascii_blob`, `digest`) and `run_python` for subprocess
  harnesses.

Waits default to the suite's timing constants (``tests/_timing.py``).

Helpers meant to run inside a task say so in their docstring; they must not be called in the
test process itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import dis
import faulthandler
import fcntl
import hashlib
import os
import resource
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

if __package__:  # imported as tests._faults (the ledger harness, ``python -m tests._ledger``)
    from ._timing import BOUND, PATIENCE, PROMPT
else:  # imported as _faults, with tests/ on sys.path (pytest, harnesses given `python_env`)
    from _timing import BOUND, PATIENCE, PROMPT

#: The process that imported this module first: the test process (or a harness's main process).
#: Forked children inherit the value, so ``os.getpid() != PARENT_PID`` means "in a child".
PARENT_PID = os.getpid()

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


def in_parent() -> bool:
    """Return True in the process that imported this module first."""
    return os.getpid() == PARENT_PID


class InjectedFault(Exception):
    """Raised by the injectors below, so tests can recognise a planned failure by its type."""


# -- dying on purpose ----------------------------------------------------------------------------


def _quiet_death() -> None:
    # No core file in the working directory, no faulthandler dump on the test's stderr: the test
    # asserts on the exit status, not on the crash report.
    with contextlib.suppress(Exception):
        faulthandler.disable()
    with contextlib.suppress(Exception):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))


def segfault() -> NoReturn:
    """Die of a real SIGSEGV (a NULL read through ctypes). Call in a child only."""
    _quiet_death()
    ctypes.string_at(0)
    os.kill(os.getpid(), signal.SIGSEGV)  # pragma: no cover - string_at(0) does not return
    raise AssertionError("unreachable")


def abort() -> NoReturn:
    """Die of SIGABRT through ``os.abort()``. Call in a child only."""
    _quiet_death()
    os.abort()


def kill_self(sig: int = signal.SIGKILL) -> NoReturn:
    """Send ``sig`` (default SIGKILL) to this process and wait for it. Call in a child only."""
    _quiet_death()
    os.kill(os.getpid(), sig)
    while True:  # a catchable signal may take a moment to be delivered
        signal.pause()


# -- results that misbehave while being pickled in the child --------------------------------------


class CrashAtPickle:
    """A return value whose pickling segfaults the child (loky's ``CrashAtPickle``)."""

    def __reduce__(self) -> Any:
        segfault()


class ExitAtPickle:
    """A return value whose pickling raises ``SystemExit(code)`` in the child."""

    def __init__(self, code: int = 7) -> None:
        self.code = code

    def __reduce__(self) -> Any:
        sys.exit(self.code)


class HardExitAtPickle:
    """A return value whose pickling calls ``os._exit(code)`` (loky's ``CExitAtPickle``)."""

    def __init__(self, code: int = 0) -> None:
        self.code = code

    def __reduce__(self) -> Any:
        os._exit(self.code)


class RaiseAtPickle:
    """A return value whose pickling raises `InjectedFault` (a plain unpicklable value)."""

    def __reduce__(self) -> Any:
        raise InjectedFault("this object refuses to be pickled")


class Payload:
    """A plain, weak-referenceable result object (to check who keeps results alive)."""

    def __init__(self, data: object = None) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Payload) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]


# -- results that misbehave while being unpickled in the parent ------------------------------------


def _rebuild_or_fail(message: str) -> ErrorAtUnpickle:
    if in_parent():
        raise InjectedFault(message)
    return ErrorAtUnpickle(message)


def _rebuild_or_exit(code: int) -> ExitAtUnpickle:
    if in_parent():
        sys.exit(code)
    return ExitAtUnpickle(code)


class ErrorAtUnpickle:
    """A return value that pickles fine but raises `InjectedFault` when loaded in the parent."""

    def __init__(self, message: str = "refusing to load in the parent") -> None:
        self.message = message

    def __reduce__(self) -> Any:
        return (_rebuild_or_fail, (self.message,))


class ExitAtUnpickle:
    """A return value whose loading calls ``sys.exit(code)`` in the parent (and only there)."""

    def __init__(self, code: int = 5) -> None:
        self.code = code

    def __reduce__(self) -> Any:
        return (_rebuild_or_exit, (self.code,))


class ForgedResult:
    """A return value whose unpickling would run ``touch <path>`` through ``os.system``.

    Loading it executes a shell command: use it only against ``restricted_results=True``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {shlex.quote(self.path)}",))


# -- exceptions that do not survive a plain pickle round trip --------------------------------------


class BadInitError(Exception):
    """``__init__`` takes two arguments but ``args`` holds one string: plain unpickling fails."""

    def __init__(self, a: object, b: object) -> None:
        super().__init__(f"{a}:{b}")
        self.a = a
        self.b = b


class KwOnlyError(Exception):
    """``__init__`` takes a keyword-only argument: plain unpickling fails."""

    def __init__(self, *, code: int) -> None:
        super().__init__(f"code={code}")
        self.code = code


class UnpicklableError(Exception):
    """Holds a lock, so it cannot be pickled at all (neither by pickle nor by cloudpickle)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    """A frozen dataclass exception (pebble's test case): attributes cannot be set after init.

    Plain pickle cannot restore it (``__setstate__`` trips over the frozen ``__setattr__``), and
    neither ``__traceback__`` nor ``__cause__`` can be assigned to it.
    """

    code: int
    detail: str = ""


def _rebuild_error_or_fail(message: str) -> ParentOnlyError:
    if in_parent():
        raise InjectedFault(message)
    return ParentOnlyError(message)


class ParentOnlyError(Exception):
    """An exception that round-trips in the child but cannot be loaded in the parent."""

    def __reduce__(self) -> Any:
        return (_rebuild_error_or_fail, (str(self),))


# -- leaving the child -----------------------------------------------------------------------------


def on_exit(hook: Callable[[int], object]) -> None:
    """Make ``hook(status)`` run when this process next calls ``os._exit``. Call in a child only.

    A forked task leaves through ``os._exit`` once its outcome has been sent, so the hook runs
    *after* the result is on its way: it can crash, stop or stall the child at exactly that point.
    If the hook returns, the real ``os._exit(status)`` follows.
    """
    real_exit = os._exit

    def _exit(status: int) -> NoReturn:
        os._exit = real_exit
        hook(status)
        real_exit(status)

    os._exit = _exit


# -- the child's result pipe -----------------------------------------------------------------------


def fd_table() -> dict[int, str]:
    """Return this process's open fds mapped to their ``readlink`` targets."""
    table = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            table[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the fd listdir itself used, already closed
    return table


#: This process's fds at the start of the current test (the leak fixture in conftest.py calls
#: `mark_baseline` first thing), or, outside pytest, when this module was imported. A baseline
#: taken at import would be stale: pytest's plugins open fds of their own after the conftest
#: imports this module, and a task would see them as new.
BASELINE_FDS: dict[int, str] = {}

#: The pipe ends of every open `Gate` and `Beacon`: the test's own, never a library fd.
TEST_FDS: set[int] = set()


def mark_baseline() -> dict[int, str]:
    """Record this process's fds now as `BASELINE_FDS` (done at the start of every test)."""
    BASELINE_FDS.clear()
    BASELINE_FDS.update(fd_table())
    return dict(BASELINE_FDS)


def fd_mode(fd: int) -> int:
    """Return ``os.O_RDONLY``, ``os.O_WRONLY`` or ``os.O_RDWR`` for an open fd."""
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


def result_pipe_fds(exclude: Sequence[int] = ()) -> list[int]:
    """Return the write-only pipe fds of this process other than 0-2 and ``exclude``.

    Pipes the test process had when its test started (`BASELINE_FDS`) and the ends of open
    `Gate` and `Beacon` objects (`TEST_FDS`) are skipped. Called in a task, this finds the
    result pipe's write end (pass any other pipe the test made itself in ``exclude``), whatever
    the library's wire format.
    """
    found = []
    for fd, target in sorted(fd_table().items()):
        if fd <= 2 or fd in exclude or fd in TEST_FDS or not target.startswith("pipe:"):
            continue
        if BASELINE_FDS.get(fd) == target:
            continue  # the test process had it before the test ran (pytest's capture, ...)
        with contextlib.suppress(OSError):
            if fd_mode(fd) == os.O_WRONLY:
                found.append(fd)
    return found


def write_result_pipe(data: bytes, exclude: Sequence[int] = ()) -> int:
    """Write ``data`` straight into this task's result pipe; return the fd. Call in a task only.

    ``O_ASYNC`` is cleared first: a lifeline that asks the kernel to signal the writer when the
    reader drains the pipe would otherwise kill the task while it forges its frame.
    """
    fds = result_pipe_fds(exclude)
    if len(fds) != 1:
        raise AssertionError(f"expected exactly one result pipe, found {fds} in {fd_table()}")
    fd = fds[0]
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_ASYNC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return fd


mark_baseline()


# -- grandchildren ---------------------------------------------------------------------------------

_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Make orphaned descendants re-parent to this process (Linux ``PR_SET_CHILD_SUBREAPER``).

    A grandchild that outlives its task then becomes a child of the test process, so `reap` can
    collect it with ``waitpid`` and the leak fixture can see it if a test forgets to.
    """
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield
    finally:
        _prctl(_PR_SET_CHILD_SUBREAPER, 0)


def fork_holder(
    seconds: float = PATIENCE,
    *,
    wait_fd: int | None = None,
    then: Callable[[], object] | None = None,
    exclude: Sequence[int] = (),
) -> int:
    """Fork a grandchild that holds the task's result pipe open; return its pid. In a task only.

    The library's at-fork hook closes the task's own result-pipe fd in anything the task forks,
    so the grandchild gets a duplicate of it (as a program started with the fd passed on would
    have), besides every other inherited fd. It holds them for ``seconds``, or until one byte
    (or EOF) can be read from ``wait_fd``; it then runs ``then()`` (if given) and exits with
    ``os._exit``. Nothing in it flushes or writes stdio. ``exclude`` is as for
    `result_pipe_fds`, which must find exactly one pipe.
    """
    (fd,) = result_pipe_fds(exclude)
    held = os.dup(fd)
    pid = os.fork()
    if pid:
        os.close(held)  # only the grandchild holds the duplicate
        return pid
    status = 0
    try:
        if wait_fd is None:
            time.sleep(seconds)  # the grandchild's whole job is to stay alive, holding fds
        else:
            select.select([wait_fd], [], [], seconds)
        if then is not None:
            then()
    except BaseException:
        status = 1
    finally:
        os._exit(status)


def reap(pid: int, timeout: float = BOUND) -> int | None:
    """SIGKILL ``pid`` and collect its status once it is (or becomes) a child of this process.

    Returns the ``waitpid`` status, or None if the process never became our child within
    ``timeout`` (it was killed all the same). Use it under `subreaper` for grandchildren.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            got, status = 0, 0  # not re-parented to us yet (its parent has not been reaped)
            if process_state(pid) is None:
                return None
        if got == pid:
            return status
        if time.monotonic() > deadline:
            return None
        time.sleep(0.005)  # waiting for the kernel to re-parent or finish killing: no event


def stat_fields(pid: int | str, tid: int | None = None) -> list[bytes] | None:
    """Return the fields of ``/proc/<pid>/stat`` (or of its thread ``tid``) from field 3 on.

    Index 0 is the state, 1 the parent's pid, 11 and 12 the user and system CPU ticks
    (proc(5), fields 3, 4, 14 and 15). The command name before them is skipped: it is in
    parentheses and may contain spaces and parentheses itself. Returns None if the process (or
    thread) no longer exists, however that shows: no entry, or one that vanished mid-read.
    """
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if not data:
        return None
    return data[data.rindex(b")") + 2 :].split()


def process_state(pid: int) -> str | None:
    """Return the one-letter state of ``pid`` from ``/proc`` ('R', 'S', 'T', 'Z', ...) or None."""
    fields = stat_fields(pid)
    return None if fields is None else fields[0].decode()


def child_pids() -> set[int]:
    """Return the pids (running or zombie) whose parent is this process."""
    me = os.getpid()
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(entry)) is not None and int(fields[1]) == me:
            pids.add(int(entry))
    return pids


def survivors(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait (on pidfds) up to ``timeout`` seconds for every pid to exit; return the rest.

    A zombie counts as gone.
    """
    fds: dict[int, int] = {}
    try:
        for pid in set(pids):
            try:
                fds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                continue  # already exited and reaped
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        pending = set(fds)
        deadline = time.monotonic() + timeout
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                pending.discard(fd)
                poller.unregister(fd)
        return sorted(fds[fd] for fd in pending)
    finally:
        for fd in fds:
            os.close(fd)


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and has not exited (a zombie counts as gone)."""
    state = process_state(pid)
    return state is not None and state not in "ZX"


def wait_state(pid: int, states: str, timeout: float = BOUND) -> bool:
    """Wait until ``pid`` is in one of ``states`` (letters, see `process_state`)."""
    deadline = time.monotonic() + timeout
    while True:
        state = process_state(pid)
        if state is not None and state in states:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)  # a signal's delivery has no event we could wait on


# -- synchronisation -------------------------------------------------------------------------------


class Gate:
    """A pipe that tasks block on until the test releases them.

    ``wait()`` runs in the task (it first closes the task's inherited copy of the write end, so
    the test can always unblock everyone by closing its own); ``release(n)`` lets ``n`` waiters
    through. `close` releases every waiter, then closes both ends. Use as a context manager.
    """

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        TEST_FDS.update((self.r, self.w))
        self._owner = os.getpid()
        self._closed = False
        self._child_closed = False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until released; return False on timeout. Call in a task only."""
        if os.getpid() != self._owner and not self._child_closed:
            self._child_closed = True
            with contextlib.suppress(OSError):
                os.close(self.w)
        ready, _, _ = select.select([self.r], [], [], timeout)
        if not ready:
            return False
        os.read(self.r, 1)
        return True

    def release(self, n: int = 1) -> None:
        os.write(self.w, b"g" * n)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.w, fcntl.F_SETFL, os.O_NONBLOCK)
            os.write(self.w, b"g" * 4096)
        TEST_FDS.difference_update((self.r, self.w))
        os.close(self.w)
        os.close(self.r)

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Beacon:
    """A pipe that tasks write to and the test reads from.

    ``send(data)`` runs in a task (or a grandchild); ``receive(n, timeout)`` in the test returns
    the next ``n`` bytes, or raises `TimeoutError`. Use as a context manager.
    """

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        TEST_FDS.update((self.r, self.w))
        self._closed = False

    @property
    def fds(self) -> tuple[int, int]:
        return (self.r, self.w)

    def send(self, data: bytes = b"!") -> None:
        os.write(self.w, data)

    def send_int(self, value: int) -> None:
        os.write(self.w, struct.pack("<q", value))

    def receive(self, n: int = 1, timeout: float = BOUND) -> bytes:
        deadline = time.monotonic() + timeout
        data = b""
        while len(data) < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.r], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"beacon: got {data!r} of {n} bytes within {timeout}s")
            chunk = os.read(self.r, n - len(data))
            if not chunk:
                raise EOFError(f"beacon closed after {data!r}")
            data += chunk
        return data

    def receive_int(self, timeout: float = BOUND) -> int:
        return struct.unpack("<q", self.receive(8, timeout))[0]

    def lines(self, n: int, timeout: float = BOUND) -> list[str]:
        """Return the next ``n`` newline-terminated records sent, or raise `TimeoutError`.

        Senders must write each record in one ``send`` (a pipe keeps writes of up to 4 KiB
        whole, so records from several processes never interleave).
        """
        deadline = time.monotonic() + timeout
        data = b""
        while data.count(b"\n") < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.r], [], [], max(left, 0))
            if not ready:
                got = data.count(b"\n")
                raise TimeoutError(f"beacon: {got} of {n} records within {timeout}s: {data!r}")
            chunk = os.read(self.r, 1)  # one byte at a time: never read past the n-th record
            if not chunk:
                raise EOFError(f"beacon closed after {data!r}")
            data += chunk
        return data.decode().splitlines()

    def pending(self) -> bool:
        """Return True if something was sent and not yet received."""
        ready, _, _ = select.select([self.r], [], [], 0)
        return bool(ready)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        TEST_FDS.difference_update((self.r, self.w))
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Beacon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drain(it: Iterator[Any]) -> tuple[list[Any], BaseException | None]:
    """Consume ``it``; return the values and the exception that ended it (or None)."""
    out: list[Any] = []
    try:
        for value in it:
            out.append(value)
    except BaseException as exc:
        return out, exc
    return out, None


def wait_until(check: Callable[[], object], timeout: float = BOUND) -> bool:
    """Wait up to ``timeout`` seconds for ``check()`` to be true; return whether it became so.

    For conditions only ``/proc`` can show (another process's state, a count): it checks
    every millisecond or so. Anything with an event, a pipe or a pidfd waits on that instead.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return bool(check())
        time.sleep(0.001)  # polling /proc: there is no event to wait on
    return True


@contextlib.contextmanager
def supervisor_held() -> Iterator[None]:
    """Keep the supervisor thread busy in a done-callback for the block: no result is read.

    A task called in the block sends its frame and then waits (see `waits_for_parent`) until
    the block ends. The callback's own task must have succeeded.
    """
    from inparallel import task

    in_callback, release = threading.Event(), threading.Event()

    @task
    def quick() -> int:
        return 1

    def hold(_: object) -> None:
        in_callback.set()
        release.wait(PATIENCE)

    first = quick()
    first.add_done_callback(hold)
    try:
        assert in_callback.wait(PATIENCE), "the supervisor never ran the callback"
        yield
    finally:
        release.set()
    assert first.result(timeout=PATIENCE) == 1


def waits_for_parent(pid: int, timeout: float = PATIENCE) -> bool:
    """Whether task process ``pid`` reaches its wait for the parent to read its big result."""

    def waiting() -> bool:
        with open(f"/proc/{pid}/wchan") as f:
            return "poll" in f.read()

    return wait_until(waiting, timeout)


def wait_exception(fut: Any, timeout: float = PATIENCE) -> tuple[BaseException, float]:
    """Return the future's exception and the seconds it took to arrive from now.

    Fails if the future succeeded. For a task it also checks that the child was reaped before
    the future was resolved (its ``exitcode`` is known).
    """
    from inparallel import TaskFuture

    start = time.monotonic()
    exc = fut.exception(timeout=timeout)
    elapsed = time.monotonic() - start
    assert exc is not None, f"{fut!r} succeeded with {fut.result()!r}"
    if isinstance(fut, TaskFuture):
        assert fut.exitcode is not None, f"{fut!r} was resolved before its child was reaped"
    return exc, elapsed


def join_all(threads: Iterable[threading.Thread], timeout: float = BOUND) -> list[str]:
    """Join every thread within one deadline of ``timeout`` seconds; return those still alive."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    return [thread.name for thread in threads if thread.is_alive()]


class Overdue(AssertionError):
    """Raised by `deadline` in the main thread when its block runs past its time."""


@contextlib.contextmanager
def deadline(seconds: float, what: str = "the block") -> Iterator[None]:
    """Fail with `Overdue` if the block still runs after ``seconds``. Main thread only.

    For the waits that take no timeout of their own (iterating a map, a blocking generator,
    ``asyncio.run``): a SIGALRM interrupts the wait and its handler raises, so a regression
    fails with a message instead of hanging until pytest-timeout. An outer timer (pytest-timeout
    uses SIGALRM too) is put back afterwards, less the time spent; if it falls due first, its
    own handler runs. Forked tasks reset the handler, and no child inherits the timer.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("deadline() uses SIGALRM: call it in the main thread")
    start = time.monotonic()
    outer_handler = signal.getsignal(signal.SIGALRM)
    outer: list[float] = []

    def expire(signum: int, frame: Any) -> None:
        if outer and time.monotonic() >= outer[0] - 0.001 and callable(outer_handler):
            outer_handler(signum, frame)
            return
        raise Overdue(f"{what} did not finish within {seconds} s")

    signal.signal(signal.SIGALRM, expire)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    if outer_delay:
        outer.append(start + outer_delay)
        if outer_delay < seconds:
            signal.setitimer(signal.ITIMER_REAL, outer_delay)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer_handler)
        if outer:
            left = max(outer[0] - time.monotonic(), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


# -- Ctrl-C at a chosen point ----------------------------------------------------------------------


class InterruptAt:
    """Deliver SIGINT at the ``at``-th check point the library passes in this thread.

    CPython runs signal handlers only at check points: a function's start (``RESUME``), a
    backward jump, and right after a call into C code (``os.fork()`` included). A return from
    a Python function is none, so a Python caller stores what we return before any handler
    runs. The tracer raises the signal at exactly those points, so the handler runs where a
    real Ctrl-C's would. ``at=-1`` only counts them.
    """

    CHECKED = frozenset({"RESUME", "JUMP_BACKWARD"})
    CALLS = frozenset({"CALL", "CALL_FUNCTION_EX", "CALL_KW"})

    def __init__(self, at: int) -> None:
        import inparallel  # the library's own code is what is traced, wherever it was loaded

        self.package_dir = os.path.dirname(inparallel.__file__)
        self.at = at
        self.seen = 0
        self.fired = False
        self.pid = os.getpid()
        self.python_calls = 0  # frames entered: a call that entered none went into C
        self.after_call: dict[int, int] = {}  # frame id -> python_calls when its CALL ran

    def _global(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if os.getpid() != self.pid:  # a forked child inherits the tracer: stay out of it
            sys.settrace(None)
            return None
        self.python_calls += 1
        if not frame.f_code.co_filename.startswith(self.package_dir):
            return None
        self._check_point()  # the frame's RESUME, which comes as this event, not an opcode
        frame.f_trace = self._local  # first: 3.12+ turns opcode events on for a traced frame
        frame.f_trace_opcodes = True
        return self._local

    def _check_point(self) -> None:
        if self.seen == self.at and not self.fired:
            self.fired = True
            signal.raise_signal(signal.SIGINT)  # its handler runs here, as a real one's
        self.seen += 1

    def _local(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if os.getpid() != self.pid:
            sys.settrace(None)
            return None
        if event != "opcode":
            return self._local
        name = dis.opname[frame.f_code.co_code[frame.f_lasti]]
        calls = self.after_call.pop(id(frame), None)
        if name in self.CHECKED or calls == self.python_calls:
            self._check_point()
        if name in self.CALLS:
            self.after_call[id(frame)] = self.python_calls
        return self._local

    def __enter__(self) -> InterruptAt:
        # CPython 3.12.1 emits opcode events only if a frame asked for them before settrace.
        sys._getframe().f_trace_opcodes = True
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)


# -- measurements from /proc -----------------------------------------------------------------------


def bytes_read() -> int:
    """Return the bytes this whole process has read through syscalls (``rchar``)."""
    with open("/proc/self/io", "rb") as f:
        for line in f:
            if line.startswith(b"rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def context_switches(native_id: int) -> int:
    """Return the voluntary context switches of one thread of this process (its wake-ups)."""
    with open(f"/proc/self/task/{native_id}/status", "rb") as f:
        for line in f:
            if line.startswith(b"voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in status")


def thread_blocked(native_id: int) -> bool:
    """Whether a thread of this process sleeps in a poll/select/epoll wait right now."""
    fields = stat_fields("self", native_id)
    if fields is None or fields[0] != b"S":
        return False
    try:
        with open(f"/proc/self/task/{native_id}/wchan") as f:
            channel = f.read()
    except OSError:
        return False
    return "poll" in channel or "select" in channel


def pipe_backlog(pid: int) -> int:
    """Return the bytes waiting in the pipes that process ``pid`` writes and this process reads.

    Our read ends of the pipes the two processes share (the result pipe of a task: the
    supervisor's end), leaving out the test's own `Gate` and `Beacon` pipes (`TEST_FDS`).
    """
    theirs = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                theirs.add(os.readlink(f"/proc/{pid}/fd/{name}"))
    waiting = 0
    for fd, target in fd_table().items():
        if target not in theirs or not target.startswith("pipe:") or fd in TEST_FDS:
            continue
        with contextlib.suppress(OSError):  # closed meanwhile by the supervisor
            if fd_mode(fd) == os.O_RDONLY:
                (count,) = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))
                waiting += count
    return waiting


def stop_mid_stream(pid: int, baseline: int, min_bytes: int, timeout: float = PATIENCE) -> int:
    """Leave child ``pid`` SIGSTOPped once this process has read ``min_bytes`` since ``baseline``.

    ``baseline`` is a `bytes_read` value taken before the child started writing its result.
    The child is stopped at once, then let run in slices of a few milliseconds, so it freezes
    with its result partly transferred whatever the machine's speed. Returns the bytes read
    once the parent has drained what the child had already written (so the count is stable).
    Raises `TimeoutError` if the transfer never got that far (the child is left stopped).
    """
    os.kill(pid, signal.SIGSTOP)
    wait_state(pid, "TtZ")
    deadline = time.monotonic() + timeout
    while (got := bytes_read() - baseline) < min_bytes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {got} bytes arrived from pid {pid}")
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.002)  # the time slice the child may run before it is stopped again
        os.kill(pid, signal.SIGSTOP)
        wait_state(pid, "TtZ")
    # The supervisor drains what was already in the pipe: then the count is stable.
    if not wait_until(lambda: pipe_backlog(pid) == 0, PROMPT):
        raise TimeoutError(f"the parent did not drain the pipe of stopped pid {pid}")
    return bytes_read() - baseline


def child_rlimit(resource_id: int) -> tuple[int, int]:
    """Return ``getrlimit(resource_id)``; a trivial wrapper that reads well inside a task."""
    return resource.getrlimit(resource_id)


# -- deterministic payloads ------------------------------------------------------------------------

_CHUNK = 1 << 16
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TO_ASCII = bytes(_ALPHABET[i % 64] for i in range(256))


def blob(size: int, seed: int = 0) -> bytes:
    """Return ``size`` pseudo-random bytes; every 64 KiB chunk starts with its own index.

    Cheap to regenerate anywhere (about 0.1 s per 256 MiB), so a test can compare digests
    without keeping a second copy. Reordered, dropped or repeated chunks change the digest.
    """
    base = hashlib.shake_256(seed.to_bytes(8, "little")).digest(_CHUNK)
    count, tail = divmod(size, _CHUNK)
    parts = [struct.pack("<Q", i) + base[8:] for i in range(count)]
    parts.append(base[:tail])
    return b"".join(parts)


def ascii_blob(size: int, seed: int = 0) -> bytes:
    """Like `blob`, but only ASCII letters, digits, ``+`` and ``/`` (decode it to get a str)."""
    base = hashlib.shake_256(seed.to_bytes(8, "little")).digest(_CHUNK).translate(_TO_ASCII)
    count, tail = divmod(size, _CHUNK)
    parts = [b"%016x" % i + base[16:] for i in range(count)]
    parts.append(base[:tail])
    return b"".join(parts)


def digest(data: bytes | bytearray | memoryview | str) -> str:
    """Return a hex SHA-256 of bytes, or of a str's ASCII/UTF-8 encoding."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


# -- subprocess harnesses --------------------------------------------------------------------------


def python_env(
    extra: Mapping[str, str] | None = None, *, unbuffered: bool = False
) -> dict[str, str]:
    """Return an environment for a harness interpreter that can import inparallel and _faults.

    ``PYTHONUNBUFFERED`` is removed unless ``unbuffered``: buffered stdio is what exposes
    duplicated or lost output after fork.
    """
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    env.pop("PYTHONSTARTUP", None)
    paths = [str(REPO_ROOT), str(TESTS_DIR)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def run_python(
    code: str,
    *,
    timeout: float = PATIENCE,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    args: Sequence[str] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run ``code`` in a fresh interpreter (the one running the tests) from the repo root.

    stdout and stderr are pipes (so stdio is block-buffered in the harness); ``input`` feeds
    stdin (``/dev/null`` when None). ``env`` defaults to `python_env`. A harness that hangs
    dumps its threads' stacks to stderr and exits shortly before ``timeout``, so the failure
    shows where it was stuck; keep ``timeout`` below the per-test timeout (60 s).
    """
    watchdog = max(timeout - 3.0, 1.0)
    prologue = f"import faulthandler; faulthandler.dump_traceback_later({watchdog}, exit=True)\n"
    return subprocess.run(
        [sys.executable, "-c", prologue + code, *args],
        cwd=REPO_ROOT,
        env=dict(env) if env is not None else python_env(),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


__all__ = (
    "BASELINE_FDS",
    "PARENT_PID",
    "REPO_ROOT",
    "TESTS_DIR",
    "TEST_FDS",
    "BadInitError",
    "Beacon",
    "CrashAtPickle",
    "ErrorAtUnpickle",
    "ExitAtPickle",
    "ExitAtUnpickle",
    "ForgedResult",
    "FrozenError",
    "Gate",
    "HardExitAtPickle",
    "InjectedFault",
    "InterruptAt",
    "KwOnlyError",
    "Overdue",
    "ParentOnlyError",
    "Payload",
    "RaiseAtPickle",
    "UnpicklableError",
    "abort",
    "alive",
    "ascii_blob",
    "blob",
    "bytes_read",
    "child_pids",
    "child_rlimit",
    "context_switches",
    "deadline",
    "digest",
    "fd_mode",
    "fd_table",
    "fork_holder",
    "in_parent",
    "join_all",
    "kill_self",
    "mark_baseline",
    "on_exit",
    "pipe_backlog",
    "process_state",
    "python_env",
    "reap",
    "result_pipe_fds",
    "run_example",
    "run_python",
    "segfault",
    "stat_fields",
    "stop_mid_stream",
    "subreaper",
    "survivors",
    "thread_blocked",
    "wait_exception",
    "wait_state",
    "wait_until",
    "write_result_pipe",
)


def run_example(name: str, timeout: float = PATIENCE, *, as_module: bool = False) -> list[str]:
    """Run ``examples/<name>``; assert it exits 0 with nothing on stderr; return its stdout lines.

    ``as_module`` runs ``python -m examples.<name>`` without PYTHONPATH: the package is found in
    the current directory, as for someone who has just cloned the repository.
    """
    import pytest  # only the tests that run examples need it

    env = python_env()
    if as_module:
        env.pop("PYTHONPATH")
        target = ["-m", f"examples.{name.removesuffix('.py')}"]
    else:
        target = [f"examples/{name}"]
    try:
        proc = subprocess.run(
            [sys.executable, "-W", "error", *target],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        err = (exc.stderr or b"").decode(errors="replace")
        pytest.fail(f"{name} did not finish in {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    out = proc.stdout.decode()
    err = proc.stderr.decode()
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert err == "", f"{name} wrote to stderr:\n{err}"
    return out.splitlines()


# -- the supervisor thread, seen from the tests ----------------------------------------------------


def watched(future: Any) -> Any:
    """Give ``future`` a no-op done-callback, so that the supervisor *thread* watches its child.

    A caller blocked in ``result()`` watches its own children while no thread does; something
    that waits without calling it (a callback, ``concurrent.futures.wait``) starts the thread.
    Tests of what happens in the background (a transfer drained while nobody waits) use this.
    """
    future.add_done_callback(lambda _: None)
    return future


def supervisor_idle(timeout: float = BOUND) -> bool:
    """Wait up to ``timeout`` seconds for the supervisor thread to exit; True if none runs."""
    from inparallel._core import _supervisor

    supervisor = _supervisor._SUPERVISOR
    return supervisor is None or supervisor.thread.wait_ended(timeout)


def supervisor_native_id(timeout: float = BOUND) -> int | None:
    """Return the running supervisor thread's OS id (waiting up to ``timeout``), or None."""
    from inparallel._core import _supervisor

    supervisor = _supervisor._SUPERVISOR
    return None if supervisor is None else supervisor.thread.started_native_id(timeout)
