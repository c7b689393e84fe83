"""A map pass's inputs, and the boundary between the iteration tools and the user's code.

**Indexable inputs** (`Indexed`) are read by whoever computes a chunk: a worker thread, or a
forked worker from its inherited copy.

**Other inputs** are read in order, ahead of the pass, by a `_feed.Feed` (in a reader
thread, unless they are of the `INLINE_TYPES` defined here, which cannot block and run no user
code).

**StopIteration.** One that escapes a user *function* (the mapped function, a pipeline's
consumer, an ``__iter__``) is an error at its position, like any other exception. Left alone
it would end whatever iteration happens to be calling that function (``map()``,
``list.extend``, a ``for`` over one of our generators) as if the stream were over, and every
later result would vanish without an error. ``_core._errors.stray_stop`` turns it into the
error it is, the way PEP 479 does for generators. Only a user *iterable's* own `StopIteration`
is an end.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ._core._errors import stray_stop

__all__ = (
    "INLINE_TYPES",
    "Indexed",
    "iterate",
)

_SAMPLES: tuple[Iterator[Any], ...] = (
    iter([]),
    iter(()),
    iter(range(0)),
    iter(range(1 << 64)),
    iter(""),
    iter(b""),
    iter(bytearray()),
    iter({}),
    iter({}.values()),
    iter({}.items()),
    iter(set()),
    itertools.count(),
    itertools.repeat(None),
)
#: Iterators that cannot block and run no user code as they are read: no reader thread.
#: (``count`` calls its start's ``__add__``: user code only for a start that is no number.)
INLINE_TYPES: frozenset[type] = frozenset(type(it) for it in _SAMPLES)


def iterate(iterable: Iterable[Any], what: str) -> Iterator[Any]:
    """``iter(iterable)``, where a `StopIteration` from its ``__iter__`` is an error.

    Raises:
        TypeError: ``iterable`` is not iterable.
        RuntimeError: Its ``__iter__`` raised `StopIteration`.
    """
    try:
        return iter(iterable)
    except StopIteration as exc:
        raise stray_stop(exc, f"__iter__ of {what}") from exc


class Indexed:
    """Zipped indexable inputs, seen through a range of positions (a slice of a map)."""

    __slots__ = ("sequences", "view")

    def __init__(self, sequences: Sequence[Sequence[Any]], view: range) -> None:
        self.sequences = tuple(sequences)
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def item(self, i: int) -> tuple[Any, ...]:
        """The argument tuple at position ``i`` of the view (``0 <= i < len``)."""
        j = self.view[i]
        return tuple(s[j] for s in self.sequences)

    def items(self, start: int, stop: int) -> Iterable[Any]:
        """The items at positions ``start..stop-1`` (tuples of them for several inputs).

        Slices the inputs when they allow it; indexes them one by one otherwise.
        """
        positions = self.view[start:stop]
        if positions.step > 0:
            try:
                columns = [
                    s[positions.start : positions.stop : positions.step] for s in self.sequences
                ]
            except Exception:  # not sliceable (a plain __getitem__/__len__ class): go by index
                columns = []
            if columns and all(len(c) == len(positions) for c in columns):
                return columns[0] if len(columns) == 1 else zip(*columns, strict=False)
        if len(self.sequences) == 1:
            (sequence,) = self.sequences
            return (sequence[j] for j in positions)
        return (tuple(s[j] for s in self.sequences) for j in positions)
