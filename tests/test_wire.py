"""The result channel: what crosses the pipe, how big, how fast, and what cannot cross it.

Catalogue groups (research notes, section 3): B (serialization) and C (result size and timing).
"""

from __future__ import annotations

import errno
import gc
import json
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Iterator

import _faults
import pytest
from _faults import wait_exception
from _timing import BOUND, PATIENCE, PROMPT

from inparallel import (
    InParallelError,
    RemoteError,
    ResultNotPicklable,
    TaskFuture,
    WorkerDied,
    task,
    waitfor,
)
from inparallel._core import _lend

MiB = 1 << 20


def frame_names(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


# -- B. Serialization ------------------------------------------------------------------------------


@task
def return_lock() -> object:
    return threading.Lock()


@task
def return_generator() -> object:
    return (i for i in range(3))


@task
def return_open_file() -> object:
    return open(os.devnull, "w")


@task
def return_refusing_object() -> object:
    return _faults.RaiseAtPickle()


@pytest.mark.parametrize(
    ("fn", "what", "why"),
    [
        (return_lock, "lock", TypeError),
        (return_generator, "generator", TypeError),
        (return_open_file, "TextIOWrapper", pickle.PicklingError),  # cloudpickle refuses it
        (return_refusing_object, "RaiseAtPickle", _faults.InjectedFault),
    ],
    ids=["lock", "generator", "file", "reduce-raises"],
)
def test_b1_unpicklable_result(fn: object, what: str, why: type[Exception]) -> None:
    fut = fn()  # type: ignore[operator]
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    assert type(exc) is ResultNotPicklable
    assert isinstance(exc, TypeError) and isinstance(exc, InParallelError)
    assert exc.type_name == what
    assert what in str(exc)
    assert type(exc.__cause__) is why, repr(exc.__cause__)  # the pickler's own error
    assert fut.exitcode == 0  # the child reported cleanly


@task
def raise_unpicklable() -> None:
    raise _faults.UnpicklableError("holding a lock")


def test_b2_unpicklable_exception_becomes_remote_error() -> None:
    # Its state (the lock) cannot travel, so the contract says RemoteError: it keeps the type
    # name, the message and the child's traceback text. An instance re-created from its args
    # would carry none of the child's frames and state made afresh by __init__, not the original.
    exc, elapsed = wait_exception(raise_unpicklable())
    assert elapsed < PROMPT
    assert type(exc) is RemoteError
    assert exc.type_name.endswith("UnpicklableError")
    assert exc.message == "holding a lock"
    assert "raise_unpicklable" in exc.traceback_text
    assert "UnpicklableError: holding a lock" in exc.traceback_text
    assert exc.reason
    assert "holding a lock" in str(exc) and "raise_unpicklable" in str(exc)


@task
def raise_bad_init() -> None:
    raise _faults.BadInitError(1, 2)


@task
def raise_kw_only() -> None:
    raise _faults.KwOnlyError(code=3)


def test_b3_exception_with_a_two_argument_init() -> None:
    # Pickle rebuilds an exception as cls(*args); here that call fails, so the exception cannot
    # cross: a RemoteError naming it, with why (never a TypeError from the parent's unpickling,
    # never an instance made up from the wrong arguments).
    exc, elapsed = wait_exception(raise_bad_init())
    assert elapsed < PROMPT
    assert type(exc) is RemoteError, repr(exc)
    assert exc.type_name.endswith("BadInitError")
    assert exc.message == "1:2"
    assert "raise_bad_init" in exc.traceback_text
    assert "__init__" in exc.reason, exc.reason


def test_b3_exception_with_a_keyword_only_init() -> None:
    exc, _ = wait_exception(raise_kw_only())
    assert type(exc) is RemoteError, repr(exc)
    assert exc.type_name.endswith("KwOnlyError")
    assert exc.message == "code=3"
    assert "raise_kw_only" in exc.traceback_text
    assert "__init__" in exc.reason, exc.reason


def test_b4_exception_class_local_to_the_task() -> None:
    @task
    def raise_local() -> None:
        class LocalError(Exception):
            pass

        raise LocalError("defined in the task")

    exc, elapsed = wait_exception(raise_local())
    assert elapsed < PROMPT
    # A class local to a function cannot be pickled by reference, and exceptions are not sent
    # by value: a RemoteError with the full name, the message and the child's traceback.
    assert type(exc) is RemoteError, repr(exc)
    assert exc.type_name.endswith("raise_local.<locals>.LocalError"), exc.type_name
    assert exc.message == "defined in the task"
    assert "raise_local" in exc.traceback_text
    assert "local object" in exc.reason, exc.reason


@task
def raise_frozen() -> None:
    raise _faults.FrozenError(3, "frozen detail")


def test_b5_frozen_dataclass_exception_keeps_its_type() -> None:
    exc, elapsed = wait_exception(raise_frozen())
    assert elapsed < PROMPT
    assert type(exc) is _faults.FrozenError
    assert exc.code == 3 and exc.detail == "frozen detail"


def _inner_failure() -> None:
    raise KeyError("inner-key")


@task
def raise_chained() -> None:
    try:
        _inner_failure()
    except KeyError as inner:
        outer = ValueError("outer")
        outer.add_note("note one")
        outer.add_note("note two")
        raise outer from inner


def test_b6_chain_notes_and_child_frames_survive() -> None:
    fut = raise_chained()
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    assert type(exc) is ValueError and str(exc) == "outer"
    assert exc.__notes__ == ["note one", "note two"]
    assert exc.__suppress_context__ is True
    cause = exc.__cause__
    assert type(cause) is KeyError and cause.args == ("inner-key",)
    assert "raise_chained" in frame_names(exc)
    assert "_inner_failure" in frame_names(cause)
    text = "".join(traceback.format_exception(exc))
    assert "direct cause of the following exception" in text
    assert "KeyError: 'inner-key'" in text and "note two" in text
    # result() raises the same exception, with the child's frames below the parent's.
    with pytest.raises(ValueError, match="outer") as info:
        fut.result()
    assert "raise_chained" in frame_names(info.value)


@task
def raise_during_handling() -> None:
    try:
        {}["missing"]
    except KeyError:
        raise RuntimeError("while handling")


def test_b6_implicit_context_survives() -> None:
    exc, _ = wait_exception(raise_during_handling())
    assert type(exc) is RuntimeError
    assert exc.__cause__ is None and exc.__suppress_context__ is False
    assert type(exc.__context__) is KeyError
    text = "".join(traceback.format_exception(exc))
    assert "During handling of the above exception" in text


@task
def raise_group() -> None:
    raise ExceptionGroup("two things", [ValueError("first"), TypeError("second")])


def test_b6_exception_group_survives() -> None:
    exc, _ = wait_exception(raise_group())
    assert type(exc) is ExceptionGroup
    assert exc.message == "two things"
    assert [type(e) for e in exc.exceptions] == [ValueError, TypeError]
    assert [str(e) for e in exc.exceptions] == ["first", "second"]


@task
def raise_builtin(kind: str) -> None:
    if kind == "oserror":
        raise FileNotFoundError(errno.ENOENT, "No such file", "/nope/missing")
    if kind == "stopiteration":
        raise StopIteration("the value")
    if kind == "systemexit":
        raise SystemExit(9)
    if kind == "unicode":
        b"\xff".decode("utf-8")
    if kind == "import":
        raise ImportError("no luck", name="missing_mod", path="/x/missing_mod.py")


def test_b6_builtin_exception_attributes_survive() -> None:
    exc, _ = wait_exception(raise_builtin("oserror"))
    assert type(exc) is FileNotFoundError
    assert (exc.errno, exc.strerror, exc.filename) == (
        errno.ENOENT,
        "No such file",
        "/nope/missing",
    )
    exc, _ = wait_exception(raise_builtin("stopiteration"))
    assert type(exc) is StopIteration and exc.value == "the value"
    exc, _ = wait_exception(raise_builtin("systemexit"))
    assert type(exc) is SystemExit and exc.code == 9
    exc, _ = wait_exception(raise_builtin("unicode"))
    assert type(exc) is UnicodeDecodeError
    assert (exc.encoding, exc.object, exc.start, exc.end) == ("utf-8", b"\xff", 0, 1)
    exc, _ = wait_exception(raise_builtin("import"))
    assert type(exc) is ImportError
    assert (exc.msg, exc.name, exc.path) == ("no luck", "missing_mod", "/x/missing_mod.py")


@task
def return_error_at_unpickle() -> object:
    return _faults.ErrorAtUnpickle("parent-side failure")


@task
def raise_parent_only_error() -> None:
    raise _faults.ParentOnlyError("loads in the child only")


def test_b7_result_that_fails_to_unpickle_in_the_parent(gate: _faults.Gate, tracked: list) -> None:
    @task
    def sibling() -> str:
        gate.wait(PATIENCE)
        return "sibling ok"

    other = sibling()  # in flight while the supervisor handles the bad result
    tracked.append(other)
    exc, elapsed = wait_exception(return_error_at_unpickle())
    assert elapsed < PROMPT
    assert type(exc) is RemoteError
    assert exc.type_name.endswith("InjectedFault")
    assert exc.message == "parent-side failure"
    assert "unpickl" in exc.reason
    assert type(exc.__cause__) is _faults.InjectedFault
    gate.release()
    assert other.result(timeout=PATIENCE) == "sibling ok"  # only that future failed


def test_b7_exception_that_fails_to_unpickle_in_the_parent() -> None:
    exc, _ = wait_exception(raise_parent_only_error())
    assert type(exc) is RemoteError
    # The report names the task's own exception; why it could not be rebuilt is the reason.
    assert exc.type_name.endswith("ParentOnlyError")
    assert exc.message == "loads in the child only"
    assert "raise" in exc.traceback_text  # the child's traceback, as text
    assert "unpickl" in exc.reason and "InjectedFault" in exc.reason
    assert type(exc.__cause__).__name__ == "InjectedFault"


@task
def return_exit_at_unpickle() -> object:
    return _faults.ExitAtUnpickle(5)


def test_b8_sys_exit_while_unpickling_in_the_parent(gate: _faults.Gate, tracked: list) -> None:
    @task
    def sibling() -> str:
        gate.wait(PATIENCE)
        return "sibling ok"

    other = sibling()
    tracked.append(other)
    exc, elapsed = wait_exception(return_exit_at_unpickle())
    assert elapsed < PROMPT
    assert type(exc) is RemoteError
    assert exc.type_name.endswith("SystemExit")
    gate.release()
    assert other.result(timeout=PATIENCE) == "sibling ok"  # the supervisor survived
    assert task(lambda: "next")().result(timeout=PATIENCE) == "next"


_MODULE = """
class Thing:
    def __init__(self, value):
        self.value = value
"""


def test_b9_result_whose_class_the_parent_has_not_imported(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"ipt_only_in_child_{os.getpid()}"
    with open(os.path.join(str(tmp_path), f"{name}.py"), "w") as f:
        f.write(_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))

    @task
    def make_thing() -> object:
        module = __import__(name)
        return module.Thing(5)

    assert name not in sys.modules
    try:
        thing = make_thing().result(timeout=PATIENCE)
        assert type(thing).__module__ == name and thing.value == 5  # imported while loading
    finally:
        sys.modules.pop(name, None)


def test_b9_result_whose_module_the_parent_cannot_import(tmp_path: object) -> None:
    hidden = os.path.join(str(tmp_path), "hidden")
    os.mkdir(hidden)
    name = f"ipt_unimportable_{os.getpid()}"
    with open(os.path.join(hidden, f"{name}.py"), "w") as f:
        f.write(_MODULE)

    @task
    def make_thing() -> object:
        sys.path.insert(0, hidden)  # the child's path only
        return __import__(name).Thing(5)

    exc, _ = wait_exception(make_thing())
    assert type(exc) is RemoteError
    assert "ModuleNotFoundError" in exc.type_name
    assert name in exc.message
    assert name not in sys.modules


def test_b10_unpicklable_arguments_need_no_pickling() -> None:
    lock = threading.Lock()
    gen = (i * i for i in range(5))
    factor = 3

    def closure(x: int) -> int:
        return x * factor

    @task
    def use(
        fn: object, lk: threading.Lock, g: Iterator[int], f: object
    ) -> tuple[int, bool, int, int]:
        with lk:
            held = lk.locked()
        return fn(2), held, next(g) + next(g), f(5)  # type: ignore[operator]

    assert use(lambda x: x + 1, lock, gen, closure).result(timeout=PATIENCE) == (3, True, 1, 15)
    assert next(gen) == 0  # the child's copy advanced, not ours


def test_b10_lambdas_and_local_classes_can_be_returned() -> None:
    @task
    def make() -> tuple[object, object]:
        class Point:
            def __init__(self, x: int) -> None:
                self.x = x

        return (lambda y: y * 7), Point(4)

    fn, point = make().result(timeout=PATIENCE)
    assert fn(6) == 42  # type: ignore[operator]
    assert type(point).__name__ == "Point" and point.x == 4  # type: ignore[attr-defined]


@task
def return_deep_list() -> object:
    value: list[object] = []
    for _ in range(100_000):
        value = [value]
    return value


def test_b11_too_deep_a_result() -> None:
    fut = return_deep_list()
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT * 2
    assert type(exc) is ResultNotPicklable, repr(exc)
    cause = exc.__cause__
    assert type(cause) is pickle.PicklingError, repr(cause)  # cloudpickle's, for a RecursionError
    assert "recursion" in str(cause).lower()
    assert exc.type_name == "list"
    assert task(lambda: "parent fine")().result(timeout=PATIENCE) == "parent fine"


@pytest.mark.parametrize("kind", ["text", "bytes"], ids=["in-band", "out-of-band"])
def test_b12_result_over_max_result_size(kind: str) -> None:
    @task(max_result_size=MiB)
    def too_big() -> object:
        data = b"z" * (8 * MiB)
        return data.decode() if kind == "text" else data

    exc, elapsed = wait_exception(too_big())
    assert elapsed < PROMPT
    assert type(exc) is RemoteError
    assert "max_result_size" in str(exc)

    @task(max_result_size=MiB)
    def fits() -> bytes:
        return b"y" * (MiB // 2)

    assert fits().result(timeout=PATIENCE) == b"y" * (MiB // 2)


def _frame_of_buffers(count: int, size: int) -> bytes:
    # A frame as a child sends it: ``count`` writable out-of-band buffers of ``size`` bytes,
    # in the pipe after the payload (the pickle of a list of PickleBuffers).
    from inparallel._core import _wire

    pieces = [pickle.PickleBuffer(bytearray([i % 251]) * size) for i in range(count)]
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(pieces, protocol=5, buffer_callback=buffers.append)
    head = _wire.HEADER.pack(_wire.MAGIC, _wire.Kind.VALUE, len(payload), count, -1)
    sizes = b"".join(_wire.SIZE.pack(b.raw().nbytes) for b in buffers)
    return head + sizes + payload + b"".join(bytes(b.raw()) for b in buffers)


def test_b12_a_result_of_more_than_a_million_buffers_is_read() -> None:
    # 2**20 + 3 buffers: more than the frame reader once accepted ("bad header").
    from inparallel._core._reader import FrameReader

    count = (1 << 20) + 3
    frame = _frame_of_buffers(count, 1)
    reader = FrameReader(max_size=64 << 30)
    view = memoryview(frame)
    while not reader.complete:
        reader.feed(bytes(view[reader.received : reader.received + reader.want()]))
    assert reader.received == len(frame)
    payload, buffers = reader.parts(os.getpid(), set())
    value = pickle.loads(payload, buffers=buffers)
    assert len(value) == count
    assert bytes(value[-1]) == bytes([(count - 1) % 251])


def test_b12_the_table_of_buffer_sizes_counts_against_the_cap() -> None:
    from inparallel._core._reader import FrameError, FrameReader

    reader = FrameReader(max_size=1000)
    frame = _frame_of_buffers(200, 1)  # the size table alone is 1,600 bytes
    with pytest.raises(FrameError, match=r"exceeds max_result_size=1000; raise max_result_size="):
        reader.feed(frame[:64])


def test_b12_many_small_arrays_come_back_whole_and_writable() -> None:
    np = pytest.importorskip("numpy")

    @task
    def arrays() -> list[object]:
        return [np.full(3, i, np.int64) for i in range(50_000)]

    value = arrays().result(timeout=PATIENCE)
    assert len(value) == 50_000
    assert value[49_999].tolist() == [49_999] * 3
    assert all(a.flags.writeable for a in value[:10])


@pytest.mark.soak
def test_b12_a_task_returning_over_a_million_arrays_soak() -> None:
    np = pytest.importorskip("numpy")

    @task
    def arrays() -> list[object]:
        return [np.zeros(1, np.uint8) for _ in range(1_100_000)]

    value = arrays().result(timeout=PATIENCE * 2)
    assert len(value) == 1_100_000


# A fresh interpreter measures its own peak RSS: a refused 256 MiB result must not be
# allocated in the parent.
_CAP_HARNESS = r"""
import json, resource
from inparallel import task, RemoteError

@task(max_result_size=1 << 20)
def huge():
    return "q" * (256 << 20)

task(lambda: 0)().result()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
exc = huge().exception(timeout=10)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"type": type(exc).__name__, "message": str(exc), "growth": after - before}))
"""


def test_b12_refused_result_is_not_allocated() -> None:
    proc = _faults.run_python(_CAP_HARNESS)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout.decode().splitlines()[-1])
    assert report["type"] == "RemoteError", report
    assert "max_result_size" in report["message"]
    assert report["growth"] < 32 * MiB, report


# -- C8/C9 and B12: frames forged by the task itself -----------------------------------------------


def test_b12_c8_garbage_header_fails_only_that_task(gate: _faults.Gate, tracked: list) -> None:
    @task
    def sibling() -> str:
        gate.wait(PATIENCE)
        return "sibling ok"

    @task
    def forge_header() -> None:
        _faults.write_result_pipe(b"\xff" * 64)  # the gate's pipe is the test's (_faults)
        os._exit(0)

    other = sibling()
    tracked.append(other)
    fut = forge_header()
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    # The frame is refused as it arrives: a RemoteError that says why, for this task only.
    assert type(exc) is RemoteError, repr(exc)
    assert "bad header" in exc.reason, exc.reason
    gate.release()
    assert other.result(timeout=PATIENCE) == "sibling ok"


def test_c8_truncated_header_is_worker_died() -> None:
    @task
    def half_a_header() -> None:
        _faults.write_result_pipe(b"IP")
        os._exit(0)

    fut = half_a_header()
    exc, elapsed = wait_exception(fut)
    assert elapsed < PROMPT
    assert type(exc) is WorkerDied
    assert exc.exitcode == 0 and exc.signal is None
    assert "truncated" in exc.detail


@pytest.mark.parametrize("size", [10, MiB, 4 * MiB], ids=["small", "1MiB", "4MiB"])
@pytest.mark.parametrize("how", ["dup2", "close"])
def test_c8_a_task_that_replaces_its_result_pipe_fails_at_once(how: str, size: int) -> None:
    # The fd number no longer leads to the parent: a frame written there would go nowhere,
    # or block for ever once that other pipe is full.
    @task
    def lose_the_pipe() -> bytes:
        (fd,) = _faults.result_pipe_fds()
        if how == "dup2":
            _r, w = os.pipe()  # the read end stays open here: a write blocks once it is full
            os.dup2(w, fd)
        else:
            os.close(fd)
        return b"r" * size

    exc, elapsed = wait_exception(lose_the_pipe())
    assert elapsed < PROMPT
    assert type(exc) is WorkerDied
    assert exc.exitcode == 71 and exc.signal is None
    assert "closed its result pipe or put another file on its fd" in str(exc)


def test_c9_bytes_written_after_the_frame_are_ignored(gate: _faults.Gate) -> None:
    def scribble() -> None:
        _faults.write_result_pipe(b"trailing garbage" * 1000)

    @task
    def deliver_then_scribble() -> tuple[str, int]:
        # The grandchild holds the result pipe; released, it writes garbage after the frame.
        pid = _faults.fork_holder(PATIENCE, wait_fd=gate.r, then=scribble)
        return "the frame", pid

    with _faults.subreaper():
        fut = deliver_then_scribble()
        value, holder = fut.result(timeout=PATIENCE)
        try:
            assert value == "the frame"
            gate.release()  # now the grandchild writes into the result pipe
            assert task(lambda: "next")().result(timeout=PATIENCE) == "next"
            assert fut.result() == ("the frame", holder)
        finally:
            status = _faults.reap(holder)
    assert status is not None  # the grandchild came back to us and was collected


# -- C. Result size and timing ---------------------------------------------------------------------


def test_c1_256_mib_results_arrive_intact() -> None:
    size = 256 * MiB

    @task
    def big_bytes() -> bytes:
        return _faults.blob(size, seed=1)

    @task
    def big_text() -> str:
        return _faults.ascii_blob(size, seed=2).decode("ascii")

    futures = [big_bytes(), big_text()]
    data = futures[0].result(timeout=PATIENCE)
    assert type(data) is bytes and len(data) == size
    assert _faults.digest(data) == _faults.digest(_faults.blob(size, seed=1))
    del data
    text = futures[1].result(timeout=PATIENCE)
    assert type(text) is str and len(text) == size
    assert _faults.digest(text) == _faults.digest(_faults.ascii_blob(size, seed=2))


def test_c1_big_writable_buffers_arrive_intact_writable_and_hold_no_fd() -> None:
    np = pytest.importorskip("numpy")
    # Sizes that are not multiples of a page: each buffer must start where the reader looks.
    sizes = [3 * MiB + 1, 5 * MiB + 4095, 2 * MiB]

    @task
    def arrays() -> list[object]:
        return [np.full(n, k + 7, dtype=np.uint8) for k, n in enumerate(sizes)]

    fds = len(_faults.fd_table())
    got = arrays().result(timeout=PATIENCE)
    assert [a.size for a in got] == sizes
    for k, array in enumerate(got):
        assert array.flags.writeable
        assert int(array.min()) == int(array.max()) == k + 7
        array[::4096] = 1  # copy-on-write: changes only this process's copy
        assert int(array[0]) == 1 and int(array[1]) == k + 7
    assert len(_faults.fd_table()) == fds  # a mapped result keeps no fd open
    del got


@pytest.mark.soak
def test_c1_one_gib_result_arrives_intact() -> None:
    size = 1 << 30

    @task
    def huge() -> bytes:
        return _faults.blob(size, seed=3)

    start = time.monotonic()
    data = huge().result(timeout=120)
    assert time.monotonic() - start < 60
    assert len(data) == size and _faults.digest(data) == _faults.digest(_faults.blob(size, seed=3))


def test_c2_big_transfer_does_not_starve_small_tasks(beacon: _faults.Beacon, tracked: list) -> None:
    size = 64 * MiB

    @task
    def big() -> str:
        text = _faults.ascii_blob(size, seed=4).decode("ascii")
        beacon.send(b"R")
        return text

    @task
    def tiny(i: int) -> int:
        return i

    baseline = _faults.bytes_read()
    slow = _faults.watched(big())  # the thread drains the pipe meanwhile
    tracked.append(slow)
    beacon.receive(1, timeout=PATIENCE)
    latencies = []
    try:
        _faults.stop_mid_stream(slow.pid, baseline, 4 * MiB)
        assert not slow.done()
        # The big frame is half received and its sender frozen: small tasks still get through.
        for i in range(20):
            start = time.monotonic()
            assert tiny(i).result(timeout=PATIENCE) == i
            latencies.append(time.monotonic() - start)
        assert not slow.done()
    finally:
        os.kill(slow.pid, signal.SIGCONT)
    assert max(latencies) < 1.0, latencies
    text = slow.result(timeout=PATIENCE)
    assert len(text) == size and _faults.digest(text) == _faults.digest(
        _faults.ascii_blob(size, seed=4)
    )


# Many medium results through waitfor: never more than k in flight, every result intact, and
# the parent's peak memory bounded by what is in flight rather than by the total.
_MEDIUM_HARNESS = r"""
import json, resource, sys
import _faults
from inparallel import task, waitfor

N, K, SIZE = 40, 4, 8 << 20

def expected(i):
    return _faults.blob(SIZE, seed=i) if i % 2 else _faults.ascii_blob(SIZE, seed=i)

@task
def medium(i):
    data = expected(i)
    return i, (data if i % 2 else data.decode("ascii"))  # bytes out-of-band, str in-band

task(lambda: 0)().result()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
todo, pending, ok, most = list(range(N)), [], [], 0
for fut in waitfor(pending, K):
    if fut is None:
        if todo:
            pending.append(medium(todo.pop()))
            most = max(most, len(pending))
        continue
    i, data = fut.result()
    ok.append(i if _faults.digest(data) == _faults.digest(expected(i)) else -1)
    del data
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"ok": sorted(ok), "most": most, "growth": after - before}))
"""


def test_c3_many_medium_results_with_bounded_memory() -> None:
    proc = _faults.run_python(_MEDIUM_HARNESS)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout.decode().splitlines()[-1])
    assert report["ok"] == list(range(40))
    assert report["most"] == 4  # waitfor fills the list to k, never beyond
    # 40 x 8 MiB = 320 MiB in total; k x size plus copies stays well under half of that.
    assert report["growth"] < 160 * MiB, report


def test_c3_results_are_released_once_the_caller_drops_them() -> None:
    # Memory is bounded by what the caller still holds, not by how many tasks have finished:
    # once a future and its value are dropped, nothing in the library keeps the value alive.
    @task
    def make(i: int) -> _faults.Payload:
        return _faults.Payload(b"p" * MiB)

    refs = []
    for i in range(5):
        fut = make(i)
        value = fut.result(timeout=PATIENCE)
        refs.append((weakref.ref(value), weakref.ref(fut)))
        del fut, value

    def all_released() -> bool:
        gc.collect()
        return all(r() is None for pair in refs for r in pair)

    _faults.wait_until(all_released, PROMPT)  # the supervisor may be finishing a callback
    alive = [i for i, (value, fut) in enumerate(refs) if value() is not None or fut() is not None]
    assert not alive, f"results {alive} are still referenced after the caller dropped them"


def test_c4_waiting_costs_no_cpu(gate: _faults.Gate, tracked: list) -> None:
    @task
    def idle() -> str:
        gate.wait(PATIENCE)
        return "done"

    fut = _faults.watched(idle())  # the thread waits for it, not a caller
    tracked.append(fut)
    tid = _faults.supervisor_native_id()
    assert tid is not None
    wakeups = _faults.context_switches(tid)
    cpu = time.process_time()
    time.sleep(3.0)  # the measurement: what the parent spends while a task computes for 3 s
    cpu = time.process_time() - cpu
    wakeups = _faults.context_switches(tid) - wakeups
    gate.release()
    assert fut.result(timeout=PATIENCE) == "done"
    assert cpu < 0.03, f"the parent used {cpu:.3f} s of CPU in 3 s of waiting"
    assert wakeups < 15, f"the supervisor woke {wakeups} times in 3 s: it is polling"


def test_c5_a_thousand_trivial_tasks_through_waitfor() -> None:
    @task
    def trivial(i: int) -> int:
        return i

    fds_before = len(_faults.fd_table())
    todo = list(range(1000))
    pending: list[TaskFuture[int]] = []
    results = []
    most_fds = 0
    with _faults.deadline(PATIENCE, "1,000 tasks through waitfor"):
        for fut in waitfor(pending, 2):
            if fut is None:
                if todo:
                    pending.append(trivial(todo.pop()))
            else:
                results.append(fut.result())
                most_fds = max(most_fds, len(_faults.fd_table()))
    assert sorted(results) == list(range(1000))
    # Per task in flight: a result pipe and a pidfd; plus the supervisor's own few fds.
    assert most_fds - fds_before <= 2 * 2 + 4, (fds_before, most_fds)


def test_c6_grandchild_holding_the_pipe_does_not_delay_the_result() -> None:
    @task
    def fork_and_return() -> tuple[str, int]:
        return "prompt", _faults.fork_holder(PATIENCE)

    with _faults.subreaper():
        start = time.monotonic()
        fut = fork_and_return()
        value, holder = fut.result(timeout=PATIENCE)
        elapsed = time.monotonic() - start
        try:
            assert value == "prompt"
            assert elapsed < 1.0, f"result took {elapsed:.2f} s with a grandchild holding the pipe"
            assert _faults.process_state(holder) in ("S", "R")  # still holding it
        finally:
            assert _faults.reap(holder) is not None


def test_c6_grandchild_holding_the_pipe_with_a_large_result() -> None:
    @task
    def fork_and_return_big() -> tuple[bytes, int]:
        return _faults.blob(8 * MiB, seed=5), _faults.fork_holder(PATIENCE)

    with _faults.subreaper():
        start = time.monotonic()
        data, holder = fork_and_return_big().result(timeout=PATIENCE)
        elapsed = time.monotonic() - start
        try:
            assert _faults.digest(data) == _faults.digest(_faults.blob(8 * MiB, seed=5))
            assert elapsed < 1.0 + 0.5
        finally:
            assert _faults.reap(holder) is not None


def test_c6_task_dying_while_a_grandchild_holds_the_pipe(beacon: _faults.Beacon) -> None:
    @task
    def fork_and_die() -> None:
        beacon.send_int(_faults.fork_holder(PATIENCE))
        os._exit(3)

    with _faults.subreaper():
        start = time.monotonic()
        fut = fork_and_die()
        holder = beacon.receive_int(timeout=PATIENCE)
        try:
            exc = fut.exception(timeout=PATIENCE)
            assert time.monotonic() - start < PROMPT
            assert type(exc) is WorkerDied and exc.exitcode == 3
        finally:
            assert _faults.reap(holder) is not None


# Forking from two threads at once is the point of this test; CPython 3.12+ rightly warns
# about forking a multi-threaded process.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_c7_sibling_forks_from_two_threads_do_not_hide_a_crash(
    gate: _faults.Gate, tracked: list
) -> None:
    @task
    def crash() -> None:
        os._exit(3)

    @task
    def linger(i: int) -> int:
        gate.wait(PATIENCE)
        return i

    crashed: list[tuple[TaskFuture[None], float]] = []
    lingering: list[TaskFuture[int]] = []
    start = threading.Barrier(2)

    def submit_crashes() -> None:
        start.wait()
        for _ in range(15):
            crashed.append((crash(), time.monotonic()))

    def submit_lingerers() -> None:
        start.wait()
        for i in range(15):
            lingering.append(linger(i))

    threads = [threading.Thread(target=submit_crashes), threading.Thread(target=submit_lingerers)]
    for t in threads:
        t.start()
    assert _faults.join_all(threads, BOUND) == []
    tracked.extend(lingering)
    tracked.extend(f for f, _ in crashed)
    for fut, called in crashed:
        exc = fut.exception(timeout=PATIENCE)
        assert type(exc) is WorkerDied and exc.exitcode == 3
        assert time.monotonic() - called < PROMPT + 1.0
    assert not any(f.done() for f in lingering)  # all still alive while the crashes came in
    gate.release(15)
    assert sorted(f.result(timeout=PATIENCE) for f in lingering) == list(range(15))


