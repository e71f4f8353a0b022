"""Pure parsers of the CLI's textual input: times, ``k=v`` pairs, dimensions, thresholds, event lines.

Each raises ``ValueError`` with a message fit to show a person; argparse turns those raised from a
flag's ``type`` into a usage error (exit code 2). No I/O here.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta, timezone

from google.protobuf import json_format

from unimeter.v1 import types_pb2

__all__ = [
    "INT64_MAX",
    "UINT64_MAX",
    "event_from_json",
    "format_time",
    "parse_dimension",
    "parse_key_value",
    "parse_threshold",
    "parse_time",
    "parse_uint64",
]

INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_EVENT_FIELDS = [f.name for f in types_pb2.Event.DESCRIPTOR.fields]
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def _ns_since_epoch(moment: datetime) -> int:
    delta: timedelta = moment - _EPOCH
    # Integer arithmetic: a float timestamp would lose the nanoseconds.
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1_000


def parse_time(text: str) -> int:
    """Unix nanoseconds from ``1726272000000000000``, RFC3339 (``2024-09-14T00:00:00.5Z``, any offset)
    or a date (``2024-09-14``, midnight UTC)."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        ns = int(text)
    elif m := _RFC3339.fullmatch(text):
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        fraction, zulu, sign, off_h, off_m = m.groups()[6:]
        offset = timedelta(0) if zulu else timedelta(hours=int(off_h), minutes=int(off_m))
        if sign == "-":
            offset = -offset
        try:
            moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid time: {exc}") from None
        ns = _ns_since_epoch(moment) + int((fraction or "0").ljust(9, "0"))
    elif m := _DATE.fullmatch(text):
        try:
            day_start = date(*(int(g) for g in m.groups()))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid date: {exc}") from None
        ns = _ns_since_epoch(datetime(day_start.year, day_start.month, day_start.day, tzinfo=UTC))
    else:
        raise ValueError(
            f"{text!r} is not a time: use RFC3339 (2024-09-14T00:00:00Z), a date (2024-09-14) "
            "or Unix nanoseconds"
        )
    if not 0 <= ns <= INT64_MAX:
        raise ValueError(f"{text!r} is outside the range of Unix nanoseconds Unimeter stores")
    return ns


def format_time(ns: int) -> str:
    """RFC3339 in UTC, with as many fractional digits as the time has (``-`` for 0: unset)."""
    if ns == 0:
        return "-"
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def parse_uint64(text: str) -> int:
    """A decimal uint64."""
    if not re.fullmatch(r"\d+", text.strip()):
        raise ValueError(f"{text!r} is not a non-negative integer")
    value = int(text)
    if value > UINT64_MAX:
        raise ValueError(f"{text!r} does not fit in 64 bits")
    return value


def parse_key_value(text: str) -> tuple[str, str]:
    """``key=value`` (the value may contain ``=`` and may be empty; the key may not)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r} is not key=value")
    return key, value


def parse_dimension(text: str) -> types_pb2.DimensionFilter:
    """``region=eu,us``: a declared dimension and its allowed values."""
    key, values = parse_key_value(text)
    allowed = [v for v in values.split(",") if v]
    if not allowed:
        raise ValueError(f"{text!r} declares no values: use key=value1,value2")
    return types_pb2.DimensionFilter(key=key, values=allowed)


def parse_threshold(text: str) -> types_pb2.AlertThreshold:
    """``code=value`` or ``code=value:recurring``."""
    code, raw = parse_key_value(text)
    raw, colon, flag = raw.partition(":")
    if colon and flag != "recurring":
        raise ValueError(f"{text!r}: the only threshold option is ':recurring'")
    try:
        value = parse_uint64(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not code=value[:recurring] with an integer value") from None
    return types_pb2.AlertThreshold(code=code, value=value, recurring=bool(colon))


def event_from_json(line: str) -> types_pb2.Event:
    """One JSON object with the Event's fields by their proto JSON names (``account_id`` or
    ``accountId``; enums by name or number; 64-bit integers as numbers or strings)."""
    try:
        data = json.loads(line.rstrip())  # the line ending would move the error past the line's end
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        return json_format.ParseDict(data, types_pb2.Event())
    except json_format.ParseError as exc:
        # protobuf's messages name the Python type and the field path; keep the gist.
        text = str(exc).split("\n", 1)[0].replace('Message type "unimeter.v1.Event"', "an event")
        text = re.sub(r' at "?Event[.\w]*"?\.?$', "", text)
        if "has no field named" in text:
            text += f" (fields: {', '.join(_EVENT_FIELDS)})"
        raise ValueError(text) from None
