"""Optional progress bars: a tqdm bar when tqdm is installed, a silent stand-in otherwise.

Every tool that takes ``progress=True`` (``waitfor``, the maps, ``process_parallel``) goes through
`open_progress`, so they all behave alike: tqdm is imported only when a bar is asked for (importing
inparallel never imports it), and a missing tqdm costs one `RuntimeWarning` naming the extra to
install, never an error.

While a tqdm bar is open, task output the library forwards (``output="tag"`` lines,
``output="group"`` blocks) is written above it through ``tqdm.write``: the bar registers its
writer with the core's ``_emit`` when it opens and withdraws it when it closes.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import warnings
from types import TracebackType
from typing import Any, TextIO

from ._core import _emit

__all__ = ("Progress", "open_progress")

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep

MISSING_TQDM = (
    "progress=True needs tqdm, which is not installed; continuing without a progress bar. "
    "Install it with: pip install 'inparallel[progress]'"
)


class Progress:
    """A progress bar handle; this base class draws nothing (``progress=False``).

    Use it from one thread: the tool that owns the bar. All methods are cheap no-ops here, so
    callers update it unconditionally. It is also a context manager that closes itself.
    """

    __slots__ = ()

    def update(self, n: int = 1) -> None:
        """Advance the bar by ``n`` finished items."""

    def add_total(self, n: int) -> None:
        """Grow (or, with a negative ``n``, shrink) the expected number of items."""

    def close(self) -> None:
        """Draw the final state and release the bar; further calls do nothing."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _TqdmProgress(Progress):
    """A `Progress` drawn by tqdm on stderr."""

    __slots__ = ("_bar", "_write")

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._write: _emit.BarWriter = functools.partial(_write_above, type(bar))
        _emit.add_bar(self._write)

    def update(self, n: int = 1) -> None:
        """Advance the bar by ``n`` finished items (redraws at most every ``mininterval``)."""
        self._bar.update(n)

    def add_total(self, n: int) -> None:
        """Grow (or shrink) the expected number of items; the redraw is rate-limited."""
        if n:
            self._bar.total = (self._bar.total or 0) + n
            # update(0) redraws through tqdm's rate limit; refresh() would write every time.
            self._bar.update(0)

    def close(self) -> None:
        """Draw the final state and release the bar; further calls do nothing."""
        _emit.remove_bar(self._write)
        self._bar.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._bar.n}/{self._bar.total}>"


def _write_above(bar_class: Any, text: str, file: TextIO) -> None:
    # tqdm.write clears the bars on the terminal, writes, and draws them again, under tqdm's
    # lock (which also serialises it with the bar's own updates from the caller's thread).
    bar_class.write(text, file=file, end="")


_bar_classes: dict[Any, Any] = {}


def _tqdm_class() -> Any:
    """Return the tqdm class to draw with, importing tqdm on first use.

    Raises:
        ImportError: tqdm is not installed.
    """
    tqdm = importlib.import_module("tqdm").tqdm
    bar_class = _bar_classes.get(tqdm)
    if bar_class is None:
        # tqdm's monitor is a thread that, once any bar has existed, lives until interpreter exit;
        # in a library that forks it would make every later fork happen in a multi-threaded
        # parent. Explicit updates with miniters=1 do not need it, so our bars switch it off
        # (on a subclass: the user's own tqdm bars keep theirs).
        bar_class = _bar_classes[tqdm] = type("_Bar", (tqdm,), {"monitor_interval": 0})
    return bar_class


def open_progress(
    enabled: bool,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
) -> Progress:
    """Open a progress bar on stderr, or a do-nothing stand-in.

    Args:
        enabled: Whether a bar was asked for (the tool's ``progress=`` argument).
        total: Expected number of items, if known; grow it later with `Progress.add_total`.
        desc: Label shown in front of the bar.
        unit: Name of one item in the rate display.

    Returns:
        A tqdm-backed `Progress` if ``enabled`` and tqdm imports, else a `Progress` that draws
        nothing. Close it when the work ends (or use it as a context manager).

    Warns:
        RuntimeWarning: ``enabled`` is true but tqdm is not installed (once per call).
    """
    if not enabled:
        return Progress()
    try:
        bar_class = _tqdm_class()
    except ImportError:
        # At the innermost caller outside the library, wherever the bar is opened (a map opens
        # it on its first next(), which list() calls from C: a fixed level would miss).
        warnings.warn(MISSING_TQDM, RuntimeWarning, stacklevel=_outside_the_library())
        return Progress()
    return _TqdmProgress(bar_class(total=total, desc=desc, unit=unit, miniters=1))


def _outside_the_library() -> int:
    # The warnings stacklevel of the innermost frame that is not the library's (1 = our caller).
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level
