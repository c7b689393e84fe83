"""The ``@task`` decorator: turn a function into one that forks a child per call."""

from __future__ import annotations

import functools
import types  # MethodType, not inspect.ismethod: inspect imports ast, dis and tokenize
from collections.abc import Callable
from typing import Any, Literal, ParamSpec, TypeVar, overload

from ._checks import function
from ._core._future import TaskFuture
from ._core._options import TaskOptions, make_options
from ._core._spawn import spawn

__all__ = ("TASK_OPTIONS", "task", "unwrap_task")

#: The attribute of a task-wrapped function that holds its options (``__wrapped__`` is the
#: function itself).
TASK_OPTIONS = "_inparallel_task_options"

P = ParamSpec("P")
R = TypeVar("R")

#: Where a task's stdout and stderr go (``output=``).
Output = Literal["inherit", "capture", "tag", "group"]


@overload
def task(fn: Callable[P, R], /) -> Callable[P, TaskFuture[R]]: ...


@overload
def task(
    *,
    timeout: float | None = None,
    memory_limit: int | str | None = None,
    cpu_time: float | None = None,
    name: str | Callable[..., object] | None = None,
    restricted_results: bool = False,
    max_result_size: int | None = None,
    output: Output = "inherit",
    max_output: int | str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, TaskFuture[R]]]: ...


def task(
    fn: Any = None,
    /,
    *,
    timeout: float | None = None,
    memory_limit: int | str | None = None,
    cpu_time: float | None = None,
    name: str | Callable[..., object] | None = None,
    restricted_results: bool = False,
    max_result_size: int | None = None,
    output: Output = "inherit",
    max_output: int | str | None = None,
) -> Any:
    """Make every call of ``fn`` run in a forked child and return a `TaskFuture` at once.

    Use it bare (``@task``) or with options (``@task(timeout=5)``), on functions, methods,
    classmethods and staticmethods. The child is a fork of the caller at the moment of the
    call: it sees the arguments, closures, globals and open objects as they are then, without
    pickling. Only the return value (or exception) travels back; whatever the child changes in
    its own memory is lost with it.

    Args:
        fn: The function to wrap (bare form).
        timeout: Seconds the child may run; then it is SIGKILLed and the future fails with
            `TaskTimeout`. The clock stops once the result starts to arrive.
        memory_limit: Address space the child may add to what it inherited, as bytes or a
            string such as ``"512M"`` or ``"2G"`` (powers of 1024). A `MemoryError` in the
            task then arrives as `MemoryLimitExceeded`.
        cpu_time: CPU seconds the child may use (rounded up); past it the kernel kills it
            with SIGXCPU and the future fails with `WorkerDied`.
        name: The call's label: ``fut.name``, shown in ``repr()``, in errors and in front of
            each ``output="tag"`` line. A string, or a callable that makes one from the call's
            arguments (``name=lambda host: host``; a method's gets ``self`` first), run in the
            caller before the fork: what it raises is raised by the call, and nothing starts.
            Defaults to ``qualname:pid``.
        restricted_results: Accept only plain data back (numbers, strings, bytes, and lists,
            tuples, dicts and sets of them): no class is ever looked up while loading the
            result, so a compromised child cannot run code in the parent. Exceptions then
            arrive as `RemoteError`.
        max_result_size: Largest result, in bytes, the parent accepts (default 64 GiB); a
            bigger one fails the future with `RemoteError` before it is allocated.
        output: Where the child's stdout and stderr (its fds 1 and 2, so also what programs it
            runs write) go:

            * ``"inherit"`` (default): the parent's own, each line as it ends.
            * ``"capture"``: private buffers, nothing on screen; after the end, whatever
              the outcome, ``fut.stdout`` and ``fut.stderr`` hold the text (decoded like the
              parent's streams, undecodable bytes as backslash escapes). `WorkerDied` and
              `TaskTimeout` carry the last lines of stderr as a note.
            * ``"tag"``: each line to the parent's ``sys.stdout``/``sys.stderr`` as it comes,
              whole, prefixed ``[name] ``. A child printing faster than the parent writes is
              held back by the pipe.
            * ``"group"``: each stream as one block when the task ends, never mixed with
              another task's.

            Forwarded lines go above a progress bar (``progress=True``) without garbling it.
        max_output: Bytes of each stream the parent keeps, as an int or a string such as
            ``"1M"`` (default 16 MiB). Beyond it the head is dropped and the text starts with
            a line saying how much. With ``"tag"``: the longest partial line held back (64 KiB
            at most; a longer line is forwarded in pieces). Not allowed with ``"inherit"``.

    Returns:
        The wrapped function (bare form), or a decorator.

    Raises:
        TypeError: ``fn`` is not callable, or an option has the wrong type.
        ValueError: An option is out of range, or ``output`` is not one of the four modes.
    """
    options = make_options(
        timeout=timeout,
        memory_limit=memory_limit,
        cpu_time=cpu_time,
        name=name,
        restricted_results=restricted_results,
        max_result_size=max_result_size,
        output=output,
        max_output=max_output,
    )
    if fn is None:
        return functools.partial(_wrap, options=options)
    return _wrap(fn, options=options)


def _wrap(fn: Any, *, options: TaskOptions) -> Any:
    if isinstance(fn, classmethod | staticmethod):
        return type(fn)(_wrap(fn.__func__, options=options))
    hint = "; write @task or @task(timeout=...) directly above a def"
    function("@task", "the decorated function", fn, hint=hint)

    # No check point lies between spawn's return and ours (a return from a Python function
    # runs no signal handler), so a Ctrl-C cannot lose the future of a started task here.
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> TaskFuture[Any]:
        return spawn(fn, args, kwargs, options)

    # Lets aio.parallel_map fork ``fn`` itself, once. The wrapper is kept with the options: a
    # decorator on top (functools.wraps copies __dict__) must not be mistaken for the task.
    call.__dict__[TASK_OPTIONS] = (call, options)
    return call


def unwrap_task(fn: Callable[..., Any]) -> tuple[Callable[..., Any], TaskOptions | None]:
    """Return what a ``@task`` forks, and its options; ``(fn, None)`` for anything else.

    Tools that run a function their own way (a forked map, a remote engine) call this so that
    a task is run once, not forked twice, and keeps its options.
    """
    marker = getattr(fn, TASK_OPTIONS, None)
    wrapper = fn.__func__ if isinstance(fn, types.MethodType) else fn
    if not (isinstance(marker, tuple) and marker[0] is wrapper):
        return fn, None  # a plain function, or something wrapping a task
    options: TaskOptions = marker[1]
    if isinstance(fn, types.MethodType):  # a @task method, bound
        return functools.partial(fn.__func__.__wrapped__, fn.__self__), options  # type: ignore[attr-defined]
    return fn.__wrapped__, options  # type: ignore[attr-defined]
