"""Argument checks and defaults shared by the public tools, so that they all word them alike.

Every message starts with the public call, as the user would write it, then a colon:
``process_map(): num_workers must be at least 1, not 0``. ``where`` is that call: the
function's name with ``()`` (``"StreamExecutor()"``, ``"gated_aiter.push()"``). The rest names
the argument, says what it must be, and shows what was passed.

Runs in the caller, before anything forks or starts a thread; nothing here blocks.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

__all__ = (
    "HEAD_START",
    "MISSING",
    "bound",
    "count",
    "default_processes",
    "default_threads",
    "function",
    "renamed",
)

T = TypeVar("T")

#: How long the first call of a map runs alone before the others are forked (or, for the aio
#: bridge, before the event loop forks the rest). Each fork holds the parent for 1-3 ms, so
#: forking every worker first would delay the first result by as much; a slow first item
#: loses at most this much. `process_map`, `StreamExecutor.map` and `aio.parallel_map` share it.
HEAD_START = 0.02


def function(where: str, label: str, value: object, *, hint: str = "") -> None:
    """Raise `TypeError` unless ``value`` is callable.

    Args:
        where: The call, as the message names it (``"process_map()"``).
        label: The argument's name.
        value: What was passed.
        hint: Added to the message (how to fix it).

    Raises:
        TypeError: ``value`` is not callable.
    """
    if not callable(value):
        kind = type(value).__name__
        raise TypeError(f"{where}: {label} must be callable, not {kind} {value!r}{hint}")


def count(
    where: str,
    label: str,
    value: object,
    *,
    optional: bool = False,
    hint: str = "",
    minimum: int = 1,
) -> int:
    """Return ``value`` if it is an int of at least ``minimum`` (1); raise otherwise.

    Args:
        where: The call, as the message names it (``"process_map()"``).
        label: The argument's name.
        value: What was passed. ``None`` is the caller's business: check it first when
            ``optional`` (it only changes the wording).
        optional: The argument may also be None.
        hint: Added to the `ValueError` message.
        minimum: The smallest value accepted.

    Raises:
        TypeError: ``value`` is not an int (a bool is not one here).
        ValueError: ``value`` is less than ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        also = " or None" if optional else ""
        raise TypeError(f"{where}: {label} must be an int{also}, not {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: {label} must be at least {minimum}, not {value}{hint}")
    return value


def bound(where: str, label: str, value: object) -> float:
    """Return ``value`` if it is a number of at least 1, ``math.inf`` meaning "no bound".

    Raises:
        TypeError: ``value`` is not an int or a float (a bool is not one here).
        ValueError: ``value`` is less than 1 (or NaN).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{where}: {label} must be a number (math.inf: unbounded), not {value!r}")
    if not value >= 1:
        raise ValueError(
            f"{where}: {label} must be at least 1 (math.inf: unbounded), not {value!r}"
        )
    return value


#: The default of an argument's other name (an alias, or an old name): "not given" (see
#: `renamed`). A sentinel, since None may be a value the caller means.
MISSING: Any = object()


def renamed(where: str, label: str, value: T, *, default: T, other: str, given: T, note: str) -> T:
    """Return ``given``, passed under an argument's other name (an alias, or an old name).

    Call it only when the other name was passed at all (the caller checks its own sentinel);
    ``value`` must then be left at its ``default`` or agree with ``given``.

    Args:
        where: The call, as the message names it.
        label: The argument's name.
        value: What was passed under that name (or its default).
        default: That name's default.
        other: The other name.
        given: What was passed under the other name.
        note: What the other name is (``"its old name"``, ``"its alias"``).

    Raises:
        TypeError: Both names were given, with different values.
    """
    if value not in (default, given):
        raise TypeError(f"{where}: give {label}= or {other}= ({note}), not both")
    return given


def default_processes() -> int:
    """Return the default number of worker processes: this machine's CPU count."""
    return os.cpu_count() or 1


def default_threads() -> int:
    """Return the default number of worker threads, as `ThreadPoolExecutor` picks it.

    ``min(32, cpu count + 4)``: threads mostly wait (I/O), so a few more than the CPUs.
    """
    return min(32, default_processes() + 4)
