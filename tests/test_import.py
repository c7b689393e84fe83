"""A cheap import: ``import inparallel`` defers each public name's module to its first use.

Every check that depends on what an import loads runs in a fresh interpreter: this one has
imported the whole library long ago.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest
from _timing import PATIENCE

import inparallel
from inparallel import aio

PACKAGE = pathlib.Path(inparallel.__file__).parent

#: Modules the tools need and ``import inparallel`` must not load: each costs milliseconds,
#: with what it imports in turn.
HEAVY = (
    "asyncio",
    "cloudpickle",
    "concurrent.futures",
    "dataclasses",
    "inspect",
    "logging",
    "pickle",
    "tblib",
    "threading",
    "typing",
)


def _typed_names(module: str) -> dict[str, str]:
    """Map each name imported under ``if TYPE_CHECKING:`` in ``module`` to its source module.

    Those imports are what type checkers see; the interpreter must give the same objects.
    """
    path = PACKAGE / (module.replace(".", "/") + ".py" if module else "__init__.py")
    package = "inparallel"
    names = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.level == 1, ast.unparse(stmt)
                for alias in stmt.names:
                    names[alias.asname or alias.name] = f"{package}.{stmt.module}"
    return names


PUBLIC = _typed_names("")
AIO = _typed_names("aio")


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter; return what it printed."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=PATIENCE
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _loaded_by(statement: str) -> list[str]:
    """Return the modules a fresh interpreter loads for ``statement``, sorted."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print(*sorted(set(sys.modules) - before))\n"
    )
    return _run(code).split()


def test_typed_names_are_the_public_names() -> None:
    assert set(PUBLIC) == set(inparallel.__all__) - {"__version__"}
    assert set(AIO) == set(aio.__all__)


def test_import_loads_no_submodule_and_nothing_heavy() -> None:
    loaded = _loaded_by("import inparallel")
    assert "inparallel" in loaded
    assert [m for m in loaded if m.startswith("inparallel.")] == ["inparallel._lazy"]
    assert [m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY] == []


def test_version_and_dir_need_no_import() -> None:
    code = (
        "import sys, inparallel\n"
        "names = dir(inparallel)\n"
        "missing = [n for n in inparallel.__all__ if n not in names]\n"
        "assert not missing, missing\n"
        "assert names == sorted(names)\n"
        "print(inparallel.__version__)\n"
        "print(*sorted(m for m in sys.modules if m.startswith('inparallel.')))\n"
    )
    version, submodules = _run(code).splitlines()
    assert version == inparallel.__version__
    assert submodules == "inparallel._lazy"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_name_first_imported_alone(name: str) -> None:
    # Alone in a fresh interpreter, so that no other name's import has prepared the way.
    home = PUBLIC[name]
    code = (
        "import importlib, inparallel\n"
        f"from inparallel import {name}\n"
        f"assert {name} is importlib.import_module({home!r}).{name}\n"
        f"assert inparallel.{name} is {name}\n"
        f"assert vars(inparallel)[{name!r}] is {name}, 'kept: the next use is a plain lookup'\n"
        "print('ok')\n"
    )
    assert _run(code).strip() == "ok"


def test_star_import_gives_every_public_name() -> None:
    code = (
        "import inparallel\n"
        "from inparallel import *\n"
        "missing = [n for n in inparallel.__all__ if n not in globals()]\n"
        "assert not missing, missing\n"
        "print('ok')\n"
    )
    assert _run(code).strip() == "ok"


def test_unknown_names_fail_as_usual() -> None:
    with pytest.raises(AttributeError, match=r"^module 'inparallel' has no attribute 'nope'$"):
        inparallel.nope  # type: ignore[attr-defined]
    assert not hasattr(inparallel, "_nope")
    with pytest.raises(ImportError, match=r"cannot import name 'nope' from 'inparallel'"):
        from inparallel import nope  # type: ignore[attr-defined]  # noqa: F401
    with pytest.raises(AttributeError, match=r"^module 'inparallel.aio' has no attribute 'nope'$"):
        aio.nope  # type: ignore[attr-defined]


def test_submodules_still_import_by_name() -> None:
    # ``from inparallel import aio`` falls back to importing the submodule, as before.
    loaded = _loaded_by("from inparallel import aio; from inparallel.backends import dask")
    assert "inparallel.aio" in loaded
    assert "inparallel.backends.dask" in loaded


def test_aio_import_defers_asyncio() -> None:
    loaded = _loaded_by("import inparallel.aio")
    assert "asyncio" not in loaded
    assert [m for m in loaded if m.startswith("inparallel._")] == ["inparallel._lazy"]
    code = (
        "import importlib, inparallel.aio as aio\n"
        "missing = [n for n in aio.__all__ if n not in dir(aio)]\n"
        "assert not missing, missing\n"
        f"homes = {AIO!r}\n"
        "for name, home in homes.items():\n"
        "    assert getattr(aio, name) is getattr(importlib.import_module(home), name), name\n"
        "print('ok')\n"
    )
    assert _run(code).strip() == "ok"
