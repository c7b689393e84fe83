"""The supervisor's record of one child process, and the phases it goes through."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ._future import TaskFuture
from ._options import TaskOptions
from ._reader import FrameReader

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
    deadline: float | None = None
    last_progress: float = 0.0
    timed_out: bool = False
    timeout_armed: bool = False
    reaped: bool = False
    detail: str = ""  # why a result that arrived could not be used

    def __post_init__(self) -> None:
        self.reader = FrameReader(self.options.max_result_size)
