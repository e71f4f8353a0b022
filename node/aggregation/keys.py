"""Integer keys of the bucket dictionaries: (account, bucket) packed into one int.

One flat dict per level holds every account's buckets: a dict per account and level would cost
~220 bytes even for a single bucket, a packed-int key ~40. Grid keys pack a bucket index (a minute,
hour or day number since the epoch, below 2^40 for any uint64 time); period keys pack a period start
in nanoseconds, which may be negative for a zoned period around the epoch, hence the offset.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["buckets_below", "grid_base", "grid_bucket", "join_keys", "period_key", "split_keys"]

_GRID_SHIFT = 40
_GRID_MASK = (1 << _GRID_SHIFT) - 1
_PERIOD_SHIFT = 66
_PERIOD_BIAS = 1 << 65


def grid_base(account_id: int) -> int:
    """Add a bucket index to this to get the account's grid key."""
    return account_id << _GRID_SHIFT


def grid_bucket(key: int) -> int:
    """The bucket index of a grid key."""
    return key & _GRID_MASK


def buckets_below(cells: Mapping[int, object], first: int) -> list[int]:
    """The keys of a grid level's dict whose buckets are below ``first``."""
    return [key for key in cells if key & _GRID_MASK < first]


def period_key(account_id: int, period_start: int) -> int:
    """The key of the account's period starting at ``period_start`` (ns)."""
    return (account_id << _PERIOD_SHIFT) + period_start


def split_keys(keys: list[int], periods: bool) -> tuple[list[int], list[int]]:
    """The (account_ids, bucket indexes or period starts) of grid or period keys, as two columns."""
    if periods:
        accounts = [(k + _PERIOD_BIAS) >> _PERIOD_SHIFT for k in keys]
        return accounts, [k - (a << _PERIOD_SHIFT) for k, a in zip(keys, accounts, strict=True)]
    return [k >> _GRID_SHIFT for k in keys], [k & _GRID_MASK for k in keys]


def join_keys(accounts: list[int], second: list[int], periods: bool) -> list[int]:
    """The keys :func:`split_keys` split."""
    shift = _PERIOD_SHIFT if periods else _GRID_SHIFT
    return [(a << shift) + x for a, x in zip(accounts, second, strict=True)]
