"""The result frame: how one outcome travels from a child to the parent.

A child sends exactly one frame on its private result pipe and nothing else::

    header    : magic b"IPR1" | kind u8 | 3 pad | payload length u64 | buffer count u32 | memfd i32
    sizes     : one u64 per out-of-band buffer
    addresses : one u64 per buffer, where it is in the child (only when memfd is IN_MEMORY)
    payload   : pickle protocol 5 bytes
    buffers   : the out-of-band buffers, back to back (only when memfd == -1)

The frame is complete at its declared length, so its end never depends on pipe EOF (a grandchild
may hold a copy of the write end for ever). Large buffers (numpy arrays, big ``bytes`` and
``bytearray`` values) do not go through the 64 KiB pipe: ``_lend`` leaves them in the child's
memory or copies them into a memfd, so a 100 MB result costs one or two memory copies instead
of four (pickle, pipe in, pipe out, unpickle).

This module holds the format and the child's side (encoding and sending); ``_reader`` the
parent's. Everything here is pure encoding: no threads, no process control.
"""

from __future__ import annotations

import enum
import functools
import io
import os
import pickle
import struct
import traceback
from types import TracebackType
from typing import Any, NamedTuple

import cloudpickle  # type: ignore[import-untyped]
from tblib import pickling_support  # type: ignore[import-untyped]

from . import _tracebacks
from ._errors import ResultNotPicklable
from ._lend import lend, write_all

HEADER = struct.Struct("<4sB3xQIi")
SIZE = struct.Struct("<Q")
READONLY = 1 << 63  # flag in a buffer's size: it came from a read-only object (bytes)
MAGIC = b"IPR1"

#: ``bytes``/``bytearray`` objects at least this large are sent out-of-band, like numpy arrays.
BIG_BYTES = 64 << 10

#: Default cap on one result frame (``max_result_size=``): large enough for any real result,
#: small enough that a corrupt header cannot make the parent allocate without bound.
DEFAULT_MAX_RESULT_SIZE = 64 << 30


class Kind(enum.IntEnum):
    """What a frame's payload holds."""

    VALUE = 0  #: the task's return value
    ERROR = 1  #: an exception instance, pickled with its traceback and chain
    SURROGATE = 2  #: a tuple of strings that the parent turns into RemoteError


class Encoded(NamedTuple):
    """A pickled outcome, ready to be framed."""

    kind: Kind
    payload: bytes
    buffers: list[memoryview]


# -- child side ----------------------------------------------------------------------------------


def _unwrap_bytes(buffer: memoryview) -> bytes:
    # The parent hands read-only buffers in as bytes objects, so this is the object itself.
    obj = buffer.obj if isinstance(buffer, memoryview) else buffer
    return obj if type(obj) is bytes else bytes(buffer)


