"""Messages on a long-lived pipe: the format the map workers and the preloader speak.

A `task` child sends one frame and exits (``_wire``). A worker serves many requests, so its
pipes carry a stream of messages instead, each one self-delimiting::

    length u64 | body                       (send_message / recv_message)
    length u64 | count u32 | size u64 x count | the parts     (send_parts / split_parts)

A body is a pickle; a message in parts is a pickle and its out-of-band buffers (big ``bytes``,
numpy arrays), written from where they are. A message of `BIG_MESSAGE` bytes or more is read
straight into its own buffer.

The child writes whole messages with blocking writes; the parent reads without blocking and
cuts the stream into messages with `MessageBuffer`. Outcomes inside a message are values as they
are, and exceptions as ``_wire`` encodes them (traceback, chain and notes, or a `RemoteError`
surrogate), so a worker's error looks exactly like a task's.

A list of values (a map chunk's results) goes as one pickle when it can (`pack_values`): one
``dumps`` in the child and one ``loads`` in the parent, whatever the values are. One value that
will not pickle sends the list one pickle per value instead, up to that value; one that will
not load in the parent is found in the one pickle afterwards (`unpack_values`). Either way it
fails alone, and every value before it is delivered.

Everything here is pure encoding over file descriptors: no threads, no process control.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
from typing import Any, NamedTuple

import cloudpickle  # type: ignore[import-untyped]

from ._errors import ResultNotPicklable
from ._lend import write_all
from ._reader import decode
from ._salvage import load_until_failure
from ._wire import BIG_BYTES, DEFAULT_MAX_RESULT_SIZE, Kind, encode_error, encode_value

__all__ = (
    "MessageBuffer",
    "PackedValues",
    "dumps",
    "load_error",
    "pack_error",
    "pack_values",
    "recv_message",
    "send_message",
    "send_parts",
    "split_parts",
    "unpack_values",
)

LENGTH = struct.Struct("<Q")
COUNT = struct.Struct("<I")


def dumps(obj: object, what: str = "the worker sent") -> bytes:
    """Pickle ``obj`` for a message: plain pickle, cloudpickle for what it refuses.

    ``what`` starts the error message ("the source yielded", ...).

    Raises:
        ResultNotPicklable: Neither could pickle it; the pickling error is the cause.
    """
    try:
        return pickle.dumps(obj, protocol=5)
    except BaseException as first:  # any failure, even SystemExit from a __reduce__
        try:
            data: bytes = cloudpickle.dumps(obj, protocol=5)
        except BaseException:
            why = f"{type(first).__name__}: {first}"
            raise ResultNotPicklable(type(obj).__qualname__, why, what) from first
        return data


def pack_error(exc: BaseException) -> tuple[int, bytes]:
    """Encode an exception for a message (never raises); `load_error` rebuilds it."""
    encoded = encode_error(exc, restricted=False)
    return int(encoded.kind), encoded.payload


def load_error(packed: tuple[int, bytes]) -> BaseException:
    """Rebuild an exception packed by `pack_error` (a `RemoteError` if it cannot be)."""
    kind, payload = packed
    ok, exc = decode(Kind(kind), payload, [], restricted=False)
    assert not ok
    result: BaseException = exc
    return result


class PackedValues(NamedTuple):
    """A list of values pickled by `pack_values`, for `unpack_values` (and a message's parts)."""

    whole: bool  # one pickle of the list; else one pickle per value
    layout: list[int]  # the out-of-band buffers after each pickle in ``parts``
    parts: list[bytes | memoryview]  # each pickle, followed by its out-of-band buffers
    error: ResultNotPicklable | None  # value ``len(layout)`` would not pickle; none after it


def pack_values(values: list[Any], what: str) -> PackedValues:
    """Pickle a list of values (in a worker child) as one pickle, or else one per value.

    A plain pickle of the whole list is tried first. If it fails, each value is encoded as a
    task's result is (``_wire.encode_value``: cloudpickle for what plain pickle refuses) until
    one will not pickle; ``what`` starts that error's message ("the mapped function
    returned"). Values holding big ``bytes`` go one by one too: only there do those travel
    out of band. Big numpy arrays travel out of band either way.
    """
    whole = _pickle_whole(values)
    if whole is not None:
        return PackedValues(True, [len(whole) - 1], whole, None)
    parts: list[bytes | memoryview] = []
    layout: list[int] = []
    for value in values:
        try:
            encoded = encode_value(value, restricted=False)
        except ResultNotPicklable as exc:
            error = ResultNotPicklable(exc.type_name, exc.reason, what)
            error.__cause__ = exc.__cause__
            return PackedValues(False, layout, parts, error)
        parts.append(encoded.payload)
        parts.extend(encoded.buffers)
        layout.append(len(encoded.buffers))
    return PackedValues(False, layout, parts, None)


def _pickle_whole(values: list[Any]) -> list[bytes | memoryview] | None:
    """The pickle of ``values`` and its out-of-band buffers, or None to go one by one."""
    buffers: list[pickle.PickleBuffer] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        # As for a task's result: small buffers stay in the pickle (a false return sends one
        # out of band), so a chunk of small arrays is one payload.
        if buffer.raw().nbytes < BIG_BYTES:
            return True
        buffers.append(buffer)
        return False

    try:
        if not _arrays_first(values):
            payload = pickle.dumps(values, protocol=5, buffer_callback=out_of_band)
        else:
            out = io.BytesIO()
            pickler = pickle.Pickler(out, protocol=5, buffer_callback=out_of_band)
            pickler.dispatch_table = {type(values[0]): _reduce_array}
            pickler.dump(values)
            payload = out.getvalue()
    except BaseException:  # any failure, even SystemExit from a __reduce__: find which value
        return None
    if len(payload) >= BIG_BYTES and _holds_big_bytes(values):  # only then can it hold one
        return None
    return [payload, *(buffer.raw() for buffer in buffers)]


def _arrays_first(values: list[Any]) -> bool:
    numpy = sys.modules.get("numpy")  # if a value is an array, numpy is imported
    return numpy is not None and bool(values) and type(values[0]) is numpy.ndarray


def _reduce_array(array: Any) -> Any:
    # numpy's protocol-5 reduction rebuilds every array through a Python function; its older
    # one (the data as bytes, like Pool.map's pickles) loads small arrays 1.4x faster, and a
    # small array's buffer stays in the pickle anyway. Big ones still go out of band.
    return array.__reduce_ex__(4 if array.nbytes < BIG_BYTES else 5)


_BYTES = (bytes, bytearray)
_HOLDERS = frozenset({bytes, bytearray, tuple, list, dict})


def _holds_big_bytes(values: list[Any]) -> bool:
    """Whether a value is, or directly holds, ``bytes`` that ``_wire`` sends out of band."""
    if _HOLDERS.isdisjoint(map(type, values)):  # at C speed: most chunks stop here
        return False
    for value in values:
        kind = type(value)
        inner = value.values() if kind is dict else value if kind in (tuple, list) else (value,)
        for item in inner:
            if type(item) in _BYTES and len(item) >= BIG_BYTES:
                return True
    return False


def unpack_values(
    whole: bool, layout: list[int], parts: list[memoryview]
) -> tuple[list[Any], BaseException | None]:
    """Rebuild the values of `pack_values` (in the parent); never raises.

    Returns the values, up to the first that will not load here (the parent lacks its class,
    or its ``__reduce__`` fails), and that value's `RemoteError` (None if they all load).
    """
    index = 0
    values: list[Any] = []
    for count in layout:
        payload, buffers = parts[index], parts[index + 1 : index + 1 + count]
        index += 1 + count
        ok, value = decode(Kind.VALUE, payload, buffers, restricted=False)
        if whole:
            if ok:
                return value, None
            loaded, complete = load_until_failure(payload, buffers)
            return loaded, None if complete else value
        if not ok:
            return values, value
        values.append(value)
    return values, None


def send_message(fd: int, payload: bytes) -> None:
    """Write one message to a blocking fd (raises `OSError` if the reader is gone)."""
    head = LENGTH.pack(len(payload))
    if len(payload) < 1 << 16:
        write_all(fd, head + payload)  # one write for the common small message
    else:
        write_all(fd, head)
        write_all(fd, payload)


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        data = os.read(fd, min(n, 1 << 20))
        if not data:
            return None
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def recv_message(fd: int) -> bytes | None:
    """Read one message from a blocking fd; None at end-of-file (the writer closed).

    Raises:
        EOFError: The stream ended inside a message.
    """
    head = _read_exact(fd, LENGTH.size)
    if head is None:
        return None
    (size,) = LENGTH.unpack(head)
    payload = _read_exact(fd, size)
    if payload is None:
        raise EOFError("the pipe closed in the middle of a message")
    return payload


def send_parts(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write one message made of several parts (a pickle and its out-of-band buffers).

    The message body is ``count u32 | size u64 per part | the parts``; `split_parts` cuts
    it again. Big parts are written from where they are, never joined into one copy.
    """
    views = [memoryview(p).cast("B") for p in parts]
    table = COUNT.pack(len(views)) + b"".join(LENGTH.pack(v.nbytes) for v in views)
    total = len(table) + sum(v.nbytes for v in views)
    small = bytearray(LENGTH.pack(total) + table)
    for view in views:
        if view.nbytes >= 1 << 16:
            write_all(fd, small)
            small.clear()
            write_all(fd, view)
        else:
            small += view
    if small:
        write_all(fd, small)


def split_parts(message: bytes | bytearray) -> list[memoryview]:
    """Cut a `send_parts` message into its parts (views of ``message``, no copies)."""
    view = memoryview(message)
    (count,) = COUNT.unpack_from(view, 0)
    offset = COUNT.size + count * LENGTH.size
    parts = []
    for i in range(count):
        (size,) = LENGTH.unpack_from(view, COUNT.size + i * LENGTH.size)
        parts.append(view[offset : offset + size])
        offset += size
    return parts


#: Messages at least this big are read straight into their own buffer (one copy, not three).
BIG_MESSAGE = 1 << 20


class MessageBuffer:
    """Cut a byte stream read from a non-blocking pipe into whole messages (parent side)."""

    __slots__ = ("_big", "_data", "_filled", "_max")

    def __init__(self, max_size: int = DEFAULT_MAX_RESULT_SIZE) -> None:
        self._data = bytearray()
        self._big: bytearray | None = None  # a big message being read in place
        self._filled = 0
        self._max = max_size

    def read_from(self, fd: int) -> tuple[list[bytes | bytearray], bool]:
        """Read what ``fd`` has now; return ``(whole messages, end_of_file)``.

        Raises:
            ValueError: A message announces more than the size cap (a corrupt stream).
            OSError: Reading failed for a reason other than having nothing to read.
        """
        out: list[bytes | bytearray] = []
        try:
            while True:
                if self._big is not None:
                    n = os.readv(fd, [memoryview(self._big)[self._filled :]])
                    if not n:
                        return out, True
                    self._filled += n
                    if self._filled == len(self._big):
                        out.append(self._big)
                        self._big = None
                    continue
                data = os.read(fd, 1 << 16)
                if not data:
                    return out, True
                self._data += data
                self._split(out)
        except BlockingIOError:
            return out, False

    def _split(self, out: list[bytes | bytearray]) -> None:
        data, start = self._data, 0
        while len(data) - start >= LENGTH.size:
            (size,) = LENGTH.unpack_from(data, start)
            if size > self._max:
                raise ValueError(f"a worker message announces {size} bytes, over the cap")
            begin, end = start + LENGTH.size, start + LENGTH.size + size
            if end > len(data):
                if size >= BIG_MESSAGE:  # read the rest straight into the message's buffer
                    self._big = bytearray(size)
                    self._filled = len(data) - begin
                    self._big[: self._filled] = data[begin:]
                    start = len(data)
                break
            out.append(data[begin:end])  # a writable copy: numpy results stay writable
            start = end
        if start:
            del data[:start]

    @property
    def partial(self) -> bool:
        """Whether part of a message is buffered (the writer died in the middle of it)."""
        return bool(self._data) or self._big is not None
