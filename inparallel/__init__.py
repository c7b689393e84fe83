"""inparallel: fork-per-call process parallelism.

Decorate a function with `task`; each call forks the interpreter, runs the function in the
child and returns a `TaskFuture` at once. `waitfor` throttles and collects futures. Above
them: read-ahead (`thread_preload`, `process_preload`), parallel maps (`thread_map`,
`process_map`, `ItemizedMap`), a streaming `StreamExecutor`, and `process_parallel` pipelines.
Those run on any `concurrent.futures.Executor` too: `use` selects one (a Dask cluster through
`inparallel.backends.dask.DaskExecutor`), `share` places data on it once.

Importing the package is cheap: each public name's module is imported when the name is first
used (``from inparallel import task`` imports what `task` needs, and no more).
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - the library is built on fork()
    raise ImportError("inparallel needs a POSIX system with os.fork(); Windows is not supported")

from . import _lazy

# Type checkers treat this name as true. Importing `typing.TYPE_CHECKING` instead would import
# typing (and re): several times the cost of the rest of this module.
TYPE_CHECKING = False

if TYPE_CHECKING:
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

# The module that defines each public name: the imports above, for the interpreter. Importing
# them all here made ``import inparallel`` dozens of times slower (concurrent.futures, logging,
# dataclasses, cloudpickle, every tool of the library); PEP 562 lets each wait until it is used.
_HOMES = {
    "ForkExecutor": "._executor",
    "InParallelError": "._core._errors",
    "InheritedFutureError": "._core._errors",
    "ItemizedMap": "._map",
    "MapIterator": "._map",
    "MemoryLimitExceeded": "._core._errors",
    "Preloader": "._preload",
    "RemoteError": "._core._errors",
    "ResultNotPicklable": "._core._errors",
    "Rusage": "._core._future",
    "SpawnError": "._core._errors",
    "StreamExecutor": "._stream",
    "TaskFuture": "._core._future",
    "TaskTimeout": "._core._errors",
    "WorkerDied": "._core._errors",
    "concurrency": "._executor",
    "current_executor": "._executor",
    "process_map": "._map",
    "process_parallel": "._pipeline",
    "process_preload": "._preload",
    "share": "._executor",
    "task": "._task",
    "thread_map": "._map",
    "thread_preload": "._preload",
    "use": "._executor",
    "waitfor": "._waitfor",
}

if not TYPE_CHECKING:
    # Hidden from type checkers: they see the real names above, and a module-level
    # ``__getattr__`` would make them accept any misspelt name as ``Any``.
    __getattr__, __dir__ = _lazy.exports(globals(), _HOMES, __all__)
