"""Which partition an account lives in: ``mix64(account_id) % partitions`` (docs/semantics.md)."""

from __future__ import annotations

__all__ = ["mix64", "partition_of"]

_MASK = 0xFFFF_FFFF_FFFF_FFFF


def mix64(x: int) -> int:
    """SplitMix64's finaliser applied to ``x + golden gamma``, all arithmetic mod 2^64."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def partition_of(account_id: int, partitions: int) -> int:
    """The partition owning ``account_id``."""
    return mix64(account_id) % partitions
