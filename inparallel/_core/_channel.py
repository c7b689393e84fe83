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

Everything here is pure encoding over file descriptors: no threads, no process control.
"""

from __future__ import annotations

import os
import pickle
import struct

import cloudpickle  # type: ignore[import-untyped]

from ._errors import ResultNotPicklable
from ._reader import decode
from ._wire import DEFAULT_MAX_RESULT_SIZE, Kind, encode_error, write_all

__all__ = (
    "MessageBuffer",
    "dumps",
    "load_error",
    "pack_error",
    "recv_message",
    "send_message",
    "send_parts",
    "split_parts",
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
