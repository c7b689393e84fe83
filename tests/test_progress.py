"""progress=True without tqdm: one RuntimeWarning that points at the caller's own line."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import Future

import _faults
import pytest
from _timing import BOUND

from inparallel import process_map, thread_map, waitfor


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Fail a test still running after `BOUND` s: maps and waitfor take no timeout."""
    with _faults.deadline(BOUND, "the test"):
        yield


@pytest.fixture
def no_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError


def _line_of(marker: str) -> int:
    with open(__file__) as source:
        for number, line in enumerate(source, 1):
            if line.rstrip().endswith(f"# {marker}"):
                return number
    raise AssertionError(marker)


def _the_warning(record: pytest.WarningsRecorder) -> tuple[str, int]:
    [warning] = [w for w in record if issubclass(w.category, RuntimeWarning)]
    assert "pip install 'inparallel[progress]'" in str(warning.message)
    return warning.filename, warning.lineno


# pytest's faulthandler watchdog is a thread of the test run's own, so on 3.12+ every fork in
# this process is multi-threaded and CPython warns; pytest.warns records that warning and
# emits it again. Fresh interpreters check the fork warning (test_forksafety, test_map).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("tool", [thread_map, process_map])
def test_a_map_warns_at_the_line_that_iterates_it(no_tqdm: None, tool: object) -> None:
    with pytest.warns(RuntimeWarning) as record:
        assert list(tool(abs, range(-3, 0), progress=True)) == [3, 2, 1]  # type: ignore[operator]  # map
    assert _the_warning(record) == (__file__, _line_of("map"))


def test_waitfor_warns_at_the_loop(no_tqdm: None) -> None:
    done: Future[int] = Future()
    done.set_result(1)
    with pytest.warns(RuntimeWarning) as record:
        assert list(waitfor([done], progress=True)) == [done]  # loop
    assert _the_warning(record) == (__file__, _line_of("loop"))
