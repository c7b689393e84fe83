"""The child process: how it dies, what it sees, and the limits put on it.

Catalogue groups (research notes, section 3): A (child death), J (stdio, environment, cwd) and
N (security, isolation and per-task limits), plus option validation at decoration time.
"""

from __future__ import annotations

import datetime
import errno
import os
import re
import resource
import signal
import sys
import time

import _faults
import pytest
from _faults import wait_exception
from _timing import BOUND, PATIENCE, PROMPT

from inparallel import (
    InParallelError,
    MemoryLimitExceeded,
    RemoteError,
    ResultNotPicklable,
    TaskFuture,
    WorkerDied,
    task,
)
from inparallel._core import _supervisor

MiB = 1 << 20


def assert_died(
    fut: TaskFuture[object], exc: BaseException, *, exitcode: int, sig: int | None
) -> WorkerDied:
    assert type(exc) is WorkerDied, f"expected WorkerDied, got {type(exc).__name__}: {exc}"
    assert isinstance(exc, InParallelError)
    assert exc.pid == fut.pid
    assert exc.exitcode == exitcode
    assert fut.exitcode == exitcode
    assert exc.signal == sig
    assert fut.rusage is not None
    if sig is not None:
        assert signal.Signals(sig).name in str(exc)
    return exc


# -- A. Child death --------------------------------------------------------------------------------


@task
def crash_segv() -> None:
    _faults.segfault()


def test_a1_segfault_is_worker_died_with_sigsegv() -> None:
    start = time.monotonic()
    fut = crash_segv()
    exc, _ = wait_exception(fut)
    assert time.monotonic() - start < PROMPT
    died = assert_died(fut, exc, exitcode=-signal.SIGSEGV, sig=signal.SIGSEGV)
    assert "SIGSEGV" in str(died)
    assert "segmentation fault" in str(died).lower()  # the message names a likely cause


@task
def hard_exit(code: int) -> None:
    os._exit(code)


def test_a2_hard_exit_reports_the_exit_code() -> None:
    fut = hard_exit(3)
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    died = assert_died(fut, exc, exitcode=3, sig=None)
    assert re.search(r"\bcode 3\b", str(died)), str(died)


@task
def exit_zero_in_task() -> None:
    os._exit(0)


@task
def exit_zero_while_pickling() -> object:
    return _faults.HardExitAtPickle(0)


@pytest.mark.parametrize(
    "where", [exit_zero_in_task, exit_zero_while_pickling], ids=["task", "pickle"]
)
def test_a3_exit_zero_without_a_result_is_still_an_error(where: object) -> None:
    fut = where()  # type: ignore[operator]
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    died = assert_died(fut, exc, exitcode=0, sig=None)
    assert "without delivering a result" in str(died)


@task
def kill_myself() -> None:
    _faults.kill_self(signal.SIGKILL)


def test_a4_self_sigkill() -> None:
    fut = kill_myself()
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    died = assert_died(fut, exc, exitcode=-signal.SIGKILL, sig=signal.SIGKILL)
    assert "oom" in str(died).lower()  # hints at the OOM killer


def test_a4_external_sigkill_spares_siblings(gate: _faults.Gate, tracked: list) -> None:
    @task
    def parked(i: int) -> int:
        assert gate.wait(PATIENCE)
        return i * 10

    victim = parked(0)
    siblings = [parked(1), parked(2)]
    tracked.extend([victim, *siblings])
    os.kill(victim.pid, signal.SIGKILL)
    exc, elapsed = wait_exception(victim)
    assert elapsed < PROMPT
    assert_died(victim, exc, exitcode=-signal.SIGKILL, sig=signal.SIGKILL)
    assert not any(s.done() for s in siblings)
    gate.release(2)
    assert [s.result(timeout=PATIENCE) for s in siblings] == [10, 20]


@task
def abort_me() -> None:
    _faults.abort()


def test_a5_abort_is_sigabrt() -> None:
    fut = abort_me()
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    assert_died(fut, exc, exitcode=-signal.SIGABRT, sig=signal.SIGABRT)


