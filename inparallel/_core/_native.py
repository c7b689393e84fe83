"""What the library reaches in C through ctypes: libc functions, buffers' addresses, futexes.

Each function is looked up once per process, on first use; the parent does it before its
first fork, so a forked child inherits them and pays nothing for ctypes. None where there is
no such function (not Linux, or no ctypes). A futex is the kernel's wait on a word of memory,
here one shared between processes: glibc has no function for it, so it is called by number.
"""

from __future__ import annotations

import functools
import mmap
import os
import sys
from collections.abc import Callable

__all__ = (
    "buffer_address",
    "bytes_address",
    "futex_wait",
    "futex_waker",
    "has_futex",
    "libc",
    "vm_read",
)

# Argument types for functions that take an address (ctypes passes plain ints as C ints), and
# result types other than int.
_ARGTYPES = {
    "madvise": ("c_void_p", "c_size_t", "c_int"),
    "process_vm_readv": ("c_int", "c_void_p", "c_ulong", "c_void_p", "c_ulong", "c_ulong"),
}
_RESTYPES = {"process_vm_readv": "c_ssize_t"}

_FUNCTIONS: dict[str, Callable[..., int] | None] = {}

#: The futex system call's number on 64-bit Linux, by machine (asm/unistd.h of each).
#: (A 32-bit Python may run on a 64-bit kernel, whose machine name would mislead: none there.)
_SYS_FUTEX = {
    "x86_64": 202,
    "aarch64": 98,
    "riscv64": 98,
    "loongarch64": 98,
    "ppc64le": 221,
    "ppc64": 221,
    "s390x": 238,
}
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # not the private variants: the word is shared with children


def libc(name: str) -> Callable[..., int] | None:
    """Return libc's function ``name`` (``prctl``, ``fcntl``, ``madvise``...), or None."""
    if name not in _FUNCTIONS:
        function = None
        if sys.platform == "linux":
            try:
                import ctypes

                function = getattr(ctypes.CDLL(None, use_errno=True), name)
                if name in _ARGTYPES:
                    function.argtypes = tuple(getattr(ctypes, kind) for kind in _ARGTYPES[name])
                if name in _RESTYPES:
                    function.restype = getattr(ctypes, _RESTYPES[name])
            except (OSError, AttributeError, ImportError):
                function = None
        _FUNCTIONS[name] = function
    return _FUNCTIONS[name]


def bytes_address(data: bytes) -> int:
    """Return where a ``bytes`` object's own storage starts (no copy is made)."""
    import ctypes

    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value  # c_char_p points in
    assert address is not None
    return address


def buffer_address(buffer: mmap.mmap | bytearray) -> int:
    """Return where a writable buffer's memory starts (an ``mmap`` say).

    The buffer must not be resized or closed while the address is in use.
    """
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def vm_read(pid: int, local: int, remote: int, size: int) -> int:
    """Copy up to ``size`` bytes at address ``remote`` of process ``pid`` to ``local`` here.

    One ``process_vm_readv`` call: the kernel copies straight from the other process's pages
    (about twice as fast as reading its ``/proc/<pid>/mem``). Blocks for the copy, without
    the GIL. Only where ``libc("process_vm_readv")`` is not None.

    Returns:
        How many bytes were copied: fewer than ``size`` when the range runs into memory the
        process does not have, or past what the kernel copies in one call.

    Raises:
        OSError: EPERM (no ptrace access to ``pid``), ESRCH (no such process), EFAULT (no
            memory at ``remote``), ENOSYS (refused by a seccomp policy).
    """
    import ctypes

    readv = libc("process_vm_readv")
    assert readv is not None
    local_iov = (ctypes.c_size_t * 2)(local, size)  # a struct iovec: base, length
    remote_iov = (ctypes.c_size_t * 2)(remote, size)
    copied = readv(pid, ctypes.byref(local_iov), 1, ctypes.byref(remote_iov), 1, 0)
    if copied < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return copied


def has_futex() -> bool:
    """Say whether `futex_wait` and `futex_waker` work here (64-bit Linux, a known machine)."""
    return _futex_number() >= 0 and libc("syscall") is not None


@functools.cache  # the machine does not change
def _futex_number() -> int:
    if sys.platform != "linux" or sys.maxsize < 2**32:
        return -1
    return _SYS_FUTEX.get(os.uname().machine, -1)


def futex_wait(address: int, expected: int, timeout: float) -> int:
    """Block while the aligned 32-bit word at ``address`` holds ``expected`` (futex(2)).

    Returns at once if it holds something else, else on a wake of that word (from any process
    that shares it, see `futex_waker`), on a signal, or after ``timeout`` seconds; the caller
    looks at the word again. Never raises. Only where `has_futex`.

    Returns:
        0 when woken, else the error: EAGAIN (the word had changed), EINTR, ETIMEDOUT, or
        one that will not go away (ENOSYS, EPERM: a sandbox refusing shared futexes).
    """
    import ctypes

    seconds = max(timeout, 0.0)
    limit = (ctypes.c_long * 2)(int(seconds), int(seconds % 1 * 1e9))  # a struct timespec
    syscall = libc("syscall")
    assert syscall is not None
    result = syscall(
        ctypes.c_long(_futex_number()),
        ctypes.c_void_p(address),
        ctypes.c_int(_FUTEX_WAIT),
        ctypes.c_uint(expected),
        ctypes.byref(limit),
        ctypes.c_void_p(None),
        ctypes.c_int(0),
    )
    return 0 if result == 0 else ctypes.get_errno()


def futex_waker(address: int) -> Callable[[], int]:
    """Return a call that wakes every process blocked in `futex_wait` on the word at ``address``.

    Its arguments are made once, here: the call costs one system call. It never raises, and
    returns how many were woken, or -1 where the kernel refuses (errno says why). Only where
    `has_futex`.
    """
    import ctypes

    syscall = libc("syscall")
    assert syscall is not None
    return functools.partial(
        syscall,
        ctypes.c_long(_futex_number()),
        ctypes.c_void_p(address),
        ctypes.c_int(_FUTEX_WAKE),
        ctypes.c_int(2**31 - 1),  # every waiter
        ctypes.c_void_p(None),
        ctypes.c_void_p(None),
        ctypes.c_int(0),
    )
