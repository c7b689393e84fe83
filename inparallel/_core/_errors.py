"""The exception hierarchy: every error the library raises derives from `InParallelError`.

Each class also derives from the builtin a user would already catch (`TaskTimeout` is a
`TimeoutError`, `SpawnError` an `OSError`, `MemoryLimitExceeded` a `MemoryError`), and every
message says what happened and what to do about it.

All of them pickle by value (`__reduce__`), so they survive a trip through a result pipe or a
Dask worker unchanged.

One error is Python's own: a `StopIteration` or `StopAsyncIteration` that user code raises
where it would end an iteration in silence becomes the `RuntimeError` that PEP 479 made the
standard for it (`stray_stop`).
"""

from __future__ import annotations

import signal
from typing import Any

__all__ = (
    "InParallelError",
    "InheritedFutureError",
    "MemoryLimitExceeded",
    "RemoteError",
    "ResultNotPicklable",
    "SpawnError",
    "TaskTimeout",
    "WorkerDied",
    "stray_stop",
)


class InParallelError(Exception):
    """Base class of every error raised by inparallel."""


def signal_name(signum: int) -> str:
    """Return the symbolic name of a signal number (``SIGKILL``), or ``signal N``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# Likely causes by signal, as a user debugging a dead worker needs them (loky-style hints).
_HINTS: dict[int, str] = {
    signal.SIGKILL: "killed with SIGKILL: the kernel's OOM killer, an explicit kill -9, or "
    "TaskFuture.kill(); check `dmesg` for 'Out of memory'",
    signal.SIGSEGV: "segmentation fault in native code (a C extension, ctypes, or a library "
    "that is not fork-safe, such as some BLAS/OpenMP/CUDA builds)",
    signal.SIGABRT: "aborted (os.abort(), a failed C assertion, or a fatal error in native code)",
    signal.SIGTERM: "terminated by SIGTERM from outside the library",
    signal.SIGXCPU: "CPU time limit exceeded (the task's cpu_time= option)",
    signal.SIGBUS: "bus error (a truncated memory-mapped file, or exhausted shared memory)",
    signal.SIGXFSZ: "file size limit exceeded (RLIMIT_FSIZE)",
}


class WorkerDied(InParallelError):
    """The child process ended without delivering a result.

    Attributes:
        pid: The child's process id.
        exitcode: The exit status as ``multiprocessing`` reports it: the exit code, or the
            negative signal number when a signal killed it; ``None`` when the status could not
            be collected (another part of the program reaped the child, or SIGCHLD is ignored).
        signal: The signal number that killed the child, or ``None``.
        detail: Extra context (for example a truncated result), or an empty string.
    """

    def __init__(
        self, pid: int, exitcode: int | None, signal: int | None, detail: str = ""
    ) -> None:
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal
        self.detail = detail
        super().__init__(self._message())

    def _message(self) -> str:
        if self.signal is not None:
            cause = f"was killed by {signal_name(self.signal)}"
            hint = _HINTS.get(self.signal, "")
        elif self.exitcode is None:
            cause = "ended, and its exit status could not be collected"
            hint = (
                "another part of the program reaped it (os.wait(), or SIGCHLD set to SIG_IGN);"
                " do not reap children you did not start"
            )
        elif self.exitcode == 0:
            cause = "exited with code 0 without delivering a result"
            hint = "os._exit(0) in the task, or in an object's __reduce__ while pickling"
        else:
            cause = f"exited with code {self.exitcode} before delivering a result"
            hint = "os._exit() in the task, or a fatal error in native code"
        parts = [f"task process {self.pid} {cause}"]
        if self.detail:
            parts.append(self.detail)
        if hint:
            parts.append(f"likely cause: {hint}")
        return "; ".join(parts)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.pid, self.exitcode, self.signal, self.detail))


class TaskTimeout(InParallelError, TimeoutError):
    """The task's ``timeout=`` elapsed; the child was killed with SIGKILL.

    Attributes:
        pid: The child's process id.
        timeout: The timeout in seconds.
    """

    def __init__(self, pid: int, timeout: float) -> None:
        self.pid = pid
        self.timeout = timeout
        super().__init__(
            f"task process {pid} was still running after timeout={timeout:g}s and was killed"
            " (SIGKILL: its finally blocks did not run). If it needs longer, raise timeout= on"
            " @task; if it hung (a lock held at the fork, a peer that never answers), give the"
            " calls inside it deadlines of their own"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.pid, self.timeout))


class MemoryLimitExceeded(InParallelError, MemoryError):
    """The task ran out of the address space its ``memory_limit=`` allowed.

    Attributes:
        limit: The limit in bytes, counted on top of what the child inherited at fork.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"the task exceeded memory_limit={limit} bytes (on top of the memory it inherited);"
            " raise memory_limit=, or process the data in smaller pieces"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.limit,))


