"""A child's traceback, carried to the parent and rebuilt there as a real traceback object.

Frames cannot be pickled, so each traceback entry travels as plain data: file, function name,
module name, and the instruction's position (line and columns, from ``co_positions()``). The
parent rebuilds a real traceback from them, as tblib does, by running one tiny stub per entry
under that entry's file and function name, compiled so that its raising instruction sits at the
same line *and columns*. ``traceback`` then prints the child's frames exactly as it would have
printed them in the child: same lines, carets under the same expression (or none, where the
whole line is the expression). A stub compiled at column 0 would draw its carets under the
indentation instead.

The library's own frames at the head of a task's traceback (the child's bootstrap that called
the task) are left out: the caller's frames run straight into the task's, as with a local call.

Everything here runs in the child (`entries`) or on the supervisor thread (`rebuild`).
"""

from __future__ import annotations

import functools
import itertools
import linecache
import os
import sys
from types import CodeType, TracebackType
from typing import NamedTuple

__all__ = ("Entry", "entries", "rebuild")

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class Entry(NamedTuple):
    """One traceback entry as plain data."""

    filename: str
    name: str
    qualname: str
    module: str | None  #: the frame's ``__name__``, for tools that group by module
    lineno: int
    end_lineno: int | None
    col: int | None
    end_col: int | None


def entries(tb: TracebackType | None) -> list[Entry]:
    """Describe ``tb`` as plain data, without the library's frames at its head. Child side."""
    found: list[Entry] = []
    while tb is not None:
        code = tb.tb_frame.f_code
        if found or not code.co_filename.startswith(_PACKAGE):
            found.append(_entry(tb, code))
        tb = tb.tb_next
    return found


def _entry(tb: TracebackType, code: CodeType) -> Entry:
    lineno, end_lineno, col, end_col = tb.tb_lineno, None, None, None
    if tb.tb_lasti >= 0:
        position = next(itertools.islice(code.co_positions(), tb.tb_lasti // 2, None), None)
        if position is not None:
            start, end_lineno, col, end_col = position
            lineno = start if start is not None else lineno
    module = tb.tb_frame.f_globals.get("__name__")
    return Entry(
        code.co_filename,
        code.co_name,
        getattr(code, "co_qualname", code.co_name),
        module if isinstance(module, str) else None,
        lineno,
        end_lineno,
        col,
        end_col,
    )


class _Marker(Exception):
    pass


def _raise() -> None:
    raise _Marker


def rebuild(described: list[Entry]) -> TracebackType | None:
    """Build a real traceback from `entries` (parent side). Never raises."""
    head: TracebackType | None = None
    last: TracebackType | None = None
    for entry in described:
        try:
            tb = _frame(entry)
        except Exception:  # a malformed entry: leave it out rather than lose the exception
            continue
        if last is None:
            head = tb
        else:
            last.tb_next = tb
        last = tb
    return head


def _frame(entry: Entry) -> TracebackType:
    code = _stub(*_span(entry)).replace(
        co_firstlineno=max(entry.lineno, 1),
        co_filename=entry.filename,
        co_name=entry.name,
        co_qualname=entry.qualname,
    )
    namespace = {"__name__": entry.module, "__file__": entry.filename, "_": _raise}
    try:
        exec(code, namespace)
    except _Marker:
        tb = sys.exc_info()[2]
        assert tb is not None and tb.tb_next is not None
        stub = tb.tb_next  # this frame's own entry is tb; the stub's is next, _raise's after
        stub.tb_next = None
        return stub
    raise AssertionError("the stub did not raise")


def _span(entry: Entry) -> tuple[int, int]:
    # The columns the stub's call must cover: the child's own, when they fit on one line; else
    # the whole line (no carets are drawn for an expression that spans its line).
    col, end_col = entry.col, entry.end_col
    single = entry.end_lineno in (None, entry.lineno)
    if single and col is not None and end_col is not None and end_col - col >= _SHORTEST:
        return col, end_col - col
    line = linecache.getline(entry.filename, entry.lineno).rstrip()
    text = line.lstrip()
    indent = len(line) - len(text)
    return indent, max(len(text), _SHORTEST)


_SHORTEST = len("_()")


@functools.lru_cache(maxsize=256)
def _stub(col: int, span: int) -> CodeType:
    # "_(   )": a call whose node covers exactly ``span`` columns from ``col``; an opening
    # parenthesis, not indentation, moves it right ("(   _(   ))").
    call = "_(" + " " * (span - _SHORTEST) + ")"
    source = call if col == 0 else "(" + " " * (col - 1) + call + ")"
    return compile(source, "<traceback>", "exec")
