"""Period math (docs/semantics.md): which half-open ``[start, end)`` range of Unix ns holds an instant.
The node builds one :class:`PeriodCalculator` per metric and calls :meth:`PeriodCalculator.period_of`
per event, so a repeat of the last period costs two comparisons and any other instant seen lately one
cache look-up; only a cache miss touches :mod:`zoneinfo`. FIXED periods are integer arithmetic from the
Unix epoch. CALENDAR, DAY and WEEK periods start at local midnight in an IANA time zone: a boundary is
the first instant whose local wall time is at or after that midnight, so a midnight skipped by a DST
gap starts the period at the first instant after the gap, a repeated midnight at its earlier
occurrence (fold=0), and a local day skipped entirely (Pacific/Apia, 2011-12-30) is an empty period
that no instant falls in. Time zones come from the pinned ``tzdata`` package rather than the host's
database, so every node, whatever its OS, places an event in the same period. The client-side helpers
(``current_month()``, ``today()``...) return :class:`~cluster_client.types.Period` values.
"""

from __future__ import annotations

import datetime as _dt
import functools
import time
from importlib import resources
from zoneinfo import ZoneInfo

from cluster_client.types import DEFAULT_FIXED_PERIOD_SECONDS, Metric, Period, PeriodType

__all__ = [
    "MAX_TIME_UNIX_NANO",
    "MIN_TIME_UNIX_NANO",
    "PeriodCalculator",
    "current_billing_period",
    "current_month",
    "current_period",
    "is_known_time_zone",
    "last_billing_period",
    "last_month",
    "load_time_zone",
    "this_week",
    "today",
]

_NS = 1_000_000_000
_DAY_S = 86_400
_MIN_S = -62_135_596_800  # 0001-01-01T00:00:00Z in Unix seconds
_MAX_S = 253_402_300_800  # 10000-01-01T00:00:00Z in Unix seconds (exclusive)

MIN_TIME_UNIX_NANO = _MIN_S * _NS
"""The earliest instant periods are computed for: 0001-01-01T00:00:00Z."""
MAX_TIME_UNIX_NANO = _MAX_S * _NS - 1
"""The latest instant periods are computed for: 9999-12-31T23:59:59.999999999Z."""

# Zone look-ups near the ends of datetime's range are clamped two days inwards, where every offset
# (always under a day) still converts. No zone changes offset there, so the answer is the same.
_LOOKUP_MIN_S = _MIN_S + 2 * _DAY_S
_LOOKUP_MAX_S = _MAX_S - 2 * _DAY_S
_EPOCH = _dt.datetime(1970, 1, 1)
_ONE_SECOND = _dt.timedelta(seconds=1)

# Second-level cache of the zoned types: instants are grouped in 6-hour UTC buckets, each mapped to the
# periods overlapping it (one, or two when a boundary falls inside). 512 buckets cover 128 days of
# scattered event times per metric; when full, the cache starts over.
_BUCKET_NS = 6 * 3600 * _NS
_BUCKET_CACHE_SIZE = 512

_Range = tuple[int, int]


# ----------------------------------------------------------------------------------------- time zones


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8").split())


def is_known_time_zone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone of the pinned tz database (e.g. ``"Europe/Berlin"``).

    Exact and case-sensitive: ``"utc"``, ``"America"`` (a folder) and ``"right/UTC"`` (leap seconds)
    are not zones. Never raises, whatever ``name`` is.
    """
    return isinstance(name, str) and name in _zone_names()


"""Alias of :func:`is_known_time_zone`."""


@functools.lru_cache(maxsize=256)
def load_time_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` from the pinned ``tzdata`` package; ``ValueError`` if it is not one.

    The host's tz database (``/usr/share/zoneinfo``) is never consulted: its version differs between
    machines, and it offers non-zones (``right/UTC`` counts leap seconds) that would shift boundaries.
    """
    if not is_known_time_zone(name):
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name such as 'Europe/Berlin'")
    with resources.files("tzdata").joinpath("zoneinfo", *name.split("/")).open("rb") as f:
        return ZoneInfo.from_file(f, key=name)


# ------------------------------------------------------------------------------ civil date arithmetic


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days from 1970-01-01 to the proleptic Gregorian date y-m-d, for any year (H. Hinnant)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """The proleptic Gregorian (year, month, day) ``z`` days after 1970-01-01, for any ``z``."""
    z += 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


def _offset_seconds(delta: _dt.timedelta | None) -> int:
    assert delta is not None  # a ZoneInfo always has an offset
    return delta.days * _DAY_S + delta.seconds


