"""The native dedup index (``unimeter_native.DedupIndex``) against node/dedup_index.py's, in lock
step: random workloads (adds with new, re-added, expired and colliding keys, offsets past 2³²,
expiry, incremental growth, shrinking) give the same answers, the same counts and the same
snapshot bytes, and each loads the other's snapshot and goes on identically. Collected only where
the extension is built (tests/conftest.py)."""

from __future__ import annotations

import time
from array import array
from typing import Any

import msgpack
import pytest
import unimeter_native
from hypothesis import given, settings
from hypothesis import strategies as st

from node.dedup_index import DedupIndex

WINDOW = 1_000
MAX_KEY = 2**64 - 1
SPECIAL_KEYS = [0, 1, 1024, 2048, MAX_KEY, 2**63, 2**63 + 1024, 2**32]

Index = Any  # either implementation: they share every method the partition uses


def _spread(n: int) -> int:
    """Distinct keys with uniform low bits, like the digests a partition stores."""
    return n * 0x9E3779B97F4A7C15 % 2**64


def _packed(index: Index) -> bytes:
    return msgpack.packb(index.to_snapshot())  # type: ignore[no-any-return]


adds = st.tuples(
    st.just("add"),
    st.integers(0, 1_200),  # new keys: a 1,024-slot table grows past 614
    st.integers(0, 30),  # keys added before (live or expired)
    st.lists(st.sampled_from(SPECIAL_KEYS) | st.integers(0, 40).map(lambda h: h << 10), max_size=4),
    st.integers(0, 300),  # time since the previous step
)
steps = st.lists(
    st.one_of(
        adds,
        st.tuples(st.just("expire"), st.integers(0, 1_500)),
        st.tuples(st.just("grow"), st.integers(1, 3)),
        st.tuples(st.just("skip"), st.sampled_from([2**32, 2**32 + 7, 2**40])),
        st.tuples(st.just("swap")),
    ),
    max_size=40,
)


class _Pair:
    """The two implementations driven with the same calls, compared after each."""

    def __init__(self) -> None:
        self.python: Index = DedupIndex(WINDOW)
        self.native: Index = unimeter_native.DedupIndex(WINDOW)
        self.now = 0
        self.next_offset = 1
        self.next_key = 0
        self.seen: list[int] = []

    def add(self, n_new: int, n_again: int, special: list[int], dt: int) -> None:
        self.now += dt
        keys = [_spread(self.next_key + i) for i in range(n_new)]
        self.next_key += n_new
        keys += self.seen[-n_again:] if n_again else []
        keys += special
        keys = list(dict.fromkeys(keys))  # a partition never adds one key twice in one call
        offsets = list(range(self.next_offset, self.next_offset + len(keys)))
        self.next_offset += len(keys)
        for index in (self.python, self.native):
            index.add(self.now, keys, offsets)
        self.seen.extend(keys)

    def expire(self, dt: int) -> None:
        self.now += dt
        assert self.python.expire(self.now) == self.native.expire(self.now)

    def grow(self, times: int) -> None:
        for _ in range(times):
            self.python.advance_growth()
            self.native.advance_growth()

    def swap(self) -> None:
        """Snapshot both, check the bytes are equal, and go on from each other's snapshot."""
        python_bytes, native_bytes = _packed(self.python), _packed(self.native)
        assert python_bytes == native_bytes
        data = msgpack.unpackb(python_bytes)
        self.python, self.native = (
            DedupIndex.from_snapshot(WINDOW, data),
            unimeter_native.DedupIndex.from_snapshot(WINDOW, data),
        )

    def check(self) -> None:
        assert len(self.python) == len(self.native)
        assert self.python.growing == self.native.growing
        probe = self.seen[-300:] + self.seen[:50] + SPECIAL_KEYS + [_spread(self.next_key)]
        assert [self.python.get(k) for k in probe] == [self.native.get(k) for k in probe]


@settings(max_examples=60, deadline=None)
@given(steps)
def test_random_workloads_give_the_same_answers_and_snapshot_bytes(steps: list[tuple[Any, ...]]) -> None:
    pair = _Pair()
    for step in steps:
        kind, *args = step
        if kind == "skip":
            pair.next_offset = max(pair.next_offset, args[0])
        else:
            getattr(pair, kind)(*args)
        pair.check()
    pair.swap()
    pair.check()


def test_a_window_that_fills_grows_and_shrinks_alike() -> None:
    pair = _Pair()
    for _ in range(60):
        pair.add(500, 20, [], 50)
        pair.check()
    assert pair.native.growing or len(pair.native) > 20_000
    pair.expire(10_000)
    pair.check()
    assert len(pair.native) == 0
    pair.add(10, 0, [], 1)
    pair.swap()
    pair.check()


def test_a_growth_into_columns_prepared_ahead_holds_the_same_slots() -> None:
    """A native table whose next table is 1 MiB or more has those columns prepared on a helper
    thread from 11/20 load (``native/src/prefaulted_columns.rs``); the move into them holds the
    same slots as the Python table's, so the snapshot bytes stay equal."""
    pair = _Pair()
    memory = pair.native.memory_bytes
    while not (pair.native.memory_bytes > memory and not pair.native.growing):
        assert pair.next_key < 200_000, "no columns were prepared"
        memory = pair.native.memory_bytes
        pair.add(1_000, 0, [], 1)
    time.sleep(0.2)  # the helper has them ready by now; if not, the move allocates: same slots
    grown = len(pair.native)
    while pair.native.growing or len(pair.native) < grown + 30_000:
        pair.add(1_000, 10, [], 1)
        pair.check()
    pair.swap()
    pair.check()


