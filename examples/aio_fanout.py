#!/usr/bin/env python
"""A TCP server in the style of the original ``aiter`` toolkit: events in, forked work out.

The pattern it shows, with ``inparallel.aio``:

1. Connections arrive as events: asyncio's server calls a plain callback for each one (like a
   hardware interrupt), and the callback pushes the connection into a `push_aiter`. That turns
   callbacks into a stream.
2. `map_aiter` with ``worker_count=3`` greets several new connections at once (each greeting
   is a round trip) and turns each connection into an async stream of its lines.
3. `join_aiters` merges the per-connection streams into one stream of ``(connection, line)``,
   each connection's lines in their order.
4. `parallel_map` fans the CPU work for each line (counting primes) out to forked children,
   two at a time, in input order, and each answer is written back on the connection the line
   came from.

Four clients connect, say hello, send three numbers each, read and check the answers; then
everything is closed (clients, connections, server, streams) and a summary is printed. Run it
from the repository root::

    python examples/aio_fanout.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator

from inparallel import aio

HOST = "127.0.0.1"
CLIENTS = 4
LINES = 3  #: numbers each client sends
CONCURRENCY = 2  #: children computing at once
DEADLINE = 5.0  #: seconds; the whole run takes a fraction of one
N0, STEP = 200_000, 40_000  #: the numbers the clients send: N0, N0 + STEP, ...


def count_primes(n: int) -> int:
    """The CPU work: how many primes are below ``n`` (a sieve)."""
    sieve = bytearray([1]) * n
    sieve[:2] = b"\0\0"[:n]
    for p in range(2, int(n**0.5) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, n, p)))
    return sum(sieve)


def work(job: tuple[int, str]) -> tuple[int, str, int, int, int]:
    """Run in a forked child: answer one line. Returns (conn, answer, pid, start, end)."""
    conn, line = job
    start = time.monotonic_ns()  # CLOCK_MONOTONIC: one clock for every process
    n = int(line)
    answer = f"{n} {count_primes(n)}"
    return conn, answer, os.getpid(), start, time.monotonic_ns()


class Connection:
    """One client connection on the server side."""

    def __init__(self, ident: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.ident, self.reader, self.writer = ident, reader, writer

    async def lines(self) -> AsyncIterator[tuple[int, str]]:
        """Yield ``(ident, line)`` until the client closes; then close our side."""
        try:
            while line := await self.reader.readline():
                yield self.ident, line.decode().strip()
        finally:
            self.writer.close()
            await self.writer.wait_closed()


async def greet(conn: Connection) -> AsyncIterator[tuple[int, str]]:
    """Answer the client's ``HELLO name`` and return the stream of its lines."""
    hello = (await conn.reader.readline()).decode().split()
    conn.writer.write(f"WELCOME {hello[1]}\n".encode())
    await conn.writer.drain()
    return conn.lines()


async def serve(
    connections: aio.push_aiter[Connection], by_id: dict[int, Connection]
) -> list[tuple[int, int, int]]:
    """The server's pipeline; returns (pid, start, end) from the child of each line."""
    streams = aio.map_aiter(greet, connections, worker_count=3)  # several greetings at once
    lines = aio.join_aiters(streams)  # one stream of (connection, line)
    reports = []
    async with aio.parallel_map(work, lines, concurrency=CONCURRENCY) as answers:
        async for conn, answer, pid, start, end in answers:
            writer = by_id[conn].writer
            writer.write(f"{answer}\n".encode())
            await writer.drain()
            reports.append((pid, start, end))
    return reports


async def client(name: str, port: int, numbers: list[int]) -> str:
    """Connect, say hello, send the numbers, check the answers (in order); return a summary."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"HELLO {name}\n".encode())
        welcome = await reader.readline()
        if welcome != f"WELCOME {name}\n".encode():
            raise RuntimeError(f"{name}: the server said {welcome!r}")
        writer.writelines(f"{n}\n".encode() for n in numbers)
        await writer.drain()
        answers = [(await reader.readline()).decode().split() for _ in numbers]
    finally:
        writer.close()
        await writer.wait_closed()
    expected = [[str(n), str(count_primes(n))] for n in numbers]
    if answers != expected:
        raise RuntimeError(f"{name}: got {answers}, expected {expected}")
    return f"{name}: {len(answers)} answers, all correct"


def peak(reports: list[tuple[int, int, int]]) -> int:
    """The most children that were computing at the same moment."""
    events = sorted([(start, 1) for _, start, _ in reports] + [(end, -1) for *_, end in reports])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


async def main() -> None:
    connections: aio.push_aiter[Connection] = aio.push_aiter()
    by_id: dict[int, Connection] = {}

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(len(by_id), reader, writer)  # an event: push it and return
        by_id[conn.ident] = conn
        connections.push(conn)

    server = await asyncio.start_server(on_connect, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    serving = asyncio.create_task(serve(connections, by_id))
    try:
        numbers = [[N0 + STEP * (c * LINES + i) for i in range(LINES)] for c in range(CLIENTS)]
        summaries = await asyncio.gather(
            *(client(f"client-{c}", port, numbers[c]) for c in range(CLIENTS))
        )
        connections.stop()  # no more connections: the streams end once every client has gone
        reports = await serving
    finally:
        # Only does something if the above failed: stop the pipeline, drop the connections.
        serving.cancel()
        await asyncio.wait([serving])
        for conn in by_id.values():
            conn.writer.close()
        server.close()
        await server.wait_closed()
    if len(reports) != CLIENTS * LINES:
        raise RuntimeError(f"{len(reports)} answers for {CLIENTS * LINES} lines")
    if server.is_serving() or not all(c.writer.is_closing() for c in by_id.values()):
        raise RuntimeError("the server or a connection is still open")
    for line in summaries:
        print(line)
    print(f"{CLIENTS} clients, {CLIENTS * LINES} lines, {len(reports)} answers, all correct")
    print(
        f"{len({pid for pid, _, _ in reports})} forked children,"
        f" at most {peak(reports)} at once (concurrency={CONCURRENCY})"
    )
    print("server and streams closed")


async def run() -> int:
    try:
        async with asyncio.timeout(DEADLINE):
            await main()
    except TimeoutError:
        print(f"aio_fanout: did not finish within {DEADLINE} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(run()))
