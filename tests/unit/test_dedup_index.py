"""The dedup index against a plain-dict model: colliding keys, re-adds, expiry, growth, snapshots."""

from __future__ import annotations

from array import array
from collections import deque

import msgpack
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from node import dedup_index
from node.dedup_index import DedupIndex, _capacity_for

WINDOW = 100
MAX_KEY = 2**64 - 1
# Keys that all share their low 10 bits (so their probe runs collide in a 1024-slot table), the
# extremes of the key range, and keys with the values an implementation might reserve.
SPECIAL_KEYS = [0, 1, 2, 1024, 2048, MAX_KEY, MAX_KEY - 1, 2**63, 2**63 + 1024, 2**32]
keys_st = st.one_of(
    st.sampled_from(SPECIAL_KEYS),
    st.builds(lambda high, low: (high << 10) | low, st.integers(0, 40), st.sampled_from([0, 1, 1023])),
    st.builds(lambda high, low: (high << 10) | low, st.integers(0, 2**54 - 1), st.integers(0, 1023)),
)


def _spread(n: int) -> int:
    """Distinct keys with uniform low bits, like the digests the partition stores."""
    return n * 0x9E3779B97F4A7C15 % 2**64


def _roundtrip(data: list[object]) -> list[object]:
    out: list[object] = msgpack.unpackb(msgpack.packb(data), strict_map_key=False)
    return out


class DedupModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Small moves: a growing table stays half moved across many steps (gets, adds, expiry),
        # and may fill up again before its move is over.
        self.saved_move = (dedup_index._MOVE_SLOTS, dedup_index._MOVE_SLOTS_PER_KEY)
        dedup_index._MOVE_SLOTS, dedup_index._MOVE_SLOTS_PER_KEY = 16, 1
        self.index = DedupIndex(WINDOW)
        self.now = 0
        self.next_offset = 1
        self.next_group = 0
        # key -> (offset, group of its newest add); groups in arrival order: (arrival, group, keys)
        self.live: dict[int, tuple[int, int]] = {}
        self.groups: deque[tuple[int, int, list[int]]] = deque()
        self.bulk_base = 1

    def _add(self, keys: list[int]) -> None:
        offsets = list(range(self.next_offset, self.next_offset + len(keys)))
        self.next_offset += len(keys)
        self.index.add(self.now, keys, offsets)
        if keys:
            group = self.next_group
            self.next_group += 1
            for key, off in zip(keys, offsets, strict=True):
                self.live[key] = (off, group)
            self.groups.append((self.now, group, keys))

    @rule(dt=st.integers(0, 60))
    def advance(self, dt: int) -> None:
        self.now += dt

    @rule(keys=st.lists(keys_st, max_size=12))
    def add(self, keys: list[int]) -> None:
        self._add(keys)

    @rule(to=st.sampled_from([2**32, 2**62, 2**63 + 5]))
    def skip_offsets(self, to: int) -> None:
        """Offsets only have to increase; large ones must survive the table and snapshots."""
        self.next_offset = max(self.next_offset, to)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def re_add_live_key(self, data: st.DataObject) -> None:
        self._add([data.draw(st.sampled_from(sorted(self.live)))])

    @rule(count=st.sampled_from([200, 700]), low=st.sampled_from([0, 7]))
    def bulk_add(self, count: int, low: int) -> None:
        """Many distinct keys sharing their low 6 bits: long probe runs, and growth of the table."""
        keys = [((self.bulk_base + j) << 6) | low for j in range(count)]
        self.bulk_base += count
        self._add(keys)

    @rule()
    def expire(self) -> None:
        cutoff = self.now - WINDOW
        forgotten = 0
        while self.groups and self.groups[0][0] < cutoff:
            _, group, keys = self.groups.popleft()
            for key in keys:
                entry = self.live.get(key)
                if entry is not None and entry[1] == group:
                    del self.live[key]
                    forgotten += 1
        assert self.index.expire(self.now) == forgotten

    @rule()
    def advance_growth(self) -> None:
        """What a snapshot does before capturing: a growth under way moves on without an add."""
        growing = self.index.growing
        self.index.advance_growth()
        assert growing or not self.index.growing

    @rule()
    def snapshot_roundtrip(self) -> None:
        self.index = DedupIndex.from_snapshot(WINDOW, _roundtrip(self.index.to_snapshot()))

    @rule(key=keys_st)
    def get_any(self, key: int) -> None:
        entry = self.live.get(key)
        assert self.index.get(key) == (entry[0] if entry else None)

    def teardown(self) -> None:
        dedup_index._MOVE_SLOTS, dedup_index._MOVE_SLOTS_PER_KEY = self.saved_move

    @invariant()
    def matches_model(self) -> None:
        assert len(self.index) == len(self.live)
        for key, (off, _) in self.live.items():
            assert self.index.get(key) == off
        for key in SPECIAL_KEYS:
            if key not in self.live:
                assert self.index.get(key) is None


DedupModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestDedupModel = DedupModel.TestCase


def test_a_half_moved_table_answers_like_a_whole_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup_index, "_MOVE_SLOTS", 64)
    monkeypatch.setattr(dedup_index, "_MOVE_SLOTS_PER_KEY", 1)
    index = DedupIndex(WINDOW)
    early = [_spread(n) for n in range(300)]
    late = [_spread(n) for n in range(300, 600)]
    index.add(10, early, list(range(1, 301)))
    index.add(60, late, list(range(301, 601)))
    more = [_spread(n) for n in range(600, 620)]
    index.add(70, more, list(range(601, 621)))  # 620 used slots would pass 3/5 of 1024: a move
    assert index._old_keys is not None and index._cap == _capacity_for(620)
    assert [index.get(k) for k in early + late] == list(range(1, 601))  # from either table
    index.add(80, [early[-1], _spread(700)], [700, 701])  # re-added mid-move
    assert index.get(early[-1]) == 700 and index.get(_spread(700)) == 701
    assert index.expire(111) == 299  # the first group (minus its re-added key) expires mid-move
    assert index._old_keys is not None
    assert [index.get(k) for k in early] == [None] * 299 + [700]
    restored = DedupIndex.from_snapshot(WINDOW, _roundtrip(index.to_snapshot()))  # finishes the move
    assert index._old_keys is None
    for table in (index, restored):
        assert len(table) == 322
        assert [table.get(k) for k in late + more] == list(range(301, 621))
        assert table.get(early[-1]) == 700 and table.get(early[0]) is None


def test_growth_expiry_and_re_adds_with_shared_low_bits() -> None:
    index = DedupIndex(WINDOW)
    keys = [(j << 16) | 0xABCD for j in range(1, 3001)] + [0, MAX_KEY]
    index.add(1, keys, list(range(1, len(keys) + 1)))
    index.add(50, [5, 0], [10_000, 10_001])  # 0 again while live: the newer entry must survive
    assert len(index) == len(keys) + 1
    assert index.get(0) == 10_001 and index.get(MAX_KEY) == len(keys)
    assert index.expire(102) == len(keys) - 1  # key 0's first add is superseded, not forgotten
    assert (index.get(0), index.get(5), index.get(1 << 16 | 0xABCD)) == (10_001, 10_000, None)
    index.add(120, [1 << 16 | 0xABCD], [20_000])  # re-added after it expired
    assert index.expire(151) == 2
    assert index.get(1 << 16 | 0xABCD) == 20_000 and len(index) == 1


