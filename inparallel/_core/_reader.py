"""The parent's side of the result frame: reading it as it arrives, and rebuilding the outcome.

The frame format is described in ``_wire``. Everything here runs on the supervisor thread and
never raises out of `decode`: a bad frame or a failing unpickle fails one task only.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import pickle
import struct
import sys
from collections.abc import Callable
from typing import Any

from ._errors import RemoteError
from ._lend import (
    IN_MEMORY,
    allow_memory_reads,
    forbid_memory_reads,
    memfd_offsets,
    memory_reads_allowed,
)
from ._native import bytes_address, libc
from ._wire import HEADER, MAGIC, READONLY, SIZE, Kind, format_exception, safe_str

#: The frame kinds by their value (a tuple: looked up per result, without Enum's call).
_KINDS = tuple(sorted(Kind))
assert [int(kind) for kind in _KINDS] == list(range(len(_KINDS)))

__all__ = ("FrameError", "FrameReader", "decode")


class FrameError(Exception):
    """The bytes on a result pipe are not a valid frame (corrupt, or over the size cap)."""


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
            return payload, _read_child_file(pid, self.memfd, self.sizes, self.readonly, fds)
        if self.memfd == IN_MEMORY:
            kept = _read_child_memory(pid, self.addresses, self.sizes, self.readonly, fds)
            return payload, kept
        buffers: list[Any] = []
        for size, readonly in zip(self.sizes, self.readonly, strict=True):
            piece = data[offset : offset + size]
            buffers.append(bytes(piece) if readonly else bytearray(piece))
            offset += size
        return payload, buffers


def _read_child_memory(
    pid: int, addresses: list[int], sizes: list[int], readonly: list[bool], fds: set[int]
) -> list[Any]:
    # The buffers where the child made them: one copy each, by the kernel, into memory of
    # our own (read-only ones as bytes, the others writable).
    try:
        file = _open_memory(pid)
    except OSError as exc:
        if isinstance(exc, PermissionError):
            forbid_memory_reads()  # no longer allowed (credentials changed): memfds again
        raise FrameError(f"could not open the task process's memory: {exc}") from exc
    fds.add(file)
    try:
        return [
            _read_bytes(file, size, address) if ro else _copy(file, size, address)
            for size, address, ro in zip(sizes, addresses, readonly, strict=True)
        ]
    except OSError as exc:  # EIO: a page that is not there (the child is gone)
        raise FrameError(f"could not read the task process's memory: {exc}") from exc
    finally:
        fds.discard(file)  # forget it first: the number may be reused as soon as it closes
        os.close(file)


def _read_bytes(file: int, size: int, offset: int) -> bytes:
    # A bytes object owns its memory: one copy, by the kernel, straight into it.
    madvise = libc("madvise") if size >= _PREFAULT and _CPYTHON else None
    if madvise is not None:
        return _read_bytes_prefaulted(file, size, offset, madvise)
    if size < _MAX_READ:
        data = os.pread(file, size, offset)
        if len(data) < size:
            raise FrameError("the result's memory ended early")
        return data
    return bytes(_copy(file, size, offset))


def _read_child_file(
    pid: int, fd: int, sizes: list[int], readonly: list[bool], fds: set[int]
) -> list[Any]:
    try:
        file = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise FrameError(f"could not open the result's shared memory: {exc}") from exc
    fds.add(file)
    try:
        _probe_memory_reads(pid)
        offsets = memfd_offsets(sizes)
        if sizes and os.fstat(file).st_size < offsets[-1] + sizes[-1]:
            raise FrameError("the result's shared memory is shorter than its header says")
        buffers: list[Any] = []
        for size, offset, ro in zip(sizes, offsets, readonly, strict=True):
            if ro:
                buffers.append(_read_bytes(file, size, offset))
            elif size and _MAP_KEEPS_NO_FD:
                buffers.append(_map(file, size, offset))
            else:
                buffers.append(_copy(file, size, offset))
    finally:
        fds.discard(file)  # forget it first: the number may be reused as soon as it closes
        os.close(file)
    return buffers


#: Whether ``mmap`` can map a file without keeping a duplicate of its fd (3.13's
#: ``trackfd=False``). Before that, a mapped result would hold an fd for its whole life, and a
#: list of them could run the process out of fds: such results are copied instead.
_MAP_KEEPS_NO_FD = sys.version_info >= (3, 13)

_MADV_POPULATE_READ = 22  # Linux 5.14+: map every page of the range in one call
_MADV_POPULATE_WRITE = 23  # the same, writable

#: Whether a new bytes object may be filled in place (CPython's bytes own their storage).
_CPYTHON = sys.implementation.name == "cpython"


def _read_bytes_prefaulted(
    file: int, size: int, offset: int, madvise: Callable[[int, int, int], int]
) -> bytes:
    # Filled in place before anyone sees it, as C code fills a new bytes object. bytes(size)
    # is calloc'd memory nobody has touched yet: mapping all of it in one call first saves
    # the kernel a fault per page while it copies (measured 52 ms instead of 76 per 100 MB;
    # huge pages, see `_copy`, are not steady enough).
    import ctypes

    data = bytes(size)
    address = bytes_address(data)
    start = address - address % mmap.PAGESIZE
    madvise(start, address + size - start, _MADV_POPULATE_WRITE)  # a hint: EINVAL before 5.14
    view = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
    try:
        _fill(view, file, offset)
    finally:
        view.release()
    return data


def _probe_memory_reads(pid: int) -> None:
    # Whether the kernel lets us read a child's memory (ptrace access: Yama, an LSM, a
    # container's policy may refuse it) is settled when /proc/<pid>/mem opens; once it has,
    # later children leave big results in their memory (see ``_lend.IN_MEMORY``).
    if not memory_reads_allowed() and _can_open_memory(pid):
        allow_memory_reads()


def _can_open_memory(pid: int) -> bool:
    try:
        os.close(_open_memory(pid))
    except OSError:
        return False
    return True


def _open_memory(pid: int) -> int:
    return os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)


def _map(file: int, size: int, offset: int) -> memoryview:
    # No copy at all: the child's pages, mapped copy-on-write (a write copies that page only).
    # Populating maps them all at once instead of one fault per page on first use.
    if sys.version_info >= (3, 13):  # see _MAP_KEEPS_NO_FD
        target = mmap.mmap(
            file,
            size,
            flags=mmap.MAP_PRIVATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=offset,
            trackfd=False,
        )
        with contextlib.suppress(OSError, ValueError):  # older kernels: faulted in on use
            target.madvise(_MADV_POPULATE_READ)
        return memoryview(target)
    raise AssertionError("mapping a result needs mmap's trackfd=False (3.13+)")


def _copy(file: int, size: int, offset: int) -> memoryview:
    # Private, not the default MAP_SHARED: later forks must copy it on write. Its pages are
    # mapped in one call first, not one fault each while the kernel copies (4 x 100 MB
    # numpy results: 0.27 s, steady). Huge pages did better on average but came late now
    # and then, by up to 0.9 s (measured on a 2-CPU VM).
    target = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if size >= _PREFAULT:
        with contextlib.suppress(OSError):  # EINVAL before Linux 5.14
            target.madvise(_MADV_POPULATE_WRITE)
    view = memoryview(target)[:size]
    _fill(view, file, offset)
    return view


def _fill(view: memoryview, file: int, offset: int) -> None:
    # Read ``len(view)`` bytes of ``file`` from ``offset`` into ``view`` (a few calls at most).
    done = 0
    while done < len(view):
        got = os.preadv(file, [view[done:]], offset + done)
        if got <= 0:
            raise FrameError("the result's memory ended early")
        done += got


_PREFAULT = 2 << 20  # buffers this big get their pages mapped in one call first


_MAX_READ = 0x7FFFF000  # Linux transfers at most this much in one read(2)


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
