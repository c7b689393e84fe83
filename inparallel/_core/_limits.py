"""A task's resource limits (``memory_limit=``, ``cpu_time=``), set in its child.

`apply_limits` runs in the child just before the task; `lift_memory_limit` right after it, so
that pickling the outcome (and reporting a `MemoryError`) has memory to work with.
"""

from __future__ import annotations

import resource

from ._options import TaskOptions

__all__ = ("apply_limits", "lift_memory_limit")


def _vm_size() -> int:
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def apply_limits(options: TaskOptions) -> None:
    """In the child, before the task: set its limits on address space and CPU time."""
    if options.memory_limit is not None:
        # Relative to what the child inherited: an absolute RLIMIT_AS below the parent's
        # mapped size would fail the first allocation (research X12).
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = _vm_size() + options.memory_limit
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    if options.cpu_time is not None:
        # SIGXCPU at the soft limit; SIGKILL one second later if the task handles SIGXCPU.
        # No core dump: it would be a copy of the parent's memory.
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        limit = options.cpu_time
        if hard == resource.RLIM_INFINITY or hard > limit + 1:
            hard = limit + 1
        resource.setrlimit(resource.RLIMIT_CPU, (min(limit, hard), hard))


def lift_memory_limit(options: TaskOptions) -> None:
    """In the child, after the task: lift the address-space limit (the CPU limit stays)."""
    # Pickling the outcome needs memory of its own, and a MemoryError must still be reported.
    if options.memory_limit is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
