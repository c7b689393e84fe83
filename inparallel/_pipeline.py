"""`process_parallel`: generator -> parallel processors -> consumer, in bounded memory.

It is a `process_map` pass with the consumer called in the caller's thread::

    work_generator ──(pulled as room allows)──▶ forked workers: work_processor ──▶ result_consumer
      a reader thread                              process_map pass                caller's thread

At most ``maxsize_jobs + maxsize_results`` items are between the generator and the consumer
at any time (pulled but not yet consumed), so a slow consumer makes the generator wait instead
of letting memory grow. The generator is read in the pass's reader thread (a list is not: the
workers read it from their inherited copy), so results keep reaching the consumer while the
generator blocks. An error in any stage stops the workers and closes a generator the pipeline
made, then is raised in the caller; every result before it has been consumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import Any, TypeVar

from ._checks import count, function, renamed
from ._core._errors import stray_stop
from ._map import close_source, process_map

__all__ = ("process_parallel",)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAXSIZE = 1000
WHERE = "process_parallel()"  # how its error messages begin


def _size(label: str, value: object) -> int:
    return count(WHERE, label, value)


def process_parallel(
    work_generator: Iterable[T] | Callable[[], Iterable[T]],
    work_processor: Callable[[T], R],
    result_consumer: Callable[[R], object],
    *,
    workers: int | None = None,
    maxsize_jobs: int = DEFAULT_MAXSIZE,
    maxsize_results: int = DEFAULT_MAXSIZE,
    maxsize_jobsize: int | None = None,
    ordered: bool = True,
    progress: bool = False,
    executor: Executor | str | None = None,
) -> None:
    """Feed every item of ``work_generator`` through ``work_processor`` into ``result_consumer``.

    Blocks until the generator is exhausted and every result consumed. A generator the
    pipeline made (``work_generator`` is a callable) is closed before this returns, unless
    it is blocked inside ``next()`` at that moment: then it is closed, in the thread that
    reads it, as soon as that call returns.

    Args:
        work_generator: An iterable, or a callable returning one (called once, here). A
            `StopIteration` from the call is an error (`RuntimeError`), not "no work".
        work_processor: Runs in forked workers, which inherit it (it need not be picklable);
            results are pickled back, and so are the items unless ``work_generator`` is
            indexable (a list: the workers read it from their inherited copy).
        result_consumer: Called with each result, in the caller's thread. A `StopIteration`
            it raises is an error (`RuntimeError`), like any other.
        workers: Worker processes (or engine slots); default ``os.cpu_count()``.
        maxsize_jobs: Items that may wait for or be in a processor.
        maxsize_results: Results that may wait for the consumer. Together they bound the
            items in the pipeline.
        maxsize_jobsize: The original library's name for ``maxsize_jobs``.
        ordered: Consume results in input order (default), or as they finish.
        progress: Show a tqdm progress bar.
        executor: Run the processors on this engine instead of forked workers (see
            `process_map`); ``workers`` then defaults to the engine's worker slots.

    Raises:
        TypeError: A stage is not callable (or iterable), a size is not an int, or both
            ``maxsize_jobs`` and ``maxsize_jobsize`` are given.
        ValueError: ``workers`` or a size is less than 1.
        Exception: The first error of any stage, re-raised here after the pipeline stopped.
    """
    if maxsize_jobsize is not None:
        maxsize_jobs = renamed(
            WHERE,
            "maxsize_jobs",
            maxsize_jobs,
            default=DEFAULT_MAXSIZE,
            other="maxsize_jobsize",
            given=maxsize_jobsize,
            note="its old name",
        )
    jobs = _size("maxsize_jobs", maxsize_jobs)
    results = _size("maxsize_results", maxsize_results)
    worker_count = None if workers is None else _size("workers", workers)
    for label, stage in (("work_processor", work_processor), ("result_consumer", result_consumer)):
        function(WHERE, label, stage)
    made = callable(work_generator)
    try:
        source: Any = work_generator() if callable(work_generator) else work_generator
    except StopIteration as exc:  # a call, not an iteration: this is an error, not "no work"
        raise stray_stop(exc, "work_generator()") from exc
    mapped = None
    try:
        mapped = process_map(
            work_processor,
            source,
            num_workers=worker_count,
            buffer_size=jobs + results,
            ordered=ordered,
            progress=progress,
            executor=executor,
        )
        with iter(mapped) as passing:
            try:
                for result in passing:
                    result_consumer(result)
            except StopIteration as exc:  # the consumer's: the loop swallows the map's own end
                raise stray_stop(exc, "result_consumer") from exc
    finally:
        if made:
            close = getattr(source, "close", None)
            if callable(close):  # our generator: runs its finally blocks (GeneratorExit)
                close_source(mapped, close)
