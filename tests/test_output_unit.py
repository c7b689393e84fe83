"""The output machinery on its own (``_core._output``, ``_core._emit``): real pipes and memory
files, children forked by the test itself (``os.fork``, ``os._exit``), no supervisor.

Children write with ``os.write`` on fds 1 and 2, as anything the task runs would; the parent's
side is driven by hand (`pump`). What reaches the parent's streams is read from pytest's
``capsys`` or from a stream the test puts in place of ``sys.stdout``/``sys.stderr``. Option
checks go through ``@task``, which validates them at decoration time.
"""

from __future__ import annotations

import contextlib
import doctest
import errno
import fcntl
import io
import os
import re
import resource
import selectors
import signal
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator

import _faults
import pytest
from _timing import BOUND, PATIENCE

from inparallel import task
from inparallel._core import _emit, _output
from inparallel._core._options import call_name, default_label
from inparallel._core._output import DEFAULT_MAX_OUTPUT, OUTPUT_MODES, Streams, open_streams
from inparallel._progress import open_progress
from inparallel._task import Output, unwrap_task


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Fail a test still running after `BOUND` s: the pumps and reaps below take no timeout."""
    with _faults.deadline(BOUND, "the test"):
        yield


def opened(mode: str, max_output: int = DEFAULT_MAX_OUTPUT) -> Streams:
    streams = open_streams(mode, max_output)
    assert streams is not None
    return streams


def fork_with(streams: Streams, body: Callable[[], object], label: str = "t") -> int:
    """Fork a child that puts ``streams`` on its fds 1 and 2 and runs ``body``; return its pid.

    The child exits 0 if ``body`` returned, 1 if it raised.
    """
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            streams.in_child()
            body()
            code = 0
        finally:
            os._exit(code)
    streams.after_fork_in_parent(label)
    return pid


def reap(pid: int) -> int:
    """Wait for child ``pid``; return its exit code (negative: the signal that ended it)."""
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def pump(*all_streams: Streams) -> None:
    """Forward what the tag pipes carry until each one is at its end, as the supervisor would."""
    with selectors.DefaultSelector() as selector:
        for streams in all_streams:
            for fd in streams.watch_fds():
                selector.register(fd, selectors.EVENT_READ, streams)
        while selector.get_map():
            events = selector.select(BOUND)
            assert events, "a tag pipe never reached its end"
            for key, _ in events:
                if not key.data.on_readable(key.fd):
                    selector.unregister(key.fd)


def say(fd: int, *chunks: bytes) -> Callable[[], None]:
    """A child body writing each chunk to ``fd`` with its own ``os.write``."""

    def body() -> None:
        for chunk in chunks:
            os.write(fd, chunk)

    return body


class Recorder(io.StringIO):
    """A text stream that remembers each ``write`` call separately."""

    def __init__(self, encoding: str = "utf-8") -> None:
        super().__init__()
        self.calls: list[str] = []
        self._encoding = encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def on_screen(monkeypatch: pytest.MonkeyPatch) -> tuple[Recorder, Recorder]:
    """Put recorders in place of ``sys.stdout`` and ``sys.stderr``; return them.

    Called in the test itself: pytest sets its own capture streams again when the test starts,
    after the fixtures.
    """
    out, err = Recorder(), Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    return out, err


# -- tag -----------------------------------------------------------------------------------------


def test_inherit_needs_no_streams() -> None:
    assert open_streams("inherit") is None


def test_tag_forwards_whole_lines_prefixed_to_the_same_stream(
    capsys: pytest.CaptureFixture[str],
) -> None:
    streams = opened("tag")
    body = say(1, b"one\ntwo\nthr", b"ee\n", b"four")
    pid = fork_with(streams, lambda: (body(), os.write(2, b"oops\n")), label="web")
    pump(streams)
    assert reap(pid) == 0
    assert streams.finish() == (None, None)
    out, err = capsys.readouterr()
    assert out == "[web] one\n[web] two\n[web] three\n[web] four\n"
    assert err == "[web] oops\n"
    assert streams.parent_fds() == ()


def test_a_partial_line_is_held_until_its_newline(
    capsys: pytest.CaptureFixture[str], gate: _faults.Gate, beacon: _faults.Beacon
) -> None:
    streams = opened("tag")

    def body() -> None:
        os.write(1, b"half a ")
        beacon.send()
        assert gate.wait(BOUND)
        os.write(1, b"line\n")

    pid = fork_with(streams, body)
    beacon.receive()
    out_fd = streams.watch_fds()[0]
    assert streams.on_readable(out_fd)  # "half a " was in the pipe before the beacon
    assert capsys.readouterr().out == ""
    gate.release()
    pump(streams)
    assert reap(pid) == 0
    streams.finish()
    assert capsys.readouterr().out == "[t] half a line\n"


def test_finish_drains_the_pipes_and_ends_the_last_partial_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    streams = opened("tag")
    pid = fork_with(streams, lambda: (say(1, b"a\nb")(), say(2, b"no newline")()))
    assert reap(pid) == 0  # nothing was read while it ran
    streams.finish()
    assert capsys.readouterr() == ("[t] a\n[t] b\n", "[t] no newline\n")


def test_finish_does_not_wait_for_a_process_that_still_holds_the_pipe(
    capsys: pytest.CaptureFixture[str], gate: _faults.Gate, beacon: _faults.Beacon
) -> None:
    streams = opened("tag")

    def body() -> None:
        holder = os.fork()  # a background process of the task's, holding its fds 1 and 2
        if holder == 0:
            try:
                beacon.send_int(os.getpid())
                gate.wait(PATIENCE)
            finally:
                os._exit(0)
        os.write(1, b"done\n")

    with _faults.subreaper():
        pid = fork_with(streams, body)
        holder = beacon.receive_int()
        try:
            assert reap(pid) == 0
            streams.finish()  # the bounded deadline fixture fails the test if this waits
            assert capsys.readouterr().out == "[t] done\n"
        finally:
            gate.release()
            assert os.waitpid(holder, 0)[0] == holder


@pytest.mark.parametrize("whole", [True, False])
def test_a_line_longer_than_the_limit_goes_in_pieces(
    capsys: pytest.CaptureFixture[str], gate: _faults.Gate, beacon: _faults.Beacon, whole: bool
) -> None:
    streams = opened("tag", max_output=10)

    def body() -> None:
        if not whole:  # 12 characters first, read before the rest is written
            os.write(1, b"x" * 12)
            beacon.send()
            assert gate.wait(BOUND)
        os.write(1, b"x" * (25 if whole else 13) + b"\nshort\n")

    pid = fork_with(streams, body)
    if not whole:
        beacon.receive()
        streams.on_readable(streams.watch_fds()[0])
        assert capsys.readouterr().out == "[t] " + "x" * 10 + "\n"
        gate.release()
    pump(streams)
    assert reap(pid) == 0
    streams.finish()
    # Cut every 10 characters from the start of the line, however the reads fell.
    pieces = ("x" * 10, "x" * 10, "x" * 5, "short")[0 if whole else 1 :]
    assert capsys.readouterr().out == "".join(f"[t] {piece}\n" for piece in pieces)


def test_one_read_takes_at_most_one_chunk(
    monkeypatch: pytest.MonkeyPatch, beacon: _faults.Beacon
) -> None:
    screen = on_screen(monkeypatch)
    streams = opened("tag")
    out_fd = streams.watch_fds()[0]
    fcntl.fcntl(out_fd, fcntl.F_SETPIPE_SZ, 4 * _output.READ_CHUNK)
    line = b"y" * 1023 + b"\n"
    pid = fork_with(
        streams, lambda: (say(1, line * (3 * _output.READ_CHUNK // 1024))(), beacon.send())
    )
    beacon.receive()  # three chunks' worth wait in the pipe
    streams.on_readable(out_fd)
    forwarded = "".join(screen[0].calls).replace("[t] ", "")
    assert len(forwarded) == _output.READ_CHUNK
    pump(streams)
    assert reap(pid) == 0
    streams.finish()


def test_lines_of_200_writers_are_never_split_or_mixed(capsys: pytest.CaptureFixture[str]) -> None:
    writers, lines = 200, 60

    def writer(i: int) -> Callable[[], None]:
        def body() -> None:
            for j in range(lines):
                data = f"{j} {'x' * (10 + (i * j) % 90)}\n".encode()
                half = len(data) // 2  # two writes per line: the parent may read half a line
                os.write(1, data[:half])
                os.write(1, data[half:])
            os.write(2, f"bye {i}\n".encode())

        return body

    everything = []
    pids = []
    for i in range(writers):
        streams = opened("tag")
        pids.append(fork_with(streams, writer(i), label=f"w{i}"))
        everything.append(streams)
    pump(*everything)
    assert [reap(pid) for pid in pids] == [0] * writers
    for streams in everything:
        streams.finish()
    out, err = capsys.readouterr()
    seen: dict[int, list[int]] = {i: [] for i in range(writers)}
    for text in out.splitlines():
        match = re.fullmatch(r"\[w(\d+)\] (\d+) (x+)", text)
        assert match, f"a split or mixed line: {text!r}"
        i, j = int(match[1]), int(match[2])
        assert len(match[3]) == 10 + (i * j) % 90
        seen[i].append(j)
    assert seen == {i: list(range(lines)) for i in range(writers)}
    assert sorted(err.splitlines()) == sorted(f"[w{i}] bye {i}" for i in range(writers))


def test_tag_lines_decode_like_the_parent_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = on_screen(monkeypatch)
    streams = opened("tag")
    pid = fork_with(streams, say(1, b"caf\xc3", b"\xa9 ", b"caf\xe9\n", b"\xc3"))
    pump(streams)
    assert reap(pid) == 0
    streams.finish()
    # A character split across writes is whole; a stray Latin-1 byte and a character cut off
    # by the end are escapes.
    assert "".join(screen[0].calls) == "[t] caf\u00e9 caf\\xe9\n[t] \\xc3\n"


# -- capture and group ---------------------------------------------------------------------------


def test_capture_returns_the_texts_and_shows_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    streams = opened("capture")
    assert streams.watch_fds() == ()
    pid = fork_with(streams, lambda: (say(1, b"out\n")(), say(2, b"err")()))
    assert reap(pid) == 0
    assert streams.finish() == ("out\n", "err")
    assert capsys.readouterr() == ("", "")


def test_capture_of_nothing_is_empty_text() -> None:
    streams = opened("capture")
    assert reap(fork_with(streams, lambda: None)) == 0
    assert streams.finish() == ("", "")


def test_programs_the_child_runs_write_to_the_capture_too() -> None:
    streams = opened("capture")
    command = ["sh", "-c", "echo from sh; echo to stderr >&2"]
    pid = fork_with(streams, lambda: subprocess.run(command, check=True, timeout=BOUND))
    assert reap(pid) == 0
    assert streams.finish() == ("from sh\n", "to stderr\n")


def test_capture_keeps_what_a_killed_child_wrote(
    gate: _faults.Gate, beacon: _faults.Beacon
) -> None:
    streams = opened("capture")
    pid = fork_with(
        streams, lambda: (say(2, b"last words\n")(), beacon.send(), gate.wait(PATIENCE))
    )
    beacon.receive()
    os.kill(pid, signal.SIGKILL)
    assert reap(pid) == -signal.SIGKILL
    assert streams.finish() == ("", "last words\n")


def test_capture_keeps_the_tail_from_a_line_start_and_says_what_was_dropped() -> None:
    streams = opened("capture", max_output=100)
    output = b"".join(b"line %02d\n" % n for n in range(30))  # 240 bytes
    pid = fork_with(streams, say(1, output))
    assert reap(pid) == 0
    out, _ = streams.finish()
    assert out is not None
    note, rest = out.split("\n", 1)
    pattern = r"\[inparallel: (\d+) bytes of earlier output dropped \(max_output=100 bytes\)\]"
    match = re.fullmatch(pattern, note)
    assert match, note
    dropped = int(match[1])
    assert rest.startswith("line ") and rest.endswith("line 29\n")
    assert dropped + len(rest) == len(output) and len(rest) <= 100


def test_a_cut_without_a_line_start_does_not_split_a_character(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stdout", Recorder("utf-8"))
    streams = opened("capture", max_output=10)
    # 42 bytes, no newline: the last 10 start with the second byte of the 16th character.
    pid = fork_with(streams, say(1, ("a" + "\u00e9" * 20 + "b").encode()))
    assert reap(pid) == 0
    out, _ = streams.finish()
    assert out == (
        "[inparallel: 33 bytes of earlier output dropped (max_output=10 bytes)]\n"
        + "\u00e9" * 4
        + "b"
    )


def test_the_note_names_the_limit_as_it_was_likely_written() -> None:
    streams = opened("capture", max_output=2**20)
    pid = fork_with(streams, say(2, b"z" * (2**20 + 5)))
    assert reap(pid) == 0
    _, err = streams.finish()
    assert err is not None
    assert err.startswith("[inparallel: 5 bytes of earlier output dropped (max_output=1 MiB)]\n")
    assert err.endswith("z" * 2**20)


@pytest.mark.parametrize(
    ("encoding", "expected"), [("utf-8", "caf\\xe9\n"), ("latin-1", "caf\u00e9\n")]
)
def test_capture_decodes_like_the_parent_stream(
    monkeypatch: pytest.MonkeyPatch, encoding: str, expected: str
) -> None:
    monkeypatch.setattr(sys, "stdout", Recorder(encoding))
    streams = opened("capture")
    pid = fork_with(streams, say(1, b"caf\xe9\n"))
    assert reap(pid) == 0
    assert streams.finish() == (expected, "")


def test_group_writes_each_stream_as_one_block_in_finish_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = on_screen(monkeypatch)
    first, second = opened("group"), opened("group")
    pid1 = fork_with(first, lambda: (say(1, b"a1\n", b"a2\n")(), say(2, b"a-err\n")()))
    pid2 = fork_with(second, say(1, b"b1\n", b"b2 without newline"))
    assert reap(pid1) == 0 and reap(pid2) == 0
    assert second.finish() == (None, None)
    assert first.finish() == (None, None)
    out, err = screen
    assert out.calls == ["b1\nb2 without newline\n", "a1\na2\n"]
    assert err.calls == ["a-err\n"]


def test_group_blocks_keep_the_tail_too(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = on_screen(monkeypatch)
    streams = opened("group", max_output=10)
    pid = fork_with(streams, say(1, b"x" * 20 + b"\n" + b"tail\n"))
    assert reap(pid) == 0
    streams.finish()
    [block] = screen[0].calls
    assert block == "[inparallel: 21 bytes of earlier output dropped (max_output=10 bytes)]\ntail\n"


@pytest.mark.parametrize("mode", ["capture", "group"])
def test_memory_files_fall_back_to_unlinked_temporary_files(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    def no_memfd(name: str, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "memfd_create is not here")

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    monkeypatch.setattr(sys, "stdout", Recorder())
    streams = opened(mode)
    for fd in streams.parent_fds():
        assert os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)")
    pid = fork_with(streams, say(1, b"kept\n"))
    assert reap(pid) == 0
    out, _ = streams.finish()
    assert (out if mode == "capture" else "".join(sys.stdout.calls)) == "kept\n"


# -- fds -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["capture", "tag", "group"])
def test_fds_are_tracked_and_all_closed(mode: str) -> None:
    track: set[int] = set()
    streams = open_streams(mode, track=track)
    assert streams is not None
    parent, child = streams.parent_fds(), streams.child_fds()
    assert track == set(parent) and not track & set(child)
    assert streams.watch_fds() == (parent if mode == "tag" else ())
    pid = fork_with(streams, lambda: None)
    with pytest.raises(ValueError, match="closed"):
        streams.child_fds()
    for fd in child:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert reap(pid) == 0
    streams.finish()
    assert track == set() and streams.parent_fds() == ()
    assert streams.finish() == (None, None)  # again: nothing is read or closed twice
    streams.close()


def test_close_abandons_everything_and_forwards_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    streams = opened("tag")
    os.write(streams.child_fds()[0], b"never shown\n")
    fds = streams.watch_fds()
    streams.close()
    streams.close()
    assert not streams.on_readable(fds[0])  # closed: the number is not read again
    assert streams.finish() == (None, None)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("mode", ["capture", "tag"])
def test_in_child_leaves_only_fds_1_and_2(mode: str) -> None:
    streams = opened(mode)
    fds = (*streams.parent_fds(), *streams.child_fds())

    def body() -> None:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.fstat(fd)
                raise AssertionError(f"fd {fd} is still open in the child")
        assert os.get_inheritable(1) and os.get_inheritable(2)

    assert reap(fork_with(streams, body)) == 0
    streams.finish()


@pytest.mark.parametrize("mode", ["capture", "tag"])
def test_streams_stay_off_fds_0_to_2_in_a_process_that_closed_them(mode: str) -> None:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(1)
            os.close(2)
            streams = opened(mode)
            code = 0 if min(streams.parent_fds() + streams.child_fds()) > 2 else 2
        finally:
            os._exit(code)
    assert reap(pid) == 0


@pytest.mark.parametrize("mode", ["capture", "tag"])
def test_a_failed_open_leaves_nothing_open(mode: str) -> None:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # Fill the fd table, then free three slots: room for three of the four fds.
            highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 50, highest + 50))
            fillers = []
            with contextlib.suppress(OSError):
                while True:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
            for fd in fillers[-3:]:
                os.close(fd)
            before = set(os.listdir("/proc/self/fd"))
            try:
                open_streams(mode)
            except OSError as exc:
                code = 0 if exc.errno == errno.EMFILE else 2
            else:
                code = 3
            if set(os.listdir("/proc/self/fd")) != before:
                code = 4
        finally:
            os._exit(code)
    assert reap(pid) == 0


# -- writing to the parent's streams -------------------------------------------------------------


def test_emit_survives_missing_and_broken_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", None)
    _emit.emit("stdout", "nowhere\n")

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(errno.EPIPE, "the reader is gone")

    monkeypatch.setattr(sys, "stderr", Broken())
    _emit.emit("stderr", "dropped\n")


def test_emit_escapes_what_the_stream_cannot_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))
    _emit.emit("stdout", "caf\u00e9\n")
    assert raw.getvalue() == b"caf\\xe9\n"


def test_the_encoding_falls_back_to_the_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    import locale

    monkeypatch.setattr(sys, "stderr", None)
    assert _emit.encoding_of("stderr") == locale.getpreferredencoding(False)
    monkeypatch.setattr(sys, "stderr", Recorder("no-such-codec"))
    assert _emit.encoding_of("stderr") == locale.getpreferredencoding(False)


def test_decode_escapes_undecodable_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", Recorder("utf-8"))
    assert _emit.decode(b"ok \xff\n", "stderr") == "ok \\xff\n"


def test_a_registered_bar_writes_in_this_process_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = on_screen(monkeypatch)
    above: list[tuple[str, object]] = []

    def write(text: str, file: typing.TextIO) -> None:
        above.append((text, file))

    _emit.add_bar(write)
    try:
        _emit.emit("stdout", "over the bar\n")
        pid = os.fork()
        if pid == 0:  # a forked child's copy of the bar is on no screen
            os._exit(0 if _emit._bar_writer() is None else 1)
        assert reap(pid) == 0
    finally:
        _emit.remove_bar(write)
        _emit.remove_bar(write)  # idempotent
    _emit.emit("stdout", "plain\n")
    assert above == [("over the bar\n", screen[0])]
    assert screen[0].calls == ["plain\n"]


@pytest.mark.parametrize("mode", ["tag", "group"])
def test_forwarded_output_goes_above_a_tqdm_bar(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    pytest.importorskip("tqdm")
    terminal = Recorder()  # stdout and stderr on one screen, as in a terminal
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    with open_progress(True, total=2, desc="hosts") as bar:
        bar.update(1)
        streams = opened(mode)
        pid = fork_with(streams, say(1, b"hello\n"), label="alpha")
        pump(streams)
        assert reap(pid) == 0
        streams.finish()
        bar.update(1)
    assert _emit._bar_writer() is None
    line = "[alpha] hello\n" if mode == "tag" else "hello\n"
    index = terminal.calls.index(line)
    before, after = "".join(terminal.calls[:index]), "".join(terminal.calls[index + 1 :])
    assert "hosts" in before and before.endswith("\r")  # the bar was drawn, then cleared
    assert "hosts" in after  # and drawn again below the line


# -- labels and options --------------------------------------------------------------------------


def test_call_names() -> None:
    def fetch(host: str, port: int = 80) -> None: ...

    plain = unwrap_task(task(fetch))[1]
    named = unwrap_task(task(name="fixed")(fetch))[1]
    computed = unwrap_task(task(name=lambda host, port=80: f"{host}:{port}")(fetch))[1]
    assert plain is not None and named is not None and computed is not None
    assert call_name(plain, fetch, ("a",), {}) is None
    assert call_name(named, fetch, ("a",), {}) == "fixed"
    assert call_name(computed, fetch, ("a",), {"port": 8080}) == "a:8080"
    assert default_label(fetch, 1234) == f"{fetch.__qualname__}:1234"


def test_a_failing_name_callable_raises_with_a_note() -> None:
    def fetch(host: str) -> None: ...

    options = unwrap_task(task(name=lambda host: host.upper())(fetch))[1]
    assert options is not None
    with pytest.raises(AttributeError) as info:
        call_name(options, fetch, (None,), {})
    assert "name= callable of task" in info.value.__notes__[0]


def test_output_options_are_kept() -> None:
    def work() -> None: ...

    options = unwrap_task(task(output="capture", max_output="1M")(work))[1]
    assert options is not None
    assert (options.output, options.max_output) == ("capture", 2**20)
    default = unwrap_task(task(work))[1]
    assert default is not None
    assert (default.output, default.max_output) == ("inherit", DEFAULT_MAX_OUTPUT)


def test_the_typed_modes_are_the_accepted_modes() -> None:
    assert typing.get_args(Output) == OUTPUT_MODES


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"output": "tagged"}, ValueError, "'inherit', 'capture', 'tag', 'group'"),
        ({"output": None}, TypeError, "output must be a string"),
        ({"output": "capture", "max_output": 0}, ValueError, "max_output must be positive"),
        ({"output": "capture", "max_output": 1.5}, TypeError, "max_output must be an int"),
        ({"output": "group", "max_output": "lots"}, ValueError, "max_output='lots' is not a size"),
        ({"max_output": 1000}, ValueError, "output='capture', 'group' or 'tag'"),
        ({"name": 42}, TypeError, "name must be a string or a callable"),
    ],
)
def test_bad_options_fail_at_decoration(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        task(**options)


# -- helpers -------------------------------------------------------------------------------------


def test_last_lines() -> None:
    assert doctest.testmod(_emit).failed == 0
    assert _emit.last_lines("") == ""
    assert _emit.last_lines("a\nb\nc", 5) == "a\nb\nc"
    assert _emit.last_lines("a\nb\n", 0) == ""
    long = "w" * (_emit.NOTE_WIDTH + 10)
    assert _emit.last_lines(f"x\n{long}\n", 1) == "..." + "w" * _emit.NOTE_WIDTH
    text = "".join(f"{n}\n" for n in range(30))
    assert _emit.last_lines(text) == "\n".join(str(n) for n in range(20, 30))


def test_repr_shows_mode_label_and_state() -> None:
    streams = opened("tag")
    pid = fork_with(streams, lambda: None, label="db")
    assert re.fullmatch(r"<Streams tag label='db' open fds=\(\d+, \d+\)>", repr(streams))
    pump(streams)
    assert reap(pid) == 0
    streams.finish()
    assert repr(streams) == "<Streams tag label='db' closed fds=()>"


def test_a_label_with_control_characters_is_shown_escaped() -> None:
    streams = open_streams("tag")
    assert streams is not None
    try:
        streams.after_fork_in_parent("two\nlines\x1b[31m")
        assert streams.label == "two\nlines\x1b[31m"  # fut.name keeps it as it is
        assert streams._prefix == "[two\\nlines\\x1b[31m] "
    finally:
        streams.close()