class ResultNotPicklable(InParallelError, TypeError):
    """A value a child sends back could not be pickled there.

    The value is a task's result, a map's result or a preloaded item. The pickling error is
    attached as ``__cause__``; ``what`` says where the value came from.
    """

    def __init__(self, type_name: str, reason: str, what: str = "the task returned") -> None:
        self.type_name = type_name
        self.reason = reason
        self.what = what
        super().__init__(
            f"{what} a {type_name} that could not be pickled ({reason}); return plain"
            " data (numbers, strings, lists, dicts, arrays) instead of live objects such as"
            " locks, open files, sockets or generators"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.reason, self.what))


class RemoteError(InParallelError):
    """An exception from the child that could not be carried back as itself.

    Raised in place of an exception that would not pickle in the child or unpickle in the
    parent, or of a result the parent could not unpickle.

    Attributes:
        type_name: Qualified name of the original exception type.
        message: ``str()`` of the original exception.
        traceback_text: The formatted traceback from the child.
        reason: Why the original could not be delivered.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str, reason: str) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.reason = reason
        super().__init__(f"{type_name}: {message} [{reason}]")

    def __str__(self) -> str:
        text = super().__str__()
        if self.traceback_text:
            text += "\n\nRemote traceback:\n" + self.traceback_text.rstrip("\n")
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.traceback_text, self.reason))


class SpawnError(InParallelError, OSError):
    """Starting the task failed (no pipe or no process could be created).

    Raised synchronously by the call; no future exists and nothing was leaked. The original
    `OSError` is attached as ``__cause__`` and its ``errno`` is kept.
    """

    def __init__(self, errno: int | None, message: str) -> None:
        super().__init__(errno, message)

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()


class InheritedFutureError(InParallelError, RuntimeError):
    """A forked child waited for a future it inherited, which can never finish there.

    A future is finished by a thread of the process that made it (for a `TaskFuture`, that
    process's supervisor). Its copy in a forked child, such as a task given a parent's future
    as an argument, has no such thread and would wait for ever; so waiting for it there
    raises this at once. The fix is to pass the value, not the future.

    Attributes:
        what: ``repr()`` of the future.
        owner: The pid of the process that made the future: the only one where it finishes.
        pid: The pid of the process that tried to wait for it.
    """

    def __init__(self, what: str, owner: int, pid: int) -> None:
        self.what = what
        self.owner = owner
        self.pid = pid
        super().__init__(
            f"{what} was made by process {owner}; this process ({pid}) has a copy of it,"
            f" inherited by fork, which can never finish here (only process {owner} receives"
            f" the outcome). Pass the value, not the future: call .result() in process {owner}"
            " and pass what it returns"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.owner, self.pid))


def stray_stop(exc: BaseException, what: str) -> BaseException:
    """Return ``exc``; or, for a stray control-flow exception, an error caused by it.

    The control-flow exceptions are `StopIteration`, `StopAsyncIteration` and `GeneratorExit`
    (which a source raises from ``__anext__`` only by mistake: its own ``aclose()`` handles it).

    Raised by a user's callable and passed on as it is, either would end the iteration that
    receives it in silence (the items after it lost). As PEP 479 does for generators, it is
    delivered instead as a `RuntimeError` that names where it came from, with the original as
    its ``__cause__``.

    Args:
        exc: The exception a callable raised.
        what: Who raised it, for the message (``"map_f double"``, ``"task f (pid 12)"``).
    """
    if isinstance(exc, GeneratorExit):
        error = RuntimeError(
            f"{what} raised GeneratorExit outside of its own close(), which is an error here,"
            " not the end of the stream"
        )
    elif isinstance(exc, StopIteration | StopAsyncIteration):
        error = RuntimeError(
            f"{what} raised {type(exc).__name__}, which is an error here, not the end of an"
            " iteration; if it means 'no value', catch it there and return a value instead"
        )
    else:
        return exc
    error.__cause__ = exc  # also suppresses the context, as ``raise ... from exc`` does
    return error
