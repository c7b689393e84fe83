"""Import time (SPEC section 6: ``import inparallel`` <= 15 ms), beside the peers' imports.

``import``
    What an import statement costs a program that has imported nothing yet: each run starts
    fresh interpreters with ``python -S -X importtime`` and adds up the cumulative microseconds
    of the top-level lines the statement prints. For ``import inparallel`` that is the
    ``inparallel`` line; ``from inparallel import task`` adds the modules the name needs, which
    the package imports at the name's first use. The floor is ``import concurrent.futures``:
    the least a library whose calls return standard futures imports (``TaskFuture`` is one).
    Peers: ``multiprocessing.pool`` and pebble.

    ``-S`` keeps ``.pth`` files from running: an editable install's finder imports pathlib, re
    and importlib.util at start-up, which would hide their cost from the import that needs
    them first. The interpreter imports ``os`` before the measured statement, as ``site`` would,
    and finds packages on the benchmark's own path. Each run is ``IMPORTS`` interpreters
    (2 with ``--quick``); the table shows milliseconds per import.
"""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
from collections.abc import Callable

from benchmarks._harness import BenchmarkError, Case, Impl, Limit, Plan, Settings, check

IMPORTS = 5

#: What a fresh interpreter prints before the measured statement, to tell its lines apart.
_MARK = "-- measured --\n"

#: Seconds one interpreter may take (an import that hangs must not stall the run).
_TIMEOUT = 60.0


def _search_path() -> list[str]:
    """Return where the measured interpreters look for packages: this checkout, site-packages."""
    spec = importlib.util.find_spec("inparallel")
    if spec is None or spec.origin is None:
        raise BenchmarkError("inparallel is not importable")
    checkout = os.path.dirname(os.path.dirname(spec.origin))
    return [checkout, *site.getsitepackages()]


def import_seconds(statement: str, path: list[str]) -> float:
    """Return the seconds ``statement`` spends importing, in a fresh interpreter.

    The sum of the cumulative times of the top-level lines of ``-X importtime`` after the
    preamble: nested lines are already counted in their importer's.
    """
    code = (
        "import os, sys\n"
        f"sys.path[:0] = {path!r}\n"
        f"sys.stderr.write({_MARK!r})\n"
        "sys.stderr.flush()\n"
        f"{statement}\n"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )
    check(out.returncode == 0, f"{statement!r} failed: {out.stderr.strip()[-300:]}")
    _, marked, lines = out.stderr.partition(_MARK)
    check(bool(marked), "the interpreter's marker line is missing")
    micros = 0
    for line in lines.splitlines():
        # "import time:  self [us] | cumulative | name", the name indented by nesting level
        fields = line.split("|")
        if len(fields) == 3 and fields[1].strip().isdigit() and not fields[2].startswith("  "):
            micros += int(fields[1])
    check(micros > 0, f"{statement!r} printed no import time")
    return micros / 1e6


def _importer(statement: str, path: list[str], imports: int) -> Callable[[], float]:
    def run() -> float:
        return sum(import_seconds(statement, path) for _ in range(imports))

    return run


def _import(settings: Settings) -> Plan:
    path = _search_path()
    imports = settings.pick(IMPORTS, 2)

    def impl(
        key: str,
        statement: str,
        *,
        label: str = "",
        requires: tuple[str, ...] = (),
        note: str = "",
        targets: tuple[Limit, ...] = (),
    ) -> Impl:
        run = _importer(statement, path, imports)
        return Impl(key, label or statement, run, requires, note, targets)

    ip = ("inparallel",)
    impls = [
        impl("floor", "import concurrent.futures", label="floor: import concurrent.futures"),
        impl("inparallel", "import inparallel", requires=ip, targets=(Limit(0.015),)),
        impl("ip-task", "from inparallel import task", requires=ip, note="all a first call needs"),
        impl("ip-map", "from inparallel import process_map", requires=ip, note="all a map needs"),
        impl("mp-pool", "import multiprocessing.pool"),
        impl("pebble", "import pebble", requires=("pebble",)),
    ]
    detail = f"{imports} fresh interpreters per run, python -S -X importtime; ms per import"
    return Plan(impls, per=imports, detail=detail)


CASES: tuple[Case, ...] = (
    Case("import", "Import time in a fresh interpreter", _import, warmup=True),
)
