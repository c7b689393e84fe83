"""The parent's side of the result frame: reading it as it arrives, and rebuilding the outcome.

The frame format is described in ``_wire``. Everything here runs on the supervisor thread and
never raises out of `decode`: a bad frame or a failing unpickle fails one task only.
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any

from ._errors import RemoteError
from ._fetch import FrameError, read_child_file, read_child_memory
from ._lend import IN_MEMORY
from ._wire import HEADER, MAGIC, READONLY, SIZE, Kind, format_exception, safe_str

#: The frame kinds by their value (a tuple: looked up per result, without Enum's call).
_KINDS = tuple(sorted(Kind))
assert [int(kind) for kind in _KINDS] == list(range(len(_KINDS)))

__all__ = ("FrameError", "FrameReader", "decode")


class FrameReader:
    """Accumulate one frame from non-blocking reads; memory grows only as bytes arrive."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.received = 0
        self.expected: int | None = None  # total frame length once the sizes are known
        self.kind = Kind.VALUE
        self.memfd = -1
        self.sizes: list[int] = []
        self.readonly: list[bool] = []
        self.addresses: list[int] = []  # where the buffers are in the child (IN_MEMORY)
        self._chunks: list[bytes] = []
        self._payload_len = 0
        self._head: tuple[int, int, int, int] | None = None  # kind, payload, count, memfd
        self._table_end = 0  # where the table of buffer sizes ends, once the header is in

    @property
    def started(self) -> bool:
        """Whether any byte of the frame has arrived."""
        return self.received > 0

    @property
    def complete(self) -> bool:
        """Whether the whole frame has arrived."""
        return self.expected is not None and self.received >= self.expected

    def want(self) -> int:
        """Return how many bytes to read next (never past the end of the frame)."""
        if self.expected is not None:
            return min(self.expected - self.received, 1 << 20)
        if self._head is not None:  # the table of buffer sizes is on its way
            return min(self._table_end - self.received, 1 << 20)
        return 1 << 16

    def feed(self, data: bytes) -> None:
        """Add bytes read from the pipe.

        Raises:
            FrameError: The header is corrupt or declares more than ``max_size`` bytes.
        """
        self._chunks.append(data)
        self.received += len(data)
        if self.expected is not None:
            return
        if self._head is None and self.received >= HEADER.size:
            self._parse_header()
        if self.expected is None and self._head is not None and self.received >= self._table_end:
            self._parse_sizes()

    def _parse_header(self) -> None:
        head = b"".join(self._chunks)
        self._chunks = [head]
        magic, kind, payload_len, count, memfd = HEADER.unpack_from(head)
        if magic != MAGIC or kind >= len(_KINDS) or memfd < IN_MEMORY:  # kind is unsigned
            raise FrameError("corrupt result frame (bad header)")
        # The table of sizes is part of the result: the cap bounds it before it is read, so
        # a result of many buffers is fine up to max_size, and a corrupt count is caught.
        # The table: a size per buffer, and its address in the child if it stays there.
        self._table_end = HEADER.size + SIZE.size * count * (2 if memfd == IN_MEMORY else 1)
        self._check_size(self._table_end - HEADER.size + payload_len)
        self._head = (kind, payload_len, count, memfd)
        if not count:  # no buffers (most results): no table to wait for
            self.kind, self.memfd, self._payload_len = _KINDS[kind], memfd, payload_len
            self.expected = HEADER.size + payload_len

    def _parse_sizes(self) -> None:
        assert self._head is not None
        kind, payload_len, count, memfd = self._head
        data = b"".join(self._chunks)
        self._chunks = [data]
        raw = struct.unpack_from(f"<{count}Q", data, HEADER.size)
        if memfd == IN_MEMORY:
            self.addresses = list(struct.unpack_from(f"<{count}Q", data, HEADER.size + 8 * count))
        self.sizes = [size & ~READONLY for size in raw]
        self.readonly = [bool(size & READONLY) for size in raw]
        self._check_size(SIZE.size * count + payload_len + sum(self.sizes))
        self.kind, self.memfd, self._payload_len = _KINDS[kind], memfd, payload_len
        self.expected = self._table_end + payload_len + (sum(self.sizes) if memfd == -1 else 0)

    def _check_size(self, body: int) -> None:
        if body > self.max_size:
            raise FrameError(
                f"result of {body} bytes exceeds max_result_size={self.max_size};"
                " raise max_result_size= on the task, or return less data"
            )

    def parts(self, pid: int, fds: set[int]) -> tuple[bytes, list[Any]]:
        """Return the payload and its out-of-band buffers from a complete frame.

        Read-only buffers come back as ``bytes``, writable ones as writable buffers (so numpy
        arrays stay writable). Buffers sent through a memfd are read from the child's file,
        which the child keeps open until the parent closes the pipe; the file is in ``fds``
        while it is open (the library's fd set: closed in any child forked meanwhile).

        Raises:
            FrameError: The shared memory could not be read or is shorter than declared.
        """
        data = memoryview(b"".join(self._chunks))
        self._chunks = []
        offset = self._table_end
        payload = bytes(data[offset : offset + self._payload_len])
        offset += self._payload_len
        if self.memfd >= 0:
            return payload, read_child_file(pid, self.memfd, self.sizes, self.readonly, fds)
        if self.memfd == IN_MEMORY:
            kept = read_child_memory(pid, self.addresses, self.sizes, self.readonly, fds)
            return payload, kept
        buffers: list[Any] = []
        for size, readonly in zip(self.sizes, self.readonly, strict=True):
            piece = data[offset : offset + size]
            buffers.append(bytes(piece) if readonly else bytearray(piece))
            offset += size
        return payload, buffers


