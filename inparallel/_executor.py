"""Engine selection: which executor runs the calls of the library's tools.

Everything above `task` (maps, `StreamExecutor`, `process_parallel`, ``aio.parallel_map``)
starts work through ``Executor.submit`` and waits on standard futures, so any
`concurrent.futures.Executor` can run it. Which one is decided per call, in this order:

1. an ``executor=`` argument;
2. the innermost ``with use(executor):`` block of the calling context (a `contextvars`
   variable, so it follows the code into the library's own background threads and asyncio
   tasks, and never leaks into another thread's work);
3. the ``INPARALLEL_EXECUTOR`` environment variable: ``fork`` (the default), or
   ``dask:tcp://host:port`` / ``dask:/path/to/scheduler.json`` for a Dask cluster;
4. the fork engine: a fresh fork of the caller per call.

A forked child (a `task`, a map worker) always runs on fork: it never uses its parent's engine,
whose connections and threads belong to the parent.

The fork engine keeps its fast paths (a map forks its workers once per pass and feeds them
chunks; nothing is pickled on the way in). Any other engine gets ``submit(fn, *args)`` calls,
so what it runs must be picklable, and whatever the caller's memory holds that is not in the
arguments or the function's closure is not there.

Engines other than the standard ones are plugins (`BACKENDS`), imported by name only when
asked for, so that importing inparallel never imports dask.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import importlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from types import TracebackType
from typing import Any, TypeVar

from ._checks import default_processes, function
from ._core._future import TaskFuture
from ._core._options import TaskOptions
from ._core._spawn import spawn
from ._task import unwrap_task

__all__ = (
    "BACKENDS",
    "ENV_VAR",
    "ForkExecutor",
    "concurrency",
    "current_executor",
    "portable",
    "selected",
    "share",
    "use",
    "worker_slots",
)

T = TypeVar("T")
R = TypeVar("R")

#: The environment variable naming the default engine.
ENV_VAR = "INPARALLEL_EXECUTOR"

#: Engine plugins by the scheme used in `ENV_VAR` and `use`: each module has
#: ``from_address(address) -> Executor`` and ``adapt(obj) -> Executor | None``.
BACKENDS = {"dask": "inparallel.backends.dask"}

_PLAIN = TaskOptions()


class ForkExecutor(Executor):
    """The fork engine as an executor: every ``submit`` forks a child at once (no queue).

    The child inherits everything (nothing is pickled on the way in) and its result is
    pickled back, as for `task`; the returned `TaskFuture` is running from the start and
    ``cancel()`` kills the child. Throttle with `waitfor` or `StreamExecutor`. There is
    nothing to shut down: ``shutdown()`` only refuses later calls.
    """

    def __init__(self) -> None:
        self._shutdown = False

    def __repr__(self) -> str:
        return "<ForkExecutor>"

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> TaskFuture[R]:
        """Fork a child running ``fn(*args, **kwargs)``; a ``@task`` keeps its options.

        Raises:
            RuntimeError: After `shutdown`.
            TypeError: ``fn`` is not callable.
            SpawnError: No process could be started.
        """
        if self._shutdown:
            raise RuntimeError("cannot submit to a ForkExecutor after shutdown()")
        function("ForkExecutor.submit()", "fn", fn)
        target, options = unwrap_task(fn)
        return spawn(target, args, kwargs, options or _PLAIN)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse later calls; forked children run on (cancel a future to kill its child)."""
        self._shutdown = True

    def share(self, value: T) -> T:
        """Return ``value``: forked children inherit it as it is, at no cost."""
        return value

    def worker_slots(self) -> int:
        """This machine's CPU count."""
        return default_processes()


#: The default engine (used when nothing else is selected).
FORK = ForkExecutor()

_selected: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "inparallel_executor", default=None
)
_from_env: dict[str, Executor] = {}
_env_lock = threading.Lock()
_in_child = False  # in a forked child of a process that had selected another engine
_fork_hook = False


def _after_fork_in_child() -> None:
    # A forked child must never use its parent's engine: a dask client's connections and
    # threads are the parent's (dask/dask#3813), and a call through them hangs. The child
    # and anything it starts run on fork.
    global _in_child, _env_lock
    _in_child = True
    _env_lock = threading.Lock()
    _from_env.clear()
    _selected.set(None)


