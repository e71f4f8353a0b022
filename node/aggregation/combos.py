"""Dimension combinations: the interned tuples of declared-dimension values events carry.

An event's combination is its property values for the metric's declared dimensions, in declared
order, ``""`` where a property is missing (docs/semantics.md groups those under the empty string). Each metric
numbers its combinations in order of first appearance, so per-event state stores a small int instead
of a tuple; filters and group-by work on those numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ["Combos"]


class Combos:
    """The combinations one metric has seen in one partition, numbered from 0."""

    __slots__ = ("dims", "index", "values")

    def __init__(self, dims: tuple[str, ...], values: Iterable[Sequence[str]] = ()) -> None:
        self.dims = dims
        self.values: list[tuple[str, ...]] = []
        self.index: dict[tuple[str, ...], int] = {}
        if not dims:
            self.id_of_values(())  # the only combination of a metric without dimensions
        for combo in values:
            self.id_of_values(tuple(combo))

    def id_of(self, props: Mapping[str, str] | None) -> int:
        """The number of the combination of an event with properties ``props`` (new ones are added)."""
        key = tuple([props.get(d, "") for d in self.dims]) if props else ("",) * len(self.dims)
        found = self.index.get(key)
        return self.id_of_values(key) if found is None else found

    def find(self, props: Mapping[str, str] | None) -> int | None:
        """The number of the combination of ``props`` if it has been seen (reads never add one)."""
        key = tuple([props.get(d, "") for d in self.dims]) if props else ("",) * len(self.dims)
        return self.index.get(key)

    def id_of_values(self, key: tuple[str, ...]) -> int:
        """The number of combination ``key``, adding it if new."""
        found = self.index.get(key)
        if found is None:
            found = self.index[key] = len(self.values)
            self.values.append(key)
        return found

    def matches(self, combo: int, filters: Mapping[str, str]) -> bool:
        """Whether combination ``combo`` has every ``filters`` key equal to its value."""
        values = self.values[combo]
        return all(values[self.dims.index(k)] == v for k, v in filters.items())

    def projection(self, group_by: Sequence[str]) -> list[tuple[str, ...]]:
        """For each combination number, its values for the ``group_by`` keys, in that order."""
        positions = [self.dims.index(k) for k in group_by]
        return [tuple([values[p] for p in positions]) for values in self.values]

    def to_snapshot(self) -> list[list[str]]:
        """The combinations, in number order."""
        return [list(v) for v in self.values]
