"""The message stream of long-lived workers: framing, parts, and reading in pieces."""

from __future__ import annotations

import os
import select
import threading

import _faults
from _timing import BOUND

from inparallel._core._channel import (
    BIG_MESSAGE,
    MessageBuffer,
    recv_message,
    send_message,
    send_parts,
    split_parts,
)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    return r, w


def test_messages_cut_at_their_boundaries_whatever_the_reads() -> None:
    r, w = _pipe()
    buffer = MessageBuffer()
    try:
        payloads = [b"", b"a", b"bc" * 1000, bytes(range(256)) * 10]
        stream = b"".join(len(p).to_bytes(8, "little") + p for p in payloads)
        got: list[bytes | bytearray] = []
        for i in range(0, len(stream), 7):  # dribble the stream in 7-byte pieces
            os.write(w, stream[i : i + 7])
            messages, eof = buffer.read_from(r)
            assert not eof
            got.extend(messages)
        assert [bytes(m) for m in got] == payloads
        assert not buffer.partial
        os.close(w)
        w = -1
        assert buffer.read_from(r) == ([], True)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_big_message_is_read_in_place_while_the_writer_writes() -> None:
    r, w = _pipe()
    buffer = MessageBuffer()
    big = os.urandom(BIG_MESSAGE) * 3
    writer = threading.Thread(target=send_parts, args=(w, [b"head", big, b"tail"]))
    writer.start()
    got: list[bytes | bytearray] = []
    try:
        while not got:
            ready, _, _ = select.select([r], [], [], BOUND)
            assert ready, f"no bytes for {BOUND} s in the middle of a message"
            messages, eof = buffer.read_from(r)
            assert not eof
            got.extend(messages)
            if not got:
                assert buffer.partial
    finally:
        os.close(r)  # a writer still blocked (the reads failed) gets EPIPE and ends
        alive = _faults.join_all([writer], BOUND)
        os.close(w)
    assert alive == [], "the writer never finished"
    (message,) = got
    head, body, tail = split_parts(message)
    assert bytes(head) == b"head" and bytes(tail) == b"tail"
    assert body == big


def test_blocking_send_and_receive() -> None:
    r, w = os.pipe()
    try:
        send_message(w, b"hello")
        send_message(w, b"")
        os.close(w)
        w = -1
        assert recv_message(r) == b"hello"
        assert recv_message(r) == b""
        assert recv_message(r) is None
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
