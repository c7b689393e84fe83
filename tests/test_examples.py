"""Every script in examples/ runs as a user would run it, and prints what it promises.

Each example runs in a fresh interpreter from the repository root, with a timeout, with stdout on
a pipe (so stdio is block-buffered) and with ``-W error``: an example that warns, leaks a child
or loses a line fails here.
"""

from __future__ import annotations

import platform
import re
import time

import _faults
import pytest
from _timing import BOUND

SERVERS = [
    "alpha.local", "bravo.local", "charlie.local", "delta.local", "echo.local", "foxtrot.local",
    "golf.local", "hotel.local", "india.local", "juliet.local", "kilo.local", "lima.local",
]  # fmt: skip


run_example = _faults.run_example


def _uname_lines(lines: list[str]) -> list[str]:
    uname = f"{platform.system()} {platform.node()} {platform.release()}"
    servers = []
    for line in lines:
        server, sep, text = line.partition(": ")
        assert sep, f"not a 'server: uname' line: {line!r}"
        assert text.startswith(uname), f"{line!r} is not `uname -a` output ({uname} ...)"
        servers.append(server)
    return servers


def test_uname_example_reports_every_server_once() -> None:
    lines = run_example("uname.py")
    assert sorted(_uname_lines(lines)) == sorted(SERVERS)


def test_throttled_example_reports_every_server_once_with_three_in_flight() -> None:
    lines = run_example("throttled.py")
    *results, last = lines
    assert sorted(_uname_lines(results)) == sorted(SERVERS)
    # Twelve servers and a factor of 3: the list fills up to exactly three, never beyond.
    assert last == "at most 3 tasks were in flight at once"


def test_demo_shows_each_feature_in_under_five_seconds() -> None:
    started = time.monotonic()
    lines = run_example("demo.py", timeout=BOUND)
    elapsed = time.monotonic() - started
    text = "\n".join(lines)
    parent = int(re.search(r"The parent process is (\d+)\.", text)[1])
    child = int(re.search(r"square\(7\) = 49, computed in child process (\d+)", text)[1])
    assert child != parent
    assert "ValueError: port out of range: 99999" in text
    assert re.search(r"raised in the child at demo\.py, line \d+, in parse_port:", text)
    assert re.search(r"WorkerDied: task process \d+ was killed by SIGSEGV", text)
    timeout = re.search(r"TaskTimeout after (\d+\.\d) s: task process \d+ .*\bkilled\b", text)
    assert timeout, text
    assert 0.5 <= float(timeout[1]) < 2.0
    naps = re.findall(r"nap (\w+) done at (\d+\.\d) s", text)
    assert sorted(name for name, _ in naps) == sorted(
        ["one", "two", "three", "four", "five", "six"]
    )
    assert "at most 2 naps ran at once" in text
    total = float(re.search(r"all six took (\d+\.\d) s", text)[1])
    assert total < 3.0, text
    assert elapsed < 5.0, f"the demo took {elapsed:.1f} s"


def test_iterlib_seed_example_preloads_and_maps_with_threads_and_processes() -> None:
    lines = run_example("iterlib_seed.py")
    total = sum(x**2 for x in range(100000))
    per_map = [
        "ItemizedMap of 100000 items",
        f"mapped_gen[3] = 9, mapped_gen[-1] = {99999**2}",
        "first five = [0, 1, 4, 9, 16]",
        f"sum = {total}",
    ]
    assert lines == [
        f"thread_preload: sum = {total}",
        f"process_preload: sum = {total}",
        *(f"thread_map: {line}" for line in per_map),
        *(f"process_map: {line}" for line in per_map),
        "after thread_map(square, gen): square was called for []",
        f"lazy[10] = 100, lazy[-2] = {99998**2}: square was called for [10, 99998]",
    ]


def test_stream_executor_seed_example_streams_in_about_one_second() -> None:
    started = time.monotonic()
    lines = run_example("stream_executor_seed.py", timeout=BOUND)
    elapsed = time.monotonic() - started
    odd = str(list(range(1, 20, 2)))
    assert len(lines) == 2, lines
    builtin = re.fullmatch(rf"built-in map: {re.escape(odd)} in (\d+\.\d) s", lines[0])
    assert builtin, lines[0]
    assert 2.5 <= float(builtin[1]) < 4.0
    stream = re.fullmatch(rf"StreamExecutor\.map: {re.escape(odd)} in (\d+\.\d) s", lines[1])
    assert stream, lines[1]
    # 20 calls of 0.1 s, two at a time; the client's 0.5 s sleep overlaps them.
    assert 0.8 <= float(stream[1]) <= 2.0
    assert elapsed < 6.0, f"the example took {elapsed:.1f} s"


def test_pipeline_seed_example_writes_one_token_per_line_for_each_call_form() -> None:
    lines = run_example("pipeline_seed.py")
    tokens = (
        "['this', 'is', 'an', 'example', 'text', 'another', 'text', 'with', 'no', 'meaning',"
        " 'some', 'more', 'text', 'here']"
    )
    assert lines == [
        "process_parallel(work_generator, work_processor, result_consumer)",
        f"    {tokens}",
        "process_parallel(..., maxsize_jobsize=100, maxsize_results=100)",
        f"    {tokens}",
        "process_parallel(..., workers=2)",
        f"    {tokens}",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "demo.py",
        "uname.py",
        "throttled.py",
        "iterlib_seed.py",
        "stream_executor_seed.py",
        "pipeline_seed.py",
    ],
)
def test_examples_run_as_modules_from_the_repository_root(name: str) -> None:
    lines = run_example(name, as_module=True)
    assert lines


def test_hosts_example_tags_every_line_of_every_host() -> None:
    # Not run_example: the progress bar is drawn on stderr.
    code = "import runpy, warnings; warnings.simplefilter('error')\n"
    proc = _faults.run_python(code + "runpy.run_path('examples/hosts.py', run_name='__main__')")
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    for host in ["alpha", "bravo", "charlie", "delta", "foxtrot", "juliet"]:
        assert f"[{host}.local] connecting to {host}.local" in lines, out
        assert f"[{host}.local] ok" in lines, out
    assert "[echo.local] no route to host" in err.splitlines()
    assert lines[-1] == "echo.local failed: echo.local: no route to host"
