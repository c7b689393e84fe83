"""The suite's one set of timing constants (seconds), for a noisy, shared 2-core machine.

Every wait in a test is bounded by one of these, and each is well below the 60 s per-test
timeout, so a regression fails with a message instead of hanging until pytest-timeout.
"""

#: "Promptly": something that takes milliseconds when it works (a wake-up, a kill, a reply).
PROMPT = 2.0

#: Anything that should take milliseconds to a second, given room for a loaded machine.
BOUND = 10.0

#: A whole harness run in a subprocess (an interpreter start, hundreds of tasks).
PATIENCE = 30.0

#: How long a test's children, threads and fds get to wind down after it (research P2-P4).
SETTLE = 5.0