def test_a6_external_sigterm_ignores_the_parents_python_handler(
    gate: _faults.Gate, beacon: _faults.Beacon, tracked: list
) -> None:
    # The parent's own SIGTERM handler must not run in the task: the child dies of SIGTERM.
    with _faults.Beacon() as handler_ran:
        previous = signal.signal(signal.SIGTERM, lambda *_: handler_ran.send(b"H"))
        try:

            @task
            def wait_for_term() -> None:
                beacon.send(b"R")
                gate.wait(PATIENCE)

            fut = wait_for_term()
            tracked.append(fut)
            assert beacon.receive(1) == b"R"
        finally:
            signal.signal(signal.SIGTERM, previous)
        os.kill(fut.pid, signal.SIGTERM)
        exc, elapsed = wait_exception(fut)
        assert elapsed < PROMPT
        assert_died(fut, exc, exitcode=-signal.SIGTERM, sig=signal.SIGTERM)
        assert not handler_ran.pending()


@task
def call_sys_exit(code: object) -> None:
    sys.exit(code)


@pytest.mark.parametrize("code", [4, "msg", [1, 2], None], ids=["int", "str", "list", "none"])
def test_a7_sys_exit_is_the_tasks_exception(code: object) -> None:
    fut = call_sys_exit(code)
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    assert type(exc) is SystemExit
    assert exc.code == code
    assert fut.exitcode == 0  # it reported the exception, then left normally


# The parent registers an atexit handler and leaves unflushed output behind before calling a
# task that leaves through sys.exit. Neither the handler nor the output may be doubled by the
# child, and the caller's code after the call runs once (A7, J2).
_ATEXIT_HARNESS = r"""
import atexit, os, sys
from inparallel import task
marker = sys.argv[1]

def note_exit():
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")

atexit.register(note_exit)

@task
def leave(code):
    print("child says hi")
    sys.exit(code)

sys.stdout.write("UNFLUSHED-MARK ")  # no newline, block-buffered: unflushed at fork
fut = leave(4)
exc = fut.exception(timeout=10)
print("after-call")
print("outcome", type(exc).__name__, exc.code, fut.exitcode)
print("parent", os.getpid())
"""


def test_a7_j2_atexit_and_unflushed_output_are_not_duplicated(tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "atexit.txt")
    proc = _faults.run_python(_ATEXIT_HARNESS, args=[marker])
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b"", proc.stderr.decode()
    lines = out.splitlines()
    parent_pid = lines[-1].split()[1]
    assert out.count("UNFLUSHED-MARK") == 1, out
    assert out.startswith("UNFLUSHED-MARK "), out
    assert out.count("child says hi") == 1, out
    assert out.count("after-call") == 1, out
    assert "outcome SystemExit 4" in out, out
    with open(marker) as f:
        assert f.read().split() == [parent_pid]  # only the parent ran its atexit handler


@task
def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt("from the task")


def test_a8_keyboard_interrupt_is_the_tasks_exception() -> None:
    fut = raise_keyboard_interrupt()
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    assert type(exc) is KeyboardInterrupt
    assert str(exc) == "from the task"
    # The parent is not interrupted: it goes on and runs the next task.
    assert task(lambda: "still here")().result(timeout=PATIENCE) == "still here"


@task
def return_crash_at_pickle() -> object:
    return _faults.CrashAtPickle()


def test_a9_segfault_while_pickling_the_result() -> None:
    fut = return_crash_at_pickle()
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    assert_died(fut, exc, exitcode=-signal.SIGSEGV, sig=signal.SIGSEGV)


@task
def return_exit_at_pickle() -> object:
    return _faults.ExitAtPickle(7)


def test_a10_sys_exit_while_pickling_the_result() -> None:
    # The task returned; its value could not be pickled (pickling it raised SystemExit(7)): a
    # ResultNotPicklable caused by that SystemExit, reported cleanly. Never a hang, a lost
    # outcome or a WorkerDied.
    fut = return_exit_at_pickle()
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    assert type(exc) is ResultNotPicklable, repr(exc)
    assert exc.type_name == "ExitAtPickle"
    cause = exc.__cause__
    assert type(cause) is SystemExit and cause.code == 7, repr(cause)
    assert "SystemExit" in str(exc)
    assert fut.exitcode == 0


def test_a11_crash_after_the_result_was_sent_keeps_the_result(beacon: _faults.Beacon) -> None:
    def crash_on_exit(status: int) -> None:
        beacon.send(b"X")
        _faults.segfault()

    @task
    def deliver_then_crash() -> str:
        _faults.on_exit(crash_on_exit)
        return "the result wins"

    fut = deliver_then_crash()
    assert fut.result(timeout=PATIENCE) == "the result wins"
    # The child leaves through os._exit once its frame is sent (the module's contract): the
    # hook ran before the child died, so its byte is here by the time the future resolved.
    assert beacon.receive(1, timeout=PROMPT) == b"X", "the child did not leave through os._exit"
    assert fut.exitcode == -signal.SIGSEGV  # the abnormal exit is recorded, not raised


