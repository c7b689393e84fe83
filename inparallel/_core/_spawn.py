"""Forking one task: the fork lock and the at-fork hooks.

**One fork lock.** Creating the result pipe, forking, closing the parent's write end, opening
the pidfd and registering the child happen under one re-entrant lock (re-entrant because a
done-callback may itself call a task). ``os.register_at_fork`` takes the same lock before
*anyone's* fork (the user's ``os.fork``, multiprocessing), so no child is ever forked halfway
through a registration, and resets the library in every child: all inherited library fds are
closed (only the task's own write end survives), the supervisor is forgotten, the lock is new.
Every library fd is created under this lock, so the set of fds to close is always exact.

**Parking (Python 3.12+)**: the supervisor thread is stopped around each fork, so that the
fork is single-threaded (see ``_park``).

**Private pipes.** The tools above ``task`` (maps, preloaders) talk to long-lived children over
pipes of their own. `open_pipe` makes them under the fork lock and records both ends; every
forked child closes them all, except the ones its own `spawn` call names in ``keep=`` (those
then stay private in that child, so its descendants close them in turn). Without this a worker
of one map would hold the pipes of another map open, and none would ever see end-of-file.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from . import _cpus, _future, _interrupts, _park, _stdio, _supervisor
from ._child import plan, prime_lifeline, run_child
from ._errors import SpawnError
from ._future import TaskFuture
from ._options import TaskOptions, call_name, default_label
from ._output import open_streams
from ._park import PARK
from ._record import Child

__all__ = ("close_fd", "install_hooks", "open_pipe", "spawn")

R = TypeVar("R")

_fork_lock = threading.RLock()
_hooks_installed = False
_inherited_pipe: list[int] = []  # in a task's child: its result pipe, closed in any descendant
_private_fds: set[int] = set()  # open_pipe() ends: closed in every forked child but the kept ones
_keep: frozenset[int] = frozenset()  # the kept ones, for the fork in progress (under the lock)
_ours = False  # whether the fork in progress is spawn's (under the lock)


def spawn(
    fn: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: TaskOptions,
    *,
    keep: frozenset[int] = frozenset(),
) -> TaskFuture[R]:
    """Fork a child that runs ``fn(*args, **kwargs)`` and return its future at once.

    Blocks only for the fork itself (which copies the page tables: longer for a big parent).
    ``keep`` names `open_pipe` ends that this child keeps open (all others are closed in it).

    A Ctrl-C during the call either starts nothing (no child, no fd, no record) or arrives
    once the task has started: it is raised as the call returns, and the task runs to its end
    and resolves its future, which the exception carries as ``.future`` (see `_interrupts`).

    Raises:
        SpawnError: No pipe or no process could be made (EMFILE, EAGAIN, ENOMEM). Nothing
            was started and nothing leaked.
        KeyboardInterrupt: See above.
    """
    # A callable name= runs here, in the caller, before anything starts (it may raise).
    label = call_name(options, fn, args, kwargs)
    call = functools.partial(fn, *args, **kwargs)
    # Not held: a flush into a full pipe (a paused `| less`) blocks until the reader drains
    # it, and a Ctrl-C must be able to end that. No check point lies between the held call's
    # return and ours (a Python function's return runs no signal handler).
    _stdio.flush_stdio(Exception)  # else the child would copy (and repeat) our output
    return _spawn_held(call, fn, label, options, keep)


@_interrupts.atomic
def _spawn_held(
    call: Callable[[], R],
    fn: Callable[..., R],
    label: str | None,
    options: TaskOptions,
    keep: frozenset[int],
) -> TaskFuture[R]:
    # Ctrl-C is held here (see `spawn`): every exception below is a real failure at a known
    # point, so each resource is undone exactly once, and never after the supervisor owns it.
    with _fork_lock:
        _install_hooks()
        supervisor = _supervisor.get()
        try:
            rfd, wfd = _result_pipe()
        except OSError as exc:
            raise SpawnError(exc.errno, f"could not create a result pipe: {exc}; {_HINT}") from exc
        supervisor.fds.add(rfd)  # so every forked child, this one included, closes it
        streams = None
        try:
            os.set_blocking(rfd, False)
            prime_lifeline(wfd)
            streams = open_streams(options.output, options.max_output, track=supervisor.fds)
            # Everything the parent needs is made before the fork: a page written while the
            # child lives is copied, and the child starts on the other CPU right away.
            child = Child(0, None, rfd, options, 0.0)
            child.streams = streams
            future: TaskFuture[R] = TaskFuture(
                0, label or "", functools.partial(supervisor.send_signal, child), supervisor
            )
            child.future = future
            if PARK:
                _park.park(supervisor)
            # Last: it reads the CPU this thread runs on, where such a kernel queues the child.
            ticket = _cpus.ticket(alone=supervisor.idle())  # a sequential call's child
            child_plan = plan(wfd, redirected=streams is not None, ticket=ticket)
            _interrupts.give_up_if_pending()  # the last moment to start nothing
            child.started = time.monotonic()
            child.pid = _fork(keep)
        except BaseException as exc:
            supervisor.fds.discard(rfd)
            os.close(rfd)
            os.close(wfd)
            if streams is not None:
                streams.close()
            with contextlib.suppress(OSError):
                supervisor.resume()  # a parked supervisor has other children to watch
            if isinstance(exc, OSError):
                message = f"could not start the task process: {exc}; {_HINT}"
                raise SpawnError(exc.errno, message) from exc
            raise
        if child.pid == 0:
            # Our own result pipe is a library fd for anything this task forks in turn.
            _inherited_pipe.append(wfd)
            run_child(wfd, call, options, child_plan, streams)
        if child_plan.ticket is not None:
            _cpus.move_off(child.pid, child_plan.ticket)  # first: the child waits for it
        _register(supervisor, child, wfd, label or default_label(fn, child.pid))
    # Outside the fork lock (it may unpickle results), still holding Ctrl-C: see `poll`.
    supervisor.poll(child)
    return future


def _register(supervisor: _supervisor.Supervisor, child: Child, wfd: int, label: str) -> None:
    # In the parent right after the fork: hand the child to the supervisor, or undo it all.
    future = child.future
    assert future is not None
    future.pid, future.name = child.pid, label
    try:
        os.close(wfd)
        if child.streams is not None:
            child.streams.after_fork_in_parent(label)
        child.pidfd = _pidfd_open(child.pid)
        if child.pidfd is not None:
            supervisor.fds.add(child.pidfd)
        supervisor.add(child)  # the last step: once it returns, the supervisor owns it all
    except BaseException as exc:
        # Not registered (`add` undoes its own registration when it fails): nobody else
        # knows these fds and this pid, so closing and reaping them here is safe.
        if child.streams is not None:
            child.streams.close()
        assert child.rfd is not None
        _abandon(supervisor, child.pid, child.rfd, child.pidfd)
        if isinstance(exc, OSError):
            message = f"could not watch the task process: {exc}; {_HINT}"
            raise SpawnError(exc.errno, message) from exc
        raise


def _result_pipe() -> tuple[int, int]:
    # Never on fds 0-2 (free in a process that closed its stdio): the child points those at
    # /dev/null or its output streams, which would overwrite the result pipe.
    ends = os.pipe()
    if min(ends) > 2:
        return ends
    moved: list[int] = []
    try:
        for fd in ends:
            moved.append(fd if fd > 2 else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
    except OSError:
        for fd in {*ends, *moved}:
            _close_quietly(fd)
        raise
    for fd in set(ends) - set(moved):
        os.close(fd)
    return moved[0], moved[1]


def _fork(keep: frozenset[int]) -> int:
    global _keep, _ours
    _keep = keep  # read by the at-fork hook in the child
    _ours = True  # read by the before-fork hook: spawn has parked the supervisor already
    try:
        return os.fork()
    finally:
        _keep, _ours = frozenset(), False  # in both processes


def _abandon(supervisor: _supervisor.Supervisor, pid: int, rfd: int, pidfd: int | None) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.waitpid(pid, 0)  # SIGKILLed: returns at once
    for fd in (rfd, pidfd):
        if fd is not None:
            supervisor.fds.discard(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
    with contextlib.suppress(OSError):
        supervisor.resume()


_HINT = "too many tasks in flight? throttle them with waitfor(..., concurrency_factor=N)"


_PIDFD_OPEN: Callable[[int], int] | None = getattr(os, "pidfd_open", None)


def _pidfd_open(pid: int) -> int | None:
    if _PIDFD_OPEN is None:
        return None
    try:
        return _PIDFD_OPEN(pid)
    except OSError:  # ENOSYS before Linux 5.3, or a seccomp policy: exits are polled instead
        return None


def _park_for_fork() -> None:
    # Before *any* fork in this process, under the fork lock, with SIGINT blocked.
    _park.before_fork(ours=_ours)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    # Before-fork hooks run in the reverse order of registration, the others in order:
    #
    #   before:  block SIGINT -> take the fork lock -> park the supervisor (3.12+)
    #   parent:  resume the supervisor -> release the lock -> unblock SIGINT
    #   child:   reset the library -> unblock SIGINT
    #
    # A Ctrl-C inside a Python hook would be swallowed (os.fork reports hook errors as
    # unraisable) and could leave the lock held or the supervisor parked with children to
    # watch. So the outer hooks are C functions, which run no check point: the lock's own
    # methods, and SIGINT blocked in the forking thread (the supervisor thread blocks it for
    # good), so that a Ctrl-C waits in the kernel until os.fork() has returned. (A C hook
    # cannot restore a mask it did not read: a thread that blocked SIGINT itself finds it
    # unblocked after a fork. Nothing in the library or the stdlib blocks it.)
    if PARK:
        os.register_at_fork(before=_park_for_fork, after_in_parent=_park.after_fork_in_parent)
    os.register_at_fork(
        before=_fork_lock.acquire,
        after_in_parent=_fork_lock.release,
        after_in_child=_after_fork_child,
    )
    sigint = (int(signal.SIGINT),)
    unblock = functools.partial(_interrupts.sigmask, int(signal.SIG_UNBLOCK), sigint)
    os.register_at_fork(
        before=functools.partial(_interrupts.sigmask, int(signal.SIG_BLOCK), sigint),
        after_in_parent=unblock,
        after_in_child=unblock,
    )
    atexit.register(_at_exit)


def _after_fork_child() -> None:
    # The forking thread is this process's only thread, and it holds the fork lock (the
    # before-fork hook took it, and `spawn` may hold it too): release it fully, so that every
    # thread this child starts can take it. The same lock object stays, since the hooks above
    # are bound to it.
    # Every page this writes is copied (the child shares them all with the parent), so the
    # hook does as little as it can: no context managers, nothing freed (see `reset_in_child`).
    try:
        while True:
            _fork_lock.release()
    except RuntimeError:
        pass
    _supervisor.reset_in_child()
    if _future.on_supervisor.__dict__:  # forked from a done-callback: not the supervisor here
        _future.on_supervisor.active = False
    _stdio.forget_spares()  # the spares may be this process's live streams now
    for fd in _inherited_pipe:
        _close_quietly(fd)
    _inherited_pipe.clear()
    if _private_fds:
        for fd in _private_fds - _keep:
            _close_quietly(fd)
        _private_fds.intersection_update(_keep)  # still private: this child's forks close them


def _close_quietly(fd: int) -> None:
    try:  # noqa: SIM105 - in a fresh child: no context manager objects (see above)
        os.close(fd)
    except OSError:
        pass


def install_hooks() -> None:
    """Install the at-fork hooks and the exit handler now (idempotent).

    A layer above that registers its own ``atexit`` handler after this one has it run first
    (handlers run in reverse order), before every child is killed.
    """
    with _fork_lock:
        _install_hooks()


@_interrupts.atomic
def open_pipe() -> tuple[int, int]:
    """Create a pipe that no forked child inherits unless its `spawn` keeps the end.

    Returns:
        ``(read_fd, write_fd)``, both blocking. Close them with `close_fd`.

    Raises:
        SpawnError: No pipe could be made (EMFILE, ENFILE).
    """
    with _fork_lock:
        _install_hooks()
        try:
            ends = os.pipe()
        except OSError as exc:
            raise SpawnError(exc.errno, f"could not create a pipe: {exc}; {_HINT}") from exc
        _private_fds.update(ends)
    return ends


@_interrupts.atomic
def close_fd(fd: int) -> None:
    """Close an `open_pipe` end (under the fork lock, so no fork sees a reused number)."""
    with _fork_lock:
        _private_fds.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def _at_exit() -> None:
    # Interpreter exit, including an unhandled Ctrl-C: no child outlives us.
    supervisor = _supervisor._SUPERVISOR
    if supervisor is not None:
        supervisor.kill_all(grace=2.0)
