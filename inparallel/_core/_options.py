"""Per-task options, validated once when a function is decorated, and the label of a call."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

from ._output import DEFAULT_MAX_OUTPUT, OUTPUT_MODES
from ._wire import DEFAULT_MAX_RESULT_SIZE

__all__ = ("TaskOptions", "call_name", "default_label", "make_options", "parse_size")

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


@dataclass(frozen=True)
class TaskOptions:
    """What the child and the supervisor need to know about one task's limits."""

    timeout: float | None = None
    memory_limit: int | None = None
    cpu_time: int | None = None
    #: A fixed label, or a callable that makes one from the call's arguments (`call_name`).
    name: str | Callable[..., object] | None = None
    restricted_results: bool = False
    max_result_size: int = DEFAULT_MAX_RESULT_SIZE
    output: str = "inherit"  #: one of ``_output.OUTPUT_MODES``
    max_output: int = DEFAULT_MAX_OUTPUT  #: bytes kept of each captured stream


def parse_size(value: int | str, option: str = "memory_limit") -> int:
    """Return a byte count from an int or a string such as ``"512M"``, ``"1.5GiB"``, ``"2G"``.

    Suffixes K, M, G, T (optionally followed by ``i``/``B``) are powers of 1024. ``option``
    names the argument in error messages.

    Raises:
        TypeError: The value is neither an int nor a string.
        ValueError: The string is not a size, or the size is not positive.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{option} must be an int (bytes) or a string like '512M', not {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value)
        if match is None:
            raise ValueError(
                f"{option}={value!r} is not a size; write bytes as an int or a string such"
                " as '512M', '2G' or '1.5GiB'"
            )
        number, unit, _ = match.groups()
        size = int(float(number) * 1024 ** _POWERS[unit.lower()])
    if size <= 0:
        raise ValueError(f"{option} must be positive, got {value!r}")
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
    name: str | Callable[..., object] | None,
    restricted_results: bool,
    max_result_size: int | None,
    output: object = "inherit",
    max_output: int | str | None = None,
) -> TaskOptions:
    """Validate the keyword options of `task` and bundle them.

    Raises:
        TypeError: An option has the wrong type.
        ValueError: An option is out of range.
    """
    if name is not None and not isinstance(name, str) and not callable(name):
        raise TypeError(
            "name must be a string or a callable that makes one from the call's arguments"
            f" (name=lambda host: host), not {name!r}"
        )
    output = _output_mode(output)
    if max_output is None:
        max_output = DEFAULT_MAX_OUTPUT
    elif output == "inherit":
        raise ValueError(
            "max_output= bounds the output the parent keeps; inherited output is not kept: use"
            " it with output='capture', 'group' or 'tag'"
        )
    else:
        max_output = parse_size(max_output, "max_output")
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
        output=output,
        max_output=max_output,
    )


_MODES = ", ".join(repr(mode) for mode in OUTPUT_MODES)


def _output_mode(output: object) -> str:
    if not isinstance(output, str):
        raise TypeError(f"output must be a string, one of {_MODES}; not {output!r}")
    if output not in OUTPUT_MODES:
        raise ValueError(f"output={output!r} is not an output mode; use one of {_MODES}")
    return output


def call_name(
    options: TaskOptions, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> str | None:
    """Return the label ``name=`` gives this call, or ``None`` for the default (`default_label`).

    Call it in the caller, before the fork: a callable ``name=`` runs here, with the call's
    arguments (``self`` first for a method), and its result becomes a string with ``str()``.
    An empty string means the default.

    Raises:
        Exception: Whatever the callable raises, with a note naming the task: the call then
            starts nothing.
    """
    name = options.name
    if name is None or isinstance(name, str):
        return name or None
    try:
        label = str(name(*args, **kwargs))
    except Exception as exc:
        exc.add_note(f"raised by the name= callable of task {_qualname(fn)}, labelling a call")
        raise
    return label or None


def default_label(fn: Callable[..., Any], pid: int) -> str:
    """Return the label of a call whose task has no ``name=``: ``qualname:pid``."""
    return f"{_qualname(fn)}:{pid}"


def _qualname(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))
