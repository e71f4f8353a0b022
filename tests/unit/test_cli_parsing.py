"""The CLI's pure parts: time, ``k=v``, dimension and threshold parsing, event lines, tables, JSON."""

from __future__ import annotations

import pytest

from service.commands.errors import event_index
from service.commands.output import table, to_plain
from service.commands.parsing import (
    event_from_json,
    format_time,
    parse_dimension,
    parse_key_value,
    parse_threshold,
    parse_time,
    parse_uint64,
)
from unimeter.v1 import query_service_pb2, types_pb2

T0 = 1_726_272_000_000_000_000  # 2024-09-14T00:00:00Z


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1726272000000000000", T0),
        ("2024-09-14T00:00:00Z", T0),
        ("2024-09-14t00:00:00z", T0),
        ("2024-09-14 00:00:00Z", T0),
        ("2024-09-14", T0),
        ("2024-09-14T02:00:00+02:00", T0),
        ("2024-09-13T19:30:00-04:30", T0),
        ("2024-09-14T00:00:00.000000001Z", T0 + 1),
        ("2024-09-14T00:00:00.5Z", T0 + 500_000_000),
        ("2024-09-14T00:00:00.123456789Z", T0 + 123_456_789),
        ("1970-01-01T00:00:00Z", 0),
        ("0", 0),
    ],
)
def test_parse_time_is_exact_to_the_nanosecond(text: str, ns: int) -> None:
    assert parse_time(text) == ns


@pytest.mark.parametrize(
    "text",
    ["", "now", "2024-09-14T00:00:00", "2024-02-30", "2024-09-14T25:00:00Z", "-5", "1969-12-31T23:59:59Z",
     "2024-09-14T00:00:00.1234567891Z", "9223372036854775808"],
)  # fmt: skip
def test_parse_time_rejects_what_is_not_an_unambiguous_time(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def test_format_time_round_trips() -> None:
    for ns in (T0, T0 + 1, T0 + 500_000_000, T0 + 123_456_789):
        assert parse_time(format_time(ns)) == ns
    assert format_time(T0 + 10) == "2024-09-14T00:00:00.00000001Z"
    assert format_time(0) == "-"


def test_key_values_dimensions_and_thresholds() -> None:
    assert parse_key_value("a=b=c") == ("a", "b=c")
    assert parse_key_value("tier=") == ("tier", "")
    assert parse_uint64("18446744073709551615") == 2**64 - 1
    assert parse_dimension("region=eu,us") == types_pb2.DimensionFilter(key="region", values=["eu", "us"])
    assert parse_threshold("cap=5") == types_pb2.AlertThreshold(code="cap", value=5)
    assert parse_threshold("every=10:recurring") == types_pb2.AlertThreshold(
        code="every", value=10, recurring=True
    )
    for bad, parser in [
        ("novalue", parse_key_value),
        ("=x", parse_key_value),
        ("region=", parse_dimension),
        ("cap=5:weekly", parse_threshold),
        ("cap=-1", parse_threshold),
        ("18446744073709551616", parse_uint64),
    ]:
        with pytest.raises(ValueError):
            parser(bad)  # type: ignore[operator]


def test_event_lines_use_proto_json_names() -> None:
    snake = event_from_json('{"account_id": 7, "metric_code": "m", "operation": "OPERATION_TYPE_REMOVE"}')
    camel = event_from_json('{"accountId": "7", "metricCode": "m", "operation": 2}')
    assert (
        snake
        == camel
        == types_pb2.Event(account_id=7, metric_code="m", operation=types_pb2.OPERATION_TYPE_REMOVE)
    )
    for bad in ("[1]", "{", '{"account_id": -1}', '{"acount": 1}'):
        with pytest.raises(ValueError):
            event_from_json(bad)


def test_event_index_reads_violation_paths() -> None:
    assert event_index("events[3].metric_code") == (3, "metric_code")
    assert event_index("events[12].properties[region]") == (12, "properties[region]")
    assert event_index("events[0]") == (0, "event")
    assert event_index("delivery") is None


def test_table_aligns_numbers_right_and_text_left() -> None:
    assert table(["NAME", "N"], [["a", 1], ["bbb", 100]]) == "NAME    N\na       1\nbbb   100"
    assert table(["A", "B"], []) == "A  B"


def test_to_plain_keeps_64_bit_integers_exact_and_names_enums() -> None:
    response = query_service_pb2.QueryResponse(
        value=types_pb2.AggValue(value=-3, max=2**64 - 1),
        groups=[query_service_pb2.GroupValue(key={"r": "eu"})],
    )
    plain = to_plain(response)
    assert plain["value"]["value"] == -3
    assert plain["value"]["max"] == 2**64 - 1
    assert plain["groups"][0]["key"] == {"r": "eu"}
    assert to_plain(types_pb2.Metric())["agg_type"] == "AGG_TYPE_UNSPECIFIED"
