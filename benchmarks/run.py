"""Run every benchmark module and print one table: ``python -m benchmarks.run [options]``.

Modules named ``benchmarks/bench_*.py`` that expose ``CASES`` are discovered and run in name
order, all in this one process, so every ratio compares figures taken under the same load.
Progress goes to stderr; the header, the table and the case legend go to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import pkgutil
import platform
import sys
import warnings
from collections.abc import Sequence

import benchmarks
from benchmarks._harness import Case, Row, Settings, log, measure, render_table

QUICK_REPEATS = 2


def discover() -> tuple[list[Case], list[Row]]:
    """Import the ``bench_*`` modules; return their cases and a row per module that broke."""
    cases: list[Case] = []
    broken: list[Row] = []
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
        if not info.name.startswith("bench_"):
            continue
        try:
            module = importlib.import_module(f"benchmarks.{info.name}")
        except Exception as exc:  # one broken module must not hide the others' figures
            broken.append(Row(info.name, "-", note=f"import failed: {type(exc).__name__}: {exc}"))
            continue
        cases.extend(getattr(module, "CASES", ()))
    return cases, broken


def _header(settings: Settings, argv: Sequence[str]) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    mode = "quick" if settings.quick else "full"
    return "\n".join(
        [
            f"Command: python -m benchmarks.run {' '.join(argv)}".rstrip(),
            f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
            f"Python: {platform.python_implementation()} {platform.python_version()} "
            f"on {platform.platform()}",
            f"CPUs: {os.cpu_count()}; load average at start: {load}",
            f"Mode: {mode}, {settings.repeats} repeats per implementation (median reported)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run the selected cases and print the table."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke mode: small sizes, 2 repeats")
    parser.add_argument("--repeats", type=int, help="measurements per implementation (default 5)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run the cases whose name contains NAME (repeatable)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds one measurement may take before it counts as hung (default 120, quick 60;"
        " 0 = no limit)",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(args_list)
    repeats = args.repeats if args.repeats is not None else (QUICK_REPEATS if args.quick else 5)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    timeout = args.timeout if args.timeout is not None else (60.0 if args.quick else 120.0)
    settings = Settings(quick=args.quick, repeats=repeats, timeout=timeout)

    cases, rows = discover()
    if args.only:
        cases = [c for c in cases if any(name in c.name for name in args.only)]
    if args.list:
        for case in cases:
            print(f"{case.name:24} {case.title}")
        return 0
    if not cases:
        parser.error("no case matches --only")

    # Python 3.12+ warns on every fork from a multi-threaded process; the floor, the peers and
    # the pools all fork next to helper threads on purpose, so the warning is only noise here.
    warnings.filterwarnings(
        "ignore", r"This process \(pid=\d+\) is multi-threaded", DeprecationWarning
    )
    print(_header(settings, args_list), end="\n\n", flush=True)
    legend = []
    for case in cases:
        log(f"== {case.name}: {case.title}")
        case_rows, text = measure(case, settings)
        rows.extend(case_rows)
        legend.append(f"- ``{case.name}``: {text}")
    print(render_table(rows), "", *legend, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
