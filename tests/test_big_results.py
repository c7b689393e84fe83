"""Big results: read from the task process's memory, or from a memfd it fills.

A result whose out-of-band buffers reach ``SHM_THRESHOLD`` does not travel through the pipe.
Once the parent has shown it may open a child's ``/proc/<pid>/mem`` (`_fetch` probes at the
first memfd result), later children leave the buffers where they are and the parent reads them
there (``_lend.IN_MEMORY``): one copy instead of two. Writable buffers of a task with other
threads still running, and every buffer where the probe was refused, go through a memfd,
which is a copy made when the task returns. The parent copies a child's memory with
``process_vm_readv``, or through ``/proc/<pid>/mem`` where that call is refused.
"""

from __future__ import annotations

import errno
import mmap
import os
import pickle
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import _faults
import pytest
from _timing import PATIENCE

from inparallel import RemoteError, WorkerDied, task
from inparallel._core import _fetch, _lend, _native, _reader, _spawn, _wire

MiB = 1 << 20


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Count how the parent reads big results: ``memory`` or ``memfd``."""
    counts: Counter[str] = Counter()

    def counted(name: str, read: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            counts[name] += 1
            return read(*args)

        return wrapper

    monkeypatch.setattr(_reader, "read_child_memory", counted("memory", _fetch.read_child_memory))
    monkeypatch.setattr(_reader, "read_child_file", counted("memfd", _fetch.read_child_file))
    yield counts


_VM_READS = _native.libc("process_vm_readv") is not None  # whether this system has it


@pytest.fixture
def vm_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes copied with ``process_vm_readv``, one per call (the real call is made)."""
    sizes: list[int] = []

    def spy(pid: int, local: int, remote: int, size: int) -> int:
        sizes.append(size)
        return _native.vm_read(pid, local, remote, size)

    monkeypatch.setattr(_fetch, "vm_read", spy)
    return sizes


def _allow(monkeypatch: pytest.MonkeyPatch, allowed: bool) -> None:
    # The answer of the probe, as if it had run; refused, it stays refused.
    monkeypatch.setattr(_lend, "_MEMORY_READS", [allowed])
    if not allowed:
        monkeypatch.setattr(_fetch, "_can_open_memory", lambda pid: False)


@pytest.mark.parametrize("path", ["memory", "memory-file", "memfd"])
def test_big_bytes_arrive_exact(
    path: str, reads: Counter[str], monkeypatch: pytest.MonkeyPatch, vm_reads: list[int]
) -> None:
    _allow(monkeypatch, path != "memfd")
    if path == "memory-file":
        monkeypatch.setattr(_fetch, "_vm_reads", False)  # /proc/<pid>/mem
    sizes = [MiB, 3 * MiB + 1, 2 * MiB - 7]

    @task
    def blobs() -> tuple[bytes, ...]:
        return tuple(_faults.blob(n, seed=n) for n in sizes)

    fds = len(_faults.fd_table())
    got = blobs().result(timeout=PATIENCE)
    assert [type(b) for b in got] == [bytes] * 3
    for n, data in zip(sizes, got, strict=True):
        assert _faults.digest(data) == _faults.digest(_faults.blob(n, seed=n))
    assert reads == Counter({"memfd" if path == "memfd" else "memory": 1})
    assert len(vm_reads) == (3 if path == "memory" and _VM_READS else 0)
    assert len(_faults.fd_table()) == fds  # the child's memory or file is closed again


