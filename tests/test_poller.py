"""The supervisor loop's poller: ready fds come back as their data, level-triggered."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from inparallel._core._poller import Poller


@pytest.fixture
def poller() -> Iterator[Poller]:
    made = Poller()
    yield made
    made.close()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_a_readable_fd_comes_back_as_its_data_until_it_is_drained(
    poller: Poller, pipe: tuple[int, int]
) -> None:
    r, w = pipe
    poller.register(r, ("child", 1))
    assert poller.wait(0) == []
    os.write(w, b"x")
    assert poller.wait(None) == [("child", 1)]
    assert poller.wait(0) == [("child", 1)]  # level-triggered: still unread
    os.read(r, 1)
    assert poller.wait(0) == []


def test_end_of_file_is_readable(poller: Poller) -> None:
    r, w = os.pipe()
    poller.register(r, "eof")
    os.close(w)
    assert poller.wait(None) == ["eof"]
    poller.unregister(r)
    os.close(r)


def test_only_ready_fds_are_returned(poller: Poller) -> None:
    pipes = [os.pipe() for _ in range(3)]
    try:
        for k, (r, _) in enumerate(pipes):
            poller.register(r, k)
        os.write(pipes[1][1], b"x")
        os.write(pipes[2][1], b"x")
        assert sorted(poller.wait(None)) == [1, 2]
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_a_short_timeout_waits_instead_of_spinning(poller: Poller, pipe: tuple[int, int]) -> None:
    # A timeout under the kernel's millisecond is rounded up, not down to a busy zero.
    poller.register(pipe[0], None)
    start = time.monotonic()
    assert poller.wait(0.0004) == []
    assert time.monotonic() - start >= 0.0004


def test_registering_twice_or_unregistering_a_stranger_is_a_key_error(
    poller: Poller, pipe: tuple[int, int]
) -> None:
    r, _ = pipe
    poller.register(r, None)
    with pytest.raises(KeyError):
        poller.register(r, None)
    with pytest.raises(KeyError):
        poller.unregister(pipe[1])


def test_an_fd_closed_before_it_is_unregistered_is_forgotten(poller: Poller) -> None:
    r, w = os.pipe()
    poller.register(r, "gone")
    os.close(r)
    poller.unregister(r)
    os.close(w)
    assert poller.wait(0) == []


def test_fileno_after_close_is_a_value_error() -> None:
    poller = Poller()
    fd = poller.fileno()
    assert fd is None or fd > 2
    poller.close()
    if fd is not None:
        with pytest.raises(ValueError):
            poller.fileno()


@pytest.mark.parametrize("timeout", [1e7, 1e12, float("inf")])
def test_a_timeout_beyond_the_kernel_limit_waits_like_a_long_one(
    poller: Poller, pipe: tuple[int, int], timeout: float
) -> None:
    # epoll takes at most 2**31 ms: a longer wait is cut, never an OverflowError.
    r, w = pipe
    poller.register(r, "ready")
    os.write(w, b"x")
    assert poller.wait(timeout) == ["ready"]
