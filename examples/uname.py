#!/usr/bin/env python
"""The first example of the original inparallel README, with local work in place of SSH.

The original logged in to twelve servers with paramiko and ran ``uname -a`` on each. Here every
"server" is a forked child of this process that runs ``uname -a`` locally, so the example runs
anywhere; the structure is the README's, line for line.

Run it from the repository root::

    python examples/uname.py
"""

import subprocess

from inparallel import task, waitfor

if __name__ == "__main__":
    servers = [
        "alpha.local",   "bravo.local",
        "charlie.local", "delta.local",
        "echo.local",    "foxtrot.local",
        "golf.local",    "hotel.local",
        "india.local",   "juliet.local",
        "kilo.local",    "lima.local",
    ]  # fmt: skip

    # Notice how we decorate getOS() with the @task decorator. That's how
    # you annotate a function to make it run asynchronously.

    @task
    def getOS(server):
        # In the original: ssh.connect(server, ...); ssh.exec_command('uname -a')
        uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=True)
        return f"{server}: {uname.stdout.strip()}"

    active_futures = []

    while len(servers) > 0:
        active_futures.append(getOS(servers.pop(0)))

    # The Python interpreter was actually just fork()'ed during each of
    # those getOS() calls, and the real function began running in a new
    # subprocess.

    # At the same time, our parent process started one thread to supervise
    # these new subprocesses, and handed us back Future objects,
    # representing the "future results" of each getOS() function call.

    # When getOS() finishes running in its subprocess, its return value
    # (or exception) is marshaled back to us in the parent process, and
    # the fork()'ed subprocess exits. The supervisor thread receives the
    # marshaled result, and marks its Future as completed.

    for future in waitfor(active_futures):
        print(future.result())

    # Because managing a bunch of Future objects is a pain, the library
    # also provides waitfor(), a generator that takes a (mutable!) list
    # of Futures and yields each one as soon as it completes. It sleeps
    # until then; it does not poll.

    # The list you pass to waitfor() is modified in place: as futures
    # complete, they are removed from the list and yielded back to you.
    # By now, active_futures is empty again.
