"""Per-task options, validated once when a function is decorated."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Real

from ._wire import DEFAULT_MAX_RESULT_SIZE

__all__ = ("TaskOptions", "make_options", "parse_size")

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


@dataclass(frozen=True)
class TaskOptions:
    """What the child and the supervisor need to know about one task's limits."""

    timeout: float | None = None
    memory_limit: int | None = None
    cpu_time: int | None = None
    name: str | None = None
    restricted_results: bool = False
    max_result_size: int = DEFAULT_MAX_RESULT_SIZE


def parse_size(value: int | str) -> int:
    """Return a byte count from an int or a string such as ``"512M"``, ``"1.5GiB"``, ``"2G"``.

    Suffixes K, M, G, T (optionally followed by ``i``/``B``) are powers of 1024.

    Raises:
        TypeError: The value is neither an int nor a string.
        ValueError: The string is not a size, or the size is not positive.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(
            f"memory_limit must be an int (bytes) or a string like '512M', not {value!r}"
        )
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value)
        if match is None:
            raise ValueError(
                f"memory_limit={value!r} is not a size; write bytes as an int or a string such"
                " as '512M', '2G' or '1.5GiB'"
            )
        number, unit, _ = match.groups()
        size = int(float(number) * 1024 ** _POWERS[unit.lower()])
    if size <= 0:
        raise ValueError(f"memory_limit must be positive, got {value!r}")
    return size


def _positive_seconds(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{option} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{option} must be a positive, finite number of seconds, got {value!r}")
    return seconds


def make_options(
    *,
    timeout: float | None,
    memory_limit: int | str | None,
    cpu_time: float | None,
    name: str | None,
    restricted_results: bool,
    max_result_size: int | None,
) -> TaskOptions:
    """Validate the keyword options of `task` and bundle them.

    Raises:
        TypeError: An option has the wrong type.
        ValueError: An option is out of range.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string, not {name!r}")
    if not isinstance(restricted_results, bool):
        raise TypeError(f"restricted_results must be True or False, not {restricted_results!r}")
    if max_result_size is None:
        max_result_size = DEFAULT_MAX_RESULT_SIZE
    elif isinstance(max_result_size, bool) or not isinstance(max_result_size, int):
        raise TypeError(f"max_result_size must be an int (bytes), not {max_result_size!r}")
    elif max_result_size <= 0:
        raise ValueError(f"max_result_size must be positive, got {max_result_size!r}")
    return TaskOptions(
        timeout=None if timeout is None else _positive_seconds("timeout", timeout),
        memory_limit=None if memory_limit is None else parse_size(memory_limit),
        cpu_time=None if cpu_time is None else math.ceil(_positive_seconds("cpu_time", cpu_time)),
        name=name,
        restricted_results=restricted_results,
        max_result_size=max_result_size,
    )
