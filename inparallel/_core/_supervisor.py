"""The supervisor: one thread that watches every child and resolves its future.

Data flow::

    caller thread                        child process               supervisor thread
    -------------                        -------------               -----------------
    spawn(): pipe, fork ---------------> run fn, pickle outcome
             pidfd_open(pid)             write ONE frame ----------> result pipe readable
             add(child) --- wake pipe -------------------------------> FrameReader.feed()
                                         os._exit(0) --------------> pidfd readable
                                                                      drain pipe, wait4(pid)
    fut.result() <-------------------------------------------------- future._resolve()
                                                                      (done-callbacks run here)

The loop blocks in one `Poller` wait (epoll) on: each child's result pipe, each child's pidfd,
and a wakeup pipe; its timeout is the nearest deadline. It never polls (except on systems
without pidfds, where exits are checked every `EXIT_POLL` seconds), never calls
``waitpid(-1)`` and installs no SIGCHLD handler, so children the user starts keep their exit
codes. Death is seen through the pidfd, not pipe EOF: a grandchild may hold the pipe open.

A future resolves once both its frame has arrived and its child has been reaped, so ``pid``,
``exitcode`` and ``rusage`` are final when ``result()`` returns. A child that lingers after
delivering is SIGKILLed after `LINGER_GRACE`; its result still wins.

**Who runs the loop.** The loop above runs on one thread at a time, whichever holds the
*role* lock. A caller about to block on its own tasks (``result()``, ``exception()``,
``done()``, `waitfor`) runs it itself while no supervisor thread does (``_drive``):
a sequential call or a ``waitfor`` loop then starts no thread at all, so each fork copies a
single-threaded process and, on 3.12+, has no thread to park. The thread starts only for
what waits without driving (`Supervisor.watch`): a done-callback, `concurrent.futures.wait`,
an ``await``, a timeout that must hold whoever waits, a cancelled or killed child that must be
reaped. A caller driving the loop then hands the role over at its next wake-up. Children that
nobody waits for meanwhile lose nothing: their results wait in their pipes, their exits in
their pidfds, until someone looks.

The thread exits when no child is left. `Supervisor.park` stops it so that a fork can run
single-threaded (see ``_park`` for why). How it is started and waited for is ``_thread``'s
business.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections import Counter

from . import _future, _interrupts
from ._deadlines import Deadlines
from ._drive import Driving
from ._events import COUNTERS, Statistics, emergency
from ._poller import Poller
from ._record import Child
from ._thread import BareThread

__all__ = (
    "Statistics",
    "Supervisor",
    "close_all",
    "get",
    "statistics",
)

THREAD_NAME = "inparallel-supervisor"

#: Output modes whose forwarding the thread does (see `add`).
_THREADED_OUTPUT = ("tag", "group")


class Supervisor(Driving):
    """Watches children, enforces deadlines and resolves futures. One per process.

    Who runs the loop, and when, is decided here; what the loop does with each ready fd is
    `Events`'s.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards everything below; never held across user code
        self._children: dict[int, Child] = {}
        self._pending: list[Child] = []
        self._deadlines = Deadlines()  # the thread's own
        self._selector: Poller | None = None
        self._inherited = False  # a fork's copy, in the child (see `forget_in_child`)
        self._wake_r = self._wake_w = -1
        self._running = False  # a thread is in (or about to enter) its loop
        self._want_thread = False  # something waits without driving (see `watch`)
        # Held by whoever runs the loop: the thread, or a caller waiting in `drive`.
        self._role = threading.Lock()
        self.thread = BareThread(THREAD_NAME)
        self._stop = False
        self._polled: set[Child] = set()  # children without a pidfd
        #: Every fd the library holds open; the at-fork hook closes them in every child.
        self.fds: set[int] = set()
        self.counts: Counter[str] = Counter()

    # -- called by the spawning thread (under the fork lock) ----------------------------------

    def add(self, child: Child) -> None:
        """Hand a freshly forked child to the thread, starting the thread if needed.

        Raises:
            OSError: The selector or wakeup pipe could not be created (EMFILE); nothing was
                registered.
        """
        with self._lock:
            if self._selector is None:
                self._open()  # first, so that a failure leaves no trace
            self._children[child.pid] = child
            self.counts["spawned"] += 1
            self._stop = False  # a park that timed out is called off: the thread carries on
            if child.options.timeout is not None or child.options.output in _THREADED_OUTPUT:
                # A deadline holds, and output flows, whether anyone waits or not (and writing
                # output, which can block, never holds up a waiting caller's Ctrl-C).
                self._want_thread = True
            if self._running:
                selector = self._selector
                if (
                    selector is not None
                    and selector.threadsafe_register
                    and child.options.timeout is None
                    and child.pidfd is not None
                ):
                    # epoll may be told about new fds while another thread waits on it, and
                    # the thread needs no new deadline: spare it a wake-up per task.
                    self._watch(selector, child)
                else:
                    self._pending.append(child)
                    self._wake()
                return
            self._pending.append(child)
            if not self._want_thread:
                if self._role.locked():  # a caller drives the loop: it must watch this one too
                    self._wake()
                return  # whoever waits for it watches it (see `drive`)
            try:
                self._start()
            except BaseException:  # no thread (interpreter shutdown): the caller abandons it
                self._pending.remove(child)
                del self._children[child.pid]
                self.counts["spawned"] -= 1
                raise

    def _start(self) -> None:
        # Under the lock (and the fork lock, for the fds `_open` creates).
        if self._selector is None:
            self._open()
        self._running = True
        try:
            self.thread.start(self._main)
        except BaseException:
            self._running = False
            raise
        self._wake()  # a caller driving the loop hands it over (see `drive`)

    def watch(self) -> None:
        """Have the thread watch the children from now on, until none is left.

        For what waits without driving the loop itself (see `drive`): a done-callback,
        `concurrent.futures.wait`, a cancelled or killed child that must still be reaped.

        Raises:
            RuntimeError: No thread could be started (interpreter shutdown).
        """
        held = _interrupts.should_hold()
        try:  # a Ctrl-C must not land between the thread's start and its record (_running)
            if held:
                _interrupts.hold()
            with self._lock:
                if self._children:  # else nothing is left to watch: the wish would outlive it
                    self._want_thread = True
                    if not self._running:
                        self._start()
        finally:
            if held:
                _interrupts.release()

    def wake(self) -> None:
        """Wake whoever runs the loop now, so that it checks what it is waiting for."""
        with self._lock:
            if self._wake_w >= 0:
                self._wake()

    def park(self, timeout: float) -> bool:
        """Stop the thread and wait up to ``timeout`` seconds for it to end.

        Nothing is lost meanwhile: results wait in their pipes, exits in their pidfds. The next
        `add` restarts the thread. Returns whether no supervisor thread is left running.
        """
        with self._lock:
            if self._running:
                if self.thread.is_current():
                    return False  # a done-callback is forking: we cannot wait for ourselves
                self._stop = True
                self._wake()
        return self.thread.wait_ended(timeout)

    def resume(self) -> None:
        """Call off a park when no fork followed it: restart a wanted thread if children remain."""
        with self._lock:
            self._stop = False
            if self._want_thread and self._children and not self._running:
                self._start()

    def idle(self) -> bool:
        """Whether no child is being watched (a running thread is then about to end)."""
        with self._lock:
            return not self._children

    def thread_alive(self) -> bool:
        """Whether a supervisor thread is currently running."""
        return self.thread.alive()

    @property
    def ident(self) -> int | None:
        """The running supervisor thread's ident, or None."""
        return self.thread.ident

    # -- the thread ---------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already means "wake up"
            os.write(self._wake_w, b"\0")

    def _main(self) -> None:
        _future.on_supervisor.active = True
        try:
            with self._role:  # a caller driving the loop hands it over at its next wake-up
                self._run()
        except BaseException as exc:  # a bug of ours: say so, and let the next add restart us
            emergency(f"inparallel: the supervisor thread failed: {exc!r}")
            with self._lock:
                self._running = False

    def _run(self) -> None:
        while True:
            with self._lock:
                selector = self._selector
                if selector is not None:
                    self._register_pending(selector)
                if self._stop or not self._children or selector is None:
                    if not self._children:
                        if selector is not None:
                            self._close()
                        self._want_thread = False
                    self._running = self._stop = False
                    return
                timeout = self._timeout()
            self._handle(selector.wait(timeout))

    # -- process lifecycle --------------------------------------------------------------------

    def kill_all(self, grace: float) -> None:
        """Kill every child and reap it (waiting up to ``grace`` seconds in all): for exit.

        The output of tasks with ``output="tag"`` or ``"group"`` is then written out.
        """
        self.park(grace)
        with self._lock:
            children = list(self._children.values())
        for child in children:
            self.send_signal(child, signal.SIGKILL)
        deadline = time.monotonic() + grace
        for child in children:
            if child.pidfd is not None:
                poller = select.poll()
                poller.register(child.pidfd, select.POLLIN)
                with contextlib.suppress(OSError):
                    poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, os.WNOHANG)
        for child in children:
            # What a killed task printed before the end still reaches the terminal (tag's
            # last lines, group's block); ``finish`` raises no Exception.
            streams, child.streams = child.streams, None
            if streams is not None:
                streams.finish()

    def forget_in_child(self) -> None:
        """In a freshly forked child: close every inherited library fd, signal nothing more.

        Futures copied into the child still point at this supervisor and its records: marked
        inherited (one write; not every record, a copied page each), it signals nothing, so
        their ``kill()``/``cancel()`` never reach a reused fd number or pid. The object itself
        is never freed (`reset_in_child`), so its selector never closes the epoll fd number
        again: it is closed here by number.
        """
        self._inherited = True
        self._lock = threading.Lock()  # a thread of the parent may have held it at the fork
        close_all(self.fds)
        if self._selector is not None:
            # ValueError: closed already, by a `_close` that a fork from another thread raced.
            try:  # in a fresh child: no context manager objects (see _spawn)
                fileno = self._selector.fileno()  # None: not epoll (poll has no fd)
                if fileno is not None:
                    os.close(fileno)
            except (OSError, ValueError):
                pass

    def statistics(self) -> Statistics:
        """Return the counters since this process started, and the current state."""
        with self._lock:
            counts = {name: self.counts[name] for name in COUNTERS}
            in_flight = len(self._children)
        return Statistics(**counts, in_flight=in_flight, supervisor_alive=self.thread_alive())