def _watch_forks() -> None:
    """Register the child reset, once, when an engine other than fork is first selected."""
    global _fork_hook
    if not _fork_hook:
        _fork_hook = True
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _plugin(scheme: str, where: str) -> Any:
    try:
        module = BACKENDS[scheme]
    except KeyError:
        known = ", ".join(repr(f"{name}:ADDRESS") for name in BACKENDS)
        raise ValueError(
            f"{where}: unknown engine {scheme!r}: use 'fork', {known}, or pass an Executor"
        ) from None
    return importlib.import_module(module)


def _names_fork(spec: str) -> bool:
    return spec.strip() in {"", "fork"}


def _parse_spec(spec: str, where: str) -> tuple[str, str] | None:
    """Split a spec string into (scheme, address); None means fork.

    Raises:
        ValueError: The string names no engine.
    """
    if _names_fork(spec):
        return None
    scheme, colon, address = spec.strip().partition(":")
    if not colon or not address:
        raise ValueError(
            f"{where}: {spec!r} names no engine; use 'fork' or 'dask:tcp://host:port' "
            "(or 'dask:' and the path of a scheduler file)"
        )
    return scheme, address


def _from_spec(spec: str, where: str) -> tuple[Executor, bool]:
    """Make the engine a spec string names; return it and whether the caller owns it."""
    parsed = _parse_spec(spec, where)
    if parsed is None:
        return FORK, False
    scheme, address = parsed
    return _plugin(scheme, where).from_address(address), True


def _coerce(engine: object, where: str) -> tuple[Executor, bool]:
    """Turn what `use` or ``executor=`` accepts into an executor, and whether we own it."""
    if isinstance(engine, str):
        return _from_spec(engine, where)
    if isinstance(engine, Executor):
        return engine, False
    if type(engine).__module__.split(".")[0] == "distributed":  # a dask Client
        adapted = _plugin("dask", where).adapt(engine)
        if adapted is not None:
            return adapted, False
    if callable(getattr(engine, "submit", None)):
        return engine, False  # type: ignore[return-value]  # a duck-typed executor
    raise TypeError(
        f"{where}: expected a concurrent.futures.Executor (or an object with submit()), a "
        f"dask distributed.Client, or a string such as 'fork' or 'dask:tcp://host:port'; "
        f"got {type(engine).__qualname__} {engine!r:.80}"
    )


def _environment() -> Executor:
    spec = os.environ.get(ENV_VAR, "").strip()
    if _in_child or _names_fork(spec):
        return FORK
    with _env_lock:
        engine = _from_env.get(spec)
        if engine is None:
            _watch_forks()
            engine, _ = _from_spec(spec, f"{ENV_VAR}={spec!r}")
            _from_env[spec] = engine
            if len(_from_env) == 1:
                atexit.register(_close_environment)
        return engine


def _close_environment() -> None:
    with _env_lock:
        engines = list(_from_env.values())
        _from_env.clear()
    for engine in engines:
        engine.shutdown(wait=False, cancel_futures=True)


def current_executor() -> Executor:
    """Return the engine that calls made here would use (see the module docstring).

    Raises:
        ValueError: ``INPARALLEL_EXECUTOR`` is set to something that names no engine.
        ImportError: It names an engine whose extra is not installed.
    """
    engine = _selected.get()
    return _environment() if engine is None else engine


def selected(executor: object = None, where: str = "executor") -> Executor | None:
    """Return the engine for a call with this ``executor=`` argument; None means fork.

    The tools keep their own fork paths, so the fork engine comes back as None.

    Raises:
        TypeError: ``executor`` is not something an engine can be made of.
    """
    if executor is None:
        engine = current_executor()
    elif isinstance(executor, str) and not _names_fork(executor):
        # Refused before anything is opened: who would close a connection made here?
        raise TypeError(
            f"{where}: pass an executor object, not {executor!r}; the engine a string "
            "names is opened and closed by inparallel.use() or INPARALLEL_EXECUTOR"
        )
    else:
        engine, _ = _coerce(executor, where)
    return None if isinstance(engine, ForkExecutor) else engine


