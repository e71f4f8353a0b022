"""scale/unscale, UUIDv7 ids, and the dedup index."""

from __future__ import annotations

import re
from decimal import Decimal

from cluster_client.ids import uuid7
from cluster_client.scaling import scale, unscale
from node.dedup_index import DedupIndex, derived_key, event_key


def test_scale_keeps_six_decimals_exactly() -> None:
    assert scale(45.0) == 45_000_000
    assert scale(9.99) == 9_990_000
    assert scale("0.000001") == 1
    assert scale(Decimal("123.4567895")) == 123_456_790  # half-even at the 7th decimal
    assert scale(3) == 3_000_000
    assert unscale(45_000_000) == 45.0


def test_uuid7_is_version_7_variant_10_and_time_ordered() -> None:
    ids = [uuid7() for _ in range(100)]
    assert len(set(ids)) == 100
    for u in ids:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", u)
    assert [u[:13] for u in ids] == sorted(u[:13] for u in ids)


def test_keys_depend_on_every_part() -> None:
    base = event_key(1, "m", 5, "id")
    assert base == event_key(1, "m", 5, "id")
    assert (
        len({base, event_key(2, "m", 5, "id"), event_key(1, "n", 5, "id"), event_key(1, "m", 6, "id")}) == 4
    )
    d = derived_key(1, "m", 5, 100, 7, 1, {"a": "x", "b": "y"})
    assert d == derived_key(1, "m", 5, 100, 7, 1, {"b": "y", "a": "x"})  # property order is irrelevant
    assert d != derived_key(1, "m", 5, 100, 7, 2, {"a": "x", "b": "y"})
    assert d != derived_key(1, "m", 5, 100, 7, 1, None)


def test_dedup_index_expires_by_arrival_and_round_trips() -> None:
    index = DedupIndex(window_ns=100)
    index.add(10, [1, 2], [11, 12])
    index.add(50, [3], [13])
    assert index.get(2) == 12
    snapshot = DedupIndex.from_snapshot(100, index.to_snapshot())  # type: ignore[arg-type]
    assert [snapshot.get(k) for k in (1, 2, 3)] == [11, 12, 13]
    assert index.expire(111) == 2
    assert (index.get(1), index.get(2), index.get(3)) == (None, None, 13)
    assert len(index) == 1


def test_event_index_single_hour_accounts_grow_into_many_hours_and_survive_a_snapshot() -> None:
    import gc

    import msgpack

    from node.aggregation.snapshot_data import pack
    from node.event_index import HOUR_NS, EventIndex

    index = EventIndex()
    index.add(100, [(1, 5), (2, 7)])
    index.add(100, [(1, 5)])  # the same record again: listed once
    index.add(200, [(1, 5)])
    assert list(index.hours(1, 0, 10 * HOUR_NS)) == [(5, [100, 200])]
    index.add(300, [(1, 3), (2, 7)])  # account 1 now has two hours
    index.add(400, [(1, 9)])
    assert list(index.hours(1, 0, 10 * HOUR_NS)) == [(3, [300]), (5, [100, 200]), (9, [400])]
    assert list(index.hours(1, 4 * HOUR_NS, 9 * HOUR_NS)) == [(5, [100, 200])]  # [start, end)
    assert list(index.hours(1, 5 * HOUR_NS + 1, 5 * HOUR_NS + 2)) == [(5, [100, 200])]
    assert list(index.hours(2, 0, 7 * HOUR_NS)) == []
    assert list(index.hours(2, 7 * HOUR_NS, 8 * HOUR_NS)) == [(7, [100, 300])]
    assert list(index.hours(3, 0, 10 * HOUR_NS)) == []
    restored = EventIndex.from_snapshot(msgpack.unpackb(pack(index.to_snapshot(below=401))))
    for account in (1, 2, 3):
        assert list(restored.hours(account, 0, 10 * HOUR_NS)) == list(index.hours(account, 0, 10 * HOUR_NS))
    restored.add(500, [(2, 8)])  # a restored single-hour account still grows
    assert list(restored.hours(2, 0, 10 * HOUR_NS)) == [(7, [100, 300]), (8, [500])]
    # The cyclic GC never walks the arrays of positions (one per account and hour).
    shapes = restored._accounts.values()
    arrays = [refs for v in shapes for refs in ([v[1]] if isinstance(v, tuple) else v.values())]
    assert len(arrays) == 5 and not any(gc.is_tracked(refs) for refs in arrays)


def test_event_index_positions_past_32_bits_are_kept_exactly() -> None:
    import msgpack

    from node.aggregation.snapshot_data import pack
    from node.event_index import HOUR_NS, EventIndex

    big = 2**32
    index = EventIndex()
    index.add(big - 1, [(1, 5), (2, 6), (2, 7)])
    index.add(big, [(1, 5), (2, 7)])  # past 32 bits: the arrays widen, in both shapes of an account
    index.add(2**62, [(1, 5), (2, 6)])
    want = {1: [(5, [big - 1, big, 2**62])], 2: [(6, [big - 1, 2**62]), (7, [big - 1, big])]}
    assert {a: list(index.hours(a, 0, 10 * HOUR_NS)) for a in (1, 2)} == want
    restored = EventIndex.from_snapshot(msgpack.unpackb(pack(index.to_snapshot(below=2**62))))
    want_restored = {1: [(5, [big - 1, big])], 2: [(6, [big - 1]), (7, [big - 1, big])]}
    assert {a: list(restored.hours(a, 0, 10 * HOUR_NS)) for a in (1, 2)} == want_restored
