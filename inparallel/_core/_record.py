"""The supervisor's record of one child process, the phases it goes through, and its outcome."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ._child import LOST_PIPE
from ._errors import TaskTimeout, WorkerDied
from ._future import TaskFuture
from ._options import TaskOptions
from ._output import Streams
from ._reader import FrameReader
from ._wire import Kind

__all__ = ("Child", "Phase")


class Phase(enum.Enum):
    """Where a child is in its life, as the supervisor sees it."""

    COMPUTING = "computing"  #: no byte of the frame has arrived yet
    RECEIVING = "receiving"  #: the frame is arriving
    DELIVERED = "delivered"  #: the outcome is known; waiting for the child to exit


@dataclass(eq=False)
class Child:
    """The supervisor's record of one child process."""

    pid: int
    pidfd: int | None
    rfd: int | None
    options: TaskOptions
    started: float
    future: TaskFuture[Any] | None = None
    reader: FrameReader = field(init=False)
    phase: Phase = Phase.COMPUTING
    outcome: tuple[bool, Any] | None = None
    frame: tuple[Kind, bytes, list[Any]] | None = None  # a delivered frame, not yet unpickled
    streams: Streams | None = None  # where its output goes, unless inherited
    deadline: float | None = None
    last_progress: float = 0.0
    timed_out: bool = False
    timeout_armed: bool = False
    reaped: bool = False
    detail: str = ""  # why a result that arrived could not be used

    def __post_init__(self) -> None:
        self.reader = FrameReader(self.options.max_result_size)

    def claimed(self) -> bool:
        """Whether something has waited for this child's future (``result()``, ``done()``...)."""
        return self.future is None or self.future._claimed

    def fail(self, error: BaseException) -> None:
        """Settle the outcome now, as ``error`` (a bad frame, or a fault of the supervisor's)."""
        self.outcome = (False, error)
        self.phase = Phase.DELIVERED

    def conclude(self, exitcode: int | None) -> tuple[bool, Any, str]:
        """Return ``(ok, value or exception, counter name)`` for a reaped child.

        The outcome is dropped from the record: stale timer entries may keep it alive.
        """
        future = self.future
        if self.outcome is not None:
            ok, outcome = self.outcome
        elif self.timed_out:
            ok, outcome = False, TaskTimeout(self.pid, self.options.timeout or 0.0)
        else:
            signum = -exitcode if exitcode is not None and exitcode < 0 else None
            ok, outcome = False, WorkerDied(self.pid, exitcode, signum, self._why(exitcode))
        if future is not None and future.cancelled():
            counter = "cancelled"
        elif self.timed_out and self.outcome is None:
            counter = "timed_out"
        else:
            counter = "completed" if ok else "failed"
        self.future = self.outcome = None
        return ok, outcome, counter

    def _why(self, exitcode: int | None) -> str:
        # What the record knows about a death, beyond its exit status.
        if self.detail:
            return self.detail
        if self.reader.started:
            total = self.reader.expected
            return f"truncated result ({self.reader.received} of {total or '?'} bytes)"
        if exitcode == LOST_PIPE:
            return (
                f"exit status {LOST_PIPE}: the task closed its result pipe or put another"
                " file on its fd (os.closerange, os.dup2), so it could not report"
            )
        return ""
