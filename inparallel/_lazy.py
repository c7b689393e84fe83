"""Public names imported at their first use (PEP 562), for ``inparallel`` and ``inparallel.aio``.

Importing every module behind a package's names made ``import inparallel`` dozens of times
slower than the names a program uses need. A package lists where each name lives, and
`exports` gives it the module-level ``__getattr__`` and ``__dir__`` that import a name's
module the first time the name is used and keep the name in the package from then on.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # as in the package's __init__: importing typing costs more than this

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, MutableMapping

__all__ = ("exports",)


def exports(
    namespace: MutableMapping[str, object], homes: Mapping[str, str], public: Iterable[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` for the module whose globals are ``namespace``.

    Args:
        namespace: The module's ``globals()``.
        homes: Each lazily imported name, and the module (relative to the package) that
            defines it.
        public: The module's ``__all__``: ``dir()`` lists them before they are imported.
    """
    module, package = namespace["__name__"], namespace["__package__"]
    listed = frozenset(public)

    def __getattr__(name: str) -> object:
        """Import the module that defines ``name``, and keep the name (once per name).

        The import system's per-module locks make a first use from two threads at once safe.

        Raises:
            AttributeError: ``name`` is not one of the module's names.
        """
        try:
            home = homes[name]
        except KeyError:
            raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(home, str(package)), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        """List the module's names, those not imported yet included."""
        return sorted({*namespace, *listed})

    return __getattr__, __dir__
