"""Messages on a long-lived pipe: the format the map workers and the preloader speak.

A `task` child sends one frame and exits (``_wire``). A worker serves many requests, so its
pipes carry a stream of messages instead, each one self-delimiting::

    length u64 | pickle protocol 5 bytes (in-band buffers)

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
)

LENGTH = struct.Struct("<Q")


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


class MessageBuffer:
    """Cut a byte stream read from a non-blocking pipe into whole messages (parent side)."""

    __slots__ = ("_data", "_max")

    def __init__(self, max_size: int = DEFAULT_MAX_RESULT_SIZE) -> None:
        self._data = bytearray()
        self._max = max_size

    def read_from(self, fd: int) -> tuple[list[bytes], bool]:
        """Read what ``fd`` has now; return ``(whole messages, end_of_file)``.

        Raises:
            ValueError: A message announces more than the size cap (a corrupt stream).
            OSError: Reading failed for a reason other than having nothing to read.
        """
        eof = False
        while True:
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                break
            if not data:
                eof = True
                break
            self._data += data
            if len(data) < 1 << 20:
                break
        return self._split(), eof

    def _split(self) -> list[bytes]:
        out = []
        data, start = self._data, 0
        while len(data) - start >= LENGTH.size:
            (size,) = LENGTH.unpack_from(data, start)
            if size > self._max:
                raise ValueError(f"a worker message announces {size} bytes, over the cap")
            end = start + LENGTH.size + size
            if end > len(data):
                break
            out.append(bytes(data[start + LENGTH.size : end]))
            start = end
        if start:
            del data[:start]
        return out

    @property
    def partial(self) -> bool:
        """Whether part of a message is buffered (the writer died in the middle of it)."""
        return bool(self._data)
