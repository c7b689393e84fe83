"""Result values of process maps: a chunk's values travel as one pickle, and still fail alone.

A worker pickles a chunk's values as one list, and the parent loads it with one ``loads``. A
value that will not pickle sends the chunk one value at a time instead, and one that will not
load in the parent is found in the list's pickle afterwards: either way it fails at its own
position and every value before it is delivered. Covers the encoding (`pack_values`,
`unpack_values` and the rewrite behind the second) and, end to end, container results in one
chunk of ``process_map``: round trips, unpicklable and unloadable values, the function's
errors, and big buffers that travel out of band.
"""

from __future__ import annotations

import dataclasses
import pickle
import pickletools
import random
import threading
from typing import Any

import pytest
from _faults import ErrorAtUnpickle, drain

from inparallel import RemoteError, ResultNotPicklable, process_map
from inparallel._core._channel import PackedValues, pack_values, unpack_values
from inparallel._core._salvage import _append_each, load_until_failure
from inparallel._core._wire import BIG_BYTES
from inparallel._pools import _pack_reply

try:  # at import: numpy starts its BLAS threads then, not inside a test that checks for leaks
    import numpy as np
except ImportError:  # an optional dependency: its tests are skipped
    np = None

needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not installed")


@dataclasses.dataclass
class Point:
    x: int
    label: str


@dataclasses.dataclass(frozen=True, slots=True)
class Frozen:
    values: tuple[int, ...]


def container(x: int) -> object:
    """A different container (or dataclass) per item."""
    kinds = [
        (x, str(x)),
        [x, [x + 1]],
        {"k": x, "nested": {"t": (x,)}},
        Point(x, f"p{x}"),
        Frozen((x, x + 1)),
        {x, -x},
        (),
        x / 4,
    ]
    return kinds[x % len(kinds)]


def unpack(packed: PackedValues) -> tuple[list[Any], BaseException | None]:
    """`unpack_values` on the parts as the parent has them: views of the message it read."""
    parts = [memoryview(bytearray(memoryview(p).cast("B"))) for p in packed.parts]
    return unpack_values(packed.whole, packed.layout, parts)


# -- the encoding ------------------------------------------------------------------------------


def test_a_chunk_of_container_values_is_one_pickle_and_loads_back_exactly() -> None:
    values = [container(x) for x in range(40)]
    packed = pack_values(values, "the mapped function returned")
    assert packed.whole and packed.layout == [0] and len(packed.parts) == 1
    assert packed.error is None
    got, error = unpack(packed)
    assert error is None
    assert got == values
    assert [type(v) for v in got] == [type(v) for v in values]


def test_a_worker_replies_with_one_pickle_for_a_chunk_of_containers() -> None:
    values = [container(x) for x in range(40)]
    envelope, *parts = _pack_reply(0, values, None, 0.0)
    start, whole, layout, error, _ = pickle.loads(envelope)
    assert (start, whole, layout, error) == (0, True, [0], None)
    assert len(parts) == 1 and pickle.loads(parts[0]) == values


def test_an_unpicklable_value_sends_the_chunk_one_value_at_a_time_up_to_it() -> None:
    values: list[Any] = [(0, "a"), {"b": 1}, threading.Lock(), (3, "d")]
    packed = pack_values(values, "the mapped function returned")
    assert not packed.whole and len(packed.layout) == 2  # the values before the lock
    assert isinstance(packed.error, ResultNotPicklable)
    assert "the mapped function returned" in str(packed.error)
    assert unpack(packed) == (values[:2], None)


def test_big_bytes_in_a_container_still_travel_out_of_band() -> None:
    blob = b"x" * BIG_BYTES
    packed = pack_values([(1, "small"), (2, blob)], "")
    assert not packed.whole and packed.layout == [0, 1]  # one value at a time, as _wire wraps
    assert bytes(packed.parts[2]) == blob
    packed = pack_values([(1, "small"), (2, b"y" * 100)], "")
    assert packed.whole and packed.layout == [0]


