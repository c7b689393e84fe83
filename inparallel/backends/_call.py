"""What crosses the wire to a remote engine: one blob per call, and the function that runs it.

A call ``fn(*args, **kwargs)`` travels as a single cloudpickled blob, so the engine sees one
opaque ``bytes`` argument and a function of ours::

    client: pack_call(fn, args, kwargs) -> blob, handles
        engine.submit(run_call, blob, *handles)   # no user kwarg meets the engine's options
    worker: run_call(blob, *values)
        fn, args, kwargs = loads(blob)   # each Shared handle replaced by its value
        fn(*args, **kwargs)              # an error travels packed, with its traceback

Packing the call ourselves keeps user keyword arguments named ``key`` or ``priority`` away from
the engine's own, makes every call distinct (no de-duplication of identical calls), pickles
``__main__`` functions, lambdas and closures by value, and leaves the engine's scheduler only a
reference to `run_call` to resolve: inparallel must be installed where the calls run, the
user's code need not be when it is pickled by value.

`Shared` handles (values an engine placed on its workers once, for many calls to read) may be
anywhere in the arguments, closures included: the pickler swaps each for a slot number and
hands the engine's own handles over as top-level arguments, which the engine resolves to the
values before `run_call` starts.
"""

from __future__ import annotations

import io
import pickle
import weakref
from collections.abc import Callable
from typing import Any, Generic, NoReturn, TypeVar

import cloudpickle  # type: ignore[import-untyped]

from .._core._channel import load_error, pack_error

__all__ = ("RemoteFailure", "Shared", "pack_call", "run_call", "unwrap_failure")

T = TypeVar("T")

_SLOT = "inparallel.shared"

#: Every `Shared` handle alive: while there is none, calls are pickled the fast way (a
#: pickler with ``persistent_id`` runs Python code for every object it writes).
_live: weakref.WeakSet[Shared[Any]] = weakref.WeakSet()


class Shared(Generic[T]):
    """A value an engine holds on its workers; calls on that engine receive the value itself.

    Made by ``executor.share(value)``. Pass it (anywhere in a call's arguments, or inside the
    function's closure) to calls on the same executor; in the parent it stays a handle.
    """

    __slots__ = ("__weakref__", "handle", "owner", "value_type")

    def __init__(self, handle: Any, owner: object, value_type: str) -> None:
        self.handle = handle  # the engine's own reference to the data
        self.owner = owner  # the executor that made it
        self.value_type = value_type
        _live.add(self)

    def __repr__(self) -> str:
        return f"<Shared {self.value_type} on {self.owner!r}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a Shared value can only be passed to calls on the executor that made it "
            f"({self.owner!r}); it cannot be pickled any other way"
        )


class _CallPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """Cloudpickle, with each `Shared` handle of the owner replaced by a slot number."""

    def __init__(self, file: io.BytesIO, owner: object) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.owner = owner
        self.handles: list[Any] = []
        self.slots: dict[int, int] = {}

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is not Shared:
            return None
        if obj.owner is not self.owner:
            raise TypeError(
                f"{obj!r} was shared by another executor; share the value on {self.owner!r}"
            )
        slot = self.slots.get(id(obj))
        if slot is None:
            slot = self.slots[id(obj)] = len(self.handles)
            self.handles.append(obj.handle)
        return (_SLOT, slot)


class _CallUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, values: tuple[Any, ...]) -> None:
        super().__init__(file)
        self.values = values

    def persistent_load(self, pid: Any) -> Any:
        tag, slot = pid
        if tag != _SLOT:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self.values[slot]


def pack_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], owner: object
) -> tuple[bytes, list[Any]]:
    """Pickle a call into one blob; return it and the engine handles of its `Shared` values.

    Raises:
        TypeError: Something in the call cannot be pickled (the message names the call), or a
            `Shared` of another executor is in it.
    """
    try:
        if not _live:
            return cloudpickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL), []
        buffer = io.BytesIO()
        pickler = _CallPickler(buffer, owner)
        pickler.dump((fn, args, kwargs))
        return buffer.getvalue(), pickler.handles
    except Exception as exc:
        if isinstance(exc, TypeError) and "Shared" in str(exc):
            raise
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise TypeError(
            f"cannot send the call {name}(...) to {owner!r}: {type(exc).__name__}: {exc}. A "
            "remote engine pickles the function and its arguments (open files, sockets, locks "
            "and generators do not pickle); @task and the fork engine need no pickling"
        ) from exc


class RemoteFailure(Exception):
    """How a call's exception travels back: packed by us, so it keeps its traceback.

    The engine sees an ordinary exception (its retries and dashboards work); the client turns
    it back into the original with `unwrap_failure`.
    """

    def __init__(self, packed: tuple[int, bytes], summary: str) -> None:
        super().__init__(packed, summary)
        self.packed = packed

    def __str__(self) -> str:
        return str(self.args[1])

    def __repr__(self) -> str:  # what engines log: the summary, not the packed bytes
        return f"RemoteFailure({self.args[1]!r})"


def run_call(blob: bytes, *values: Any) -> Any:
    """Run a packed call on a worker (the engine has resolved ``values``, the shared data).

    Raises:
        RemoteFailure: The call (or unpickling it) raised; the original travels inside.
    """
    failure = None
    try:
        fn, args, kwargs = _CallUnpickler(io.BytesIO(blob), values).load()
    except BaseException as exc:
        if isinstance(exc, ImportError):
            exc.add_note(
                "inparallel: functions and classes of importable modules are pickled by "
                "reference; install that module where the calls run, or call "
                "cloudpickle.register_pickle_by_value(module) before submitting"
            )
        failure = _failure(exc)
    else:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:  # KeyboardInterrupt and SystemExit too: the call's own
            failure = _failure(exc)
        finally:
            del fn, args, kwargs
    # Raised outside the handlers, so that it carries no __context__: the engine pickles the
    # context too, and the original may be exactly what does not pickle.
    raise failure


def _failure(exc: BaseException) -> RemoteFailure:
    return RemoteFailure(pack_error(exc), f"{type(exc).__name__}: {exc}")


def unwrap_failure(exc: BaseException) -> BaseException:
    """Return the call's own exception for an engine error that carries one, else ``exc``."""
    if isinstance(exc, RemoteFailure):
        return load_error(exc.packed)
    return exc