# Protocol 5 has opcodes for every plain type but complex; anything else named is refused.
_PLAIN = frozenset({"complex"})


class _RestrictedUnpickler(pickle.Unpickler):
    """Load only plain data: containers, numbers, strings, bytes. No class can be named."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _PLAIN:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"restricted_results=True refuses to load {module}.{name}; return plain data only"
        )


def decode(
    kind: Kind, payload: bytes | memoryview, buffers: list[memoryview], restricted: bool
) -> tuple[bool, Any]:
    """Rebuild an outcome in the parent: ``(True, value)`` or ``(False, exception)``.

    Never raises: anything that goes wrong while unpickling (even `SystemExit` raised by a
    ``__reduce__``) becomes a `RemoteError` for this one task.
    """
    try:
        if restricted:
            if buffers or kind is Kind.ERROR:  # never sent in restricted mode
                raise pickle.UnpicklingError("restricted_results=True: unexpected frame layout")
            obj = _RestrictedUnpickler(io.BytesIO(payload)).load()
            if kind is Kind.SURROGATE and not (
                isinstance(obj, tuple) and len(obj) == 4 and all(type(x) is str for x in obj)
            ):
                raise pickle.UnpicklingError("restricted_results=True: malformed error report")
        else:
            obj = pickle.loads(payload, buffers=buffers)
    except BaseException as exc:
        what = "result" if kind is Kind.VALUE else "exception"
        return False, _remote(exc, f"the task's {what} could not be unpickled in the parent")
    if kind is Kind.VALUE:
        return True, obj
    if kind is Kind.SURROGATE:
        return False, RemoteError(*obj)
    (type_name, message, traceback_text), exc_payload = obj
    try:
        return False, pickle.loads(exc_payload)
    except BaseException as failure:  # the parent lacks the class, or its __reduce__ fails
        why = f"{type(failure).__name__}: {failure}"
        reason = f"the exception could not be unpickled in the parent: {why}"
        error = RemoteError(type_name, message, traceback_text, reason)
        error.__cause__ = failure
        return False, error


def _remote(exc: BaseException, reason: str) -> RemoteError:
    cls = type(exc)
    error = RemoteError(
        f"{cls.__module__}.{cls.__qualname__}", safe_str(exc), format_exception(exc), reason
    )
    error.__cause__ = exc
    return error
