"""A child's traceback reads like a local one: same frames, same lines, same carets."""

from __future__ import annotations

import pickle
import traceback

import pytest
from _timing import BOUND

from inparallel import task
from inparallel._core import _tracebacks


def divide(a: dict[str, int], b: int) -> float:
    return a["key"] / b


def wrap(a: dict[str, int]) -> None:
    try:
        divide(a, 0)
    except ZeroDivisionError as exc:
        raise KeyError("wrapped") from exc


def fail_long_line() -> None:
    raise ValueError("a statement that spans its whole line draws no carets")


def _raised(fn: object, *args: object) -> BaseException:
    try:
        fn(*args)  # type: ignore[operator]
    except BaseException as exc:
        return exc
    raise AssertionError("no exception")


def _remote(fn: object, *args: object) -> BaseException:
    exc = task(fn)(*args).exception(timeout=BOUND)  # type: ignore[arg-type]
    assert exc is not None
    return exc


def _ours(tb: object) -> list[tuple[str, str, int | None, int | None, int | None, str]]:
    # The frames of this test module: what the task ran (the caller's are the parent's own).
    return [
        (f.filename, f.name, f.lineno, f.colno, f.end_colno, f.line or "")
        for f in traceback.extract_tb(tb)  # type: ignore[arg-type]
        if f.filename == __file__ and f.name != "_raised"
    ]


@pytest.mark.parametrize(
    ("fn", "args"),
    [(divide, ({"key": 1}, 0)), (wrap, ({"key": 1},)), (fail_long_line, ())],
    ids=["binary-op", "chained", "whole-line"],
)
def test_child_frames_have_the_local_lines_and_columns(fn: object, args: tuple[object]) -> None:
    local, remote = _raised(fn, *args), _remote(fn, *args)
    assert type(remote) is type(local)
    assert _ours(remote.__traceback__) == _ours(local.__traceback__)
    if local.__cause__ is not None:
        assert remote.__cause__ is not None
        assert _ours(remote.__cause__.__traceback__) == _ours(local.__cause__.__traceback__)


def test_printed_child_frames_match_a_local_traceback() -> None:
    def child_part(exc: BaseException) -> str:
        lines = traceback.format_exception(exc)
        text = "".join(lines).split("The above exception")[0]
        return text[text.index(f'  File "{__file__}", line') :]

    local, remote = _raised(wrap, {"key": 1}), _remote(wrap, {"key": 1})
    assert child_part(remote) == child_part(local)
    assert "~~~~~~~~^~~" in child_part(remote)  # the carets under  a["key"] / b


def test_the_library_bootstrap_frames_are_left_out() -> None:
    remote = _remote(divide, {"key": 1}, 0)
    names = [f.name for f in traceback.extract_tb(remote.__traceback__)]
    files = [f.filename for f in traceback.extract_tb(remote.__traceback__)]
    assert names[-1] == "divide"
    assert not any(name.endswith("_child.py") for name in files), files
    # The child's part starts with the task: nothing of the library between.
    child = [f for f in files if f == __file__]
    assert files[-len(child) :] == child


def test_entries_travel_as_plain_data_and_rebuild() -> None:
    local = _raised(wrap, {"key": 1})
    described = _tracebacks.entries(local.__traceback__)
    again = _tracebacks.rebuild(pickle.loads(pickle.dumps(described)))
    assert _ours(again) == _ours(local.__traceback__)


def test_a_malformed_entry_is_left_out_not_fatal() -> None:
    good = _tracebacks.entries(_raised(divide, {"key": 1}, 0).__traceback__)
    bad = _tracebacks.Entry("x.py", "f", "f", None, "not a line", None, None, None)  # type: ignore[arg-type]
    rebuilt = _tracebacks.rebuild([bad, *good])
    assert [f.name for f in traceback.extract_tb(rebuilt)] == [e.name for e in good]