def test_bad_calls_and_snapshots_raise_the_same_errors() -> None:
    for index_class in (DedupIndex, unimeter_native.DedupIndex):
        index = index_class(WINDOW)
        index.add(1, [5], [3])
        with pytest.raises(ValueError, match="offsets must be positive and above"):
            index.add(2, [6], [3])
        with pytest.raises(ValueError, match="keys and offsets differ in length"):
            index.add(2, [6], [])
        assert (len(index), index.get(5), index.get(6)) == (1, 3, None)
    good = msgpack.unpackb(_packed(DedupIndex(WINDOW)))
    bad_cases = {
        "not this version's format": ["dedup-lazy-0", *good[1:]],
        "bad offset column type": [*good[:2], "H", *good[3:]],
        "bad packed array": [*good[:1], good[1][:-1], *good[2:]],
        "bad table size": [*good[:3], good[3][:-4], *good[4:]],
        "bad groups": [*good[:5], b"\0" * 8, *good[6:]],
        "bad base or floor": [*good[:8], 0, *good[9:]],
        "table has no empty slot": [*good[:3], b"\1\0\0\0" * (len(good[3]) // 4), *good[4:]],
    }
    for message, data in bad_cases.items():
        for index_class in (DedupIndex, unimeter_native.DedupIndex):
            with pytest.raises(ValueError, match=message):
                index_class.from_snapshot(WINDOW, data)


def _outcome(call: Any) -> object:
    """What a call returns, or the type of what it raises (ValueError, OverflowError, ...)."""
    try:
        return call()
    except (ValueError, OverflowError) as exc:
        return type(exc)


snapshot_items = st.one_of(
    st.binary(max_size=64), st.integers(-2, 2**64 + 1), st.sampled_from(["I", "Q", "dedup-lazy-1", "x"])
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(snapshot_items, min_size=9, max_size=11),
    st.booleans(),
    st.integers(2, 8),
    st.binary(min_size=12, max_size=12),
    st.lists(
        st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(0, 9), st.sampled_from([0, 0, 1])), max_size=3
    ),
    st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)),
    st.lists(st.integers(0, 2**64 - 1), max_size=4),
)
def test_damaged_snapshots_load_alike_or_are_refused_alike(
    items: list[Any],
    shaped: bool,
    slots: int,
    slot: bytes,
    groups: list[tuple[int, int, int]],
    base_floor_last: tuple[int, int, int],
    probes: list[int],
) -> None:
    """Random snapshot lists, or lists shaped like one (a table of ``slots`` slots, the first one
    random, random groups, small base, floor and last): either both indexes load and then answer
    alike, or both refuse with ValueError."""
    data: list[Any] = list(items)
    if shaped:
        base, above, span = base_floor_last
        floor, last = base + above, base + above + span - 1  # base < floor <= last + 1 unless above is 0
        columns = [array(code, [g[i] for g in groups]).tobytes() for i, code in enumerate("qQQ")]
        offs = slot[8:] + bytes(4 * (slots - 1))
        data = ["dedup-lazy-1", slot[:8] * slots, "I", offs, base, *columns, floor, last]
    loaded = [
        _outcome(lambda c=c: c.from_snapshot(WINDOW, data)) for c in (DedupIndex, unimeter_native.DedupIndex)
    ]
    if loaded[0] is ValueError or loaded[1] is ValueError:
        assert loaded[0] is loaded[1] is ValueError
        return
    python, native = loaded
    assert [python.get(k) for k in probes] == [native.get(k) for k in probes]
    assert len(python) == len(native)
    offsets = list(range(10, 10 + len(probes)))
    assert _outcome(lambda: python.add(1, probes, offsets)) == _outcome(
        lambda: native.add(1, probes, offsets)
    )
    assert [python.get(k) for k in probes] == [native.get(k) for k in probes]
    assert _outcome(python.to_snapshot) == _outcome(native.to_snapshot)


def test_a_capture_keeps_its_bytes_while_later_captures_and_adds_go_on() -> None:
    """The native capture's columns are views of memory reused from one capture to the next
    (``native/src/capture_buffer.rs``): a snapshot still being packed or written must not see a
    later capture, of this index or another, or later adds, in its bytes."""
    first, second = unimeter_native.DedupIndex(WINDOW), unimeter_native.DedupIndex(WINDOW)
    first.add(1, [_spread(n) for n in range(1, 3_000)], list(range(1, 3_000)))
    second.add(1, [_spread(n) for n in range(5_000, 9_000)], list(range(1, 4_001)))
    captured = first.to_snapshot()
    expected = [bytes(c) if isinstance(c, memoryview) else c for c in captured]
    assert all(isinstance(captured[i], memoryview) and captured[i].readonly for i in (1, 3, 5, 6, 7))
    for _ in range(3):  # captures while the first's views are alive, and ones after theirs end
        assert msgpack.unpackb(_packed(second)) == msgpack.unpackb(msgpack.packb(second.to_snapshot()))
    first.add(2, [_spread(n) for n in range(3_000, 4_000)], list(range(3_000, 4_000)))
    assert [bytes(c) if isinstance(c, memoryview) else c for c in captured] == expected
    # And the captured bytes are the Python index's, which reads them back as they are.
    python = DedupIndex.from_snapshot(WINDOW, captured)  # type: ignore[arg-type]
    assert python.to_snapshot() == expected
    with pytest.raises(TypeError, match="read-only"):  # nothing writes a snapshot's column
        captured[1][0:1] = b"x"
