"""The parent's side of ``_lend``: fetching a big result's buffers from the task process.

A frame whose buffers did not come through the pipe names where they wait (see ``_lend``):

- **in the child's memory**, at the addresses the frame lists: copied by the kernel straight
  from the child's pages (``process_vm_readv``), or through its ``/proc/<pid>/mem`` where that
  call is refused, one copy each, into a new ``bytes`` object (read-only buffers) or private
  memory of ours (writable ones);
- **in a memfd** the child filled, which the parent opens through ``/proc/<pid>/fd``: copied,
  or mapped without a copy (writable buffers, from 3.13).

The child keeps both until the parent closes its result pipe. The first memfd result also
settles whether the parent may read a child's memory at all (`allow_memory_reads`: it may
open that child's ``/proc/<pid>/mem``). Runs on whichever thread reads the frame; raises
`FrameError` for what could not be read.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import sys
from collections.abc import Callable
from typing import Any

from ._lend import allow_memory_reads, forbid_memory_reads, memfd_offsets, memory_reads_allowed
from ._native import buffer_address, bytes_address, libc, vm_read

__all__ = ("FrameError", "read_child_file", "read_child_memory")


#: Whether big results are copied with ``process_vm_readv`` (`vm_read`, process_vm_readv(2)):
#: about twice as fast as reading ``/proc/<pid>/mem`` (100 MB: 21 against 36-55 ms, measured
#: on a 2-CPU VM). None until the first in-memory result looks; False once refused.
_vm_reads: bool | None = None

#: Whether ``mmap`` can map a file without keeping a duplicate of its fd (3.13's
#: ``trackfd=False``). Before that, a mapped result would hold an fd for its whole life, and a
#: list of them could run the process out of fds: such results are copied instead.
_MAP_KEEPS_NO_FD = sys.version_info >= (3, 13)

_MADV_POPULATE_READ = 22  # Linux 5.14+: map every page of the range in one call
_MADV_POPULATE_WRITE = 23  # the same, writable

#: Whether a new bytes object may be filled in place (CPython's bytes own their storage).
_CPYTHON = sys.implementation.name == "cpython"

_PREFAULT = 2 << 20  # buffers this big get their pages mapped in one call first

_MAX_READ = 0x7FFFF000  # Linux transfers at most this much in one read(2)


class FrameError(Exception):
    """The bytes on a result pipe are not a valid frame (corrupt, or over the size cap)."""


def read_child_memory(
    pid: int, addresses: list[int], sizes: list[int], readonly: list[bool], fds: set[int]
) -> list[Any]:
    """Copy the buffers at ``addresses`` of task process ``pid`` into memory of our own.

    Straight from its pages where the kernel allows (`vm_read`), else through its
    ``/proc/<pid>/mem``. Blocks for the copies.

    Args:
        pid: The task process, which keeps its memory until we close its result pipe.
        addresses: Where each buffer starts in its memory.
        sizes: Each buffer's length in bytes.
        readonly: Whether each becomes ``bytes`` (else writable memory).
        fds: The library's fd set: the memory file is in it while it is open.

    Returns:
        The buffers, in order: ``bytes``, or writable memoryviews.

    Raises:
        FrameError: The memory could not be read (the child is gone, or ptrace access was
            withdrawn: later children then fill memfds again).
    """
    global _vm_reads
    if _vm_reads is None:
        _vm_reads = libc("process_vm_readv") is not None
    if _vm_reads:
        try:
            return [
                _vm_copy(pid, size, address, ro)
                for size, address, ro in zip(sizes, addresses, readonly, strict=True)
            ]
        except OSError as exc:
            if not isinstance(exc, PermissionError) and exc.errno != errno.ENOSYS:
                raise FrameError(f"could not read the task process's memory: {exc}") from exc
            # Refused: ptrace access withdrawn, or a seccomp policy that refuses this call
            # (ENOSYS, EPERM) but may let the memory file open: try that below.
            refused = exc
    else:
        refused = None
    try:
        file = _open_memory(pid)
    except OSError as exc:
        if isinstance(exc, PermissionError):
            forbid_memory_reads()  # no longer allowed (credentials changed): memfds again
        raise FrameError(f"could not open the task process's memory: {exc}") from exc
    if refused is not None:
        _vm_reads = False  # the file opens where the call is refused: the file from now on
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


def _vm_copy(pid: int, size: int, address: int, readonly: bool) -> Any:
    # One buffer at ``address`` of the child, copied into a new bytes object (read-only ones)
    # or private memory (the others).
    if readonly and _CPYTHON:
        if not size:
            return b""
        data = _blank_bytes(size)
        _vm_fill(pid, bytes_address(data), address, size)
        return data
    target = _blank_mapping(size)
    if size:
        _vm_fill(pid, buffer_address(target), address, size)
    view = memoryview(target)[:size]
    return bytes(view) if readonly else view


def _vm_fill(pid: int, local: int, remote: int, size: int) -> None:
    _fill_all(size, lambda done: vm_read(pid, local + done, remote + done, size - done))


def _read_bytes(file: int, size: int, offset: int) -> bytes:
    # A bytes object owns its memory: one copy, by the kernel, straight into it.
    if size >= _PREFAULT and _CPYTHON and libc("madvise") is not None:
        return _read_bytes_prefaulted(file, size, offset)
    if size < _MAX_READ:
        data = os.pread(file, size, offset)
        if len(data) < size:
            raise FrameError("the result's memory ended early")
        return data
    return bytes(_copy(file, size, offset))


def read_child_file(
    pid: int, fd: int, sizes: list[int], readonly: list[bool], fds: set[int]
) -> list[Any]:
    """Read the buffers task process ``pid`` put in its memfd: copied, or mapped.

    Blocks for the copies. Opening the child's file also settles whether this process may
    read a child's memory (by opening its ``/proc/<pid>/mem``: see `allow_memory_reads`).

    Args:
        pid: The task process, which keeps the file open until we close its result pipe.
        fd: The memfd's number in the task process.
        sizes: Each buffer's length in bytes (each starts at a page boundary).
        readonly: Whether each becomes ``bytes`` (else writable memory).
        fds: The library's fd set: the file is in it while it is open.

    Returns:
        The buffers, in order: ``bytes``, or writable memoryviews (mapped from 3.13).

    Raises:
        FrameError: The file could not be opened, or is shorter than the frame says.
    """
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


def _read_bytes_prefaulted(file: int, size: int, offset: int) -> bytes:
    # Filled in place before anyone sees it, as C code fills a new bytes object.
    import ctypes

    data = _blank_bytes(size)
    view = memoryview((ctypes.c_char * size).from_address(bytes_address(data))).cast("B")
    try:
        _fill(view, file, offset)
    finally:
        view.release()
    return data


def _blank_bytes(size: int) -> bytes:
    # A new bytes object of ``size`` zero bytes (CPython), to be filled in place before anyone
    # sees it. It is calloc'd memory nobody has touched yet: mapping all of it in one call
    # first saves the kernel a fault per page while it copies (measured 52 ms instead of 76
    # per 100 MB; huge pages, see `_blank_mapping`, are not steady enough).
    data = bytes(size)
    madvise = libc("madvise") if size >= _PREFAULT else None
    if madvise is not None:
        address = bytes_address(data)
        start = address - address % mmap.PAGESIZE
        madvise(start, address + size - start, _MADV_POPULATE_WRITE)  # a hint: EINVAL < 5.14
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
    view = memoryview(_blank_mapping(size))[:size]
    _fill(view, file, offset)
    return view


def _blank_mapping(size: int) -> mmap.mmap:
    # Private, not the default MAP_SHARED: later forks must copy it on write. Its pages are
    # mapped in one call first, not one fault each while the kernel copies (4 x 100 MB
    # numpy results: 0.27 s, steady). Huge pages did better on average but came late now
    # and then, by up to 0.9 s (measured on a 2-CPU VM).
    target = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if size >= _PREFAULT:
        with contextlib.suppress(OSError):  # EINVAL before Linux 5.14
            target.madvise(_MADV_POPULATE_WRITE)
    return target


def _fill(view: memoryview, file: int, offset: int) -> None:
    # Read ``len(view)`` bytes of ``file`` from ``offset`` into ``view``.
    _fill_all(len(view), lambda done: os.preadv(file, [view[done:]], offset + done))


def _fill_all(size: int, copy: Callable[[int], int]) -> None:
    # Call ``copy(done)``, which copies from ``done`` on and says how much it copied, until
    # ``size`` bytes are in (a few calls at most).
    done = 0
    while done < size:
        copied = copy(done)
        if copied <= 0:
            raise FrameError("the result's memory ended early")
        done += copied
