#!/usr/bin/env python
"""The stream-executors README comparison: built-in ``map`` against ``StreamExecutor.map``.

Both find the first ten odd results of ``process`` (0.1 s per call) over the infinite input
``count()``, after the client has spent 0.5 s doing something else:

* the built-in ``map`` only starts working when the client iterates: 0.1 * 20 + 0.5 = 2.5 s;
* ``StreamExecutor(max_workers=2).map`` returns at once and starts working in the background,
  two calls at a time, each in a forked child: 0.1 * 20 / 2 = 1 s, the 0.5 s included.

``ThreadPoolExecutor.map`` is left out: it reads its whole input before it returns, and
``count()`` never ends, so it hangs.

It prints, for each of the two, the ten results and the time they took, rounded to 0.1 s. Run
it from the repository root::

    python examples/stream_executor_seed.py
"""

import time
from itertools import count, islice

from inparallel import StreamExecutor


def process(i):
    time.sleep(0.1)
    return i


is_odd = lambda x: x % 2  # noqa: E731 - as in the original README

n = 10  # will need 20 numbers to get 10 odd ones

if __name__ == "__main__":
    # built-in map takes 0.1 * 20 + 0.5 = 2.5 sec
    started = time.monotonic()
    m = map(process, count())
    g = islice(filter(is_odd, m), n)
    time.sleep(0.5)
    # only starts processing here
    results = list(g)
    assert results == list(range(1, 2 * n, 2))
    print(f"built-in map: {results} in {time.monotonic() - started:.1f} s")

    # ThreadPoolExecutor.map hangs (it reads all of count() first), so it is not run here:
    #
    #     executor = ThreadPoolExecutor(max_workers=10)
    #     m = executor.map(process, count())

    # StreamExecutor.map takes 0.1 * 20 / 2 = 1 sec
    # starts processing here, without waiting for iteration
    started = time.monotonic()
    executor = StreamExecutor(max_workers=2)
    m = executor.map(process, count())
    g = islice(filter(is_odd, m), n)
    time.sleep(0.5)
    results = list(g)
    assert results == list(range(1, 2 * n, 2))
    print(f"StreamExecutor.map: {results} in {time.monotonic() - started:.1f} s")

    # As in the README, m is left unfinished: it has submitted more of count() ahead. When the
    # interpreter exits, the library stops its feeder and cancels (kills) those calls.