class use:  # lower case: it reads as a function: ``with inparallel.use(engine):``
    """Run the library's calls on ``executor`` inside a ``with`` block.

    Accepts any `concurrent.futures.Executor` (its ``submit`` must return standard futures),
    a dask ``distributed.Client`` (wrapped in a `DaskExecutor`), or a string: ``"fork"``, or
    ``"dask:tcp://host:port"`` / ``"dask:scheduler.json"`` to connect to a cluster for the
    block (closed when it ends). ``None`` means the default engine.

    The choice lives in a `contextvars` variable: it holds for this thread and the asyncio
    tasks and library threads started inside the block, and blocks nest. An executor passed
    in is not shut down at the end; the ``with`` value is the engine.

    Raises:
        TypeError: ``executor`` is none of the above.
        ValueError: A string names no known engine.
        ImportError: The engine's extra is not installed.
    """

    def __init__(self, executor: Executor | str | object | None) -> None:
        self._spec = executor if isinstance(executor, str) else None
        self._engine: Executor | None = None  # the engine passed in (a string opens one later)
        if self._spec is not None:
            _check_spec(self._spec)
        elif executor is not None:
            self._engine, _ = _coerce(executor, "inparallel.use()")
        self._active: Executor = FORK
        self._owned = False
        self._token: contextvars.Token[Executor | None] | None = None

    def __enter__(self) -> Executor:
        if self._token is not None:
            raise RuntimeError("this inparallel.use() block is already active; call use() again")
        engine, self._owned = self._engine, False
        if self._spec is not None:
            engine, self._owned = _from_spec(self._spec, "inparallel.use()")
        elif engine is None:
            engine = _environment()
        if not isinstance(engine, ForkExecutor):
            _watch_forks()
        self._active = engine
        self._token = _selected.set(engine)
        return engine

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._token is not None
        _selected.reset(self._token)
        self._token = None
        if self._owned:
            self._active.shutdown(wait=False, cancel_futures=True)


def _check_spec(spec: str) -> None:
    """Raise at the call for a spec that can never work (without connecting to anything)."""
    parsed = _parse_spec(spec, "inparallel.use()")
    if parsed is not None:
        _plugin(parsed[0], "inparallel.use()")


def concurrency(executor: object = None) -> int:
    """Return how many calls to keep in flight on an engine: a default for `waitfor`.

    For fork, the CPU count. For an engine that reports its worker slots (a `DaskExecutor`:
    the threads of every worker), twice that, so that each slot has its next call queued
    while a result travels back; for the standard pools, their ``max_workers``.

    Raises:
        TypeError: ``executor`` is not something an engine can be made of.
    """
    engine = selected(executor, "concurrency()")
    remote = engine is not None and callable(getattr(engine, "worker_slots", None))
    return (2 if remote else 1) * worker_slots(engine)


def worker_slots(engine: Executor | None) -> int:
    """How many calls ``engine`` (None: fork) runs at once, as far as it tells."""
    if engine is None:
        return default_processes()
    slots = getattr(engine, "worker_slots", None)
    if callable(slots):
        return max(1, int(slots()))
    workers = getattr(engine, "_max_workers", None)  # ThreadPoolExecutor, ProcessPoolExecutor
    if isinstance(workers, int) and workers > 0:
        return workers
    return default_processes()


def share(value: T, *, executor: object = None) -> T:
    """Place ``value`` where the engine's calls can read it once, instead of once per call.

    With fork this returns ``value`` itself (children inherit it). A `DaskExecutor` copies it
    to every worker and returns a handle: pass the handle to calls on that engine, anywhere
    in their arguments or closures, and each call receives the value. In the parent the
    handle is only a handle.

    Raises:
        TypeError: ``executor`` is not something an engine can be made of.
    """
    engine = selected(executor, "share()")
    method = getattr(engine, "share", None)
    return value if engine is None or not callable(method) else method(value)


def _forked(target: Callable[..., R], options: TaskOptions, /, *args: Any, **kwargs: Any) -> R:
    """Run a ``@task`` with its options where the engine runs it: in a fork of the worker."""
    return spawn(target, args, kwargs, options).result()


def portable(fn: Callable[..., R]) -> Callable[..., R]:
    """Return what to submit to an engine for ``fn``: a ``@task`` runs as a task there.

    Submitting the wrapper itself would hand back a `TaskFuture` as the result.
    """
    target, options = unwrap_task(fn)
    if options is None:
        return fn
    return functools.partial(_forked, target, options)