class _BigBuffer:
    """Stands in for a large ``bytes`` or ``bytearray`` so that it travels out-of-band.

    Pickle never asks ``reducer_override`` about exact ``bytes`` (a fast path), so large ones
    at the top of a result, or one level inside a tuple, list or dict, are wrapped in this.
    (numpy arrays send their data out-of-band by themselves.)
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce__(self) -> Any:
        rebuild = _unwrap_bytes if type(self.data) is bytes else bytearray
        return (rebuild, (pickle.PickleBuffer(self.data),))


def _wrap_big(obj: object) -> object:
    if type(obj) in (bytes, bytearray) and len(obj) >= BIG_BYTES:  # type: ignore[arg-type]
        return _BigBuffer(obj)  # type: ignore[arg-type]
    return obj


def _wrap_big_buffers(value: Any) -> object:
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return _wrap_big(value)
    if (kind is tuple or kind is list) and len(value) <= 64:
        return kind(map(_wrap_big, value))
    if kind is dict and len(value) <= 64:
        return {key: _wrap_big(item) for key, item in value.items()}
    return value


def _dump(pickler_cls: type[pickle.Pickler], obj: object) -> bytes:
    out = io.BytesIO()
    pickler_cls(out, protocol=5).dump(obj)
    return out.getvalue()


def _out_of_band(buffers: list[pickle.PickleBuffer], buffer: pickle.PickleBuffer) -> bool:
    # pickle's buffer_callback: a false return sends the buffer out of band. Small buffers
    # stay in the pickle, where they cost nothing extra: a list of a million tiny arrays is
    # one payload, not a million pieces to frame, write and map.
    if buffer.raw().nbytes < BIG_BYTES:
        return True
    buffers.append(buffer)
    return False


#: Result types that pickle whole, in-band, whatever their value.
_SCALARS = frozenset((int, float, complex, bool, str, type(None)))


def encode_value(value: object, restricted: bool) -> Encoded:
    """Pickle a return value: plain pickle first, cloudpickle for what plain pickle refuses.

    Runs in a fresh child, where each page written is a copy: the common case (plain pickle
    takes it) runs no loop, and a scalar result makes no callback.

    Raises:
        ResultNotPicklable: Neither could pickle it; the last pickling error is the cause.
    """
    buffers: list[pickle.PickleBuffer] = []
    if restricted or type(value) in _SCALARS:  # no out-of-band buffer can come of these
        # (Restricted results are plain data: in-band, no class references.)
        callback = None
    else:
        value = _wrap_big_buffers(value)
        callback = functools.partial(_out_of_band, buffers)
    try:
        payload = pickle.dumps(value, protocol=5, buffer_callback=callback)
    except BaseException as exc:  # any failure, even SystemExit from __reduce__
        error = exc
        if not restricted:
            del buffers[:]
            try:
                payload = cloudpickle.dumps(value, protocol=5, buffer_callback=callback)
            except BaseException as exc:
                error = exc
            else:
                return Encoded(Kind.VALUE, payload, [b.raw() for b in buffers])
        if isinstance(value, _BigBuffer):
            value = value.data
        failure = ResultNotPicklable(type(value).__qualname__, f"{type(error).__name__}: {error}")
        raise failure from error
    return Encoded(Kind.VALUE, payload, [b.raw() for b in buffers] if buffers else [])


class _ErrorPickler(pickle.Pickler):
    """Pickles exceptions with their traceback, chain and notes, without global state.

    tblib restores the chain and notes; tracebacks travel as `_tracebacks` entries, which keep
    the child's column positions.
    """

    def reducer_override(self, obj: object) -> Any:
        if isinstance(obj, BaseException):
            # The exception's own reduction (which keeps SystemExit.code, OSError.errno, ...)
            # wrapped by tblib's loader, which restores traceback, chain and notes.
            reduced = obj.__reduce__()
            if isinstance(reduced, str):
                return NotImplemented
            func, args, *state = reduced
            chain = (obj.__cause__, obj.__traceback__, obj.__context__, obj.__suppress_context__)
            notes = getattr(obj, "__notes__", None)
            return (pickling_support.unpickle_exception, (func, args, *chain, notes), *state)
        if isinstance(obj, TracebackType):
            return _tracebacks.rebuild, (_tracebacks.entries(obj),)
        return NotImplemented


class _ArgsPickler(pickle.Pickler):
    """Pickles an exception as ``type(*args)`` only: for types whose state will not restore."""

    def reducer_override(self, obj: object) -> Any:
        if isinstance(obj, BaseException):
            return (type(obj), obj.args)
        return NotImplemented


def format_exception(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except BaseException:
        return ""


def encode_error(exc: BaseException, restricted: bool) -> Encoded:
    """Pickle an exception so that the parent can re-raise it; never raises.

    Tries, in order: the exception with its traceback and chain; plain pickle; ``type(*args)``
    (only for exceptions that pickle but whose state will not restore, such as frozen
    dataclasses). Each attempt must survive ``loads(dumps(exc))`` here in the child, which
    catches types whose ``__init__`` does not accept their own ``args``. When all fail, or in
    restricted mode, a surrogate of plain strings is sent and the parent raises `RemoteError`.
    """
    reason = "restricted_results=True: exceptions arrive as RemoteError"
    cls = type(exc)
    report = (f"{cls.__module__}.{cls.__qualname__}", safe_str(exc), format_exception(exc))
    if not restricted:
        pickles = False  # whether the exception's state pickles at all (with or without tb)
        for pickler_cls in (_ErrorPickler, pickle.Pickler, _ArgsPickler):
            if pickler_cls is _ArgsPickler and not pickles:
                break  # its state will not pickle (a lock, a socket): rebuilding would lie
            try:
                payload = _dump(pickler_cls, exc)
                pickles = True
                pickle.loads(payload)
            except BaseException as failure:
                reason = f"could not transfer the exception: {type(failure).__name__}: {failure}"
                continue
            # The plain-text report travels too, for a parent that cannot rebuild the type.
            return Encoded(Kind.ERROR, pickle.dumps((report, payload), protocol=5), [])
    return Encoded(Kind.SURROGATE, pickle.dumps((*report, reason), protocol=5), [])


def safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:
        return f"<unprintable {type(exc).__name__}>"


def send(fd: int, encoded: Encoded) -> bool:
    """Write one frame to ``fd``; return True if the parent reads the buffers from this process.

    When True, the caller must keep the process alive, its memory untouched, until the parent
    closes the pipe's read end: the parent reads the buffers from this process's memory
    (``_lend.IN_MEMORY``) or opens its memfd through ``/proc/<pid>/fd``.
    """
    buffers, payload = encoded.buffers, encoded.payload
    memfd = -1
    if buffers:
        table = b"".join(SIZE.pack(b.nbytes | (READONLY if b.readonly else 0)) for b in buffers)
        memfd, addresses = lend(buffers)
        frame = HEADER.pack(MAGIC, encoded.kind, len(payload), len(buffers), memfd) + table
        frame += b"".join(SIZE.pack(address) for address in addresses) + payload
    else:  # the common case, in a fresh child: no generator, no join
        frame = HEADER.pack(MAGIC, encoded.kind, len(payload), 0, -1) + payload
    written = os.write(fd, frame)  # a small frame goes in one write
    if written < len(frame):
        write_all(fd, memoryview(frame)[written:])
    if memfd == -1:
        for buf in buffers:
            write_all(fd, buf)
    return memfd != -1