def test_a11_sigkill_after_the_result_was_sent_keeps_the_result(beacon: _faults.Beacon) -> None:
    def die_on_exit(status: int) -> None:
        beacon.send(b"X")
        _faults.kill_self(signal.SIGKILL)

    @task
    def deliver_then_die() -> dict[str, int]:
        _faults.on_exit(die_on_exit)
        return {"answer": 42}

    fut = deliver_then_die()
    assert fut.result(timeout=PATIENCE) == {"answer": 42}
    assert beacon.receive(1, timeout=PROMPT) == b"X", "the child did not leave through os._exit"
    assert fut.exitcode == -signal.SIGKILL


def test_a12_killed_while_streaming_a_large_result(beacon: _faults.Beacon, tracked: list) -> None:
    size = 64 * MiB

    @task
    def big_text() -> str:
        text = _faults.ascii_blob(size).decode("ascii")  # a str travels through the pipe
        beacon.send(b"R")
        return text

    baseline = _faults.bytes_read()
    fut = _faults.watched(big_text())  # the thread drains the pipe meanwhile
    tracked.append(fut)
    beacon.receive(1, timeout=PATIENCE)
    try:
        got = _faults.stop_mid_stream(fut.pid, baseline, 4 * MiB)
        assert got < size, "the whole result arrived before the child could be stopped"
        assert not fut.done()
    finally:
        os.kill(fut.pid, signal.SIGKILL)
        os.kill(fut.pid, signal.SIGCONT)
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    died = assert_died(fut, exc, exitcode=-signal.SIGKILL, sig=signal.SIGKILL)
    match = re.search(r"truncated result \((\d+) of (\d+) bytes\)", died.detail)
    assert match, died.detail
    received, expected = map(int, match.groups())
    # The library's count and this process's read counter differ by our own small /proc reads.
    assert 2 * MiB <= received < expected
    assert size < expected < size + 4096  # the text and a small header (the pickle's and ours)


def test_a13_child_lingering_after_delivery_is_killed_and_the_result_wins(
    beacon: _faults.Beacon, tracked: list
) -> None:
    def linger(status: int) -> None:
        beacon.send(b"S")
        os.kill(os.getpid(), signal.SIGSTOP)  # stuck at exit: it will never leave by itself

    @task
    def deliver_then_linger() -> str:
        _faults.on_exit(linger)
        return "delivered"

    fut = deliver_then_linger()
    tracked.append(fut)
    try:
        assert fut.result(timeout=BOUND) == "delivered"
    finally:
        if not fut.done():
            os.kill(fut.pid, signal.SIGKILL)
    assert beacon.receive(1, timeout=PROMPT) == b"S", "the child did not leave through os._exit"
    assert fut.exitcode == -signal.SIGKILL  # stopped at exit: the library killed it


# -- J. Stdio, environment, cwd ------------------------------------------------------------------

_OUTPUT_HARNESS = r"""
import sys
from inparallel import task, waitfor

@task
def talk(i):
    for j in range(200):
        print(f"t{i} l{j}")
    sys.stderr.write(f"e{i}\n")
    return i

print("parent-start")  # block-buffered: still unflushed when the first task forks
pending = []
done = []
todo = list(range(30))
for fut in waitfor(pending, 6):
    if fut is None:
        if todo:
            pending.append(talk(todo.pop()))
    else:
        done.append(fut.result())
print("parent-end", sorted(done) == list(range(30)))
"""


def test_j1_every_output_line_appears_exactly_once() -> None:
    proc = _faults.run_python(_OUTPUT_HARNESS)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    expected = {f"t{i} l{j}" for i in range(30) for j in range(200)}
    expected |= {"parent-start", "parent-end True"}
    assert len(lines) == len(expected), f"{len(lines)} lines, expected {len(expected)}"
    assert set(lines) == expected
    assert lines[0] == "parent-start" and lines[-1] == "parent-end True"
    errors = proc.stderr.decode().splitlines()
    assert sorted(errors) == sorted(f"e{i}" for i in range(30))


