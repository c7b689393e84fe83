"""What a task's printing costs: each ``output=`` mode against a hand-forked child.

``output.print_loop``
    One task prints ``LINES`` short lines to stdout, then returns. The benchmark's fd 1 points
    at a temporary file while it runs (children inherit it; tag and group lines are written
    there by the parent), so the table stays readable and every line really is written. The
    floor is a hand-forked child printing through a fresh block-buffered stream, as a child of
    the library did before its streams became line-buffered: one write per 8 KiB instead of
    one per line. ``output="inherit"`` pays that write per line (the price of never losing a
    line to a kill); ``capture`` and ``group`` write to a memory file; ``tag`` sends each line
    through a pipe to the parent, which prefixes and writes it. The silent row is the same
    call printing nothing: the fork-per-call cost the printing rows add to.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks._harness import Case, Impl, Plan, Settings, check

LINES = 20_000


def chatty(lines: int) -> int:
    """Print *lines* short lines; return how many."""
    for i in range(lines):
        print(f"line {i} of the task's output")
    return lines


@contextlib.contextmanager
def _stdout_to_file() -> Iterator[None]:
    # Children inherit fd 1; the parent's own sys.stdout is flushed first and after.
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _floor(lines: int) -> None:
    # A hand fork whose stdout is a fresh block-buffered stream over fd 1.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)))
            chatty(lines)
            sys.stdout.flush()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    check(os.waitstatus_to_exitcode(status) == 0, "floor: the child failed")


def _task(output: str | None, lines: int) -> Callable[[], None]:
    from inparallel import task

    options: dict[str, Any] = {} if output is None else {"output": output}
    fn = task(**options)(chatty)

    def run() -> None:
        check(fn(lines).result() == lines, f"inparallel output={output}: wrong result")

    return run


def _print_loop(settings: Settings) -> Plan:
    lines = settings.pick(LINES, 2_000)

    def redirected(run: Callable[[], None]) -> Callable[[], None]:
        def wrapped() -> None:
            with _stdout_to_file():
                run()

        return wrapped

    ip = ("inparallel",)
    impls = [
        Impl("floor", "floor: fork, block-buffered print", redirected(lambda: _floor(lines))),
        Impl("silent", "inparallel, printing nothing", redirected(_task(None, 0)), ip),
        Impl("inherit", 'inparallel output="inherit"', redirected(_task(None, lines)), ip),
        Impl("capture", 'inparallel output="capture"', redirected(_task("capture", lines)), ip),
        Impl("group", 'inparallel output="group"', redirected(_task("group", lines)), ip),
        Impl("tag", 'inparallel output="tag"', redirected(_task("tag", lines)), ip),
    ]
    return Plan(impls, detail=f"one task printing {lines} lines to stdout (a file)")


CASES: tuple[Case, ...] = (
    Case("output.print_loop", "A task printing in a loop, per output= mode", _print_loop),
)
