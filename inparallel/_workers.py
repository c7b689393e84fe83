"""Long-lived forked workers: a `task` child that serves messages instead of returning once.

The maps and the process preloader need a child that lives for a whole pass. Each `Worker` is
an ordinary task (so it has the task's lifeline, reaping, and `WorkerDied` diagnosis) whose
function is a serving loop over two private pipes::

    parent ── requests ──▶ worker child ── replies ──▶ parent
       ▲                                                  │
       └──── Waker ◀── done-callback (supervisor) ◀───────┘ (the child ended)

The parent never blocks on a worker's pipes: its ends are non-blocking, writes that do not fit
wait in an outbox, and the caller's own loop ``poll``s the reply fds, the pending writes and a
`Waker` that the supervisor pokes when a worker ends. The worker's end is detected by its task
future, never only by end-of-file (a grandchild may hold the reply pipe open).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import threading
from collections.abc import Callable, Iterable

from ._core._channel import LENGTH, MessageBuffer
from ._core._future import TaskFuture
from ._core._options import TaskOptions
from ._core._spawn import close_fd, open_pipe, spawn

__all__ = ("Waker", "Worker", "wait_any")


class Waker:
    """A private pipe that wakes a ``poll`` loop; `wake` is safe from any thread, any time."""

    __slots__ = ("_lock", "_read", "_write")

    def __init__(self) -> None:
        self._read, self._write = open_pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._lock = threading.Lock()

    def fileno(self) -> int:
        """The fd to poll for reading."""
        return self._read

    def wake(self) -> None:
        """Make the read end readable (a no-op once closed)."""
        with self._lock:
            if self._write >= 0:
                with contextlib.suppress(BlockingIOError):  # full: it is readable already
                    os.write(self._write, b"!")

    def clear(self) -> None:
        """Drain the pending wake-ups."""
        with contextlib.suppress(OSError):  # EAGAIN: drained
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        """Close both ends; later `wake` calls do nothing."""
        with self._lock:
            if self._write < 0:
                return
            write, self._write = self._write, -1
        close_fd(write)
        close_fd(self._read)


class Worker:
    """One forked child running ``serve(request_fd, reply_fd)`` until the requests end.

    The child inherits the caller's memory at construction (like any task). ``serve`` runs in
    the child and must return when `recv_message` reports end-of-file. ``on_exit`` runs on the
    supervisor thread when the child has ended, for whatever reason; keep it short.

    Raises:
        SpawnError: The pipes or the process could not be made; nothing is left open.
    """

    __slots__ = ("_outbox", "eof", "future", "inbox", "replies", "requests")

    def __init__(self, serve: Callable[[int, int], object], name: str, on_exit: Callable[[], None]):
        request_r, self.requests = open_pipe()
        try:
            self.replies, reply_w = open_pipe()
        except BaseException:
            close_fd(request_r)
            close_fd(self.requests)
            raise
        try:
            self.future: TaskFuture[object] = spawn(
                serve,
                (request_r, reply_w),
                {},
                TaskOptions(name=name),
                keep=frozenset({request_r, reply_w}),
            )
        except BaseException:
            close_fd(self.requests)
            close_fd(self.replies)
            raise
        finally:
            close_fd(request_r)
            close_fd(reply_w)
        os.set_blocking(self.requests, False)
        os.set_blocking(self.replies, False)
        self.inbox = MessageBuffer()
        self._outbox = bytearray()
        self.eof = False
        self.future.add_done_callback(lambda _: on_exit())

    def __repr__(self) -> str:
        return f"<Worker pid={self.future.pid} {self.future._state}>"

    @property
    def wants_write(self) -> bool:
        """Whether queued requests still wait for room in the pipe."""
        return bool(self._outbox)

    def send(self, payload: bytes) -> None:
        """Queue one request message and write what fits now (never blocks)."""
        self._outbox += LENGTH.pack(len(payload))
        self._outbox += payload
        self.flush()

    def flush(self) -> None:
        """Write queued requests until the pipe is full (never blocks)."""
        while self._outbox and self.requests >= 0:
            try:
                written = os.write(self.requests, self._outbox)
            except BlockingIOError:
                return
            except OSError:  # EPIPE: the child is gone; its future says why
                self._outbox.clear()
                return
            del self._outbox[:written]

    def read(self) -> list[bytes | bytearray]:
        """Return the whole reply messages that have arrived (never blocks)."""
        if self.eof or self.replies < 0:
            return []
        messages, self.eof = self.inbox.read_from(self.replies)
        return messages

    def end(self) -> None:
        """Close the request pipe: the child finishes what it has and exits."""
        if self.requests >= 0:
            fd, self.requests = self.requests, -1
            self._outbox.clear()
            close_fd(fd)

    def kill(self) -> None:
        """SIGKILL the child (if still running) and close the pipes."""
        self.future.kill()
        self.close()

    def close(self) -> None:
        """Close the parent's ends of both pipes (idempotent)."""
        self.end()
        if self.replies >= 0:
            fd, self.replies = self.replies, -1
            close_fd(fd)


def wait_any(waker: Waker, workers: Iterable[Worker], timeout: float | None = None) -> bool:
    """Block until a reply arrives, a worker ends (``waker``) or a request pipe has room.

    Then write what the request pipes take. Returns False if ``timeout`` seconds passed first.
    """
    workers = list(workers)
    poller = select.poll()
    poller.register(waker.fileno(), select.POLLIN)
    for worker in workers:
        if not worker.eof:
            poller.register(worker.replies, select.POLLIN)
        if worker.wants_write:
            poller.register(worker.requests, select.POLLOUT)
    events = poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
    waker.clear()
    for worker in workers:
        worker.flush()
    return bool(events)
