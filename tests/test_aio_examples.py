"""The asyncio examples run as a user would run them, and print what they promise.

As in ``test_examples.py``: each example runs in a fresh interpreter from the repository root,
with a timeout, with stdout on a pipe (so stdio is block-buffered) and with ``-W error``: an
example that warns, leaks a child (which would hold the pipe open past the timeout) or loses a
line fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import _faults
import pytest


def run_example(name: str, timeout: float = 30.0, *, as_module: bool = False) -> list[str]:
    """Run ``examples/<name>``; assert it exits 0 with nothing on stderr; return its stdout lines.

    ``as_module`` runs ``python -m examples.<name>`` without PYTHONPATH: the package is found in
    the current directory, as for someone who has just cloned the repository.
    """
    env = _faults.python_env()
    if as_module:
        env.pop("PYTHONPATH")
        target = ["-m", f"examples.{name.removesuffix('.py')}"]
    else:
        target = [f"examples/{name}"]
    try:
        proc = subprocess.run(
            [sys.executable, "-W", "error", *target],
            cwd=_faults.REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        err = (exc.stderr or b"").decode(errors="replace")
        pytest.fail(f"{name} did not finish in {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    out = proc.stdout.decode()
    err = proc.stderr.decode()
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert err == "", f"{name} wrote to stderr:\n{err}"
    return out.splitlines()


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
