#!/usr/bin/env python
"""The second example of the original inparallel README: at most 3 tasks at a time.

As in ``uname.py``, each "server" runs ``uname -a`` locally in a forked child instead of over
SSH. ``waitfor(..., concurrency_factor=3)`` yields ``None`` whenever there is room for one more
task, and the loop starts one; the last line reports the most tasks that were ever in flight.

Run it from the repository root::

    python examples/throttled.py
"""

import subprocess

from inparallel import task, waitfor

if __name__ == "__main__":
    servers = [
        "alpha.local", "bravo.local",
        "charlie.local", "delta.local",
        "echo.local", "foxtrot.local",
        "golf.local", "hotel.local",
        "india.local", "juliet.local",
        "kilo.local", "lima.local",
    ]  # fmt: skip

    @task
    def getOS(server):
        # In the original: ssh.connect(server, ...); ssh.exec_command('uname -a')
        uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=True)
        return f"{server}: {uname.stdout.strip()}"

    # When you pass the concurrency_factor argument to waitfor(), its
    # behavior changes slightly.

    active_futures = []
    most_in_flight = 0

    for future in waitfor(active_futures, concurrency_factor=3):
        # As in the first example, waitfor() still yields each future
        # as it completes, but now it may also yield None. In fact, at
        # this point in the example, there aren't any active futures yet!

        if future is not None:
            # waitfor() yielded a completed future

            print(future.result())

        else:  # noqa: PLR5501 - laid out as in the original README
            # waitfor() wants you to run more tasks

            if len(servers) > 0:  # do we have any more?
                active_futures.append(getOS(servers.pop(0)))
                most_in_flight = max(most_in_flight, len(active_futures))

    # Here's the trick: when waitfor() yields None, it's asking you to
    # run another task. You can run as many as you want, but you don't
    # have to keep track of how many are in flight, because waitfor()
    # keeps asking for more until it has reached its concurrency_factor
    # high watermark.

    # When waitfor() has no more active futures, it asks you to run
    # another task one last time. If you don't run another task, the
    # loop ends.

    print(f"at most {most_in_flight} tasks were in flight at once")