def test_j2_sys_exit_does_not_repeat_unflushed_parent_output(tmp_path: object) -> None:
    # Same harness as A7: the unflushed text is printed once, the child's line once.
    marker = os.path.join(str(tmp_path), "atexit.txt")
    proc = _faults.run_python(_ATEXIT_HARNESS, args=[marker])
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert out.count("UNFLUSHED-MARK") == 1 and out.count("child says hi") == 1, out


def _close_stdout() -> None:
    sys.stdout.close()


def _none_streams() -> None:
    sys.stdout = None  # type: ignore[assignment]
    sys.stderr = None  # type: ignore[assignment]


def _close_stderr() -> None:
    sys.stderr.close()


def _close_fds() -> None:
    os.close(1)
    os.close(2)


@pytest.mark.parametrize(
    "closer",
    [_close_stdout, _none_streams, _close_stderr, _close_fds],
    ids=["close-stdout", "none", "close-stderr", "close-fds"],
)
def test_j3_result_survives_closed_std_streams(closer: object) -> None:
    @task
    def close_then_return() -> str:
        print("some output first")
        closer()  # type: ignore[operator]
        return "delivered"

    fut = close_then_return()
    assert fut.result(timeout=PATIENCE) == "delivered"
    assert fut.exitcode == 0


_CLOSED_STDIO_HARNESS = r"""
import sys
from inparallel import task

@task
def close_everything():
    print("pending in the buffer")
    sys.stdout.close()
    sys.stderr.close()
    return "ok"

print("result", close_everything().result(timeout=10))
"""


def test_j3_closed_std_streams_in_a_real_interpreter() -> None:
    proc = _faults.run_python(_CLOSED_STDIO_HARNESS)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b"", proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == ["pending in the buffer", "result ok"]


@task
def read_stdin() -> tuple[bytes, str, str]:
    return os.read(0, 100), os.readlink("/proc/self/fd/0"), sys.stdin.read()


def test_j4_stdin_is_dev_null() -> None:
    # pytest's capture already puts /dev/null on fd 0, so give this process a real stdin for
    # the call: a pipe holding input, its write end closed. Only the library's redirect can
    # make the child see /dev/null and an immediate EOF instead of that input.
    r, w = os.pipe()
    saved = os.dup(0)
    try:
        os.write(w, b"the parent's input\n")
        os.close(w)
        w = -1
        os.dup2(r, 0)
        start = time.monotonic()
        raw, target, text = read_stdin().result(timeout=PATIENCE)
        elapsed = time.monotonic() - start
        assert os.read(0, 100) == b"the parent's input\n"  # still all there for the parent
    finally:
        os.dup2(saved, 0)
        for fd in (saved, r, w):
            if fd >= 0:
                os.close(fd)
    assert elapsed < PROMPT
    assert raw == b""
    assert target == "/dev/null"
    assert text == ""


_STDIN_HARNESS = r"""
import sys
from inparallel import task

@task
def steal():
    return sys.stdin.read()

print("child read", repr(steal().result(timeout=10)))
print("parent read", repr(sys.stdin.read()))
"""


