r"""Writing a task's forwarded output in the parent: decoding it, and putting it on screen.

The parent writes forwarded output (``output="tag"`` lines, ``output="group"`` blocks) with
`emit`, which looks ``sys.stdout``/``sys.stderr`` up at each call (so ``contextlib.redirect_stdout``
and test capture see it) and never raises. While a progress bar is drawn in this process, the
text goes through the bar's own writer instead (tqdm's ``tqdm.write``), which clears the bar,
writes the text and draws the bar again below it: a bar and forwarded lines never garble each
other. The progress layer says when a bar is drawn with `add_bar` / `remove_bar`; this module
knows nothing about tqdm.

Bytes become text with `decode`: the encoding of the parent stream they are headed for (a child
writes with that same encoding: it inherits the stream's configuration), and
``errors="backslashreplace"``, so undecodable bytes (a subprocess writing Latin-1 under a UTF-8
locale) show up as ``\xe9`` instead of failing or vanishing.

**Threads.** `emit` runs on whichever thread runs the supervisor loop. Writing to the std streams
from a thread is a fork hazard (research X6: a child forked while another thread holds a stream's
lock deadlocks on its first print). It is confined here: our own forks park the supervisor thread
first, and every task's child rebinds ``sys.stdout``/``sys.stderr`` to fresh objects. A program
that calls ``os.fork()`` itself while tasks forward output takes the same risk as with any thread
that prints.
"""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Callable
from typing import Literal, TextIO

__all__ = (
    "BarWriter",
    "StreamName",
    "add_bar",
    "decode",
    "emit",
    "encoding_of",
    "last_lines",
    "remove_bar",
)

#: Which of the parent's streams a text is headed for.
StreamName = Literal["stdout", "stderr"]

#: Writes a text to a stream above a progress bar: ``write(text, file)``. It must write the text
#: as given (no newline added) and may raise; `emit` flushes the stream afterwards.
BarWriter = Callable[[str, TextIO], None]

#: Widest line `last_lines` keeps whole; a longer one is cut (an exception note is read by a
#: person, and a megabyte-long line would bury the traceback above it).
NOTE_WIDTH = 1000

# The progress bars drawn now, innermost last, each with the pid of the process that opened it:
# a forked child inherits this list, but its copies of the bars are not on any screen.
_bars: list[tuple[int, BarWriter]] = []


def add_bar(write: BarWriter) -> None:
    """Route forwarded output through ``write`` while a progress bar is drawn (until `remove_bar`).

    Called by the progress layer when it opens a bar. The newest bar's writer is used.
    """
    _bars.append((os.getpid(), write))


def remove_bar(write: BarWriter) -> None:
    """Stop routing output through ``write`` (the bar is closed). Idempotent."""
    for index, (_, registered) in enumerate(_bars):
        if registered is write:
            del _bars[index]
            return


def _bar_writer() -> BarWriter | None:
    try:
        pid, write = _bars[-1]
    except IndexError:  # no bar, or closed by another thread just now
        return None
    return write if pid == os.getpid() else None


def emit(stream: StreamName, text: str) -> None:
    """Write ``text`` to the parent's current ``sys.stdout`` or ``sys.stderr``, and flush it.

    The text is written in one call (a tag line or a group block is never interleaved with
    another written by `emit`), above the progress bar if one is drawn. Blocks while the stream
    does (a terminal paused with Ctrl-S, a full pipe): the same as a ``print`` would.

    Never raises an ``Exception``: a stream that is ``None``, closed or broken (``EPIPE`` once a
    ``| head`` has exited) drops the text; a character the stream cannot encode is written as a
    backslash escape.
    """
    if not text:
        return
    target = sys.stdout if stream == "stdout" else sys.stderr
    if target is None:
        return
    write = _bar_writer()
    try:
        try:
            _write(target, text, write)
        except UnicodeEncodeError:
            # The stream was replaced since the text was decoded for the one it replaced.
            encoding = encoding_of(stream)
            _write(target, text.encode(encoding, "backslashreplace").decode(encoding), write)
        target.flush()
    except Exception:  # forwarding must never fail the loop that calls it (documented)
        pass


def _write(target: TextIO, text: str, write: BarWriter | None) -> None:
    if write is None:
        target.write(text)
    else:
        write(text, target)


def encoding_of(stream: StreamName) -> str:
    """Return the encoding of the parent's current ``sys.stdout``/``sys.stderr``.

    Falls back to the locale's preferred encoding when the stream is missing or names no codec
    Python knows.
    """
    encoding = getattr(sys.stdout if stream == "stdout" else sys.stderr, "encoding", None)
    if isinstance(encoding, str):
        try:
            return codecs.lookup(encoding).name
        except LookupError:
            pass
    import locale  # only for a stream without a usable encoding

    return locale.getpreferredencoding(False)


def decode(data: bytes, stream: StreamName) -> str:
    """Return ``data`` as text, decoded like the parent's ``stream`` would decode it.

    Undecodable bytes become backslash escapes (``errors="backslashreplace"``); never raises.
    """
    return data.decode(encoding_of(stream), "backslashreplace")


def last_lines(text: str, n: int = 10) -> str:
    r"""Return the last ``n`` lines of ``text``, without its final newline, for an exception note.

    Trailing blank lines are skipped; a line wider than `NOTE_WIDTH` characters keeps its end,
    after ``...``. Returns ``""`` for a text with no visible line.

    >>> last_lines("one\ntwo\nthree\n\n", 2)
    'two\nthree'
    """
    if n <= 0:
        return ""
    lines = text.rstrip().split("\n")[-n:]
    return "\n".join(
        line if len(line) <= NOTE_WIDTH else "..." + line[-NOTE_WIDTH:] for line in lines
    )
