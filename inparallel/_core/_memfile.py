"""Memory files for captured output: make one, and read back its tail.

A task's captured stdout or stderr goes to a file in memory (``os.memfd_create``, Linux 3.17+),
or where there is none to an unlinked temporary file. The child writes to it through fds that
share its file offset; the parent reads it only with ``os.pread``, which leaves that offset
alone, so it may read while a process the task started still writes.
"""

from __future__ import annotations

import codecs
import errno
import os

__all__ = ("LINE_SEARCH", "dropped_note", "open_memory_file", "read_tail")

#: When a file is cut to its tail, how far (bytes) to look for the first line boundary, so the
#: text starts at the beginning of a line. Past that, the line's head is dropped with the rest.
LINE_SEARCH = 64 * 1024

# memfd_create errors that mean "not here" (an old kernel, a sandbox), not "out of resources".
_NO_MEMFD = {errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP}


def open_memory_file(name: str) -> int:
    """Return the fd of a new, empty, nameless file for reading and writing.

    ``name`` shows in ``/proc/<pid>/fd`` (memfd) or in the temporary file's vanished name.

    Raises:
        OSError: No file could be made (EMFILE, ENOMEM, ENOSPC). Nothing is left open.
    """
    create = getattr(os, "memfd_create", None)
    if create is not None:
        try:
            fd: int = create(name, os.MFD_CLOEXEC)
        except OSError as exc:
            if exc.errno not in _NO_MEMFD:
                raise
        else:
            return fd
    import tempfile  # only where there is no memfd

    fd, path = tempfile.mkstemp(prefix=f"{name}-")
    try:
        os.unlink(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_tail(fd: int, limit: int, encoding: str) -> tuple[bytes, int]:
    """Return the last ``limit`` bytes of the file, and how many bytes came before them.

    When the file is longer, the tail starts after the first newline within `LINE_SEARCH`
    bytes (and half the tail); failing that, for UTF-8, not inside a character. Reads the size
    once: what is written meanwhile is not read.

    Raises:
        OSError: The file could not be read.
    """
    size = os.fstat(fd).st_size
    start = max(0, size - limit)
    chunks = []
    offset = start
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break  # truncated meanwhile by the task
        chunks.append(chunk)
        offset += len(chunk)
    data = b"".join(chunks)
    if start:
        newline = data.find(b"\n", 0, min(LINE_SEARCH, len(data) // 2))
        if newline >= 0:
            skip = newline + 1
        else:
            # No line start near: at least do not start inside a UTF-8 character.
            skip = 0
            if codecs.lookup(encoding).name == "utf-8":
                while skip < 3 and skip < len(data) and data[skip] & 0xC0 == 0x80:
                    skip += 1
        data = data[skip:]
        start += skip
    return data, start


def dropped_note(dropped: int, limit: int) -> str:
    """Return the line that starts a tail: how many bytes were dropped, and the limit."""
    return f"[inparallel: {dropped} bytes of earlier output dropped (max_output={_size(limit)})]\n"


def _size(count: int) -> str:
    # 16 MiB, 512 KiB, or 1000 bytes: the way the user most likely wrote it.
    for unit, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if count >= unit and count % unit == 0:
            return f"{count // unit} {name}"
    return f"{count} bytes"
