"""validate_rows: the column-wise check that lets a valid batch through agrees with the per-event
check that names each violation, on batches mixing valid events with every kind of bad field."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cluster_client import AggType, Metric
from cluster_client.errors import InvalidArgumentError
from cluster_client.types import DimensionFilter, EventRow, OperationType
from cluster_client.validation import MAX_EVENT_ID_BYTES, _all_valid, _event_violation, validate_rows

METRICS = {
    "calls": Metric("calls", AggType.SUM),
    "peak": Metric("peak", AggType.MAX),
    "seats": Metric("seats", AggType.COUNT_UNIQUE),
    "infra": Metric("infra", AggType.SUM, filters=(DimensionFilter("region", ("eu", "us")),)),
}
INT63, UINT64 = 1 << 63, 1 << 64

# Each field's values: accepted ones and refused ones (some only for some metrics: REMOVE on a MAX
# metric, a value of 2^63 on a non-COUNT_UNIQUE one). Batches are mostly valid, with a few fields of a
# few events spoilt, so both the column check's accept path and its fall-backs are exercised.
VALID = (
    [1, 42, UINT64 - 1],
    ["calls", "peak", "seats", "infra"],
    [0, 5, INT63 - 1],
    [0, 1_772_323_200 * 10**9, INT63 - 1],
    [None, {}, {"region": "eu"}],
    [OperationType.ADD, 1],
    ["", "e-1", "x" * MAX_EVENT_ID_BYTES, "é" * (MAX_EVENT_ID_BYTES // 4)],
)
BAD = (
    [0, UINT64, -1],
    ["unknown"],
    [INT63, UINT64 - 1, UINT64, -1],
    [INT63, -1],
    [{"region": "mars"}, {"": "x"}, {"k" * 65: "v"}, {"region": "x" * 257}],
    [0, 3, OperationType.REMOVE, 2],  # REMOVE: refused for MAX metrics only
    ["x" * (MAX_EVENT_ID_BYTES + 1), "é" * (MAX_EVENT_ID_BYTES // 2 + 1)],
)


@st.composite
def batches(draw: st.DrawFn) -> list[EventRow]:
    rows: list[tuple[object, ...]] = [
        tuple(draw(st.sampled_from(choices)) for choices in VALID) for _ in range(draw(st.integers(1, 12)))
    ]
    for _ in range(draw(st.integers(0, 2))):
        i, field = draw(st.integers(0, len(rows) - 1)), draw(st.sampled_from(range(7)))
        row: list[object] = list(rows[i])
        row[field] = draw(st.sampled_from(BAD[field]))
        rows[i] = tuple(row)
    return rows  # type: ignore[return-value]


def per_event(rows: list[EventRow]) -> list[str]:
    """The reference: the per-event check's violations, field by field."""
    found = []
    for i, row in enumerate(rows):
        violation = _event_violation(row, METRICS.get(row[1]), f"events[{i}]")
        if violation is not None:
            found.append(violation.field)
    return found


@settings(max_examples=400, deadline=None)
@given(batches())
@example([(1, "peak", 5, 0, None, OperationType.REMOVE, "")])
@example([(1, "calls", INT63, 0, None, OperationType.ADD, "")])
@example([(1, "seats", UINT64 - 1, 0, None, OperationType.ADD, "")])  # valid: a COUNT_UNIQUE member id
@example([(1, "calls", 5, 0, None, 3, "")])
@example([(1, "calls", 5, 0, None, OperationType.ADD, "é" * (MAX_EVENT_ID_BYTES // 2 + 1))])
@example([(1, "infra", 5, 0, {"region": "eu"}, 1, ""), (2, "infra", 5, 0, {"region": "mars"}, 1, "")])
def test_a_batch_is_accepted_exactly_when_no_event_has_a_violation(rows: list[EventRow]) -> None:
    expected = per_event(rows)
    if expected:
        with pytest.raises(InvalidArgumentError) as raised:
            validate_rows(rows, METRICS.get)
        assert [v.field for v in raised.value.violations] == expected
    else:
        validate_rows(rows, METRICS.get)


def test_rows_of_the_wrong_shape_are_not_let_through_by_the_column_check() -> None:
    good: EventRow = (1, "calls", 1, 0, None, OperationType.ADD, "")
    with pytest.raises((ValueError, TypeError)):
        validate_rows([good, (*good, "extra")], METRICS.get)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        validate_rows([good, ("1", "calls", 1, 0, None, OperationType.ADD, "")], METRICS.get)  # type: ignore[list-item]


def test_the_column_check_accepts_the_common_batch_on_its_own() -> None:
    """36-character ids (UUIDs), explicit times, no properties: the reference workload's batch
    is accepted without the per-event check (a tenth of an event's ingest cost when it ran)."""
    rows: list[EventRow] = [
        (
            1 + i,
            "calls",
            i,
            1_772_323_200 * 10**9 + i,
            None,
            OperationType.ADD,
            f"{i:08d}-aaaa-bbbb-cccc-dddddddddddd",
        )
        for i in range(1000)
    ]
    assert _all_valid(rows, METRICS.get)
    non_ascii = [(1, "calls", 1, 0, None, OperationType.ADD, "é" * 40)]  # 80 bytes: valid, checked per event
    assert not _all_valid(non_ascii, METRICS.get)
    validate_rows(non_ascii, METRICS.get)


def test_the_smallest_bad_property_key_is_named_whatever_the_dict_order() -> None:
    for props in ({"z" * 65: "v", "b": "x" * 257}, {"b": "x" * 257, "z" * 65: "v"}):
        with pytest.raises(InvalidArgumentError) as err:
            validate_rows([(1, "calls", 1, 0, props, 1, "")], METRICS.get)
        assert [(v.field, v.description) for v in err.value.violations] == [
            ("events[0].properties[b]", "must be at most 256 characters")
        ]
