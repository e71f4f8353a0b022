"""Checks of query arguments against a metric (docs/semantics.md): ranges, filters, group-by, pages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cluster_client.errors import FieldViolation, InvalidArgumentError

from .aggregation import MetricSpec

__all__ = ["MAX_PAGE_SIZE", "check_page_size", "check_query"]

MAX_PAGE_SIZE = 1000


def check_query(
    spec: MetricSpec, start: int, end: int, filters: Mapping[str, str], group_by: Sequence[str]
) -> None:
    """Raise InvalidArgumentError naming every bad field of a range query."""
    bad: list[FieldViolation] = []
    if end <= start:
        bad.append(FieldViolation("period", "end_unix_nano must be greater than start_unix_nano"))
    for key, value in filters.items():
        allowed = spec.allowed.get(key)
        if allowed is None:
            bad.append(
                FieldViolation(f"filters[{key}]", f"{key!r} is not a declared dimension of {spec.code}")
            )
        elif value not in allowed:
            bad.append(FieldViolation(f"filters[{key}]", f"{value!r} is not an allowed value of {key!r}"))
    seen: set[str] = set()
    for i, key in enumerate(group_by):
        if key not in spec.allowed:
            bad.append(
                FieldViolation(f"group_by[{i}]", f"{key!r} is not a declared dimension of {spec.code}")
            )
        elif key in seen:
            bad.append(FieldViolation(f"group_by[{i}]", f"{key!r} is repeated"))
        seen.add(key)
    if bad:
        raise InvalidArgumentError(f"invalid query: {bad[0].field}: {bad[0].description}", violations=bad)


def check_page_size(page_size: int) -> None:
    """Raise unless ``page_size`` is 0 (the default) or 1..1000."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgumentError(
            f"page_size must be at most {MAX_PAGE_SIZE}",
            violations=[FieldViolation("page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0: 100)")],
        )
