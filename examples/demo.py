#!/usr/bin/env python
"""A two-second tour of inparallel: results, exceptions, crashes, timeouts and throttling.

Every call of a ``@task`` function forks this interpreter and runs the function in the child;
the call returns a future at once. Run it from the repository root::

    python examples/demo.py
"""

import ctypes
import os
import resource
import time
import traceback

from inparallel import TaskTimeout, WorkerDied, task, waitfor


@task
def square(x):
    """Return x squared, and the pid of the process that computed it."""
    return x * x, os.getpid()


@task
def parse_port(text):
    """Parse a TCP port number; raises ValueError on bad input (in the child)."""
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return port


@task
def buggy_extension():
    """Crash the way a faulty C extension does: a segmentation fault."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in your working directory
    ctypes.string_at(0)  # reads address 0: SIGSEGV


@task(timeout=0.5)
def stuck():
    """Hang for a minute; the timeout kills it after half a second."""
    time.sleep(60)


@task
def nap(name):
    """Sleep a little, then say which nap this was."""
    time.sleep(0.2)
    return name


def main():
    print(f"The parent process is {os.getpid()}.\n")

    print("1. A result")
    future = square(7)  # forks now, returns at once
    value, pid = future.result()  # waits for the child
    print(f"   square(7) = {value}, computed in child process {pid}\n")

    print("2. An exception, raised again here with the child's traceback")
    future = parse_port("99999")
    try:
        future.result()
    except ValueError as exc:
        # The traceback runs from this call, into the child, down to the raise statement;
        # traceback.print_exc() would print all of it. Here, only its last frame:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"   ValueError: {exc}")
        where = f"{os.path.basename(frame.filename)}, line {frame.lineno}, in {frame.name}"
        print(f"   raised in the child at {where}:")
        print(f"       {frame.line}\n")

    print("3. A crash: the child dies of SIGSEGV, the parent carries on")
    try:
        buggy_extension().result()
    except WorkerDied as exc:
        print(f"   WorkerDied: {exc}\n")

    print("4. A timeout: the child is killed after 0.5 s")
    started = time.monotonic()
    try:
        stuck().result()
    except TaskTimeout as exc:
        print(f"   TaskTimeout after {time.monotonic() - started:.1f} s: {exc}\n")

    print("5. Throttling: six 0.2 s naps, at most two at a time, with waitfor()")
    names = ["one", "two", "three", "four", "five", "six"]
    in_flight = []
    most = 0
    started = time.monotonic()
    for future in waitfor(in_flight, concurrency_factor=2):
        if future is None:  # a free slot: start more work, if there is any
            if names:
                in_flight.append(nap(names.pop(0)))
                most = max(most, len(in_flight))
        else:
            print(f"   nap {future.result()} done at {time.monotonic() - started:.1f} s")
    print(f"   at most {most} naps ran at once; all six took {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
