"""inparallel: fork-per-call process parallelism.

Decorate a function with `task`; each call forks the interpreter, runs the function in the
child and returns a `TaskFuture` at once. `waitfor` throttles and collects futures.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - the library is built on fork()
    raise ImportError("inparallel needs a POSIX system with os.fork(); Windows is not supported")

from ._core._errors import (
    InParallelError,
    MemoryLimitExceeded,
    RemoteError,
    ResultNotPicklable,
    SpawnError,
    TaskTimeout,
    WorkerDied,
)
from ._core._future import Rusage, TaskFuture
from ._task import task
from ._waitfor import waitfor

__version__ = "0.1.0.dev0"

__all__ = (
    "InParallelError",
    "MemoryLimitExceeded",
    "RemoteError",
    "ResultNotPicklable",
    "Rusage",
    "SpawnError",
    "TaskFuture",
    "TaskTimeout",
    "WorkerDied",
    "__version__",
    "task",
    "waitfor",
)
