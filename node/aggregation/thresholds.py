"""Threshold evaluation (docs/semantics.md) against a period's unfiltered value, after each event.

The alert state lives on the period's total cell, after its statistics: slot ``base`` holds
``alert_flags`` (bit i set while threshold i is reached) and slot ``base + 1 + i`` the highest
multiple alerted so far for threshold i in that period (recurring thresholds only use it). A new
period's cell starts with zeros there, which is what "every new period re-arms" means.
"""

from __future__ import annotations

from .spec import AlertRow, MetricSpec

__all__ = ["alert_slots", "evaluate"]


def alert_slots(spec: MetricSpec) -> list[int]:
    """The zeroed alert state to append to a new period cell (empty when there are no thresholds)."""
    return [0] * (len(spec.thresholds) + 1) if spec.thresholds else []


def evaluate(
    spec: MetricSpec,
    cell: list[int],
    base: int,
    value: int,
    account_id: int,
    period_start: int,
    event_time: int,
    out: list[AlertRow],
) -> None:
    """Compare ``value`` with every threshold, update the state in ``cell`` and append what fires."""
    flags = cell[base]
    for i, threshold in enumerate(spec.thresholds):
        bit = 1 << i
        limit = threshold.value
        if value < limit:
            flags &= ~bit  # fell back below: a one-shot threshold re-arms
            continue
        if threshold.recurring:
            multiple = value // limit
            if multiple > cell[base + 1 + i]:
                cell[base + 1 + i] = multiple
                out.append(
                    (account_id, spec.code, threshold.code, limit, multiple, value, period_start, event_time)
                )
        elif not flags & bit:
            out.append((account_id, spec.code, threshold.code, limit, 1, value, period_start, event_time))
        flags |= bit
    cell[base] = flags
