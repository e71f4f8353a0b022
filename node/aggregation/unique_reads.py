"""Reads of a COUNT_UNIQUE metric: realtime values and range queries, for both of its stores.

The pure-Python :class:`~.unique.UniqueStore` and the native engine's
:class:`~.native_unique.NativeUniqueStore` answer through these functions, so the two can only
differ in the histories and period rows they hold. A store offers the two lookups of
:class:`UniqueSetsView`: a period's row, and a scan of an account's member histories over a range
(which combinations count, and which group each one falls in, are decided here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, cast

from cluster_client.types import AggValue, GroupValue, Period

from .cells import agg_value, empty_cell
from .combos import Combos
from .spec import MetricSpec

__all__ = ["Scan", "UniqueReads", "UniqueSetsView", "unique_query", "unique_realtime"]

Scan = tuple[list[int], list[tuple[int, list[int]]]]
"""(the main set's statistics, [(group number, its statistics), ...] for groups with operations)."""


class UniqueSetsView(Protocol):
    """What the reads need of a COUNT_UNIQUE store."""

    @property
    def spec(self) -> MetricSpec: ...

    @property
    def combos(self) -> Combos: ...

    def period_row(self, account_id: int, period_start: int) -> tuple[list[int], int]:
        """The period row's statistics and alert flags (a carried-over set if it has no row)."""
        ...

    def scan(
        self, account_id: int, lo: int | None, end: int, wanted: list[bool], group_of: list[int | None]
    ) -> Scan | None:
        """The account's set over its operations before ``end`` (and from ``lo``) of the
        combinations ``wanted``, and per group (``group_of[combination]``) its own; None without
        the account."""
        ...


class UniqueReads:
    """The reads of a COUNT_UNIQUE store, for a class that offers :class:`UniqueSetsView`'s
    lookups: both stores inherit them, so neither can answer differently."""

    __slots__ = ()

    def realtime(self, account_id: int, now_ns: int) -> tuple[AggValue, Period]:
        """The unfiltered aggregate of the period containing ``now_ns``, with its alert flags."""
        return unique_realtime(cast(UniqueSetsView, self), account_id, now_ns)

    def query(
        self,
        account_id: int,
        start: int,
        end: int,
        filters: Mapping[str, str],
        group_by: Sequence[str],
    ) -> tuple[AggValue, list[GroupValue]]:
        """The set over ``[start, end)`` (with carry_over: every event before ``end``), after
        ``filters``, and one per ``group_by`` group."""
        return unique_query(cast(UniqueSetsView, self), account_id, start, end, filters, group_by)


def unique_realtime(view: UniqueSetsView, account_id: int, now_ns: int) -> tuple[AggValue, Period]:
    """The unfiltered aggregate of the period containing ``now_ns``, with its alert flags."""
    spec = view.spec
    p_start, p_end = spec.periods.period_of(now_ns)
    cell, flags = view.period_row(account_id, p_start)
    return agg_value(spec.agg_type, cell, flags), Period(p_start, p_end)


def unique_query(
    view: UniqueSetsView,
    account_id: int,
    start: int,
    end: int,
    filters: Mapping[str, str],
    group_by: Sequence[str],
) -> tuple[AggValue, list[GroupValue]]:
    """The set over ``[start, end)`` (with carry_over: every event before ``end``), after
    ``filters``, and one per ``group_by`` group."""
    spec = view.spec
    agg = spec.agg_type
    p_start, p_end = spec.periods.period_of(start)
    exact = p_start == start and p_end == end
    if exact and not filters and not group_by:
        cell, flags = view.period_row(account_id, p_start)
        return agg_value(agg, cell, flags), []
    flags = view.period_row(account_id, p_start)[1] if exact and not filters else 0
    lo = None if spec.carry_over else start

    combos = view.combos
    wanted = [not filters or combos.matches(c, filters) for c in range(len(combos.values))]
    groups: dict[tuple[str, ...], int] = {}
    group_of: list[int | None] = [None] * len(wanted)
    if group_by:
        group_of = [groups.setdefault(group, len(groups)) for group in combos.projection(group_by)]
    found = view.scan(account_id, lo, end, wanted, group_of)
    if found is None:
        return agg_value(agg, empty_cell(), flags), []
    main, by_group = found
    names = list(groups)
    result = [
        GroupValue(dict(zip(group_by, names[g], strict=True)), agg_value(agg, cell))
        for g, cell in sorted(by_group, key=lambda item: names[item[0]])
    ]
    return agg_value(agg, main, flags), result