def test_j4_task_cannot_steal_the_parents_stdin() -> None:
    proc = _faults.run_python(_STDIN_HARNESS, input=b"secret\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == ["child read ''", "parent read 'secret\\n'"]


def test_j5_env_cwd_and_umask_changes_stay_in_the_child(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("IPT_BEFORE_CALL", "visible")
    monkeypatch.chdir(str(tmp_path))
    cwd = os.getcwd()
    umask = os.umask(0o022)
    os.umask(umask)

    @task
    def mutate() -> tuple[str | None, str]:
        seen = (os.environ.get("IPT_BEFORE_CALL"), os.getcwd())
        os.environ["IPT_SET_IN_CHILD"] = "1"
        os.chdir("/")
        os.umask(0o077)
        return seen

    assert mutate().result(timeout=PATIENCE) == ("visible", cwd)  # a fork-time snapshot
    assert "IPT_SET_IN_CHILD" not in os.environ
    assert os.getcwd() == cwd
    assert os.umask(umask) == umask


# -- N. Security, isolation, limits ---------------------------------------------------------------


def test_n1_restricted_results_refuse_a_forged_pickle(tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "pwned")

    @task(restricted_results=True)
    def forge() -> object:
        return _faults.ForgedResult(marker)

    fut = forge()
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    assert type(exc) is RemoteError
    assert "system" in str(exc)  # names what it refused to load
    assert not os.path.exists(marker)


PLAIN = {
    "none": None,
    "flags": [True, False],
    "numbers": (1, -(2**70), 2.5, float("inf"), 3 + 4j),
    "text": "héllo",
    "bytes": b"\x00\xff" * 100_000,  # large enough to take any out-of-band path
    "bytearray": bytearray(b"abc"),
    "sets": [{1, 2}, frozenset({"a"})],
    "nested": {"k": [{"deep": ((),)}], 7: {b"key": None}},
}


def test_n1_restricted_results_accept_plain_data() -> None:
    @task(restricted_results=True)
    def plain() -> dict[str, object]:
        return PLAIN

    value = plain().result(timeout=PATIENCE)
    assert value == PLAIN
    assert type(value["bytearray"]) is bytearray
    assert type(value["sets"][1]) is frozenset


def test_n1_restricted_results_refuse_non_plain_objects() -> None:
    @task(restricted_results=True)
    def a_date() -> object:
        return datetime.date(2024, 1, 2)

    exc, _ = wait_exception(a_date())
    assert type(exc) is RemoteError
    assert "datetime" in str(exc)


def test_n1_restricted_results_turn_exceptions_into_remote_errors() -> None:
    @task(restricted_results=True)
    def fail() -> None:
        raise ValueError("bad input 17")

    exc, _ = wait_exception(fail())
    assert type(exc) is RemoteError
    assert exc.type_name.endswith("ValueError")
    assert exc.message == "bad input 17"
    assert "fail" in exc.traceback_text
    assert exc.reason


def test_n2_child_holds_only_its_own_result_pipe(gate: _faults.Gate, tracked: list) -> None:
    user_r, user_w = os.pipe()
    try:
        baseline = _faults.fd_table()

        @task
        def sibling() -> None:
            gate.wait(PATIENCE)

        @task
        def probe() -> dict[int, tuple[str, int]]:
            table = {}
            for fd, target in _faults.fd_table().items():
                table[fd] = (target, _faults.fd_mode(fd))
            return table

        siblings = [sibling() for _ in range(3)]  # their pipes and pidfds exist in the parent
        tracked.extend(siblings)
        seen = probe().result(timeout=PATIENCE)
        gate.release(3)
        for s in siblings:
            s.result(timeout=PATIENCE)
    finally:
        os.close(user_r)
        os.close(user_w)
    user_fds = {user_r, user_w, gate.r, gate.w}
    # Everything this process had open when the test began (taken above, with no task in
    # flight: pytest's capture files, the test's own pipes) is inherited, as fork does; stdin
    # is /dev/null now.
    assert set(user_fds) <= set(baseline)
    for fd, target in baseline.items():
        if fd:
            assert seen.get(fd, ("closed",))[0] == target, (fd, target, seen)
    assert seen[0][0] == "/dev/null"
    # Beyond those, exactly one fd: the task's own result pipe write end. No sibling's read end,
    # no pidfd, no epoll or wakeup pipe (a /dev/null handle behind sys.stdin is harmless).
    extra = {fd: v for fd, v in seen.items() if fd not in baseline and v[0] != "/dev/null"}
    assert len(extra) == 1, extra
    ((target, mode),) = extra.values()
    assert target.startswith("pipe:") and mode == os.O_WRONLY, extra


@pytest.mark.parametrize("limit", [200 * MiB, "200MiB"], ids=["int", "str"])
def test_n3_memory_limit_turns_memory_error_into_memory_limit_exceeded(limit: object) -> None:
    @task(memory_limit=limit)
    def hog() -> int:
        small = bytearray(50 * MiB)  # fits: the limit comes on top of what was inherited
        del small
        big = bytearray(400 * MiB)
        return len(big)

    fut = hog()
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT * 2
    assert type(exc) is MemoryLimitExceeded
    assert isinstance(exc, MemoryError) and isinstance(exc, InParallelError)
    assert exc.limit == 200 * MiB
    assert "memory_limit" in str(exc)


def test_n3_memory_limit_leaves_room_for_normal_work() -> None:
    @task(memory_limit="1.5GiB")
    def fits() -> int:
        return len(bytearray(100 * MiB))

    assert fits().result(timeout=PATIENCE) == 100 * MiB


def test_n4_cpu_time_limit_kills_with_sigxcpu() -> None:
    @task(cpu_time=1)
    def spin() -> None:
        while True:
            pass

    fut = spin()
    exc, elapsed = wait_exception(fut)
    # 1 s of CPU, then SIGXCPU (the hard limit follows a second later); the wall-clock bound is
    # loose because a busy 2-core machine may give the child a fraction of a core.
    assert elapsed < 15.0
    assert_died(fut, exc, exitcode=-signal.SIGXCPU, sig=signal.SIGXCPU)
    assert "cpu_time" in str(exc)
    # CPU accounting starts at zero in the child, although this process has used far more.
    assert fut.rusage is not None and fut.rusage.utime + fut.rusage.stime >= 0.8


def test_n5_no_core_dumps_under_limits() -> None:
    @task(cpu_time=30)
    def core_limit() -> tuple[int, int]:
        return _faults.child_rlimit(resource.RLIMIT_CORE)

    soft, _ = core_limit().result(timeout=PATIENCE)
    assert soft == 0


def test_n5_file_size_limit_is_reported(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "big.bin")

    @task
    def write_too_much() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, resource.RLIM_INFINITY))
        with open(path, "wb") as f:
            f.write(b"\0" * (2 * MiB))
            f.flush()

    fut = write_too_much()
    exc, _ = wait_exception(fut)
    # CPython ignores SIGXFSZ (SIG_IGN is not a Python handler, so the child keeps it): the
    # write fails with EFBIG and the task reports that, as the same code would without a fork.
    assert type(exc) is OSError and exc.errno == errno.EFBIG, repr(exc)
    assert fut.exitcode == 0


