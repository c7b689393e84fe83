"""The asyncio examples run as a user would run them, and print what they promise.

As in ``test_examples.py``: each example runs in a fresh interpreter from the repository root,
with a timeout, with stdout on a pipe (so stdio is block-buffered) and with ``-W error``: an
example that warns, leaks a child (which would hold the pipe open past the timeout) or loses a
line fails here.
"""

from __future__ import annotations

import re
import time

import _faults
import pytest

run_example = _faults.run_example


@pytest.mark.parametrize("as_module", [False, True], ids=["script", "module"])
def test_aio_fanout_serves_every_client_through_forked_children_and_closes(
    as_module: bool,
) -> None:
    """Four TCP clients get every answer right; two children at most; exit 0 within seconds."""
    started = time.monotonic()
    lines = run_example("aio_fanout.py", timeout=20, as_module=as_module)
    elapsed = time.monotonic() - started
    assert len(lines) == 7, lines
    assert lines[:4] == [f"client-{c}: 3 answers, all correct" for c in range(4)]
    assert lines[4] == "4 clients, 12 lines, 12 answers, all correct"
    pattern = r"12 forked children, at most (\d+) at once \(concurrency=2\)"
    children = re.fullmatch(pattern, lines[5])
    assert children, lines[5]
    assert 1 <= int(children[1]) <= 2  # two at once is likely, never required
    assert lines[6] == "server and streams closed"
    # The run takes well under a second; the script gives up (exit 1) after 5 s.
    assert elapsed < 10.0, f"the example took {elapsed:.1f} s"
