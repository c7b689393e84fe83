"""Where a big result's buffers wait for the parent: in the child's memory, or in a memfd.

A task's result whose out-of-band buffers (numpy arrays, big ``bytes`` and ``bytearray``) add
up to `SHM_THRESHOLD` or more does not go through the 64 KiB result pipe (see ``_wire``):

- **In the child's memory** (`IN_MEMORY`): the frame carries each buffer's address and the
  parent copies it from there (``process_vm_readv``, or ``/proc/<pid>/mem``), one copy in
  all, while the child waits. Only once the parent has shown it may (`allow_memory_reads`,
  after it opened a child's memory), and only for buffers that still hold what the task
  returned when the parent reads them: ``bytes``, and writable buffers in private anonymous
  memory of a task with no other thread, every signal blocked from the frame on.
- **In a memfd**: the child copies the buffers into a memory file, each from a page
  boundary, which the parent opens through ``/proc/<pid>/fd`` and reads, or maps without a
  copy (writable buffers, from 3.13): a snapshot taken at the return, whatever else runs.
- **Through the pipe**, after the frame, where neither is allowed (a task that made itself
  non-dumpable, a system without memfds).

This module is the child's side; ``_fetch`` reads. No threads, no process control.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from ._interrupts import sigmask
from ._native import bytes_address, libc

__all__ = (
    "IN_MEMORY",
    "PAGE",
    "SHM_THRESHOLD",
    "allow_memory_reads",
    "forbid_memory_reads",
    "lend",
    "memfd_offsets",
    "memory_reads_allowed",
    "write_all",
)


#: Results whose out-of-band buffers add up to at least this many bytes travel through shared
#: memory. Below it, the pipe is cheaper than creating and mapping a file (measured: the two
#: cross near 512 KiB on a 2-core VM; 1 MiB leaves a margin for slower ``mmap`` set-up).
SHM_THRESHOLD = 1 << 20


def write_all(fd: int, data: memoryview | bytes | bytearray) -> None:
    """Write every byte to a blocking fd, resuming after partial writes."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


#: The ``memfd`` field of a frame whose buffers stay in the child's memory, at the addresses
#: that follow their sizes: the parent copies them from there (``process_vm_readv``, or its
#: ``/proc/<pid>/mem``), one copy in all (a memfd costs the child a second one, and the
#: kernel the file's pages).
IN_MEMORY = -2

#: Whether this process's parent has shown it can read its children's memory (see
#: `allow_memory_reads`); children inherit the answer with everything else.
_MEMORY_READS = [False]


_SIG_BLOCK, _SIG_SETMASK = int(signal.SIG_BLOCK), int(signal.SIG_SETMASK)
_ALL_SIGNALS = tuple(int(signum) for signum in signal.valid_signals())


def forbid_memory_reads() -> None:
    """In the parent: a child's memory could not be opened after all (see `allow_memory_reads`).

    Children forked from now on send big results through a memfd again.
    """
    _MEMORY_READS[0] = False


def allow_memory_reads() -> None:
    """In the parent: children forked from now on may leave big results in their memory.

    Called once the parent has opened a child's ``/proc/<pid>/mem`` (which the kernel allows
    or refuses at open). Until then big results go through a memfd, which needs less.
    """
    _MEMORY_READS[0] = True


def memory_reads_allowed() -> bool:
    """Return whether `allow_memory_reads` was called in this process (or its parent)."""
    return _MEMORY_READS[0]


def _stays_put(buffers: list[memoryview], addresses: list[int], writable: bool) -> bool:
    # Whether the parent may read the buffers from our memory, later, while we wait: only if
    # they still hold then what the task returned.
    if not writable:
        return True  # bytes objects (see `_addresses`): immutable, in our own heap
    if sys.version_info >= (3, 13) and not any(b.readonly for b in buffers):
        return False  # a memfd maps straight into the parent (mmap keeps no fd): no copy at all
    # A writable buffer could change meanwhile: through another thread of the task, a signal
    # handler (none runs: `lend` has blocked them all), or another process sharing its pages
    # (a MAP_SHARED mapping, a file's). Else a memfd takes a copy now.
    return _only_thread() and _private_anonymous(buffers, addresses)


