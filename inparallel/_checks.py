"""Argument checks shared by the public tools, so that they all word their errors alike."""

from __future__ import annotations

__all__ = ("count",)


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
