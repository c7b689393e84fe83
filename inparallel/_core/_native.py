"""What the library reaches in C through ctypes: a few libc functions, a bytes object's storage.

Each function is looked up once per process, on first use; the parent does it before its
first fork, so a forked child inherits them and pays nothing for ctypes. None where there is
no such function (not Linux, or no ctypes).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ("bytes_address", "libc")

# Argument types for functions that take an address (ctypes passes plain ints as C ints).
_ARGTYPES = {"madvise": ("c_void_p", "c_size_t", "c_int")}

#: Functions called where another thread must not take over: ``sched_getcpu`` runs between a
#: fork and the move of the child, which waits for it (see ``_cpus``).
_HOLD_GIL = frozenset({"sched_getcpu"})

_FUNCTIONS: dict[str, Callable[..., int] | None] = {}


def libc(name: str) -> Callable[..., int] | None:
    """Return libc's function ``name`` (``prctl``, ``fcntl``, ``madvise``...), or None."""
    if name not in _FUNCTIONS:
        function = None
        if sys.platform == "linux":
            try:
                import ctypes

                # A call through CDLL releases the GIL; these must not (see `_HOLD_GIL`).
                library = ctypes.PyDLL if name in _HOLD_GIL else ctypes.CDLL
                function = getattr(library(None, use_errno=True), name)
                if name in _ARGTYPES:
                    function.argtypes = tuple(getattr(ctypes, kind) for kind in _ARGTYPES[name])
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