def test_result_pipe_frames_carry_exact_values() -> None:
    # Values of every size class around pipe and buffer boundaries arrive exactly.
    @task
    def sized(n: int) -> bytes:
        return _faults.blob(n, seed=n)

    sizes = [0, 1, 4095, 4096, 65535, 65536, 65537, (1 << 20) - 1, 1 << 20, (1 << 20) + 1]
    futures = [(n, sized(n)) for n in sizes]
    for n, fut in futures:
        assert fut.result(timeout=PATIENCE) == _faults.blob(n, seed=n), n


@pytest.mark.parametrize("memory", [False, True], ids=["memfd", "memory"])
def test_a12_killed_before_its_shared_memory_is_read_is_worker_died(
    memory: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child killed after sending its frame, before the parent read its buffers, lost them.

    The buffers wait in a memfd, or in the child's own memory (see ``_lend``).
    """
    monkeypatch.setattr(_lend, "_MEMORY_READS", [memory])

    @task
    def big() -> bytes:
        return b"x" * (3 << 20)  # over the shared-memory threshold

    with _faults.supervisor_held():
        fut = big()
        assert _faults.waits_for_parent(fut.pid), "the child never reached its wait"
        assert fut.kill()
        # Dead, not yet reaped (the supervisor is still held): its buffers are gone.
        assert _faults.wait_state(fut.pid, "Z", PATIENCE), "the child did not die"
    exc = fut.exception(timeout=PATIENCE)
    assert isinstance(exc, WorkerDied), repr(exc)
    assert exc.signal == signal.SIGKILL
    assert "result was lost" in str(exc)
