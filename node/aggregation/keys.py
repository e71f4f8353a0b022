"""Integer keys of the bucket dictionaries: (account, bucket) packed into one int.

One flat dict per level holds every account's buckets: a dict per account and level would cost
~220 bytes even for a single bucket, a packed-int key ~40. Grid keys pack a bucket index (a minute,
hour or day number since the epoch, below 2^40 for any uint64 time); period keys pack a period start
in nanoseconds, which may be negative for a zoned period around the epoch, hence the offset.
"""

from __future__ import annotations

__all__ = ["grid_base", "period_key", "split_grid_key", "split_period_key"]

_GRID_SHIFT = 40
_GRID_MASK = (1 << _GRID_SHIFT) - 1
_PERIOD_SHIFT = 66
_PERIOD_BIAS = 1 << 65


def grid_base(account_id: int) -> int:
    """Add a bucket index to this to get the account's grid key."""
    return account_id << _GRID_SHIFT


def split_grid_key(key: int) -> tuple[int, int]:
    """(account_id, bucket index) of a grid key."""
    return key >> _GRID_SHIFT, key & _GRID_MASK


def period_key(account_id: int, period_start: int) -> int:
    """The key of the account's period starting at ``period_start`` (ns)."""
    return (account_id << _PERIOD_SHIFT) + period_start


def split_period_key(key: int) -> tuple[int, int]:
    """(account_id, period start) of a period key."""
    account_id = (key + _PERIOD_BIAS) >> _PERIOD_SHIFT
    return account_id, key - (account_id << _PERIOD_SHIFT)
