"""The package's shape: layering, a quiet import, and the public surface."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

from _timing import PATIENCE

import inparallel

PACKAGE = pathlib.Path(inparallel.__file__).parent

# A module may import only from layers below it (STYLE.md "Layout"); lower index = lower layer.
# Every module of the package is listed (a package's ``__init__`` too): a new module fails
# `test_every_module_has_a_layer` until it is given its place here.
LAYERS = [
    (
        "_lazy",
        "_core.__init__",
        "_core._errors",
        "_core._interrupts",
        "_core._tracebacks",
        "_core._emit",
        "_core._memfile",
        "_core._salvage",
        "_core._native",
    ),
    (
        "_core._bridge",
        "_core._cpus",
        "_core._lend",
        "_core._localfuture",
        "_core._poller",
        "_core._stdio",
    ),
    ("_core._fetch", "_core._wire", "_core._output"),
    ("_core._reader", "_core._options"),
    ("_core._limits",),
    ("_core._child", "_core._future", "_core._channel"),
    ("_core._record",),
    ("_core._deadlines", "_core._thread"),
    ("_core._events",),
    ("_core._drive",),
    ("_core._supervisor",),
    ("_core._park",),
    ("_core._spawn",),
    ("_checks",),
    (
        "_task",
        "_waitfor",
        "_progress",
        "_workers",
        "_inputs",
        "_feed",
        "_streamcall",
        "_streamexit",
        "backends.__init__",
        "backends._call",
    ),
    ("_executor", "_chunks"),
    ("_pools", "_preload", "_streammap", "_stream"),
    ("_enginepool",),
    ("_pass",),
    ("_map",),
    ("_pipeline",),
    ("__init__",),
    ("_aio.__init__", "_aio._base"),
    ("_aio._push", "_aio._pull"),
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


def _modules() -> dict[str, pathlib.Path]:
    """Return every module of the package, dotted and relative to it (``_core._spawn``)."""
    return {
        ".".join(path.relative_to(PACKAGE).with_suffix("").parts): path
        for path in PACKAGE.rglob("*.py")
    }


def _resolve(dotted: str, names: list[str], known: set[str]) -> set[str]:
    """The modules an import of ``names`` from package-relative ``dotted`` reaches.

    ``from pkg import name`` reaches the submodule ``pkg.name`` if there is one, and otherwise
    the package's ``__init__`` (where the name is defined or re-exported).
    """
    found = set()
    for name in names or [""]:
        candidate = f"{dotted}.{name}" if dotted and name else dotted or name
        if candidate in known:
            found.add(candidate)
        else:
            found.add(f"{dotted}.__init__" if dotted else "__init__")
    return found


def _imports(source: str, module: str, known: set[str]) -> set[str]:
    """Return the inparallel modules that ``module`` (whose text is ``source``) imports.

    Relative and absolute imports alike, at module level or inside a function: a lazy import
    is a dependency all the same.
    """
    found: set[str] = set()
    package = module.split(".")[:-1]  # the package that contains ``module``
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                if top == "inparallel":
                    found |= _resolve(rest, [], known) if rest not in known else {rest}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                dotted = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module == "inparallel" or (node.module or "").startswith("inparallel."):
                dotted = (node.module or "").removeprefix("inparallel").removeprefix(".")
            else:
                continue
            if dotted in known:  # from .x import name: the module x itself
                found.add(dotted)
            else:
                found |= _resolve(dotted, [alias.name for alias in node.names], known)
    return found


def _source_imports(module: str, path: pathlib.Path, known: set[str]) -> set[str]:
    return _imports(path.read_text(), module, known)


def test_every_module_has_a_layer() -> None:
    modules = set(_modules())
    listed = {name for members in LAYERS for name in members}
    assert sorted(modules - listed) == [], "modules missing from LAYERS: give each its layer"
    assert sorted(listed - modules) == [], "LAYERS names modules that do not exist"
    assert len(listed) == sum(map(len, LAYERS)), "a module is listed twice"


def test_modules_import_only_from_lower_layers() -> None:
    modules = _modules()
    known = set(modules)
    for module, path in sorted(modules.items()):
        own = _layer(module)
        assert own is not None, f"{module} has no layer"
        for target in sorted(_source_imports(module, path, known)):
            other = _layer(target)
            assert other is not None, f"{module} imports {target}, which has no layer"
            assert other <= own, f"{module} (layer {own}) imports {target} (layer {other})"


def test_the_import_checker_follows_every_form() -> None:
    known = set(_modules())
    source = (
        "from inparallel._task import task\n"
        "import inparallel._map\n"
        "import inparallel._core\n"
        "from inparallel import aio, waitfor\n"
        "from .._pass import something\n"
        "from .. import _stream\n"
        "from . import _wire\n"
        "def later():\n"
        "    from ..backends import dask\n"
    )
    assert _imports(source, "_core._errors", known) == {
        "_task",
        "_map",
        "_core.__init__",
        "aio",
        "__init__",
        "_pass",
        "_stream",
        "_core._wire",
        "backends.dask",
    }


def test_core_imports_nothing_above_it() -> None:
    modules = _modules()
    known = set(modules)
    for module, path in modules.items():
        if module.startswith("_core."):
            found = _source_imports(module, path, known)
            above = sorted(t for t in found if not t.startswith("_core."))
            assert not above, f"{module} reaches above _core: {above}"


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
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=PATIENCE
    )
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


def test_every_mutation_still_finds_its_snippet_once() -> None:
    # ``python -m tests.mutate`` stops before any test when a snippet has moved; this says
    # so in the default suite, where the change that moved it is made.
    import mutate

    root = PACKAGE.parent
    moved = [
        m.name
        for m in mutate.MUTATIONS
        if (root / m.file).read_text(encoding="utf-8").count(m.snippet) != 1
    ]
    assert moved == []
