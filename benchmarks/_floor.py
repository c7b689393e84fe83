"""The floor: the same work written by hand with os.fork + os.pipe + pickle + os.waitpid.

Nothing here is meant to be robust (no timeouts, no crash reports beyond an exit status): it is
the least a fork-per-call library has to do, so its time is what the library is measured against.

Child: compute, ``pickle.dumps``, write everything to the pipe, ``os._exit(0)``.
Parent: read until EOF, ``pickle.loads``, ``os.waitpid``.
"""

from __future__ import annotations

import os
import pickle
import selectors
import traceback
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

#: Bytes asked for per read; a default Linux pipe hands over at most 64 KiB at a time anyway.
CHUNK = 1 << 20


def _child(fn: Callable[..., Any], args: tuple[Any, ...], fd: int) -> NoReturn:
    try:
        view = memoryview(pickle.dumps(fn(*args), protocol=pickle.HIGHEST_PROTOCOL))
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def spawn(fn: Callable[..., Any], *args: Any) -> tuple[int, int]:
    """Fork a child running ``fn(*args)``; return its pid and the read end of its pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(fn, args, w)
    os.close(w)
    return pid, r


def reap(pid: int, data: bytes) -> Any:
    """Wait for *pid* and unpickle the bytes it sent."""
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"floor child {pid} exited with {code}")
    return pickle.loads(data)


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a forked child and return its result (blocks)."""
    pid, r = spawn(fn, *args)
    chunks = []
    while chunk := os.read(r, CHUNK):
        chunks.append(chunk)
    os.close(r)
    return reap(pid, b"".join(chunks))


def run_all(
    fn: Callable[..., Any], arglist: Iterable[tuple[Any, ...]], concurrency: int | None = None
) -> list[Any]:
    """Run ``fn(*args)`` for each *args* in its own child, results in input order.

    At most *concurrency* children are in flight (None: all at once); one selector waits on
    every pipe, and a child is reaped when its pipe reaches EOF.
    """
    pending = iter(enumerate(arglist))
    in_flight: dict[int, tuple[int, int, list[bytes]]] = {}  # fd -> (index, pid, chunks)
    results: dict[int, Any] = {}
    with selectors.DefaultSelector() as sel:

        def start_more() -> None:
            while concurrency is None or len(in_flight) < concurrency:
                item = next(pending, None)
                if item is None:
                    return
                pid, r = spawn(fn, *item[1])
                in_flight[r] = (item[0], pid, [])
                sel.register(r, selectors.EVENT_READ)

        start_more()
        while in_flight:
            for key, _ in sel.select():
                fd = int(key.fd)
                index, pid, chunks = in_flight[fd]
                chunk = os.read(fd, CHUNK)
                if chunk:
                    chunks.append(chunk)
                    continue
                sel.unregister(fd)
                os.close(fd)
                del in_flight[fd]
                results[index] = reap(pid, b"".join(chunks))
            start_more()
    return [results[i] for i in range(len(results))]