def _only_thread() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _private_anonymous(buffers: list[memoryview], addresses: list[int]) -> bool:
    # Whether every buffer lies in private anonymous memory (the heap, malloc's mappings):
    # pages that no other process can write.
    spans: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps", "rb") as maps:
            for line in maps:
                fields = line.split()
                if fields[1][3:4] == b"p" and fields[4] == b"0":  # private, no inode
                    low, high = fields[0].split(b"-")
                    spans.append((int(low, 16), int(high, 16)))
    except (OSError, IndexError, ValueError):
        return False
    for buffer, address in zip(buffers, addresses, strict=True):
        if buffer.readonly:
            continue
        position, end = address, address + buffer.nbytes
        for start, stop in spans:  # in address order, as the kernel lists them
            if start <= position < stop:
                position = stop
                if position >= end:
                    break
        if position < end:
            return False
    return True


def _addresses(buffers: list[memoryview]) -> list[int] | None:
    # Where each buffer's bytes start in this process, or None if one of them cannot say.
    import ctypes

    addresses = []
    for buffer in buffers:
        address: int | None = None
        if not buffer.readonly:
            with contextlib.suppress(TypeError, ValueError):
                address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        elif type(buffer.obj) is bytes and len(buffer.obj) == buffer.nbytes:
            address = bytes_address(buffer.obj)
        if not address:
            return None  # e.g. a read-only numpy array: the memfd carries the lot
        addresses.append(address)
    return addresses


def _parent_can_open_our_fds() -> bool:
    # The parent reads the memfd through /proc/<pid>/fd (or our memory through
    # /proc/<pid>/mem), which needs ptrace access: a task that changed its credentials or
    # made itself non-dumpable must use the pipe.
    prctl = libc("prctl")  # looked up by the parent already (see ``_child.plan``)
    return prctl is not None and prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) == 1


_PR_GET_DUMPABLE = 3


def memfd_offsets(sizes: list[int]) -> list[int]:
    """Where each buffer starts in a result's memfd: at a page boundary, so it can be mapped."""
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end = -(-(end + size) // PAGE) * PAGE
    return offsets


PAGE = 4096  # mmap offsets must be multiples of the allocation granularity (mmap.PAGESIZE)


def lend(buffers: list[memoryview]) -> tuple[int, list[int]]:
    """In the child: put a result's buffers where the parent will read them.

    Returns the frame's ``memfd`` field and the addresses that follow its table of sizes:
    ``(IN_MEMORY, addresses)`` when they stay in this process's memory, ``(memfd, [])`` when
    they were copied into a memfd, ``(-1, [])`` when they follow the frame on the pipe. In
    the first two cases the process must stay alive, its memory untouched, until the parent
    closes the pipe.
    """
    if sum(b.nbytes for b in buffers) < SHM_THRESHOLD:
        return -1, []
    in_memory = _MEMORY_READS[0]
    writable = not all(b.readonly for b in buffers)
    mask = None
    if in_memory and writable:
        # No signal handler runs from here on (as early as a memfd would take its copy),
        # so none can change a writable buffer that the parent reads later.
        mask = sigmask(_SIG_BLOCK, _ALL_SIGNALS)
    memfd = -1
    if _parent_can_open_our_fds():
        addresses = _addresses(buffers) if in_memory else None
        if addresses is not None and _stays_put(buffers, addresses, writable):
            return IN_MEMORY, addresses  # the signals stay blocked until this process ends
        if hasattr(os, "memfd_create"):
            memfd = os.memfd_create("inparallel-result")
            offsets = memfd_offsets([b.nbytes for b in buffers])
            for buf, offset in zip(buffers, offsets, strict=True):
                os.lseek(memfd, offset, os.SEEK_SET)  # a hole up to the page boundary
                write_all(memfd, buf)
    if mask is not None:
        sigmask(_SIG_SETMASK, mask)
    return memfd, []
