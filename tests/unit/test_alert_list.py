"""The packed in-memory alert list (``node.alert_list``): every alert reads back exactly as appended.

Against the plain model (a list of ``Alert`` objects built from the same alert-log rows): every
index, negative index and slice, values at and past the int64 edges (kept in the side table), and
the bytes an alert costs, measured with tracemalloc at a stated generous bound.
"""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_client.types import Alert
from node.alert_list import AlertList

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1

ints = st.one_of(
    st.integers(-5, 5),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MAX, INT64_MAX + 1, UINT64_MAX, 0]),
)
rows = st.tuples(
    ints,
    st.sampled_from(["calls", "bytes", "é"]),
    st.sampled_from(["every", "first", ""]),
    ints,
    ints,
    ints,
    ints,
    ints,
    ints,
)


def model(partition: int, appended: list[tuple[object, ...]]) -> list[Alert]:
    return [Alert(*row, partition, i + 1) for i, row in enumerate(appended)]  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.lists(rows, max_size=30), st.integers(0, 63))
def test_every_alert_reads_back_as_appended(appended: list[tuple[object, ...]], partition: int) -> None:
    alerts = AlertList(partition)
    want = model(partition, appended)
    for i, row in enumerate(appended):
        assert alerts.append(row) == want[i]
    assert len(alerts) == len(want)
    assert [alerts[i] for i in range(len(want))] == want
    assert [alerts[-i - 1] for i in range(len(want))] == want[::-1]
    for lo in range(len(want) + 2):
        for hi in range(lo, len(want) + 2):
            assert alerts[lo:hi] == want[lo:hi]


def test_an_index_past_either_end_raises_index_error() -> None:
    alerts = AlertList(0)
    alerts.append((1, "calls", "every", 10, 1, 10, 0, 5, 6))
    for index in (1, -2):
        with pytest.raises(IndexError):
            alerts[index]


def test_an_alert_costs_under_100_bytes() -> None:
    # A Python Alert object with its ints is ~400 bytes; the packed columns are 8 bytes per int
    # field and 4 for the codes' id (plus array over-allocation): ~70 bytes.
    n = 50_000
    alerts = AlertList(3)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            alerts.append(
                (
                    1000 + i % 977,
                    "calls",
                    "every",
                    1_000_000,
                    i + 1,
                    10**9 + i,
                    10**18,
                    10**18 + i,
                    10**18 + 2 * i,
                )
            )
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / n < 100
    last = n - 1
    want = (1000 + last % 977, "calls", "every", 1_000_000, n, 10**9 + last, 10**18, 10**18 + last)
    assert alerts[last] == Alert(*want, 10**18 + 2 * last, 3, n)
