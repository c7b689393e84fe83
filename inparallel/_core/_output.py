"""Where a task's stdout and stderr go: the fds the child writes to, and what the parent does.

``output=`` picks a mode. ``"inherit"`` needs nothing here (`open_streams` returns ``None``: the
child writes to the parent's fds 1 and 2). The other three give the child new fds 1 and 2::

    parent, spawning                 child                       parent, supervisor loop
    ----------------                 -----                       -----------------------
    open_streams(mode)
      capture, group: 2 memfds
      tag: 2 pipes
    fork ------------------------->  in_child(): dup2 onto 1, 2
    after_fork_in_parent(label):     print(...)
      close the child's ends           |-- memfd ..............  (nothing until the end)
                                       '-- pipe -------------->  on_readable(fd): whole lines
                                     os._exit                      -> emit("[label] line")
                                                                 finish(): read the memfd
                                                                   tails / the last partial
                                                                   lines; close everything

* **capture** and **group** write to memory files (see ``_memfile``). The child never blocks
  on them and nothing is lost when it is killed; the parent does nothing until the end, then
  reads the last ``max_output`` bytes of each. Capture returns the texts; group writes each
  stream's text as one block. A file holds all that the child wrote until the parent reads it
  (in memory, for a memfd): ``max_output`` bounds the parent's copy, not the file.
* **tag** uses pipes, so lines reach the parent as they are written and a flooding child is
  held back by the pipe (back-pressure) instead of growing the parent's memory. The parent
  reads at most `READ_CHUNK` bytes per call, so one chatty child cannot starve the others.

**Who calls what, and when.** All in the parent unless said otherwise; one thread at a time.

1. Under the fork lock, before the fork: `open_streams`. Its parent ends go into ``track``
   (the set of library fds every forked child closes); its child ends must be open in this
   fork only.
2. In the child, first thing after the fork (before it opens any fd of its own):
   `Streams.in_child`.
3. In the parent right after the fork: `Streams.after_fork_in_parent` with the call's label
   (or `Streams.close` if the fork failed).
4. The loop watches `Streams.watch_fds` for reading and calls `Streams.on_readable`; at
   ``False`` (end of file) it stops watching that fd.
5. Once the child has exited: unregister the fds still watched, then `Streams.finish`.
   `Streams.close` abandons everything instead.

Writing to the parent's streams, decoding and the progress bar are ``_emit``'s business.
"""

from __future__ import annotations

import codecs
import fcntl
import os
from collections.abc import Iterable

from ._emit import StreamName, decode, emit, encoding_of
from ._memfile import dropped_note, open_memory_file, read_tail

__all__ = ("DEFAULT_MAX_OUTPUT", "OUTPUT_MODES", "READ_CHUNK", "Streams", "open_streams")

#: The values ``output=`` accepts, the default first.
OUTPUT_MODES = ("inherit", "capture", "tag", "group")

#: Bytes of each stream the parent keeps by default (``max_output=``). Enough for any log a
#: person reads, small enough that a few hundred tasks in flight cannot exhaust the parent.
DEFAULT_MAX_OUTPUT = 16 * 2**20

#: Most bytes read from one tag pipe per `Streams.on_readable` call: a flooding task gets its
#: share of the loop, not all of it. A pipe holds 64 KiB by default on Linux, so one read
#: usually empties it; smaller reads would mean more wake-ups per line of output.
READ_CHUNK = 64 * 1024

#: Longest partial line (characters) a tag stream holds while waiting for its newline. A longer
#: line is forwarded in pieces of this size (or of ``max_output``, if smaller), each on a line
#: of its own with its own prefix: a task printing megabytes without a newline then costs the
#: parent at most this much memory per stream. A terminal line this long is unreadable anyway.
LINE_LIMIT = 64 * 1024

#: Most bytes `Streams.finish` drains from each tag pipe. The task has exited, so what is left
#: is at most a pipe's capacity, unless a process it started keeps writing: that one must not
#: keep the loop reading for ever.
DRAIN_LIMIT = 1024 * 1024

_STREAMS: tuple[StreamName, StreamName] = ("stdout", "stderr")


