"""The supervisor's timers: when each child's next deadline falls, in one heap.

A child has at most one deadline at a time (its ``timeout=``, a stalled transfer, or the grace
a child gets to exit after delivering), kept in ``child.deadline``. Moving or dropping one
never searches the heap: the old entry stays and is skipped when it comes up, because its time
no longer matches ``child.deadline`` or the child has been reaped. The heap is rebuilt when
such stale entries outnumber the live ones, so it stays small whatever the churn.

Used by the supervisor thread only: no locking.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Iterator

from ._record import Child

__all__ = ("Deadlines",)


class Deadlines:
    """A heap of ``(when, seq, child)`` with lazy removal of moved or finished entries."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Child]] = []
        self._seq = itertools.count()  # ties never compare children

    def set(self, child: Child, when: float) -> None:
        """Give ``child`` the deadline ``when`` (a `time.monotonic` time), replacing any other."""
        child.deadline = when
        heapq.heappush(self._heap, (when, next(self._seq), child))

    def timeout(self, live: int) -> float | None:
        """Return the seconds until the nearest deadline (0 if past), or None if there is none.

        Args:
            live: How many children are being watched; past ``2 * live + 64`` entries the heap
                is mostly stale and is rebuilt.
        """
        heap = self._heap
        if len(heap) > 2 * live + 64:
            heap[:] = [entry for entry in heap if _current(entry)]
            heapq.heapify(heap)
        while heap and not _current(heap[0]):
            heapq.heappop(heap)  # a stale entry must not wake the supervisor
        if not heap:
            return None
        return max(0.0, heap[0][0] - time.monotonic())

    def due(self, now: float) -> Iterator[Child]:
        """Yield each child whose deadline is at or before ``now``, clearing that deadline.

        The caller may `set` a new deadline for a yielded child (one in the future).
        """
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if _current(entry):
                child = entry[2]
                child.deadline = None
                yield child

    def clear(self) -> None:
        """Forget every entry (when no child is left, only stale ones remain)."""
        self._heap.clear()


def _current(entry: tuple[float, int, Child]) -> bool:
    when, _, child = entry
    return not child.reaped and child.deadline == when