def test_n5_open_file_limit_is_reported() -> None:
    @task
    def open_too_many() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 4, 4096))
        files = []
        while True:
            files.append(open(os.devnull))  # noqa: SIM115 - exhausting fds on purpose

    exc, _ = wait_exception(open_too_many())
    assert type(exc) is OSError and exc.errno == errno.EMFILE, repr(exc)


def test_n6_secrets_are_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    # Documented: fork copies the environment (and all memory); limits are not a sandbox.
    monkeypatch.setenv("IPT_API_KEY", "s3cret")

    @task(memory_limit="1G", cpu_time=10, restricted_results=True)
    def read_secret() -> str | None:
        return os.environ.get("IPT_API_KEY")

    assert read_secret().result(timeout=PATIENCE) == "s3cret"


# -- Options are checked when the function is decorated --------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "word"),
    [
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": "5"}, TypeError, "timeout"),
        ({"memory_limit": "lots"}, ValueError, "memory_limit"),
        ({"memory_limit": 0}, ValueError, "memory_limit"),
        ({"memory_limit": -5}, ValueError, "memory_limit"),
        ({"memory_limit": 1.5}, TypeError, "memory_limit"),
        ({"cpu_time": 0}, ValueError, "cpu_time"),
        ({"cpu_time": -1}, ValueError, "cpu_time"),
        ({"cpu_time": "1"}, TypeError, "cpu_time"),
        ({"max_result_size": 0}, ValueError, "max_result_size"),
        ({"max_result_size": -1}, ValueError, "max_result_size"),
        ({"max_result_size": [1]}, TypeError, "max_result_size"),
        ({"name": 5}, TypeError, "name"),
        ({"restricted_results": "yes"}, TypeError, "restricted_results"),
    ],
)
def test_bad_options_fail_at_decoration_time(options: dict, error: type, word: str) -> None:
    spawned = _supervisor.statistics().spawned

    def fn() -> None:
        pass

    with pytest.raises(error, match=re.escape(word)):
        task(**options)(fn)
    assert _supervisor.statistics().spawned == spawned  # nothing was forked


@pytest.mark.parametrize("target", [42, "not a function"], ids=["int", "str"])
def test_task_rejects_non_callables(target: object) -> None:
    with pytest.raises(TypeError, match="function"):
        task(target)  # type: ignore[call-overload]


def test_task_rejects_unknown_options() -> None:
    with pytest.raises(TypeError):
        task(timeot=5)  # type: ignore[call-overload]


def test_memory_limit_strings_are_sizes() -> None:
    # A size string is accepted at decoration and the child can work within it.
    @task(memory_limit="512M")
    def small() -> int:
        return len(bytearray(MiB))

    assert small().result(timeout=PATIENCE) == MiB