def open_streams(
    mode: str, max_output: int = DEFAULT_MAX_OUTPUT, *, track: set[int] | None = None
) -> Streams | None:
    """Create the fds a task's child will write its output to; ``None`` for ``"inherit"``.

    Args:
        mode: One of `OUTPUT_MODES` (validated by the options: anything else is a bug).
        max_output: Bytes of each stream the parent keeps (capture, group), or the longest
            partial line it holds before forwarding it in pieces (tag, see `LINE_LIMIT`).
        track: A set that holds the library's open fds (the at-fork hook closes them in every
            child): the parent ends are added now and discarded just before they close.

    Returns:
        The task's `Streams`; every fd it holds is numbered 3 or above (never on 0-2, even in
        a process that closed those).

    Raises:
        OSError: No pipe or memory file could be made (EMFILE, ENOMEM). Nothing is left open.
    """
    if mode == "inherit":
        return None
    made: list[int] = []  # every fd so far, closed if a later step fails
    try:
        if mode == "tag":
            for _ in _STREAMS:
                made.extend(os.pipe())
        else:
            for stream in _STREAMS:
                made.append(open_memory_file(f"inparallel-{stream}"))
        for index, fd in enumerate(made):
            made[index] = _high(fd)
        if mode == "tag":  # the parent reads, the child writes
            parent_out, child_out, parent_err, child_err = made
            os.set_blocking(parent_out, False)
            os.set_blocking(parent_err, False)
        else:
            # The child gets its own fds on the same files: the parent's are closed in it.
            for fd in made[:2]:
                made.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
            parent_out, parent_err, child_out, child_err = made
    except BaseException:
        _close_all(made)
        raise
    return Streams(mode, max_output, (parent_out, parent_err), (child_out, child_err), track)


