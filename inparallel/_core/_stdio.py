"""The task's standard streams: spare stream objects made in the parent, swapped in in the child.

A forked child must not write through the parent's ``sys.stdout``: its buffer may hold the
parent's unflushed output, and another parent thread may have held its lock at the fork. So
the parent keeps spare stream objects over fds 0-2, built once and never used there, and the
child puts them in place (`isolate_stdio`). Output streams are line-buffered whatever the
parent's are, so a task killed at any point has delivered every complete line it printed.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

__all__ = ("flush_stdio", "forget_spares", "isolate_stdio", "spare", "spare_for")

# Stream objects replaced in the child (see `isolate_stdio`), and spare tables set aside.
_ABANDONED: list[Any] = []

# Spare stream objects, built once in the parent and never used there: their buffers are
# empty and no parent thread ever holds their locks. Keyed by stream name and configuration.
_SPARES: dict[tuple[object, ...], io.TextIOWrapper] = {}


def spare(
    name: str, fd: int, like: io.TextIOWrapper | None = None, encoding: str = "utf-8"
) -> io.TextIOWrapper | None:
    """In the parent: a fresh stream over ``fd`` configured like ``like`` (or ``encoding``).

    None when ``fd`` is closed here (a daemon's stdio): the child makes its own, see
    `isolate_stdio`.
    """
    # An output stream is line-buffered whatever the parent's is (a pipe or a file makes the
    # parent's block-buffered): each complete line reaches the fd when it ends, so a task
    # killed later (timeout, cancel(), a signal, os._exit) has lost none of its lines. When
    # the parent's writes through (python -u, PYTHONUNBUFFERED), so does the child's.
    config: tuple[str, str, bool, bool] = (
        (like.encoding, like.errors or "strict", True, like.write_through)
        if like is not None
        else (encoding, "backslashreplace" if fd == 2 else "strict", fd != 0, False)
    )
    key = (name, *config)
    spare = _SPARES.get(key)
    if spare is None:
        encoding, errors, line_buffering, write_through = config
        try:
            raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
        except OSError:
            return None
        buffered: Any  # what TextIOWrapper accepts has no public type
        if fd == 0:
            buffered = io.BufferedReader(raw)
        elif write_through:
            buffered = raw  # no buffer between the text layer and the fd, as python -u does
        else:
            buffered = io.BufferedWriter(raw)
        spare = io.TextIOWrapper(
            buffered,
            encoding=encoding,
            errors=errors,
            line_buffering=line_buffering,
            write_through=write_through,
        )
        _SPARES[key] = spare
    return spare


def forget_spares() -> None:
    """In a forked child: drop the spares, which may now be this process's sys.stdout etc.

    They are set aside, not freed: freeing writes to pages shared with the parent.
    """
    global _SPARES
    _ABANDONED.append(_SPARES)
    _SPARES = {}


def spare_for(name: str, fd: int) -> io.TextIOWrapper | None:
    """In the parent: a spare like ``sys.<name>``, or None to keep that object (not over ``fd``)."""
    current = getattr(sys, name)
    if type(current) is not io.TextIOWrapper:
        return None  # a capture object or a user replacement: leave it alone
    try:
        if current.fileno() != fd:
            return None
    except (OSError, ValueError):
        return None
    return spare(name, fd, current)


def isolate_stdio(
    stdin: io.TextIOWrapper | None,
    stdout: io.TextIOWrapper | None,
    stderr: io.TextIOWrapper | None,
    encodings: tuple[str, str] | None,
) -> None:
    """In a fresh child: stdin from ``/dev/null``, and the given streams as stdout and stderr.

    None keeps the parent's object, except with ``encodings`` (the task's own fds 1 and 2),
    where fresh streams are made here if the parent could not (its fd 1 or 2 was closed).
    """
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # The replaced objects stay referenced, never flushed or closed: their buffers may hold the
    # parent's unflushed output, and a parent thread may have held their lock at the fork.
    _ABANDONED.append((sys.stdin, sys.stdout, sys.stderr))
    sys.stdin = stdin or spare("stdin", 0)
    if encodings is not None:  # our own fds 1 and 2: fresh streams, whatever it takes
        stdout = stdout or spare("stdout", 1, encoding=encodings[0])
        stderr = stderr or spare("stderr", 2, encoding=encodings[1])
    if stdout is not None:
        sys.stdout = stdout
    if stderr is not None:
        sys.stderr = stderr


def flush_stdio(ignored: type[BaseException] = BaseException) -> None:
    """Flush ``sys.stdout`` and ``sys.stderr``; what either raises of ``ignored`` is ignored.

    In a child everything is (it never raises); in the parent, before a fork, ``Exception``:
    a flush that blocks on a full pipe must still end with the caller's Ctrl-C.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except ignored:
            pass
