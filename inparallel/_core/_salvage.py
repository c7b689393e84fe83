"""Loading the values before the one that fails, from a list's pickle that failed to load.

A map chunk's values travel as one pickle of a list (``_channel.pack_values``). When one value
will not load in the parent (its class is missing here, its ``__reduce__`` fails), the load
fails as a whole, and a list's pickle appends its items a batch (up to 1,000) at a time, so even
the unpickler's memo holds none of the failing batch. `load_until_failure` rewrites the pickle
to append each item as soon as it is complete and loads it again: the items before the failing
one are then in the list, which is memo 0. Only called after a failed load: slow, and rare.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pickletools import OpcodeInfo

__all__ = ("load_until_failure",)


def load_until_failure(payload: memoryview, buffers: list[memoryview]) -> tuple[list[Any], bool]:
    """Load a list's pickle again; return the items before the one that fails, and if none did.

    A list's pickle appends its items a batch (up to 1,000) at a time, and a failing load drops
    its batch: the pickle is rewritten to append each item once loaded, and the list is read
    from the unpickler's memo.
    """
    import pickletools  # only here: a load failed (rare), and this is slow anyway

    data = bytes(payload)
    try:
        stream = _append_each(data, [(op, pos or 0) for op, _, pos in pickletools.genops(data)])
    except ValueError:  # not a list's pickle as pickle.dumps writes it: keep nothing
        return [], False
    unpickler = pickle.Unpickler(io.BytesIO(stream), buffers=buffers)
    try:
        loaded: list[Any] = unpickler.load()
    except BaseException:  # the failure again (even SystemExit from a reducer): the list ends
        return list(unpickler.memo.copy()[0]), False
    return loaded, True


#: Opcodes that store the top of the stack in the memo, leaving the stack as it is.
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})


def _append_each(payload: bytes, ops: list[tuple[OpcodeInfo, int]]) -> bytes:
    """Rewrite a list's pickle (``ops`` are its opcodes) to append each item once complete.

    The list must be memo 0, as ``pickle.dumps`` writes it. Frames (optional) go, and so do
    the list's own marks and ``APPENDS``; an ``APPEND`` follows each item and the opcodes that
    memoize it. The other opcodes stay, so memo numbers and out-of-band buffers line up. An
    item fills the stack slot above the items before it, and is complete once no later opcode
    (before the list's ``APPENDS``) pops that slot: ``TUPLE2`` pops a tuple's first element.

    Raises:
        ValueError: ``ops`` are not such a pickle's.
    """
    names = [op.name for op, _ in ops if op.name not in ("PROTO", "FRAME")]
    if names[:2] != ["EMPTY_LIST", "MEMOIZE"]:
        raise ValueError("not the pickle of a list memoized first")
    ends = [pos for _, pos in ops[1:]] + [ops[-1][1] + 1]  # the last opcode is STOP
    lows, highs, list_marks = _heights(ops)
    floor, lowest = [math.inf] * len(ops), math.inf  # how low later opcodes pop, per batch
    for index in reversed(range(len(ops))):
        floor[index] = lowest
        lowest = math.inf if lows[index] == 0 else min(lowest, lows[index])
    out = bytearray()
    slot, pending = 1, False  # where the next item goes; an item is complete, not appended
    for index, (op, pos) in enumerate(ops):
        if pending and op.name not in _MEMO_PUTS:
            out += b"a"  # APPEND
            pending = False
        if lows[index] == 0 and op.name in ("APPEND", "APPENDS"):  # the list's own
            slot = 1
        elif op.name != "FRAME" and index not in list_marks:
            out += payload[pos : ends[index]]
            if lows[index] > 0 and highs[index] > slot and floor[index] > slot:
                pending, slot = True, slot + 1  # an opcode pushes one object at most
    return bytes(out)


def _heights(ops: list[tuple[OpcodeInfo, int]]) -> tuple[list[int], list[int], set[int]]:
    """Return the stack's lowest and last height at each opcode, and the list's own marks.

    Marks take no slot. The list's marks are those closed by an opcode that pops the list.

    Raises:
        ValueError: An opcode pushes two objects, or pops more than was pushed.
    """
    import pickletools

    mark = pickletools.markobject
    lows, highs, list_marks = [], [], set()
    height, marks = 0, list[tuple[int, int]]()  # (height, opcode index) of each open mark
    for index, (op, _) in enumerate(ops):
        before, after = ([], []) if op.name in _MEMO_PUTS else (op.stack_before, op.stack_after)
        if len(after) > 1:  # DUP: pickle.dumps never writes it
            raise ValueError(f"unexpected opcode {op.name}")
        if mark in before or (op.name == "POP" and marks and marks[-1][0] == height):
            height, opened = marks.pop()
            height -= before.index(mark) if mark in before else 0  # what the mark is above
            if height == 0:
                list_marks.add(opened)
        else:
            height -= len(before)
        if height < 0:
            raise ValueError("the pickle pops more than it pushed")
        lows.append(height)
        if mark in after:
            marks.append((height, index))
        else:
            height += len(after)
        highs.append(height)
    return lows, highs, list_marks
