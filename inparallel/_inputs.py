"""The boundary between the iteration tools and the user's code and inputs.

A `StopIteration` that escapes a user *function* (the mapped function, a pipeline's consumer, an
``__iter__``) is an error at its position, like any other exception. Left alone it would end
whatever iteration happens to be calling that function (``map()``, ``list.extend``, a ``for``
over one of our generators) exactly as if the stream were over, and every later result would
vanish without an error. `stop_error` turns it into the error it is, the way PEP 479 does for
generators. Only a user *iterable's* own `StopIteration` (its ``__next__`` saying "no more")
is an end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ("iterate", "stop_error")


def stop_error(error: StopIteration, what: str) -> RuntimeError:
    """Return the error that a `StopIteration` raised by user code ``what`` stands for.

    As PEP 479 does for generators: a `RuntimeError` saying who raised it, with the original
    as its ``__cause__`` (so its traceback is kept).
    """
    converted = RuntimeError(f"{what} raised StopIteration")
    converted.__cause__ = error
    return converted


def iterate(iterable: Iterable[Any], what: str) -> Iterator[Any]:
    """``iter(iterable)``, where a `StopIteration` from its ``__iter__`` is an error.

    Raises:
        TypeError: ``iterable`` is not iterable.
        RuntimeError: Its ``__iter__`` raised `StopIteration`.
    """
    try:
        return iter(iterable)
    except StopIteration as exc:
        raise stop_error(exc, f"__iter__ of {what}") from exc