class Streams:
    """The replacement stdout and stderr of one task (see the module docstring for the calls).

    Attributes:
        mode: ``"capture"``, ``"tag"`` or ``"group"``.
        max_output: See `open_streams`.
        label: What prefixes a tag line (``[label] ``), set by `after_fork_in_parent`.
    """

    __slots__ = ("_child", "_lines", "_parent", "_prefix", "_track", "label", "max_output", "mode")

    def __init__(
        self,
        mode: str,
        max_output: int,
        parent: tuple[int, int],
        child: tuple[int, int],
        track: set[int] | None,
    ) -> None:
        self.mode = mode
        self.max_output = max_output
        self.label = ""
        self._prefix = "[] "
        self._parent: tuple[int, ...] = parent
        self._child: tuple[int, ...] = child
        self._track = track
        if track is not None:
            track.update(parent)
        self._lines = (
            {fd: _Line(stream) for fd, stream in zip(parent, _STREAMS, strict=True)}
            if mode == "tag"
            else {}
        )

    def __repr__(self) -> str:
        state = "open" if self._parent else "closed"
        return f"<Streams {self.mode} label={self.label!r} {state} fds={self._parent}>"

    def child_fds(self) -> tuple[int, int]:
        """Return the fds the child puts on its fds 1 and 2 (`in_child` does it).

        Raises:
            ValueError: They were closed already (after the fork, in the parent).
        """
        if len(self._child) != 2:
            raise ValueError(f"{self!r}: the child's ends are closed")
        return self._child[0], self._child[1]

    def parent_fds(self) -> tuple[int, ...]:
        """Return the fds the parent holds now (all closed by `finish` and `close`)."""
        return self._parent

    def watch_fds(self) -> tuple[int, ...]:
        """Return the fds to watch for reading (the tag pipes); ``()`` for capture and group."""
        return self._parent if self._lines else ()

    # -- around the fork ----------------------------------------------------------------------

    def in_child(self) -> None:
        """In the child, first thing after the fork: put the streams on fds 1 and 2.

        Both fds are inheritable, so programs the task runs (``subprocess``) write there too.
        Every other fd of this object is closed, the parent's ends included; they may have been
        closed already (by the at-fork hook), so call this before the child opens an fd of its
        own, which could reuse one of their numbers. A few syscalls, no allocation worth the
        name (each page the child writes is a copy).

        Raises:
            OSError: ``dup2`` failed, which only a broken process can make happen.
        """
        out, err = self._child
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in self._child + self._parent:
            try:  # noqa: SIM105 - in a fresh child: no context manager objects (see _spawn)
                os.close(fd)
            except OSError:
                pass

    def after_fork_in_parent(self, label: str) -> None:
        """In the parent right after the fork: close the child's ends, and name the task.

        Args:
            label: The call's label (``name=``, or ``qualname:pid``), shown as ``[label] ``
                in front of each tag line.
        """
        self.label = label
        # Shown as it is, but for what would break the one-prefix-per-line promise or drive
        # the terminal: control characters (newlines, escapes) appear escaped.
        shown = label if label.isprintable() else label.encode("unicode_escape").decode("ascii")
        self._prefix = f"[{shown}] "
        child, self._child = self._child, ()
        _close_all(child)

    # -- the supervisor loop ------------------------------------------------------------------

    def on_readable(self, fd: int) -> bool:
        """Forward what a tag pipe holds now: each complete line, prefixed, to its stream.

        Reads at most `READ_CHUNK` bytes and never blocks. A partial line waits for the rest
        (but see `LINE_LIMIT`). Writing goes through `emit`, so it never raises.

        Args:
            fd: One of `watch_fds`.

        Returns:
            False at end of file (or a read error): stop watching ``fd``. It stays open until
            `finish` or `close`.

        Raises:
            KeyError: ``fd`` is not one of `watch_fds`.
        """
        line = self._lines[fd]
        if line.open:  # False once closed, too: the number may belong to another file now
            self._pull(fd, line)
        return line.open

    def finish(self) -> tuple[str | None, str | None]:
        """Deliver the output once the child has exited, and close every fd.

        Unregister the fds from any selector first. Tag: drain each pipe (without waiting
        for an end of file a process the task started may hold back) and forward the last
        partial line with a newline. Group: write each stream's tail (`max_output` bytes at
        most) as one block, ending in a newline. Capture: return the tails. A tail that lost
        its head starts with a line saying how many bytes were dropped. Raises no
        ``Exception``: a file that cannot be read gives a line saying so instead of its text.

        Returns:
            ``(stdout, stderr)`` as text for capture; ``(None, None)`` otherwise, and for a
            call after `finish` or `close`.
        """
        if not self._parent:
            return None, None
        try:
            if self._lines:
                self._finish_lines()
                return None, None
            texts = [
                self._tail(fd, stream) for fd, stream in zip(self._parent, _STREAMS, strict=True)
            ]
        finally:
            self.close()
        if self.mode == "capture":
            return texts[0], texts[1]
        for stream, text in zip(_STREAMS, texts, strict=True):
            emit(stream, text if text.endswith("\n") or not text else text + "\n")
        return None, None

    def close(self) -> None:
        """Close every fd still open, forwarding nothing more. Idempotent; never raises."""
        child, self._child = self._child, ()
        parent, self._parent = self._parent, ()
        for line in self._lines.values():
            line.open = False
        if self._track is not None:
            # Forgotten before they close: the numbers may be reused at once.
            self._track.difference_update(parent)
        _close_all((*child, *parent))

    # -- tag ----------------------------------------------------------------------------------

    def _pull(self, fd: int, line: _Line) -> int:
        # Read once; return the byte count (0: nothing now, or the end, which closes `line`).
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        if not data:
            line.open = False
            return 0
        self._forward(line, line.decoder.decode(data))
        return len(data)

    def _forward(self, line: _Line, text: str, final: bool = False) -> None:
        text = line.pending + text
        if final:
            complete, tail = (text if not text or text.endswith("\n") else text + "\n"), ""
        else:
            cut = text.rfind("\n") + 1
            complete, tail = text[:cut], text[cut:]
        prefix = self._prefix
        limit = min(self.max_output, LINE_LIMIT)
        parts = []
        # Pieces are cut every `limit` characters from the start of a line, whether it came
        # whole or not: the same output whatever the reads were.
        for whole in complete.split("\n")[:-1]:
            for start in range(0, max(len(whole), 1), limit):
                parts.append(prefix + whole[start : start + limit] + "\n")
        held = max(0, (len(tail) - 1) // limit * limit)  # leaves at most `limit` characters
        for start in range(0, held, limit):
            parts.append(prefix + tail[start : start + limit] + "\n")
        line.pending = tail[held:]
        emit(line.stream, "".join(parts))

    def _finish_lines(self) -> None:
        for fd, line in self._lines.items():
            drained = 0
            while line.open and drained < DRAIN_LIMIT:
                count = self._pull(fd, line)
                if not count:
                    break
                drained += count
            self._forward(line, line.decoder.decode(b"", True), final=True)

    # -- capture and group --------------------------------------------------------------------

    def _tail(self, fd: int, stream: StreamName) -> str:
        try:
            data, dropped = read_tail(fd, self.max_output, encoding_of(stream))
        except OSError as exc:
            return f"[inparallel: the task's {stream} could not be read: {exc}]\n"
        text = decode(data, stream)
        return dropped_note(dropped, self.max_output) + text if dropped else text


class _Line:
    """One tag stream: its decoder and the partial line it holds."""

    __slots__ = ("decoder", "open", "pending", "stream")

    def __init__(self, stream: StreamName) -> None:
        # The encoding is fixed now, before the fork: the child writes with the one it inherits.
        self.decoder = _decoder(encoding_of(stream))
        self.stream = stream
        self.pending = ""
        self.open = True


def _decoder(encoding: str) -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder(encoding)("backslashreplace")


def _high(fd: int) -> int:
    # Move an fd off 0-2 (free in a process that closed them): in_child's dup2 onto 1 and 2
    # would otherwise overwrite it. If this fails, ``fd`` is still open (the caller closes it).
    if fd > 2:
        return fd
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return high


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        try:  # noqa: SIM105 - also runs in a fresh child (see Streams.in_child)
            os.close(fd)
        except OSError:
            pass