@pytest.mark.parametrize("path", ["memory", "memfd"])
def test_mixed_buffers_arrive_exact_with_their_types(
    path: str, reads: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    np = pytest.importorskip("numpy")
    _allow(monkeypatch, path == "memory")

    @task
    def mixed() -> tuple[Any, ...]:
        return (b"b" * (2 * MiB), np.arange(MiB, dtype=np.int32), bytearray(b"y" * (3 * MiB)), "s")

    data, array, mutable, text = mixed().result(timeout=PATIENCE)
    assert data == b"b" * (2 * MiB) and type(data) is bytes
    assert array.dtype == np.int32 and (array == np.arange(MiB, dtype=np.int32)).all()
    assert array.flags.writeable
    assert type(mutable) is bytearray and mutable == bytearray(b"y" * (3 * MiB))
    assert text == "s"
    assert reads == Counter({path: 1})


def test_the_first_memfd_result_allows_memory_reads(
    reads: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_lend, "_MEMORY_READS", [False])

    @task
    def big(k: int) -> bytes:
        return bytes([k]) * (2 * MiB)

    assert big(1).result(timeout=PATIENCE) == b"\x01" * (2 * MiB)
    assert reads == Counter({"memfd": 1})  # not proven yet when this child was forked
    assert _lend.memory_reads_allowed()  # the parent opened that child's memory
    assert big(2).result(timeout=PATIENCE) == b"\x02" * (2 * MiB)
    assert reads == Counter({"memfd": 1, "memory": 1})


def test_a_refused_probe_keeps_the_memfd(
    reads: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ptrace access denied (Yama, an LSM, a container policy): the memfd needs less of it.
    _allow(monkeypatch, False)

    @task
    def big(k: int) -> bytes:
        return bytes([k]) * (2 * MiB)

    for k in range(3):
        assert big(k).result(timeout=PATIENCE) == bytes([k]) * (2 * MiB)
    assert reads == Counter({"memfd": 3})
    assert not _lend.memory_reads_allowed()


@pytest.mark.parametrize("threads", [1, 2])
def test_writable_buffers_of_a_task_with_threads_are_copied_when_it_returns(
    threads: int, reads: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read later from the task's memory, a buffer that another of its threads still writes to
    # would arrive torn: with a second thread alive the memfd takes a copy at the return.
    _allow(monkeypatch, True)

    @task
    def buffer() -> bytearray:
        if threads == 2:
            threading.Thread(target=threading.Event().wait, daemon=True).start()
        return bytearray(b"w" * (3 * MiB))

    assert buffer().result(timeout=PATIENCE) == bytearray(b"w" * (3 * MiB))
    if threads == 2 or sys.version_info >= (3, 13):  # 3.13+: mapped from the memfd, no copy
        assert reads == Counter({"memfd": 1})
    else:
        assert reads == Counter({"memory": 1})


def test_a_non_dumpable_task_sends_through_the_pipe(
    reads: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No ptrace access to a hardened task at all: neither its memory nor its fds.
    _allow(monkeypatch, True)

    @task
    def hardened() -> bytes:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
        return b"h" * (3 * MiB)

    assert hardened().result(timeout=PATIENCE) == b"h" * (3 * MiB)
    assert reads == Counter()


def _blocked(pid: int) -> set[int]:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigBlk:"):
                mask = int(line.split()[1], 16)
                return {n for n in range(1, 65) if mask >> (n - 1) & 1}
    raise AssertionError("no SigBlk line")


def test_no_signal_handler_runs_while_the_parent_reads_writable_buffers(
    reads: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A handler of the task's could change a buffer between the frame and the parent's read.
    _allow(monkeypatch, True)

    @task
    def mixed() -> tuple[bytes, bytearray]:
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
        return b"r" * (2 * MiB), bytearray(b"w" * (2 * MiB))

    with _faults.supervisor_held():  # nobody reads the result meanwhile
        fut = mixed()
        assert _faults.waits_for_parent(fut.pid), "the child never reached its wait"
        blocked = _blocked(fut.pid)
    assert fut.result(timeout=PATIENCE) == (b"r" * (2 * MiB), bytearray(b"w" * (2 * MiB)))
    assert {signal.SIGUSR1, signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD} <= blocked
    assert reads == Counter({"memory": 1})


def test_buffers_in_memory_another_process_shares_are_copied_at_the_return(
    reads: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A MAP_SHARED mapping can change under a child waiting for its parent to read it.
    np = pytest.importorskip("numpy")
    _allow(monkeypatch, True)

    @task
    def shared() -> tuple[bytes, Any]:
        memory = mmap.mmap(-1, 4 * MiB)  # MAP_SHARED
        array = np.frombuffer(memory, dtype=np.uint8)
        array[:] = 1
        return b"r" * (2 * MiB), array

    data, array = shared().result(timeout=PATIENCE)
    assert data == b"r" * (2 * MiB) and int(array.min()) == int(array.max()) == 1
    assert reads == Counter({"memfd": 1})


def test_a_frame_with_an_unknown_memory_field_fails_only_its_task() -> None:
    @task
    def forged() -> None:  # writes a frame of its own whose memfd field means nothing
        wfd = _spawn._inherited_pipe[-1]
        data = bytearray(b"A" * 100_000)
        payload = pickle.dumps(pickle.PickleBuffer(data), protocol=5, buffer_callback=lambda b: 0)
        head = _wire.HEADER.pack(_wire.MAGIC, 0, len(payload), 1, _lend.IN_MEMORY - 1)
        os.write(wfd, head + _wire.SIZE.pack(len(data)) + payload + bytes(data))
        os._exit(0)

    exc = forged().exception(timeout=PATIENCE)
    assert isinstance(exc, RemoteError), repr(exc)
    assert "corrupt result frame" in str(exc)


@pytest.mark.parametrize("how", ["vm_read", "memory-file"])  # tried first, or not at all
def test_memory_refused_after_the_probe_loses_one_result_then_uses_the_memfd(
    how: str, reads: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ptrace access withdrawn after the probe (the parent changed its credentials): that
    # child's result is lost, as if it had died; the next children fill a memfd again.
    _allow(monkeypatch, True)

    def refused(*args: int) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_fetch, "_vm_reads", how == "vm_read")
    monkeypatch.setattr(_fetch, "vm_read", refused)  # both refused, as ptrace access is
    monkeypatch.setattr(_fetch, "_open_memory", refused)

    @task
    def big(k: int) -> bytes:
        return bytes([k]) * (2 * MiB)

    exc = big(1).exception(timeout=PATIENCE)
    assert isinstance(exc, WorkerDied) and "result was lost" in str(exc), repr(exc)
    assert not _lend.memory_reads_allowed()
    assert big(2).result(timeout=PATIENCE) == b"\x02" * (2 * MiB)
    assert reads == Counter({"memory": 1, "memfd": 1})


@pytest.mark.skipif(not _VM_READS, reason="no process_vm_readv here")
@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EPERM])
def test_a_refused_vm_read_falls_back_to_the_memory_file(
    code: int, reads: Counter[str], monkeypatch: pytest.MonkeyPatch, vm_reads: list[int]
) -> None:
    # A seccomp policy that refuses process_vm_readv (ENOSYS or EPERM) but not opening
    # /proc/<pid>/mem: the result still arrives whole, and the call is not tried again.
    _allow(monkeypatch, True)
    monkeypatch.setattr(_fetch, "_vm_reads", True)

    def refused(*args: int) -> int:
        vm_reads.append(-1)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(_fetch, "vm_read", refused)

    @task
    def big(k: int) -> tuple[bytes, bytearray]:
        return bytes([k]) * (2 * MiB), bytearray([k]) * (3 * MiB)

    for k in (1, 2):
        data, mutable = big(k).result(timeout=PATIENCE)
        assert data == bytes([k]) * (2 * MiB) and mutable == bytearray([k]) * (3 * MiB)
    assert vm_reads == [-1]
    assert reads == Counter({"memory": 2})
    assert _lend.memory_reads_allowed()


@pytest.mark.skipif(not _VM_READS, reason="no process_vm_readv here")
def test_short_vm_reads_are_resumed(
    reads: Counter[str], monkeypatch: pytest.MonkeyPatch, vm_reads: list[int]
) -> None:
    # process_vm_readv may copy less than asked (past what it copies in one call): the rest
    # is asked for again, from where it stopped.
    _allow(monkeypatch, True)

    def short(pid: int, local: int, remote: int, size: int) -> int:
        vm_reads.append(size)
        return _native.vm_read(pid, local, remote, min(size, MiB // 2 + 1))

    monkeypatch.setattr(_fetch, "vm_read", short)
    sizes = [MiB, 3 * MiB + 1]

    @task
    def blobs() -> tuple[bytes, bytearray]:
        return _faults.blob(sizes[0], seed=1), bytearray(_faults.blob(sizes[1], seed=2))

    data, mutable = blobs().result(timeout=PATIENCE)
    assert _faults.digest(data) == _faults.digest(_faults.blob(sizes[0], seed=1))
    assert _faults.digest(bytes(mutable)) == _faults.digest(_faults.blob(sizes[1], seed=2))
    assert len(vm_reads) == 2 + 6  # ceil(size / (MiB // 2 + 1)) calls for each
    assert reads == Counter({"memory": 1})
