"""inparallel: fork-per-call process parallelism.

Decorate a function with `task`; each call forks the interpreter, runs the function in the
child and returns a `TaskFuture` at once. `waitfor` throttles and collects futures. Above
them: read-ahead (`thread_preload`, `process_preload`), parallel maps (`thread_map`,
`process_map`, `ItemizedMap`), a streaming `StreamExecutor`, and `process_parallel` pipelines.
Those run on any `concurrent.futures.Executor` too: `use` selects one (a Dask cluster through
`inparallel.backends.dask.DaskExecutor`), `share` places data on it once.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - the library is built on fork()
    raise ImportError("inparallel needs a POSIX system with os.fork(); Windows is not supported")

from ._core._errors import (
    InheritedFutureError,
    InParallelError,
    MemoryLimitExceeded,
    RemoteError,
    ResultNotPicklable,
    SpawnError,
    TaskTimeout,
    WorkerDied,
)
from ._core._future import Rusage, TaskFuture
from ._executor import ForkExecutor, concurrency, current_executor, share, use
from ._map import ItemizedMap, MapIterator, process_map, thread_map
from ._pipeline import process_parallel
from ._preload import Preloader, process_preload, thread_preload
from ._stream import StreamExecutor
from ._task import task
from ._waitfor import waitfor

__version__ = "0.1.0.dev0"

__all__ = (
    "ForkExecutor",
    "InParallelError",
    "InheritedFutureError",
    "ItemizedMap",
    "MapIterator",
    "MemoryLimitExceeded",
    "Preloader",
    "RemoteError",
    "ResultNotPicklable",
    "Rusage",
    "SpawnError",
    "StreamExecutor",
    "TaskFuture",
    "TaskTimeout",
    "WorkerDied",
    "__version__",
    "concurrency",
    "current_executor",
    "process_map",
    "process_parallel",
    "process_preload",
    "share",
    "task",
    "thread_map",
    "thread_preload",
    "use",
    "waitfor",
)
