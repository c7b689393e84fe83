"""Everything that runs in a forked child, from the fork to ``os._exit``.

The child is a copy of the caller at the moment of the call. It prepares itself in this order
(research notes, "child bootstrap"):

1. arm the lifelines (see `prime_lifeline` and `_arm_lifeline`): the kernel SIGKILLs this
   process when the parent's read end of the result pipe closes, i.e. when the parent dies,
   also after the task ``exec``s; and, when the main thread forked us, when the parent dies
   even if the task closed every fd (``PR_SET_PDEATHSIG``); a parent that died before the
   lifelines were armed is seen at once (its pid is gone, or its end of the pipe is);
2. ignore SIGINT (the parent owns Ctrl-C), reset the parent's Python signal handlers and its
   wakeup fd, restore SIGCHLD so ``subprocess`` works in the task;
3. point stdin at ``/dev/null`` and rebind stdout/stderr to fresh objects over fds 1/2, so the
   parent's buffered bytes (and a lock another thread held at fork) are never touched; they
   are line-buffered (write-through under ``python -u``), so a task killed at any point has
   already delivered every complete line it printed; then, when the parent moves it off its
   CPU, wait for the parent's word and take that CPU back (see ``_cpus``);
4. apply the task's resource limits;
5. run the function, pickle the outcome, flush stdio, disarm the lifeline, send one frame;
6. leave with ``os._exit``: never back into the caller's stack, never the parent's atexit hooks.

The library's own inherited fds were already closed by the at-fork hook (see ``_spawn``).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import NamedTuple, NoReturn

from ._cpus import settle
from ._emit import encoding_of
from ._errors import MemoryLimitExceeded, ResultNotPicklable
from ._interrupts import getsignal, setsignal
from ._limits import apply_limits, lift_memory_limit
from ._native import libc
from ._options import TaskOptions
from ._output import Streams
from ._stdio import flush_stdio, isolate_stdio, spare, spare_for
from ._wire import Encoded, encode_error, encode_value, send

__all__ = ("Plan", "plan", "prime_lifeline", "run_child")

#: Exit status of a child whose own machinery failed (EX_SOFTWARE); the parent reports it as
#: WorkerDied with this code.
INTERNAL_ERROR = 70

#: Exit status of a child whose task closed or replaced its result pipe (EX_OSERR): the
#: outcome cannot be reported, and writing it to whatever the fd is now could block for ever.
LOST_PIPE = 71


class Plan(NamedTuple):
    """What the child must change, worked out in the parent before the fork.

    Every page the child touches is copied on write, at several microseconds a page, so the
    child does as little Python work as possible: the parent finds the signal handlers to
    reset and keeps spare stream objects ready to swap in.
    """

    handlers: tuple[int, ...]  #: signals with a Python-level handler to reset to SIG_DFL
    stdin: io.TextIOWrapper | None  #: reads fd 0 (/dev/null in the child); None: make it there
    stdout: io.TextIOWrapper | None  #: fresh object over fd 1, or None (see ``encodings``)
    stderr: io.TextIOWrapper | None  #: fresh object over fd 2, or None (see ``encodings``)
    parent: int  #: the parent's pid, to die at once if it is gone before the child is armed
    deathsig: Callable[[int, int, int, int, int], int] | None  #: prctl, when it is sound
    #: With output= other than inherit: the encodings of the fresh stdout and stderr the child
    #: must have (made there if the parent could not: its fd 1 or 2 is closed). Else None:
    #: a None stream above means keeping the parent's object.
    encodings: tuple[str, str] | None = None
    #: The result pipe's write end as a file (device, inode), read in the parent; the child
    #: sends its frame only if the fd still leads there (see `run_child`).
    pipe: tuple[int, int] | None = None
    #: libc's fcntl, to set the pipe's owner without the cost of `fcntl.fcntl`, which with an
    #: int argument first tries it as a buffer and formats a TypeError that it then drops:
    #: about fifteen copied pages in a fresh child, three times the plain C call (measured).
    setown: Callable[[int, int, int], int] | None = None
    #: When the parent moves the child off its own CPU (see `_cpus`): the child's ticket, to
    #: wait for the parent's post and take back that CPU before the task runs. Else None.
    ticket: int | None = None


def plan(wfd: int, redirected: bool = False, ticket: int | None = None) -> Plan:
    """Prepare, in the parent, what the next child will need (see `Plan`). Cheap.

    ``wfd``: the result pipe's write end. ``redirected``: the child's fds 1 and 2 will be its
    own (``output=`` other than ``"inherit"``), so it writes through fresh streams even where
    the parent's are not over fds 1 and 2 (a capture object, a replacement): what it prints
    must reach those fds. ``ticket``: `_cpus.ticket`'s answer.
    """
    if redirected:
        # What the parent decodes the task's output with (a replaced sys.stdout included).
        encodings = (encoding_of("stdout"), encoding_of("stderr"))
        stdout = spare("stdout", 1, encoding=encodings[0])
        stderr = spare("stderr", 2, encoding=encodings[1])
    else:
        encodings = None
        stdout, stderr = spare_for("stdout", 1), spare_for("stderr", 2)
    main = threading.get_ident() == threading.main_thread().ident
    return Plan(
        _python_handlers(),
        spare("stdin", 0),
        stdout,
        stderr,
        os.getpid(),
        libc("prctl") if main else None,
        encodings,
        _identity(wfd),
        libc("fcntl"),
        ticket,
    )


def run_child(
    wfd: int,
    call: Callable[[], object],
    options: TaskOptions,
    plan: Plan,
    streams: Streams | None = None,
) -> NoReturn:
    """Run ``call`` in this freshly forked child and report its outcome on ``wfd``.

    ``streams``: the task's own stdout and stderr (``output=``), put on fds 1 and 2 first.
    Never returns. Exits 0 once a frame is sent (whatever the task did), or `INTERNAL_ERROR`.

    Each function called, object made or global read here writes a page that the child
    shares with the parent, and each such page costs a copy (about 3 us, measured): the
    common case (no limits, a value that pickles) takes the shortest path. The steps are the
    numbered ones of the module docstring.
    """
    code = INTERNAL_ERROR
    try:
        _arm_lifeline(wfd, plan)
        if streams is not None:
            streams.in_child()  # before this process opens any fd of its own
        _reset_signals(plan.handlers)
        isolate_stdio(plan.stdin, plan.stdout, plan.stderr, plan.encodings)
        if plan.ticket is not None:
            settle(plan.ticket)  # the parent moves us off its CPU: the task gets it back
        limited = options.memory_limit is not None or options.cpu_time is not None
        if limited:
            apply_limits(options)
        try:
            value = call()
        except BaseException as exc:
            encoded = _encode_error(exc, options, limited)
        else:
            if limited:
                lift_memory_limit(options)
            try:
                encoded = encode_value(value, options.restricted_results)
            except ResultNotPicklable as exc:
                encoded = encode_error(exc, options.restricted_results)
        flush_stdio()  # before the frame: the parent may exit as soon as it has the result
        if _identity(wfd) != plan.pipe:
            _say(f"task process {os.getpid()} closed or replaced its result pipe (fd {wfd})")
            code = LOST_PIPE
        else:
            _disarm_lifeline(wfd)
            if send(wfd, encoded):
                _wait_for_parent(wfd)
            code = 0
    except BaseException:
        _report_internal_error()
    finally:
        _save_coverage()
        os._exit(code)


def _encode_error(exc: BaseException, options: TaskOptions, limited: bool) -> Encoded:
    # The task raised: the memory limit comes off first (pickling needs memory), and a
    # MemoryError under memory_limit= becomes MemoryLimitExceeded.
    if limited:
        lift_memory_limit(options)
    memory = isinstance(exc, MemoryError) and not isinstance(exc, MemoryLimitExceeded)
    if options.memory_limit and memory:
        limit_error = MemoryLimitExceeded(options.memory_limit)
        limit_error.__cause__ = exc
        exc = limit_error
    return encode_error(exc, options.restricted_results)


# -- lifeline ------------------------------------------------------------------------------------

# F_SETSIG is Linux-only; elsewhere the lifeline is absent and the parent's atexit hook (and its
# normal shutdown) is what ends children.
_F_SETSIG: int | None = getattr(fcntl, "F_SETSIG", None)
_F_SETOWN, _F_SETFL, _ASYNC = fcntl.F_SETOWN, fcntl.F_SETFL, getattr(os, "O_ASYNC", 0)
_SIGKILL = int(signal.SIGKILL)


def prime_lifeline(wfd: int) -> None:
    """In the parent, before the fork: make ``wfd`` signal SIGKILL once it has an owner.

    When the last read end of a pipe closes, the kernel signals the owner of an O_ASYNC write
    end; with F_SETSIG = SIGKILL that signal is fatal (fcntl(2), "F_SETSIG"). Both settings
    belong to the open file description, so the child inherits them; with no owner yet,
    nothing is signalled. PR_SET_PDEATHSIG would instead follow the thread that forked us.
    """
    if _F_SETSIG is not None:
        # A fresh pipe's write end has no file status flag but O_WRONLY, which F_SETFL keeps.
        c_fcntl = libc("fcntl")
        if c_fcntl is None or c_fcntl(wfd, _F_SETSIG, _SIGKILL) or c_fcntl(wfd, _F_SETFL, _ASYNC):
            fcntl.fcntl(wfd, _F_SETSIG, signal.SIGKILL)  # raises what went wrong
            fcntl.fcntl(wfd, fcntl.F_SETFL, fcntl.fcntl(wfd, fcntl.F_GETFL) | os.O_ASYNC)


def _arm_lifeline(wfd: int, plan: Plan) -> None:
    # From now on we die when the parent does, whichever of its threads forked us. If it died
    # before we got here, the signal has come and gone: the read end is already closed.
    if _F_SETSIG is not None:
        if plan.setown is None or plan.setown(wfd, _F_SETOWN, os.getpid()) != 0:
            fcntl.fcntl(wfd, _F_SETOWN, os.getpid())  # raises what went wrong
        # Kept across exec: a program the task execs is this same process, so the owner.
        os.set_inheritable(wfd, True)
    if plan.deathsig is not None:
        # A second lifeline that no fd carries, for a task that closes its fds. Linux sends
        # it when the *thread* that forked us ends (prctl(2)), so only the main thread's
        # children get it: that thread lasts as long as the process. It survives exec (but
        # not a set-user-ID one).
        plan.deathsig(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        if os.getppid() != plan.parent:
            os._exit(INTERNAL_ERROR)  # the parent died before the lifeline was set
    if _F_SETSIG is not None:
        # A parent that closed its read end before F_SETOWN (it died, or it exec'd and lives
        # on, which no death signal reports) sent no signal: the pipe tells.
        poller = select.poll()
        poller.register(wfd, select.POLLERR)
        if poller.poll(0):
            os._exit(INTERNAL_ERROR)


_PR_SET_PDEATHSIG = 1


def _disarm_lifeline(wfd: int) -> None:
    # Must happen before writing: each parent read makes the pipe writable again, which raises
    # the same signal and would kill us mid-transfer. No owner, no signal. (The owner argument
    # is left out: it defaults to 0, and an int argument costs fcntl a formatted TypeError
    # that it raises and clears inside, about ten copied pages in a fresh child.)
    if _F_SETSIG is not None:
        fcntl.fcntl(wfd, _F_SETOWN)


def _wait_for_parent(wfd: int) -> None:
    # The result's buffers are in our memory or in a memfd, which the parent reads through
    # process_vm_readv, /proc/<pid>/mem or /proc/<pid>/fd: stay alive, touching nothing,
    # until it closes its read end (POLLERR on our write end), or dies.
    poller = select.poll()
    poller.register(wfd, select.POLLERR)
    while not poller.poll():
        pass


# -- signals and the rest --------------------------------------------------------------------------

_SIGINT, _SIGCHLD = int(signal.SIGINT), int(signal.SIGCHLD)
_SIG_DFL, _SIG_IGN = int(signal.SIG_DFL), int(signal.SIG_IGN)
_UNCATCHABLE = (signal.SIGKILL, signal.SIGSTOP, signal.SIGINT)


#: Signals whose handler a task may have to reset: all but the ones no handler can catch, and
#: SIGINT, which the child ignores anyway.
_RESETTABLE = tuple(
    int(n) for n in sorted(signal.valid_signals()) if n not in _UNCATCHABLE and n < signal.NSIG
)


def _python_handlers() -> tuple[int, ...]:
    # One C call per signal (~0.1 us each) rather than reading /proc or the enum wrappers.
    found = [n for n in _RESETTABLE if callable(getsignal(n))]
    if getsignal(_SIGCHLD) == _SIG_IGN:
        found.append(_SIGCHLD)  # restore it so that subprocess works in the task
    return tuple(found)


def _reset_signals(handlers: tuple[int, ...]) -> None:
    try:  # noqa: SIM105 - in the fresh child: no context manager objects (copied pages)
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    for signum in handlers:
        setsignal(signum, _SIG_DFL)
    setsignal(_SIGINT, _SIG_IGN)


def _identity(fd: int) -> tuple[int, int] | None:
    # The open file behind an fd number: a task may close the number or dup2 another file
    # onto it, and then the number no longer leads to the parent.
    try:
        stat = os.fstat(fd)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"inparallel: {text}; its outcome cannot be reported\n".encode())


def _report_internal_error() -> None:
    with contextlib.suppress(BaseException):
        text = "inparallel: the task process failed to report its outcome:\n"
        os.write(2, (text + traceback.format_exc()).encode("utf-8", "replace"))


def _save_coverage() -> None:
    # os._exit skips coverage's atexit hook; save explicitly so children count (STYLE: tests).
    coverage = sys.modules.get("coverage")
    if coverage is None:
        return
    with contextlib.suppress(BaseException):
        current = coverage.Coverage.current()
        if current is not None:
            current.stop()
            current.save()