def test_expired_slots_are_reused_so_a_steady_window_keeps_its_table_size() -> None:
    index = DedupIndex(WINDOW)
    offset = 1
    sizes = []
    for step in range(60):  # 500 keys per step; the window holds the last 3 steps
        keys = [_spread(step * 500 + j) for j in range(500)]
        index.add(step * 50, keys, list(range(offset, offset + 500)))
        offset += 500
        index.expire(step * 50)
        sizes.append(len(index._keys))
        assert len(index) == 500 * min(step + 1, 3)
        assert index.get(_spread(step * 500 + 7)) == offset - 500 + 7
        if step >= 3:
            assert index.get(_spread((step - 3) * 500 + 7)) is None
    # No growth once arrivals and expiry balance: 2000 keys (1500 live + 500 arriving) at 3/10 load.
    assert set(sizes[4:]) == {6667}, sizes
    assert index.expire(60 * 50 + WINDOW) == 1500 and len(index) == 0
    assert len(index._keys) == 1024  # shrunk when traffic fell
    index.add(60 * 50 + WINDOW, [1], [offset])
    assert index.get(1) == offset


def test_offsets_are_stored_in_32_bits_unless_the_live_ones_span_more() -> None:
    index = DedupIndex(WINDOW)
    index.add(1, [1, 2], [10, 11])
    assert index._offs.typecode == "I"
    index.add(2, [3], [2**40])  # still within the window of offsets 10 and 11: 64-bit column
    assert index._offs.typecode == "Q"
    assert [index.get(k) for k in (1, 2, 3)] == [10, 11, 2**40]
    index = DedupIndex.from_snapshot(WINDOW, _roundtrip(index.to_snapshot()))
    assert [index.get(k) for k in (1, 2, 3)] == [10, 11, 2**40]
    assert index.expire(102) == 2  # offsets 10 and 11 expire: what is left fits 32 bits again
    index.add(120, [4], [2**40 + 2**31])
    assert index._offs.typecode == "Q"  # no rebuild was needed yet
    assert index.expire(200) == 1
    index.add(210, [5], [2**41])
    assert index._offs.typecode == "Q"  # a wide column stays wide until the table is rebuilt
    assert index.expire(221) == 1  # offset 2**40 + 2**31 goes
    many = [_spread(n) for n in range(10, 710)]
    index.add(222, many, list(range(2**41 + 1, 2**41 + 701)))  # past 3/5 of 1024 slots: rebuilt
    assert index._offs.typecode == "I" and index._cap == _capacity_for(701)
    assert [index.get(k) for k in (1, 2, 3, 4, 5)] == [None, None, None, None, 2**41]
    assert index.get(many[-1]) == 2**41 + 700 and len(index) == 701


def test_other_snapshot_formats_are_refused() -> None:
    """The FIFO version's format and the record format before it: recovery replays the log instead."""
    packed = array("Q", [1, 2]).tobytes()
    for old in (
        ["dedup-oa-1", b"\0" * 8192, b"\0" * 8192, b"", b"", b"", []],
        [[10, packed, packed]],
        [],
    ):
        with pytest.raises(ValueError):
            DedupIndex.from_snapshot(WINDOW, _roundtrip(old))


def test_bad_input_leaves_the_index_untouched() -> None:
    index = DedupIndex(WINDOW)
    index.add(1, [7], [70])
    bad = (
        *(([8], [0]), ([8, 9], [71]), ([-1], [75]), ([2**64], [75]), ([8], [2**64])),
        *(([8], [70]), ([8], [69])),  # offsets must rise from add to add
    )
    for keys, offsets in bad:
        with pytest.raises((ValueError, OverflowError)):
            index.add(2, keys, offsets)
    assert len(index) == 1 and index.get(8) is None
    index.add(3, [8], [71])
    assert index.expire(102) == 1 and index.get(8) == 71
    tag, *columns = index.to_snapshot()
    for broken in (
        [tag, *columns[:7], 0, columns[8]],  # floor below 1
        [tag, *columns[:3], 71, *columns[4:]],  # base not below the floor (71)
        [tag, b"\0" * 24, "I", b"\0" * 8, *columns[3:]],  # key and offset columns of different lengths
        [tag, columns[0], "d", *columns[2:]],  # offsets as floats
        [tag, *columns[:4], b"", *columns[5:]],  # groups of different lengths
    ):
        with pytest.raises(ValueError):
            DedupIndex.from_snapshot(WINDOW, broken)
