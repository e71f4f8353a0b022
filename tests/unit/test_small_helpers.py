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