# ------------------------------------------------------------------------------------ the calculator


class PeriodCalculator:
    """Maps instants to one metric's periods. Build once per metric; safe to share between threads.

    ``period_of``, ``previous`` and ``next`` take and return Unix nanoseconds and raise ``ValueError``
    for an instant outside years 1..9999 UTC (:data:`MIN_TIME_UNIX_NANO`, :data:`MAX_TIME_UNIX_NANO`);
    a period that contains such an edge instant may itself reach past it. The constructor checks the
    parameters its period type uses and ignores the others (a FIXED metric's time zone is never read).
    """

    __slots__ = (
        "_buckets",
        "_cycle_day",
        "_fixed_hi",
        "_fixed_lo",
        "_last",
        "_size_ns",
        "_tz",
        "billing_cycle_day",
        "fixed_period_seconds",
        "period_type",
        "time_zone",
    )

    period_type: PeriodType
    fixed_period_seconds: int
    billing_cycle_day: int
    time_zone: str
    _last: _Range
    _size_ns: int
    _fixed_lo: int
    _fixed_hi: int
    _cycle_day: int
    _tz: ZoneInfo | None
    _buckets: dict[int, tuple[_Range, ...]]

    def __init__(
        self,
        period_type: PeriodType,
        *,
        fixed_period_seconds: int = DEFAULT_FIXED_PERIOD_SECONDS,
        billing_cycle_day: int = 1,
        time_zone: str = "UTC",
    ) -> None:
        self.period_type = kind = PeriodType(period_type)
        self.fixed_period_seconds = fixed_period_seconds
        self.billing_cycle_day = billing_cycle_day
        self.time_zone = time_zone
        self._last = (0, 0)  # empty: no instant hits it
        self._size_ns = 0
        self._cycle_day = 1
        self._tz = None
        self._buckets = {}  # bucket -> the periods overlapping it; stays empty for FIXED
        if kind is PeriodType.FIXED:
            if isinstance(fixed_period_seconds, bool) or not isinstance(fixed_period_seconds, int):
                raise TypeError(f"fixed_period_seconds must be an int, got {fixed_period_seconds!r}")
            if fixed_period_seconds <= 0:
                raise ValueError(f"fixed_period_seconds must be positive, got {fixed_period_seconds}")
            self._size_ns = size = fixed_period_seconds * _NS
            self._fixed_lo = -(-MIN_TIME_UNIX_NANO // size) * size
            self._fixed_hi = (MAX_TIME_UNIX_NANO + 1) // size * size
            return
        if kind is PeriodType.CALENDAR:
            self._cycle_day = _check_cycle_day(billing_cycle_day)
        self._tz = load_time_zone(time_zone)

    @classmethod
    def for_metric(cls, metric: Metric) -> PeriodCalculator:
        """The calculator of ``metric``'s period type, length, cycle day and time zone."""
        return cls(
            metric.period_type,
            fixed_period_seconds=metric.fixed_period_seconds,
            billing_cycle_day=metric.billing_cycle_day,
            time_zone=metric.time_zone,
        )

    def __repr__(self) -> str:
        kind = self.period_type
        if kind is PeriodType.FIXED:
            return f"PeriodCalculator(FIXED, fixed_period_seconds={self.fixed_period_seconds})"
        day = f", billing_cycle_day={self.billing_cycle_day}" if kind is PeriodType.CALENDAR else ""
        return f"PeriodCalculator({kind.name}{day}, time_zone={self.time_zone!r})"

    # -- public -----------------------------------------------------------------------------------

    def period_of(self, t: int) -> tuple[int, int]:
        """The period ``[start, end)`` containing instant ``t`` (Unix ns)."""
        last = self._last  # one read: another thread may replace it, never tear it
        if last[0] <= t < last[1]:
            return last
        size = self._size_ns
        if size:  # FIXED: integer arithmetic, cheaper than any cache
            if self._fixed_lo <= t < self._fixed_hi:  # windows wholly within years 1..9999
                start = t - t % size  # floor: right for negative t too
                last = self._last = (start, start + size)
                return last
            return self._miss(t)
        periods = self._buckets.get(t // _BUCKET_NS)
        if periods is not None:
            for period in periods:
                if period[0] <= t < period[1]:
                    self._last = period
                    return period
        return self._miss(t)

    def previous(self, t: int) -> tuple[int, int]:
        """The period just before the one containing ``t``: its ``end`` is that period's ``start``."""
        return self.period_of(self.period_of(t)[0] - 1)

    def next(self, t: int) -> tuple[int, int]:
        """The period just after the one containing ``t``: its ``start`` is that period's ``end``."""
        return self.period_of(self.period_of(t)[1])

    # -- cache misses -----------------------------------------------------------------------------

    def _miss(self, t: int) -> _Range:
        if not MIN_TIME_UNIX_NANO <= t <= MAX_TIME_UNIX_NANO:
            raise ValueError(
                f"time {t} ns is outside the supported range [{MIN_TIME_UNIX_NANO}, {MAX_TIME_UNIX_NANO}]"
                " (years 1..9999 UTC)"
            )
        if self._tz is None:
            size = self._size_ns
            start = t - t % size  # floor: right for negative t too
            period = (start, start + size)
        else:
            bucket = t // _BUCKET_NS
            periods = self._periods_of_bucket(bucket)
            if periods[0][0] >= MIN_TIME_UNIX_NANO and periods[-1][1] <= MAX_TIME_UNIX_NANO + 1:
                buckets = self._buckets  # like _last, never holds a period reaching past the range
                if len(buckets) >= _BUCKET_CACHE_SIZE:
                    buckets.clear()
                buckets[bucket] = periods
            for period in periods:
                if period[0] <= t < period[1]:
                    break
            else:  # only if a period were shorter than a bucket: never so in the tz database
                period = self._compute(t)
        if period[0] >= MIN_TIME_UNIX_NANO and period[1] <= MAX_TIME_UNIX_NANO + 1:
            self._last = period  # edge periods stay uncached so that the range check always runs
        return period

    def _periods_of_bucket(self, bucket: int) -> tuple[_Range, ...]:
        """The periods overlapping a bucket's instants (years 1..9999), first to last."""
        first = max(bucket * _BUCKET_NS, MIN_TIME_UNIX_NANO)
        last = min(first + _BUCKET_NS - 1, MAX_TIME_UNIX_NANO)
        period = self._compute(first)
        periods = [period]
        while period[1] <= last:
            period = self._compute(period[1])
            periods.append(period)
        return tuple(periods)

    # -- zoned period math ------------------------------------------------------------------------

    def _compute(self, t: int) -> _Range:
        """The period containing ``t``, from scratch (zoned types only)."""
        ts = t // _NS
        day = (ts + self._utc_offset_at(ts)) // _DAY_S  # t's local date, as days since 1970-01-01
        kind = self.period_type
        if kind is PeriodType.DAY:
            first = day
        elif kind is PeriodType.WEEK:
            first = day - (day + 3) % 7  # 1970-01-01 was a Thursday; ISO weeks start on Monday
        else:
            y, m, d = _civil_from_days(day)
            if d < self._cycle_day:
                y, m = (y - 1, 12) if m == 1 else (y, m - 1)
            first = _days_from_civil(y, m, self._cycle_day)
        start = self._boundary(first)
        following = self._step(first, 1)
        end = self._boundary(following)
        # The local date of t gives start <= t. Where a DST fall-back crosses midnight, instants after
        # the next boundary can still show the old date; the loop below moves them on. Empty periods
        # (a skipped local day) are passed over the same way.
        while t >= end:
            first, start = following, end
            following = self._step(first, 1)
            end = self._boundary(following)
        while t < start:  # defensive: the clamped look-ups at year 1 or 9999
            following, end = first, start
            first = self._step(first, -1)
            start = self._boundary(first)
        return (start, end)

    def _step(self, day: int, n: int) -> int:
        """The first local day of the period ``n`` periods (-1 or 1) after the one starting on ``day``."""
        kind = self.period_type
        if kind is PeriodType.DAY:
            return day + n
        if kind is PeriodType.WEEK:
            return day + 7 * n
        y, m, d = _civil_from_days(day)
        m += n
        if m > 12:
            y, m = y + 1, 1
        elif m < 1:
            y, m = y - 1, 12
        return _days_from_civil(y, m, d)

    def _utc_offset_at(self, ts: int) -> int:
        """The zone's UTC offset, in seconds, at Unix second ``ts``."""
        tz = self._tz
        assert tz is not None
        ts = min(max(ts, _LOOKUP_MIN_S), _LOOKUP_MAX_S)
        utc = (_EPOCH + _dt.timedelta(seconds=ts)).replace(tzinfo=tz)
        return _offset_seconds(tz.fromutc(utc).utcoffset())

    def _boundary(self, day: int) -> int:
        """The first instant (ns) whose local wall time is at or after 00:00 of local day ``day``."""
        tz = self._tz
        assert tz is not None
        wall = day * _DAY_S
        naive = _EPOCH + _dt.timedelta(seconds=min(max(wall, _LOOKUP_MIN_S), _LOOKUP_MAX_S))
        before = _offset_seconds(tz.utcoffset(naive))  # fold=0: the offset in force before a change
        after = _offset_seconds(tz.utcoffset(naive.replace(fold=1)))
        if before >= after:  # midnight exists; if twice (a fall-back), fold=0 is the earlier
            return (wall - before) * _NS
        # Midnight falls in a DST gap: the answer is the transition itself, the first instant whose wall
        # time passes midnight. It lies in (lo, hi]; transitions fall on whole seconds, so bisect them.
        lo, hi = wall - after, wall - before
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if mid + self._utc_offset_at(mid) >= wall:
                hi = mid
            else:
                lo = mid
        return hi * _NS


# ---------------------------------------------------------------------------------- client helpers


def _check_cycle_day(cycle_day: int) -> int:
    if isinstance(cycle_day, bool) or not isinstance(cycle_day, int):
        raise TypeError(f"billing cycle day must be an int, got {cycle_day!r}")
    if not 1 <= cycle_day <= 28:
        raise ValueError(f"billing cycle day must be within 1..28, got {cycle_day}")
    return cycle_day


@functools.lru_cache(maxsize=64)
def _zoned_calculator(period_type: PeriodType, tz: str, cycle_day: int) -> PeriodCalculator:
    return PeriodCalculator(period_type, billing_cycle_day=cycle_day, time_zone=tz)


def _zoned(period_type: PeriodType, tz: str, cycle_day: int = 1) -> PeriodCalculator:
    if not is_known_time_zone(tz):  # also keeps unhashable junk out of the cache key
        raise ValueError(f"unknown time zone {tz!r}: expected an IANA name such as 'Europe/Berlin'")
    return _zoned_calculator(period_type, tz, _check_cycle_day(cycle_day))


def _now(now: int | None) -> int:
    return time.time_ns() if now is None else now


def current_month(*, tz: str = "UTC", now: int | None = None) -> Period:
    """The calendar month containing ``now`` (default: the current time), in time zone ``tz``."""
    return Period(*_zoned(PeriodType.CALENDAR, tz).period_of(_now(now)))


def last_month(*, tz: str = "UTC", now: int | None = None) -> Period:
    """The calendar month before the one containing ``now``, in time zone ``tz``."""
    return Period(*_zoned(PeriodType.CALENDAR, tz).previous(_now(now)))


def current_period(duration: _dt.timedelta | int, *, now: int | None = None) -> Period:
    """The FIXED window of ``duration`` (a timedelta or whole seconds) from the Unix epoch holding ``now``."""
    if isinstance(duration, _dt.timedelta):
        seconds, rest = divmod(duration, _ONE_SECOND)
        if rest:
            raise ValueError(f"duration must be a whole number of seconds, got {duration}")
    elif isinstance(duration, int) and not isinstance(duration, bool):
        seconds = duration
    else:
        raise TypeError(f"duration must be a timedelta or an int of seconds, got {duration!r}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {duration!r}")
    return Period(*PeriodCalculator(PeriodType.FIXED, fixed_period_seconds=seconds).period_of(_now(now)))


def current_billing_period(cycle_day: int, *, tz: str = "UTC", now: int | None = None) -> Period:
    """The billing month (from ``cycle_day`` 00:00, 1..28) containing ``now``, in time zone ``tz``."""
    return Period(*_zoned(PeriodType.CALENDAR, tz, cycle_day).period_of(_now(now)))


def last_billing_period(cycle_day: int, *, tz: str = "UTC", now: int | None = None) -> Period:
    """The billing month before the one containing ``now``, in time zone ``tz``."""
    return Period(*_zoned(PeriodType.CALENDAR, tz, cycle_day).previous(_now(now)))


def today(*, tz: str = "UTC", now: int | None = None) -> Period:
    """The local calendar day containing ``now``, in time zone ``tz`` (23 or 25 hours on DST days)."""
    return Period(*_zoned(PeriodType.DAY, tz).period_of(_now(now)))


def this_week(*, tz: str = "UTC", now: int | None = None) -> Period:
    """The ISO week (from Monday 00:00) containing ``now``, in time zone ``tz``."""
    return Period(*_zoned(PeriodType.WEEK, tz).period_of(_now(now)))
