#!/usr/bin/env python
"""The two examples of the iterlib README: a preloaded generator and a parallel map.

``thread_preload(gen, buffer_size=100)`` runs the generator in a background thread, at most 100
items ahead of the loop that consumes it. ``thread_map(fn, items, ...)`` over a list returns an
``ItemizedMap``: ``len()`` and ``m[i]`` work without running anything in parallel (``m[i]``
computes that one item, when asked), and each ``iter(m)`` is a fresh parallel pass.
``process_preload`` and ``process_map`` take the same arguments and run the work in forked
children instead of threads.

It prints the sum of the preloaded squares (threads, then a child process); for each map, its
type and length, two items computed on demand, the first five items and the sum of a whole
parallel pass; and last, which items a map computed when it was indexed. Run it from the
repository root::

    python examples/iterlib_seed.py
"""

from inparallel import ItemizedMap, process_map, process_preload, thread_map, thread_preload


def show(label, mapped_gen):
    """Print what an ItemizedMap offers: len, lazy indexing, slices and parallel passes."""
    assert isinstance(mapped_gen, ItemizedMap)
    print(f"{label}: {type(mapped_gen).__name__} of {len(mapped_gen)} items")
    # Indexing computes that one item, in this process, each time it is asked for.
    print(f"{label}: mapped_gen[3] = {mapped_gen[3]}, mapped_gen[-1] = {mapped_gen[-1]}")
    # A slice is another ItemizedMap (nothing is computed yet); list() runs a parallel pass.
    print(f"{label}: first five = {list(mapped_gen[:5])}")
    # sum() calls iter(): a parallel pass over all the items, in order.
    print(f"{label}: sum = {sum(mapped_gen)}")


if __name__ == "__main__":
    # -- Preload ------------------------------------------------------------------------------

    gen = (x**2 for x in range(100000))
    preloaded_gen = thread_preload(gen, buffer_size=100)

    # next(preloaded_gen), directly or through a for statement (here: inside sum()), returns
    # values from the preloaded queue, which the background thread keeps up to 100 items full.
    print(f"thread_preload: sum = {sum(preloaded_gen)}")

    # The same with the generator running in a forked child: nothing is pickled on the way in
    # (the child inherits the generator), each item is pickled on the way back.
    gen = (x**2 for x in range(100000))
    preloaded_gen = process_preload(gen, buffer_size=100)
    print(f"process_preload: sum = {sum(preloaded_gen)}")

    # -- Parallel map -------------------------------------------------------------------------

    gen = [x for x in range(100000)]
    # The README's call, thread_map(lambda x: x**2, buffer_size=100, num_workers=4), leaves out
    # the iterable to map over: it is `gen`. Here buffer_size bounds the whole pass (at most
    # 100 items computed ahead of the consumer), not each worker's share as in iterlib.
    mapped_gen = thread_map(lambda x: x**2, gen, buffer_size=100, num_workers=4)
    show("thread_map", mapped_gen)

    # The same in four forked worker processes: they inherit the lambda and the list, so
    # neither is pickled; only the results travel back.
    mapped_gen = process_map(lambda x: x**2, gen, buffer_size=100, num_workers=4)
    show("process_map", mapped_gen)

    # Lazy: making the map calls nothing; each m[i] calls the function for that item only.
    calls = []

    def square(x):
        calls.append(x)
        return x**2

    lazy = thread_map(square, gen, buffer_size=100, num_workers=4)
    print(f"after thread_map(square, gen): square was called for {calls}")
    print(f"lazy[10] = {lazy[10]}, lazy[-2] = {lazy[-2]}: square was called for {calls}")
