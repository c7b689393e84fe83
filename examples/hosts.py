#!/usr/bin/env python
"""Check a list of hosts in parallel, each task's output tagged with its host, under a progress bar.

Every "host" is a forked child that pretends to connect, look at its disks and report (no network
is used). ``@task(output="tag", name=lambda host: host)`` forwards each line the child prints,
whole, as ``[host] line``, as soon as the line ends, so the output of four tasks running at once
stays readable; ``waitfor(..., progress=True)`` draws a bar (with tqdm installed) that the lines
are written above. One host fails, and its error is reported after the others.

Run it from the repository root::

    python examples/hosts.py
"""

import sys
import time
import zlib

from inparallel import task, waitfor

HOSTS = [
    "alpha.local", "bravo.local", "charlie.local", "delta.local", "echo.local",
    "foxtrot.local", "golf.local", "hotel.local", "india.local", "juliet.local",
]  # fmt: skip


@task(output="tag", name=lambda host: host)
def check(host):
    # Runs in a forked child: what it prints goes to the parent, tagged "[host] ".
    seed = zlib.crc32(host.encode())  # the same made-up answers on every run
    print(f"connecting to {host}")
    time.sleep(0.05 + seed % 7 / 40)  # stands in for the network round trip
    if host == "echo.local":
        print("no route to host", file=sys.stderr)
        raise ConnectionError(f"{host}: no route to host")
    used = 20 + seed % 75
    print(f"disk / is {used}% full")
    if used > 80:
        print(f"warning: / is {used}% full", file=sys.stderr)
    print("ok")
    return used


if __name__ == "__main__":
    in_flight = []
    pending = list(HOSTS)
    usage, failures = {}, {}
    for future in waitfor(in_flight, concurrency_factor=4, progress=True):
        if future is None:  # room for one more task
            if pending:
                in_flight.append(check(pending.pop(0)))
            continue
        try:
            usage[future.name] = future.result()
        except ConnectionError as exc:
            failures[future.name] = exc

    print(f"{len(usage)} hosts checked, fullest: {max(usage, key=usage.get)}")
    for host, exc in failures.items():
        print(f"{host} failed: {exc}")
