"""How results are shown: aligned plain-text tables for people, JSON with exact integers for scripts.

Proto JSON writes 64-bit integers as strings; ``--json`` output here writes every integer as a JSON
number (Python's json keeps them exact), uses the proto field names (``account_id``) and enum
value names (``AGG_TYPE_SUM``), and includes fields at their default values.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = ["key_values", "print_json", "print_stdout", "properties_text", "table", "to_plain"]


def to_plain(message: Message) -> dict[str, Any]:
    """A message as plain dicts, lists, ints, strings and bools (every field, defaults included)."""
    out: dict[str, Any] = {}
    # The runtime descriptors are upb's, which the stubs type apart from descriptor.FieldDescriptor.
    fields: list[FieldDescriptor] = list(message.DESCRIPTOR.fields)  # type: ignore[arg-type]
    for field in fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {str(k): _scalar(value_field, v) for k, v in sorted(value.items())}
        elif field.is_repeated:
            out[field.name] = [_scalar(field, v) for v in value]
        elif field.containing_oneof is not None and not message.HasField(field.name):
            continue
        else:
            out[field.name] = _scalar(field, value)
    return out


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_plain(value)
    if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        enum_value = field.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    return value


def print_json(value: object) -> None:
    """One JSON document (or one JSON line, when it is an element of a stream) on stdout."""
    print(json.dumps(value, sort_keys=False, ensure_ascii=False), flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns separated by two spaces; integers right-aligned, everything else left-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in cells)])


def key_values(pairs: Sequence[tuple[str, object]]) -> str:
    """``name  value`` lines with the values aligned."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in pairs)


def properties_text(props: Mapping[str, str]) -> str:
    """``k=v,k=v`` sorted by key; ``-`` when empty."""
    return ",".join(f"{k}={v}" for k, v in sorted(props.items())) or "-"


def print_stdout(text: str) -> None:
    """Print and flush (so a pipe sees each line as it is made)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
