"""One script, two engines: it forks on this machine, or runs on a Dask cluster.

    python examples/cluster.py                      # the fork engine (the default)
    python examples/cluster.py --local-cluster      # a throwaway Dask cluster on 127.0.0.1
    INPARALLEL_EXECUTOR=dask:tcp://scheduler:8786 python examples/cluster.py

Nothing in the work below names an engine. What the cluster needs is what any remote engine
needs: the functions and their arguments pickle (functions defined here, in ``__main__``, travel
by value), and the data many calls read is shared once with ``inparallel.share``.
"""

from __future__ import annotations

import logging
import sys
from concurrent.futures import Future

import inparallel
from inparallel import StreamExecutor, process_map, process_parallel, waitfor

WORDS = ["fork", "future", "pickle", "pipe", "cluster", "scheduler", "worker", "result"]


def score(word: str, weights: dict[str, int]) -> int:
    return sum(weights.get(letter, 1) for letter in word)


def main() -> None:
    print("engine:", type(inparallel.current_executor()).__name__)
    # Read by every call: with fork it is simply inherited; on a cluster it is copied to each
    # worker once, and the calls receive the dict itself.
    weights = inparallel.share({"e": 3, "r": 2, "u": 5})

    scores = list(process_map(lambda word: score(word, weights), WORDS))
    print("process_map:", scores)

    with StreamExecutor() as executor:
        print("StreamExecutor.map:", list(executor.map(len, WORDS, buffer_size=4)))

    engine = inparallel.current_executor()
    in_flight: list[Future[int]] = []
    words = iter(WORDS)
    asked: dict[Future[int], str] = {}
    lengths = {}
    for future in waitfor(in_flight, inparallel.concurrency()):
        if future is None:  # a free slot
            word = next(words, None)
            if word is not None:
                in_flight.append(engine.submit(len, word))
                asked[in_flight[-1]] = word
        else:
            lengths[asked.pop(future)] = future.result()
    print("waitfor:", [lengths[w] for w in WORDS])

    total: list[int] = []
    process_parallel(WORDS, str.upper, lambda word: total.append(len(word)), workers=2)
    print("process_parallel:", sum(total))


if __name__ == "__main__":  # the guard matters: dask starts its local workers by spawning
    if "--local-cluster" in sys.argv:
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                worker_dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
            inparallel.use(client),
        ):
            main()
    else:
        main()
