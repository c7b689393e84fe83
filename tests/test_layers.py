"""The package's shape: layering, a quiet import, and the public surface."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import inparallel

PACKAGE = pathlib.Path(inparallel.__file__).parent

# A module may import only from layers below it (STYLE.md "Layout"); lower index = lower layer.
LAYERS = [
    ("_core._errors",),
    ("_core._wire",),
    ("_core._reader", "_core._options"),
    ("_core._child", "_core._future", "_core._channel"),
    ("_core._record",),
    ("_core._supervisor",),
    ("_core._spawn",),
    ("_task", "_waitfor", "_progress", "_workers", "_checks", "backends._call"),
    ("_executor",),
    ("_pools", "_preload", "_streammap", "_stream"),
    ("_enginepool",),
    ("_pass",),
    ("_map",),
    ("_pipeline",),
    ("_aio._base",),
    ("_aio._push",),
    ("_aio._pump", "_aio._gate", "_aio._transform"),
    ("_aio._shared", "_aio._map", "_aio._join"),
    ("_aio._fork",),
    ("aio",),
    ("backends.dask",),
]


def _layer(module: str) -> int | None:
    for index, members in enumerate(LAYERS):
        if module in members:
            return index
    return None


def _imports(path: pathlib.Path, module: str) -> set[str]:
    """Return the inparallel modules (dotted, relative to the package) that ``module`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.level):
            continue
        package = module.split(".")[:-1]  # the package that contains ``module``
        base = package[: len(package) - (node.level - 1)]
        if node.module:
            found.add(".".join([*base, node.module]))
        else:
            found.update(".".join([*base, alias.name]) for alias in node.names)
    return found


def test_modules_import_only_from_lower_layers() -> None:
    checked = 0
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        own = _layer(module)
        if own is None:
            continue
        for target in _imports(path, module):
            other = _layer(target)
            if other is not None:
                assert other <= own, f"{module} (layer {own}) imports {target} (layer {other})"
        checked += 1
    assert checked >= 8


def test_core_imports_nothing_above_it() -> None:
    for path in (PACKAGE / "_core").glob("*.py"):
        text = path.read_text()
        assert "from .." not in text, f"{path.name} reaches above _core"


def test_only_the_aio_layer_imports_asyncio() -> None:
    # At module level; TaskFuture.__await__ imports it lazily, inside a running loop.
    users = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(name.split(".")[0] == "asyncio" for name in names):
                users.append(path.relative_to(PACKAGE).as_posix())
    assert users, "the asyncio layer was not found"
    assert all(user == "aio.py" or user.startswith("_aio/") for user in users), users


def test_aio_surface() -> None:
    from inparallel import aio

    assert isinstance(aio.__all__, tuple)
    for name in aio.__all__:
        assert hasattr(aio, name), name
    for name in (
        "push_aiter", "aiter_forker", "active_aiter", "aiter_to_iter", "azip", "flatten_aiter",
        "gated_aiter", "iter_to_aiter", "join_aiters", "map_aiter", "map_filter_aiter",
        "preload_aiter", "sharable_aiter", "stoppable_aiter", "parallel_map",
    ):  # fmt: skip
        assert name in aio.__all__, name
    assert "aiter" not in aio.__all__ and "anext" not in aio.__all__  # builtins since 3.10
    assert issubclass(aio.QueueStopped, ValueError)


def test_import_is_quiet() -> None:
    code = (
        "import sys, threading, os\n"
        "before = set(sys.modules)\n"
        "import inparallel\n"
        "new = set(sys.modules) - before\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "bad = [m for m in new if m.split('.')[0] in ('asyncio', 'tqdm', 'dask', 'distributed')]\n"
        "assert not bad, bad\n"
        "import atexit\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_public_surface() -> None:
    assert isinstance(inparallel.__all__, tuple)
    for name in inparallel.__all__:
        assert hasattr(inparallel, name), name
    for name in (
        "task",
        "waitfor",
        "TaskFuture",
        "InParallelError",
        "WorkerDied",
        "TaskTimeout",
        "ResultNotPicklable",
        "MemoryLimitExceeded",
        "RemoteError",
        "SpawnError",
    ):
        assert name in inparallel.__all__
    errors = [
        inparallel.WorkerDied,
        inparallel.TaskTimeout,
        inparallel.ResultNotPicklable,
        inparallel.MemoryLimitExceeded,
        inparallel.RemoteError,
        inparallel.SpawnError,
    ]
    for cls in errors:
        assert issubclass(cls, inparallel.InParallelError)
    assert issubclass(inparallel.TaskTimeout, TimeoutError)
    assert issubclass(inparallel.SpawnError, OSError)
    assert issubclass(inparallel.MemoryLimitExceeded, MemoryError)
    assert isinstance(inparallel.__version__, str)
