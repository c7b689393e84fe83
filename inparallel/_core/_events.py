"""What the supervisor loop does with each ready fd: a child's result pipe, exit and output.

`Events` is the half of the `Supervisor` that handles one child at a time; the supervisor
(``_supervisor``) decides who runs the loop and when. Every method here runs in the loop's
role (the thread, or a caller driving it), one at a time; the ones that change the record of
children take the supervisor's lock, and none holds it across user code (unpickling a result,
done-callbacks, writing a task's output).

A child's life as seen from here::

    result pipe readable --> _on_readable: frame bytes --> _deliver (frame complete)
    output pipe readable --> _on_output: whole lines forwarded (output="tag")
    pidfd readable ------> _on_exit: wait4 --> _finish: unpickle, output, resolve the future
    deadline due --------> _expire: timeout kill, lingering kill, stalled transfer kill
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ._deadlines import Deadlines
from ._emit import last_lines
from ._errors import RemoteError, TaskTimeout, WorkerDied
from ._future import Rusage, TaskFuture
from ._poller import Poller
from ._reader import FrameError, decode
from ._record import Child, Phase

__all__ = ("COUNTERS", "EXIT", "RESULT", "Events", "Statistics", "emergency")

#: Seconds a child may live on after delivering its frame before it is SIGKILLed (a thread or
#: destructor that will not let it exit). Normal children exit within microseconds.
LINGER_GRACE = 2.0

#: With ``timeout=``, once the frame has started to arrive the deadline no longer applies; the
#: transfer is killed only if no byte arrives for this many seconds (research D4).
TRANSFER_STALL = 10.0

#: Exit check interval where the kernel has no pidfds (not Linux, or Linux < 5.3).
EXIT_POLL = 0.05

# What a watched fd is, beside the child it belongs to (any other value: an output fd).
RESULT = -1  #: the child's result pipe
EXIT = -2  #: the child's pidfd (or a poll for its exit)


class Events:
    """The handlers of the supervisor loop (the state is the `Supervisor`'s)."""

    _lock: threading.Lock
    _children: dict[int, Child]
    _pending: list[Child]
    _deadlines: Deadlines
    _selector: Poller | None
    _wake_r: int
    _wake_w: int
    _polled: set[Child]
    _inherited: bool
    fds: set[int]
    counts: Counter[str]

    def _open(self) -> None:
        # Called under the lock and (via `add`) the fork lock: every library fd is created
        # under the fork lock. A new selector watches every live child, not just the new one.
        self._wake_r, self._wake_w = os.pipe()
        self.fds.update((self._wake_r, self._wake_w))
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = Poller()
        self._selector.register(self._wake_r, None)

    def _close(self) -> None:
        # The thread leaves with nothing to watch: an idle process holds no library fd at all.
        # (A parked thread leaves the selector as it is, with every child still registered.)
        assert self._selector is not None
        self._selector.close()
        self._selector = None
        for fd in (self._wake_r, self._wake_w):
            self.fds.discard(fd)
            os.close(fd)
        self._wake_r = self._wake_w = -1
        self._polled.clear()
        self._deadlines.clear()  # only stale entries are left

    def send_signal(self, child: Child, sig: int) -> bool:
        """Signal a child that has not been reaped yet; return whether it was sent.

        Never in a fork's copy of the supervisor (`Supervisor.forget_in_child`): False at once.
        """
        if self._inherited:  # a fork's copy: its fds are closed or reused; its lock may be held
            return False
        with self._lock:
            if child.reaped:
                return False
            try:
                if child.pidfd is not None:
                    signal.pidfd_send_signal(child.pidfd, sig)
                else:
                    os.kill(child.pid, sig)
            except ProcessLookupError:
                return False
            return True

    def _handle(self, ready: list[tuple[Child, int] | None]) -> None:
        for data in ready:
            self._guarded(data)
        try:
            self._expire()
        except BaseException as exc:  # the supervisor must never die
            emergency(f"inparallel: supervisor error while enforcing deadlines: {exc!r}")
        if self._polled:
            for child in list(self._polled):
                self._guarded((child, EXIT))

    def _register_pending(self, selector: Poller) -> None:
        # Children added while the thread was not waiting (or was not running).
        for child in self._pending:
            self._watch(selector, child)
            if child.options.timeout is not None and not child.timeout_armed:
                child.timeout_armed = True
                self._deadlines.set(child, child.started + child.options.timeout)
        self._pending.clear()

    def _watch(self, selector: Poller, child: Child) -> None:
        try:
            if child.rfd is not None:
                selector.register(child.rfd, (child, RESULT))
            if child.pidfd is not None:
                selector.register(child.pidfd, (child, EXIT))
            else:
                self._polled.add(child)
            if child.streams is not None:
                for fd in child.streams.watch_fds():
                    selector.register(fd, (child, fd))
        except (OSError, ValueError, KeyError) as exc:  # never expected; never fatal
            emergency(f"inparallel: could not watch task process {child.pid}: {exc!r}")
            self._polled.add(child)  # its exit is still seen, by polling

    def _timeout(self) -> float | None:
        timeout = self._deadlines.timeout(len(self._children))
        if self._polled:
            timeout = EXIT_POLL if timeout is None else min(timeout, EXIT_POLL)
        return timeout

    def _guarded(self, data: tuple[Child, int] | None) -> None:
        if data is None:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
            return
        child, what = data
        try:
            if what == RESULT:
                self._on_readable(child)
            elif what == EXIT:
                self._on_exit(child)
            else:
                self._on_output(child, what)
        except BaseException as exc:
            # A bug of ours, or an OS error we did not foresee: fail this task, keep the rest.
            reason = "inparallel's supervisor failed while handling this task"
            self._fail(child, RemoteError(type(exc).__qualname__, str(exc), "", reason))

    def _on_readable(self, child: Child) -> None:
        for _ in range(64):  # bounded, so one big transfer cannot starve the others
            if child.rfd is None:
                return
            try:
                data = os.read(child.rfd, child.reader.want())
            except BlockingIOError:
                return
            if not data:  # EOF: every writer is gone; the pidfd reports the exit itself
                self._close_pipe(child)
                return
            if child.phase is Phase.COMPUTING:
                child.phase = Phase.RECEIVING
            child.last_progress = time.monotonic()
            try:
                child.reader.feed(data)
            except FrameError as exc:
                reason = str(exc)
                self._fail(child, RemoteError("inparallel.ResultFrame", reason, "", reason))
                return
            if child.reader.complete:
                self._deliver(child)
                return

    def _on_output(self, child: Child, fd: int) -> None:
        # A tag pipe: forward its complete lines now (``_output`` bounds each read).
        streams = child.streams
        if streams is not None and not streams.on_readable(fd):
            self._unregister(fd)  # end of file; ``finish`` closes it

    def _fail(self, child: Child, error: RemoteError) -> None:
        # The outcome is settled as a failure: the child has nothing more to say.
        child.fail(error)
        self._close_pipe(child)
        self.send_signal(child, signal.SIGKILL)

    def _deliver(self, child: Child) -> None:
        try:
            payload, buffers = child.reader.parts(child.pid, self.fds)
        except FrameError as exc:
            # The child's memory or memfd went with it (killed before we read it): the
            # result is lost, which is a death, not a bad frame.
            child.detail = f"its result was lost: {exc}"
            self._close_pipe(child)
            self.send_signal(child, signal.SIGKILL)
            return
        # Unpickled once the child is gone (`_finish`): every page written while it lives is
        # copied, and a small result's child exits right after sending it.
        child.frame = (child.reader.kind, payload, buffers)
        child.phase = Phase.DELIVERED
        self._close_pipe(child)  # also tells a child holding its buffers that it may exit
        if not child.reaped:
            self._deadlines.set(child, time.monotonic() + LINGER_GRACE)

    def _on_exit(self, child: Child) -> None:
        if child.phase is not Phase.DELIVERED and child.rfd is not None:
            self._on_readable(child)  # the last bytes the child wrote before it exited
        with self._lock:
            try:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else, or SIGCHLD is SIG_IGN
                pid, status, usage = child.pid, None, None
            if pid == 0:
                return  # not exited yet (only when polling without a pidfd)
            child.reaped = True
            child.deadline = None
            del self._children[child.pid]
            self._polled.discard(child)
            if child.pidfd is not None:
                self._unwatch(child.pidfd)
                child.pidfd = None
        self._close_pipe(child)
        self._finish(child, status, usage)

    def _finish(self, child: Child, status: int | None, usage: Any) -> None:
        future = child.future
        assert future is not None
        if child.frame is not None:
            # Unpickling runs user code (``__reduce__``, imports) here, outside the lock.
            kind, payload, buffers = child.frame
            child.frame = None
            child.outcome = decode(kind, payload, buffers, child.options.restricted_results)
        exitcode = None if status is None else os.waitstatus_to_exitcode(status)
        future.exitcode = exitcode
        if usage is not None:
            future.rusage = Rusage(usage.ru_maxrss * 1024, usage.ru_utime, usage.ru_stime)
        ok, outcome, counter = child.conclude(exitcode)
        if child.streams is not None:
            self._finish_output(child, future, outcome)
        self.counts[counter] += 1
        future._resolve(ok, outcome)

    def _finish_output(self, child: Child, future: TaskFuture[Any], outcome: Any) -> None:
        # Before the future resolves: what the task printed comes before what waits for it.
        streams = child.streams
        assert streams is not None
        child.streams = None
        for fd in streams.watch_fds():
            self._unregister(fd)
        out, err = streams.finish()  # writes tag and group output to our stdout/stderr
        future.stdout, future.stderr = out, err
        if err and isinstance(outcome, WorkerDied | TaskTimeout):
            outcome.add_note(f"inparallel: the end of the task's stderr:\n{last_lines(err)}")

    def _expire(self) -> None:
        now = time.monotonic()
        for child in self._deadlines.due(now):
            if child.phase is Phase.RECEIVING:
                if now - child.last_progress < TRANSFER_STALL:
                    self._deadlines.set(child, child.last_progress + TRANSFER_STALL)
                    continue
            elif child.phase is Phase.DELIVERED:
                self.counts["killed_lingering"] += 1
                self.send_signal(child, signal.SIGKILL)
                continue
            child.timed_out = True
            self.send_signal(child, signal.SIGKILL)

    def _close_pipe(self, child: Child) -> None:
        if child.rfd is not None:
            self._unwatch(child.rfd)
            child.rfd = None

    def _unregister(self, fd: int) -> None:
        if self._selector is not None:
            try:  # noqa: SIM105 - per call: no context manager object
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass

    def _unwatch(self, fd: int) -> None:
        self._unregister(fd)
        self.fds.discard(fd)  # forget it first: the number may be reused as soon as it closes
        os.close(fd)


@dataclass(frozen=True)
class Statistics:
    """A snapshot of the supervisor's counters (since the process started) and state."""

    spawned: int  #: children registered
    completed: int  #: tasks that delivered a value
    failed: int  #: tasks that ended with an exception (their own, or a death)
    cancelled: int  #: tasks whose future was cancelled
    timed_out: int  #: tasks killed by their ``timeout=``
    killed_lingering: int  #: children killed for not exiting after delivering
    in_flight: int  #: children being watched now
    supervisor_alive: bool  #: whether the supervisor thread is running now


COUNTERS = ("spawned", "completed", "failed", "cancelled", "timed_out", "killed_lingering")


def emergency(text: str) -> None:
    # The supervisor never writes through sys.stderr: another thread may hold its lock at a
    # fork, and the child would deadlock on it. A raw write to fd 2 takes no lock.
    with contextlib.suppress(OSError):
        os.write(2, (text + "\n").encode("utf-8", "replace"))