@needs_numpy
def test_big_arrays_in_a_chunk_pickled_whole_travel_out_of_band() -> None:
    big, small = np.arange(BIG_BYTES // 8, dtype=np.int64), np.arange(4)
    values = [(0, big), {"small": small}, Point(1, "p")]
    packed = pack_values(values, "")
    assert packed.whole and packed.layout == [1]
    assert memoryview(packed.parts[1]).nbytes == big.nbytes
    got, error = unpack(packed)
    assert error is None
    assert np.array_equal(got[0][1], big) and np.array_equal(got[1]["small"], small)
    assert got[2] == Point(1, "p")


class _Refuses:
    """Pickles in the child, fails to load anywhere."""

    def __reduce__(self) -> Any:
        return (_refuse, ())


def _refuse() -> object:
    raise LookupError("will not load")


def _random_value(rng: random.Random, depth: int = 0) -> object:
    if depth > 3 or rng.random() < 0.3:
        return rng.choice([1, -5, 2**70, 1.5, "s", "x" * 300, b"b", None, True, 3 + 4j])
    size = rng.randrange(6)
    make = rng.choice(
        [
            lambda: tuple(_random_value(rng, depth + 1) for _ in range(size)),
            lambda: [_random_value(rng, depth + 1) for _ in range(size)],
            lambda: {str(i): _random_value(rng, depth + 1) for i in range(size)},
            lambda: Point(size, str(_random_value(rng, depth + 1))),
            lambda: Frozen(tuple(range(size))),
            lambda: frozenset(range(size)),
        ]
    )
    return make()


def _random_values(rng: random.Random) -> list[object]:
    # Sizes around the 1,000 items a list's pickle appends at once.
    n = rng.choice([0, 1, 2, 3, 7, 999, 1000, 1001, 2500])
    values = [_random_value(rng) for _ in range(n)]
    if n:
        shared = ("shared", [1])  # memo references across items
        values[rng.randrange(n)] = shared
        values[rng.randrange(n)] = (shared, shared)
        looped: list[object] = []
        looped.append(looped)
        values[rng.randrange(n)] = looped
    return values


@pytest.mark.parametrize("seed", range(20))
def test_a_list_pickle_rewritten_to_append_each_item_loads_the_same(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        values = _random_values(rng)
        data = pickle.dumps(values, protocol=5)
        ops = [(op, pos or 0) for op, _, pos in pickletools.genops(data)]
        assert repr(pickle.loads(_append_each(data, ops))) == repr(values)


@pytest.mark.parametrize("seed", range(20))
def test_loading_a_list_again_keeps_every_item_before_the_one_that_fails(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        values = _random_values(rng) or [1]
        k = rng.randrange(len(values))
        values[k] = rng.choice(
            [_Refuses(), (1, _Refuses()), [_Refuses()], {"a": _Refuses()}, (_Refuses(), 1, 2, 3)]
        )
        loaded, complete = load_until_failure(memoryview(pickle.dumps(values, protocol=5)), [])
        assert not complete
        assert repr(loaded) == repr(values[:k])


def test_a_value_the_parent_cannot_load_ends_the_list_with_its_error() -> None:
    values: list[Any] = [container(x) for x in range(1500)]
    values[1200] = (1200, _Refuses())
    packed = pack_values(values, "")
    assert packed.whole
    got, error = unpack(packed)
    assert got == values[:1200]
    assert isinstance(error, RemoteError) and "will not load" in str(error)


# -- end to end ----------------------------------------------------------------------------------


def test_container_results_of_one_chunk_round_trip_exactly() -> None:
    out = list(process_map(container, range(64), chunksize=64, num_workers=1))
    assert out == [container(x) for x in range(64)]
    assert [type(v) for v in out] == [type(container(x)) for x in range(64)]


def _array(x: int) -> Any:
    kinds = [
        lambda: np.full(3, x, dtype=np.int32),
        lambda: np.arange(12.0).reshape(3, 4)[:, ::2] * x,  # not contiguous
        lambda: np.asfortranarray(np.arange(6).reshape(2, 3) + x),
        lambda: np.array(x),  # 0-d
        lambda: np.array([x, "s", None], dtype=object),
        lambda: np.full(BIG_BYTES // 8, x, dtype=np.int64),  # out of band
        lambda: np.zeros(0),
    ]
    return kinds[x % len(kinds)]()


@needs_numpy
@pytest.mark.parametrize(
    "make", [_array, lambda x: (x, {"a": _array(x)})], ids=["arrays", "in containers"]
)
def test_numpy_results_of_one_chunk_round_trip_exactly(make: Any) -> None:
    out = list(process_map(make, range(30), chunksize=30, num_workers=1))
    for x, value in enumerate(out):
        got, want = (value, make(x)) if make is _array else (value[1]["a"], make(x)[1]["a"])
        assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
        assert got.flags.f_contiguous == want.flags.f_contiguous
        assert got.tolist() == want.tolist()
        assert got.flags.writeable


@pytest.mark.parametrize("k", [0, 5, 11])
def test_an_unpicklable_result_fails_only_its_own_item(k: int) -> None:
    def fn(x: int) -> object:
        return (x, threading.Lock()) if x == k else container(x)

    it = iter(process_map(fn, range(12), chunksize=12, num_workers=1))
    out, error = drain(it)
    assert out == [container(x) for x in range(k)]
    assert isinstance(error, ResultNotPicklable) and isinstance(error, TypeError)
    assert "lock" in str(error)


def test_a_result_only_cloudpickle_takes_is_delivered_with_the_rest_of_its_chunk() -> None:
    def fn(x: int) -> object:
        return (x, lambda: x * 10) if x == 3 else container(x)

    out = list(process_map(fn, range(8), chunksize=8, num_workers=1))
    assert out[:3] == [container(x) for x in range(3)]
    assert out[3][0] == 3 and out[3][1]() == 30
    assert out[4:] == [container(x) for x in range(4, 8)]


@pytest.mark.parametrize("k", [0, 999, 1000, 1777])
def test_a_result_the_parent_cannot_load_fails_at_its_position_in_a_big_chunk(k: int) -> None:
    def fn(x: int) -> object:
        return (x, ErrorAtUnpickle(f"item {x} will not load")) if x == k else container(x)

    it = iter(process_map(fn, range(2500), chunksize=2500, num_workers=1))
    out, error = drain(it)
    assert isinstance(error, RemoteError)
    assert f"item {k} will not load" in str(error)
    assert out == [container(x) for x in range(k)]


@pytest.mark.parametrize("k", [0, 6, 13])
def test_an_error_of_the_function_surfaces_at_its_position(k: int) -> None:
    def fn(x: int) -> object:
        if x == k:
            raise KeyError(f"item {x}")
        return container(x)

    it = iter(process_map(fn, range(14), chunksize=14, num_workers=1))
    out, error = drain(it)
    assert out == [container(x) for x in range(k)]
    assert isinstance(error, KeyError) and error.args == (f"item {k}",)


@needs_numpy
def test_big_buffers_among_container_results_arrive_whole() -> None:
    size = 2 << 20

    def fn(x: int) -> object:
        if x % 4 == 1:
            return (x, bytes([x]) * size)
        if x % 4 == 2:
            return {"a": np.full(size // 8, x, dtype=np.int64)}
        return container(x)

    out = list(process_map(fn, range(12), chunksize=12, num_workers=1))
    for x, value in enumerate(out):
        if x % 4 == 1:
            assert value == (x, bytes([x]) * size)
        elif x % 4 == 2:
            assert value["a"].shape == (size // 8,) and int(value["a"][-1]) == x
        else:
            assert value == container(x)
