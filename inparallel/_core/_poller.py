"""The supervisor loop's wait: which of the watched fds can be read, each with its data.

A level-triggered read poller over ``epoll`` (``poll`` where there is none), made for one
loop iteration per task call: registering an fd is one C call and a dict entry, and a wait
returns the data of the ready fds, nothing else. (The ``selectors`` module builds a key
object per fd and runs a dozen Python calls per task where this runs none: about 35 pages of
the parent's memory fewer to copy per task call, measured.)
"""

from __future__ import annotations

import math
import select
from typing import Any

__all__ = ("Poller",)

_EPOLL = hasattr(select, "epoll")

#: The longest single wait, in seconds (see `Poller.wait`).
MAX_WAIT = 86400.0


class Poller:
    """Watch fds for reading; each carries a piece of data that `wait` hands back.

    Not thread-safe by itself: its owner serializes calls, but for ``register`` while another
    thread waits, which epoll allows (`threadsafe_register`).
    """

    __slots__ = ("_data", "_poll")

    #: Whether an fd may be registered while another thread waits (epoll), so the waiter
    #: needs no wake-up to see it.
    threadsafe_register = _EPOLL

    def __init__(self) -> None:
        """Raises OSError (EMFILE) when no epoll instance can be made."""
        self._poll: Any = select.epoll() if _EPOLL else select.poll()
        self._data: dict[int, Any] = {}

    def register(self, fd: int, data: Any) -> None:
        """Watch ``fd`` until `unregister`.

        Raises:
            KeyError: ``fd`` is watched already.
            OSError: The kernel refused it (a closed fd).
        """
        if fd in self._data:
            raise KeyError(f"fd {fd} is already watched")
        self._poll.register(fd, select.EPOLLIN if _EPOLL else select.POLLIN)
        self._data[fd] = data

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd`` (which may be closed already).

        Raises:
            KeyError: ``fd`` is not watched.
        """
        del self._data[fd]
        try:  # noqa: SIM105 - once per task: no context manager object
            self._poll.unregister(fd)
        except OSError:  # closed before it was unregistered: epoll forgot it by itself
            pass

    def wait(self, timeout: float | None) -> list[Any]:
        """Block until a watched fd can be read, or ``timeout`` seconds (None: for ever).

        Returns the data of the fds that can be read (or reached end of file, or failed),
        possibly none. A signal's handler runs in the wait; if it raises, so does this.
        """
        if timeout is None:
            seconds = -1.0
        elif timeout > 0:
            # Rounded up to the kernel's millisecond: rounding down would spin until it is due.
            # At most a day: the kernel takes no more than 2**31 ms (nor infinity); the loop
            # works out what is left when it wakes.
            seconds = math.ceil(min(timeout, MAX_WAIT) * 1e3) * 1e-3
        else:
            seconds = 0.0
        if _EPOLL:
            ready = self._poll.poll(seconds, max(len(self._data), 1))
        else:
            ready = self._poll.poll(None if seconds < 0 else seconds * 1e3)
        data = self._data
        return [data[fd] for fd, _ in ready if fd in data]

    def fileno(self) -> int | None:
        """Return the epoll fd (to close it by number in a forked child), None for ``poll``.

        Raises:
            ValueError: The poller is closed.
        """
        return int(self._poll.fileno()) if _EPOLL else None

    def close(self) -> None:
        """Close the epoll fd; nothing is watched any more. Idempotent."""
        if _EPOLL:
            self._poll.close()
        self._data.clear()