def close_all(fds: set[int]) -> None:
    """Close every fd of ``fds`` (their numbers), in a freshly forked child. Never raises.

    Runs of consecutive numbers (a burst of calls opens its pipes and pidfds one after the
    other) are closed in one ``close_range`` each: a child forked with 800 tasks in flight
    made 1,600 ``close`` calls, about 0.4 ms of its time.
    """
    if len(fds) < 8:
        for fd in fds:
            try:  # noqa: SIM105 - in a fresh child: no context manager objects (see _spawn)
                os.close(fd)
            except OSError:
                pass
        return
    ordered = sorted(fds)  # a new list (the ints it holds are shared pages all the same)
    first = last = ordered[0]
    for fd in ordered:
        if fd > last + 1:
            os.closerange(first, last + 1)
            first = fd
        last = fd
    os.closerange(first, last + 1)


_SUPERVISOR: Supervisor | None = None


def get() -> Supervisor:
    """Return this process's supervisor, creating it on first use (call under the fork lock)."""
    global _SUPERVISOR
    if _SUPERVISOR is None:
        _SUPERVISOR = Supervisor()
    return _SUPERVISOR


#: Supervisors inherited by fork, in a child: kept, never freed. Freeing one would write to
#: pages the child shares with its parent (each write copies a page) and close its selector.
_INHERITED: list[Supervisor] = []


def reset_in_child() -> None:
    """Give a forked child a clean slate: no inherited fds, a fresh supervisor on next use."""
    global _SUPERVISOR
    if _SUPERVISOR is not None:
        _SUPERVISOR.forget_in_child()
        _INHERITED.append(_SUPERVISOR)
        _SUPERVISOR = None


def statistics() -> Statistics:
    """Return the supervisor's counters; all zero before the first task."""
    return (_SUPERVISOR or Supervisor()).statistics()
