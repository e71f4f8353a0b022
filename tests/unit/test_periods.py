"""Period math (docs/semantics.md): test vectors, DST edge cases, properties of every type, client helpers."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_client.periods import (
    MAX_TIME_UNIX_NANO,
    MIN_TIME_UNIX_NANO,
    PeriodCalculator,
    current_billing_period,
    current_month,
    current_period,
    is_known_time_zone,
    last_billing_period,
    last_month,
    load_time_zone,
    this_week,
    today,
)
from cluster_client.types import Metric, Period, PeriodType

NS = 1_000_000_000
HOUR_NS = 3600 * NS
VECTORS_PATH = Path(__file__).resolve().parents[1] / "vectors" / "semantics.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))["periods"]


def _vector_id(v: dict[str, Any]) -> str:
    extra = v.get("billing_cycle_day", v.get("fixed_period_seconds", ""))
    return f"{v['period_type']}-{v.get('time_zone', '')}-{extra}-{v.get('local', v['instant'])}"


def _calculator_for(v: dict[str, Any]) -> PeriodCalculator:
    return PeriodCalculator(
        PeriodType[v["period_type"]],
        fixed_period_seconds=v.get("fixed_period_seconds", 2_592_000),
        billing_cycle_day=v.get("billing_cycle_day", 1),
        time_zone=v.get("time_zone", "UTC"),
    )


def ns(iso: str) -> int:
    """Unix ns of an ISO-8601 instant with an explicit offset."""
    moment = dt.datetime.fromisoformat(iso)
    assert moment.tzinfo is not None
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


def wall(t: int, zone: str) -> dt.datetime:
    """Naive local wall time of instant ``t`` (to the microsecond) in ``zone``, by datetime's own rules."""
    utc = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=t // 1000)
    return utc.astimezone(load_time_zone(zone)).replace(tzinfo=None)


def assert_boundary(t: int, zone: str, midnight: dt.datetime) -> None:
    """``t`` is the first instant whose wall time is at or after ``midnight``.

    Looks one microsecond back: zone transitions fall on whole seconds.
    """
    assert wall(t, zone) >= midnight, (t, zone, midnight)
    assert wall(t - 1000, zone) < midnight, (t, zone, midnight)


# ------------------------------------------------------------------------------------------- vectors


def test_vectors_present_and_cover_every_type() -> None:
    assert VECTORS, f"no period vectors in {VECTORS_PATH}"
    assert {v["period_type"] for v in VECTORS} == {t.name for t in PeriodType}


@pytest.mark.parametrize("vector", VECTORS, ids=_vector_id)
def test_vector(vector: dict[str, Any]) -> None:
    calc = _calculator_for(vector)
    expected = (vector["start"], vector["end"])
    assert calc.period_of(vector["instant"]) == expected
    assert calc.period_of(vector["instant"]) == expected  # again, from the cache
    if "hours" in vector:
        assert (expected[1] - expected[0]) / HOUR_NS == vector["hours"]


@pytest.mark.parametrize("vector", VECTORS, ids=_vector_id)
def test_vector_previous_and_next(vector: dict[str, Any]) -> None:
    calc = _calculator_for(vector)
    start, end = vector["start"], vector["end"]
    prev = calc.previous(vector["instant"])
    nxt = calc.next(vector["instant"])
    assert prev[1] == start and prev[0] < start
    assert nxt[0] == end and nxt[1] > end
    assert calc.period_of(start - 1) == prev
    assert calc.period_of(end) == nxt
    assert calc.period_of(end - 1) == (start, end)
    assert calc.next(prev[0]) == (start, end)
    assert calc.previous(nxt[1] - 1) == (start, end)


def test_vectors_with_one_warm_calculator_per_metric() -> None:
    """The caches give the answers a fresh calculator gives, whatever the order of instants."""
    calcs: dict[tuple[Any, ...], PeriodCalculator] = {}
    for vector in [*VECTORS, *reversed(VECTORS), *VECTORS]:
        key = tuple(
            vector.get(k) for k in ("period_type", "time_zone", "billing_cycle_day", "fixed_period_seconds")
        )
        calc = calcs.setdefault(key, _calculator_for(vector))
        assert calc.period_of(vector["instant"]) == (vector["start"], vector["end"])


# --------------------------------------------------------------------------------- DST edge cases


@pytest.mark.parametrize(
    ("zone", "instant", "start", "end", "hours"),
    [
        # Midnight skipped by a DST gap (00:00 -> 01:00): the day starts when the gap ends.
        ("America/Sao_Paulo", "2018-11-04T12:00Z", "2018-11-04T03:00Z", "2018-11-05T02:00Z", 23),
        ("America/Sao_Paulo", "2018-11-03T12:00Z", "2018-11-03T03:00Z", "2018-11-04T03:00Z", 24),
        ("Asia/Beirut", "2026-03-29T00:00Z", "2026-03-28T22:00Z", "2026-03-29T21:00Z", 23),
        # Fall-back at midnight to 23:00: the next midnight is the one after the repeated hour.
        ("Asia/Beirut", "2026-10-24T21:30Z", "2026-10-23T21:00Z", "2026-10-24T22:00Z", 25),
        # Repeated midnight (01:00 -> 00:00): the day starts at its first occurrence (fold=0).
        ("America/Havana", "2025-11-02T05:30Z", "2025-11-02T04:00Z", "2025-11-03T05:00Z", 25),
        ("America/Havana", "2025-11-02T03:59:59Z", "2025-11-01T04:00Z", "2025-11-02T04:00Z", 24),
        # 02:00 +11 -> 23:00 +08 the day before: 15:30Z reads 23:30 on Mar 4, yet lies after the Mar 5
        # boundary, so it belongs to Mar 5 (periods never overlap).
        ("Antarctica/Casey", "2010-03-04T15:30Z", "2010-03-04T13:00Z", "2010-03-05T16:00Z", 27),
        ("Antarctica/Casey", "2010-03-04T12:30Z", "2010-03-03T13:00Z", "2010-03-04T13:00Z", 24),
        # Samoa skipped 2011-12-30 entirely: Dec 29 is followed by Dec 31.
        ("Pacific/Apia", "2011-12-30T09:59:59Z", "2011-12-29T10:00Z", "2011-12-30T10:00Z", 24),
        ("Pacific/Apia", "2011-12-30T10:00Z", "2011-12-30T10:00Z", "2011-12-31T10:00Z", 24),
        # Half-hour DST.
        ("Australia/Lord_Howe", "2026-04-05T12:00Z", "2026-04-04T13:00Z", "2026-04-05T13:30Z", 24.5),
        ("Australia/Lord_Howe", "2026-10-04T12:00Z", "2026-10-03T13:30Z", "2026-10-04T13:00Z", 23.5),
    ],
)
def test_day_at_odd_midnights(zone: str, instant: str, start: str, end: str, hours: float) -> None:
    calc = PeriodCalculator(PeriodType.DAY, time_zone=zone)
    period = calc.period_of(ns(instant))
    assert period == (ns(start), ns(end))
    assert (period[1] - period[0]) / HOUR_NS == hours
    assert calc.previous(ns(instant))[1] == period[0]
    assert calc.next(ns(instant))[0] == period[1]


def test_skipped_day_is_an_empty_period_nothing_falls_in() -> None:
    calc = PeriodCalculator(PeriodType.DAY, time_zone="Pacific/Apia")
    dec29 = (ns("2011-12-29T10:00Z"), ns("2011-12-30T10:00Z"))
    dec31 = (ns("2011-12-30T10:00Z"), ns("2011-12-31T10:00Z"))
    assert calc.next(dec29[0]) == dec31
    assert calc.previous(dec31[0]) == dec29
    assert wall(dec31[0], "Pacific/Apia") == dt.datetime(2011, 12, 31)
    week = PeriodCalculator(PeriodType.WEEK, time_zone="Pacific/Apia").period_of(dec29[0])
    assert week == (ns("2011-12-26T10:00Z"), ns("2012-01-01T10:00Z"))  # six days long


def test_calendar_and_week_at_midnight_gaps() -> None:
    # Beirut springs forward 00:00 -> 01:00 on Sunday 2027-03-28: that billing month starts at 01:00.
    calc = PeriodCalculator(PeriodType.CALENDAR, billing_cycle_day=28, time_zone="Asia/Beirut")
    period = calc.period_of(ns("2027-04-10T12:00Z"))
    assert period == (ns("2027-03-27T22:00Z"), ns("2027-04-27T21:00Z"))
    assert wall(period[0], "Asia/Beirut") == dt.datetime(2027, 3, 28, 1)
    assert calc.previous(ns("2027-04-10T12:00Z")) == (ns("2027-02-27T22:00Z"), ns("2027-03-27T22:00Z"))
    # Sao Paulo 2018-11-04 was a Sunday; the week of Monday 2018-10-29 ran 167 hours.
    week = PeriodCalculator(PeriodType.WEEK, time_zone="America/Sao_Paulo").period_of(ns("2018-11-04T12:00Z"))
    assert week == (ns("2018-10-29T03:00Z"), ns("2018-11-05T02:00Z"))


# ----------------------------------------------------------------------------------------- properties

ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Chatham"]
# Day lengths, in hours, that each zone's rules allow from 2000 on.
MODERN_DAY_HOURS = {
    "UTC": {24.0},
    "America/New_York": {23.0, 24.0, 25.0},
    "Europe/London": {23.0, 24.0, 25.0},
    "Australia/Lord_Howe": {23.5, 24.0, 24.5},
    "Asia/Kolkata": {24.0},
    "Pacific/Chatham": {23.0, 24.0, 25.0},
}
YEAR_2000 = ns("2000-01-01T00:00Z")
YEAR_2100 = ns("2100-01-01T00:00Z")
# Away from the ends of datetime's range, so that the oracle's conversions cannot overflow.
SAFE_MIN = ns("0002-01-01T00:00Z")
SAFE_MAX = ns("9998-12-31T00:00Z")

instants = st.one_of(
    st.integers(YEAR_2000, YEAR_2100),
    st.integers(SAFE_MIN, SAFE_MAX),
    st.integers(ns("1880-01-01T00:00Z"), YEAR_2000),  # local mean time and the 20th century's rules
)
ZONED = [PeriodType.DAY, PeriodType.WEEK, PeriodType.CALENDAR]
# One long-lived calculator per (type, zone, cycle day): examples run through warm caches too.
_SHARED: dict[tuple[PeriodType, str, int], PeriodCalculator] = {}


def _shared(kind: PeriodType, zone: str, cycle_day: int = 1) -> PeriodCalculator:
    key = (kind, zone, cycle_day)
    if key not in _SHARED:
        _SHARED[key] = PeriodCalculator(kind, time_zone=zone, billing_cycle_day=cycle_day)
    return _SHARED[key]


def _check_contiguous(calc: PeriodCalculator, t: int) -> tuple[int, int]:
    start, end = calc.period_of(t)
    assert start <= t < end
    assert calc.period_of(start) == (start, end)
    assert calc.period_of(end - 1) == (start, end)
    assert calc.period_of(end)[0] == end
    assert calc.period_of(start - 1)[1] == start
    assert calc.previous(t)[1] == start
    assert calc.next(t)[0] == end
    return start, end


@settings(max_examples=300, deadline=None, database=None)
@given(kind=st.sampled_from(ZONED), zone=st.sampled_from(ZONES), day=st.integers(1, 28), t=instants)
def test_zoned_periods_are_contiguous_and_start_at_local_midnight(
    kind: PeriodType, zone: str, day: int, t: int
) -> None:
    cycle_day = day if kind is PeriodType.CALENDAR else 1
    calc = _shared(kind, zone, cycle_day)
    start, end = _check_contiguous(calc, t)
    fresh = PeriodCalculator(kind, time_zone=zone, billing_cycle_day=cycle_day)
    assert fresh.period_of(t) == (start, end)

    first = dt.datetime.combine(wall(start, zone).date(), dt.time())
    if kind is PeriodType.DAY:
        following = first + dt.timedelta(days=1)
    elif kind is PeriodType.WEEK:
        assert first.isoweekday() == 1
        following = first + dt.timedelta(days=7)
    else:
        assert first.day == cycle_day
        y, m = divmod(first.year * 12 + first.month, 12)  # the month after, 1-based
        following = first.replace(year=y, month=m + 1)
    assert_boundary(start, zone, first)
    assert_boundary(end, zone, following)


@settings(max_examples=300, deadline=None, database=None)
@given(zone=st.sampled_from(ZONES), t=st.integers(YEAR_2000, YEAR_2100))
def test_modern_day_lengths(zone: str, t: int) -> None:
    start, end = _shared(PeriodType.DAY, zone).period_of(t)
    assert (end - start) / HOUR_NS in MODERN_DAY_HOURS[zone]


@settings(max_examples=300, deadline=None, database=None)
@given(
    seconds=st.one_of(st.sampled_from([1, 60, 3600, 86_400, 604_800, 2_592_000]), st.integers(1, 10**9)),
    t=st.integers(MIN_TIME_UNIX_NANO, MAX_TIME_UNIX_NANO),
)
def test_fixed_windows_count_from_the_epoch(seconds: int, t: int) -> None:
    calc = PeriodCalculator(PeriodType.FIXED, fixed_period_seconds=seconds)
    size = seconds * NS
    start, end = calc.period_of(t)
    assert start <= t < end
    assert end - start == size
    assert start % size == 0
    if start - 1 >= MIN_TIME_UNIX_NANO and end <= MAX_TIME_UNIX_NANO:
        assert calc.previous(t) == (start - size, start)
        assert calc.next(t) == (end, end + size)


def test_fixed_negative_times() -> None:
    calc = PeriodCalculator(PeriodType.FIXED, fixed_period_seconds=3600)
    assert calc.period_of(-1) == (-HOUR_NS, 0)
    assert calc.period_of(-HOUR_NS) == (-HOUR_NS, 0)
    assert calc.period_of(-HOUR_NS - 1) == (-2 * HOUR_NS, -HOUR_NS)
    assert calc.period_of(0) == (0, HOUR_NS)
    assert calc.previous(0) == (-HOUR_NS, 0)
    assert calc.next(-1) == (0, HOUR_NS)
    day = PeriodCalculator(PeriodType.DAY, time_zone="America/New_York")
    assert day.period_of(-1) == (ns("1969-12-31T05:00Z"), ns("1970-01-01T05:00Z"))


# ------------------------------------------------------------------------------- range and arguments

EDGE_ZONES = ["UTC", "Pacific/Kiritimati", "Etc/GMT+12", "America/New_York", "Asia/Kolkata"]


@pytest.mark.parametrize("kind", list(PeriodType))
@pytest.mark.parametrize("zone", EDGE_ZONES)
def test_years_1_to_9999_and_no_further(kind: PeriodType, zone: str) -> None:
    calc = PeriodCalculator(kind, time_zone=zone, billing_cycle_day=15, fixed_period_seconds=7 * 86_400)
    for t in (MIN_TIME_UNIX_NANO, MIN_TIME_UNIX_NANO + 1, MAX_TIME_UNIX_NANO - 1, MAX_TIME_UNIX_NANO):
        start, end = calc.period_of(t)
        assert start <= t < end
    for _ in range(2):  # the edge periods must not let the cache skip the range check
        calc.period_of(MAX_TIME_UNIX_NANO)
        with pytest.raises(ValueError, match="outside the supported range"):
            calc.period_of(MAX_TIME_UNIX_NANO + 1)
        calc.period_of(MIN_TIME_UNIX_NANO)
        with pytest.raises(ValueError, match="outside the supported range"):
            calc.period_of(MIN_TIME_UNIX_NANO - 1)
    with pytest.raises(ValueError):
        calc.period_of(10**30)
    with pytest.raises(ValueError):
        calc.previous(MIN_TIME_UNIX_NANO)
    with pytest.raises(ValueError):
        calc.next(MAX_TIME_UNIX_NANO)
    assert calc.previous(ns("9999-12-31T00:00Z"))[1] <= ns("9999-12-31T00:00Z")


def test_constructor_arguments() -> None:
    with pytest.raises(ValueError):
        PeriodCalculator(PeriodType.FIXED, fixed_period_seconds=0)
    with pytest.raises(ValueError):
        PeriodCalculator(PeriodType.FIXED, fixed_period_seconds=-60)
    with pytest.raises(TypeError):
        PeriodCalculator(PeriodType.FIXED, fixed_period_seconds=1.5)  # type: ignore[arg-type]
    for bad_day in (0, 29, -1):
        with pytest.raises(ValueError, match=r"1\.\.28"):
            PeriodCalculator(PeriodType.CALENDAR, billing_cycle_day=bad_day)
    for bad_zone in ("Mars/Olympus", "utc", "America", "", "../../etc/passwd", "right/UTC"):
        with pytest.raises(ValueError, match="time zone"):
            PeriodCalculator(PeriodType.DAY, time_zone=bad_zone)
    with pytest.raises(ValueError):
        PeriodCalculator(99)  # type: ignore[arg-type]
    # Parameters another type would use are not read.
    PeriodCalculator(PeriodType.FIXED, time_zone="Mars/Olympus", billing_cycle_day=0)
    PeriodCalculator(PeriodType.DAY, billing_cycle_day=0, fixed_period_seconds=0)
    assert PeriodCalculator(2, billing_cycle_day=28).period_type is PeriodType.CALENDAR  # type: ignore[arg-type]


def test_for_metric() -> None:
    metric = Metric(
        "api_calls", period_type=PeriodType.CALENDAR, billing_cycle_day=15, time_zone="Europe/Berlin"
    )
    calc = PeriodCalculator.for_metric(metric)
    assert calc.period_of(ns("2026-03-14T23:30Z")) == (ns("2026-03-14T23:00Z"), ns("2026-04-14T22:00Z"))
    assert "CALENDAR" in repr(calc) and "Europe/Berlin" in repr(calc)
    default = PeriodCalculator.for_metric(Metric("x"))
    assert default.period_of(1) == (0, 2_592_000 * NS)


def test_time_zone_names() -> None:
    for name in (
        "UTC",
        "Etc/UTC",
        "Europe/Berlin",
        "America/Argentina/Buenos_Aires",
        "US/Eastern",
        "Asia/Calcutta",
    ):
        assert is_known_time_zone(name)
        assert is_known_time_zone(name)
        assert load_time_zone(name).key == name
    for name in (
        "",
        "utc",
        "Europe",
        "Europe/Berlin ",
        "/etc/localtime",
        "../zoneinfo/UTC",
        "right/UTC",
        "localtime",
    ):
        assert not is_known_time_zone(name)
    assert not is_known_time_zone(None)  # type: ignore[arg-type]
    assert not is_known_time_zone(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        load_time_zone("Nowhere/Special")


def test_civil_date_helpers_agree_with_datetime() -> None:
    from cluster_client.periods import _civil_from_days, _days_from_civil

    epoch = dt.date(1970, 1, 1).toordinal()
    for ordinal in (*range(1, 800_000, 997), dt.date.max.toordinal(), 1):
        day = dt.date.fromordinal(ordinal)
        assert _days_from_civil(day.year, day.month, day.day) == ordinal - epoch
        assert _civil_from_days(ordinal - epoch) == (day.year, day.month, day.day)
    for z in range(-800_000, 4_000_000, 9_973):  # years 0 and 10000+ too: a round trip
        assert _days_from_civil(*_civil_from_days(z)) == z


# ----------------------------------------------------------------------------------- client helpers

NOW = ns("2026-03-14T12:00Z")  # a Saturday


def test_months() -> None:
    assert current_month(now=NOW) == Period(ns("2026-03-01T00:00Z"), ns("2026-04-01T00:00Z"))
    assert last_month(now=NOW) == Period(ns("2026-02-01T00:00Z"), ns("2026-03-01T00:00Z"))
    assert last_month(now=ns("2026-01-10T00:00Z")) == Period(ns("2025-12-01T00:00Z"), ns("2026-01-01T00:00Z"))
    ny = current_month(tz="America/New_York", now=NOW)
    assert ny == Period(ns("2026-03-01T05:00Z"), ns("2026-04-01T04:00Z"))
    tokyo_new_year = ns("2026-12-31T15:00Z")
    assert current_month(tz="Asia/Tokyo", now=tokyo_new_year).start == tokyo_new_year
    assert isinstance(current_month(now=NOW), Period)


def test_billing_periods() -> None:
    assert current_billing_period(15, now=NOW) == Period(ns("2026-02-15T00:00Z"), ns("2026-03-15T00:00Z"))
    assert last_billing_period(15, now=NOW) == Period(ns("2026-01-15T00:00Z"), ns("2026-02-15T00:00Z"))
    assert current_billing_period(14, now=NOW) == Period(ns("2026-03-14T00:00Z"), ns("2026-04-14T00:00Z"))
    assert current_billing_period(1, now=NOW) == current_month(now=NOW)
    kolkata = current_billing_period(28, tz="Asia/Kolkata", now=NOW)
    assert kolkata == Period(ns("2026-02-27T18:30Z"), ns("2026-03-27T18:30Z"))
    for bad in (0, 29, 31, -3):
        with pytest.raises(ValueError):
            current_billing_period(bad, now=NOW)
        with pytest.raises(ValueError):
            last_billing_period(bad, now=NOW)
    with pytest.raises(TypeError):
        current_billing_period(1.0, now=NOW)  # type: ignore[arg-type]


def test_day_and_week() -> None:
    assert today(now=NOW) == Period(ns("2026-03-14T00:00Z"), ns("2026-03-15T00:00Z"))
    assert today(tz="America/New_York", now=ns("2026-03-08T12:00Z")) == Period(
        ns("2026-03-08T05:00Z"), ns("2026-03-09T04:00Z")
    )
    assert this_week(now=NOW) == Period(ns("2026-03-09T00:00Z"), ns("2026-03-16T00:00Z"))
    assert this_week(now=ns("2026-03-16T00:00Z")).start == ns("2026-03-16T00:00Z")
    assert this_week(tz="Pacific/Chatham", now=NOW) == Period(
        ns("2026-03-08T10:15Z"), ns("2026-03-15T10:15Z")
    )


def test_current_period() -> None:
    hour = Period(ns("2026-03-14T12:00Z"), ns("2026-03-14T13:00Z"))
    assert current_period(3600, now=NOW + 1) == hour
    assert current_period(dt.timedelta(hours=1), now=NOW + 1) == hour
    assert current_period(dt.timedelta(days=30), now=1) == Period(0, 2_592_000 * NS)
    assert current_period(60, now=-1) == Period(-60 * NS, 0)
    for bad in (0, -60, dt.timedelta(0), dt.timedelta(seconds=-1), dt.timedelta(milliseconds=1500)):
        with pytest.raises(ValueError):
            current_period(bad, now=NOW)
    for wrong in ("3600", 3600.0, True, None):
        with pytest.raises(TypeError):
            current_period(wrong, now=NOW)  # type: ignore[arg-type]


def test_helpers_reject_unknown_zones() -> None:
    for helper in (current_month, last_month, today, this_week):
        with pytest.raises(ValueError, match="time zone"):
            helper(tz="Mars/Olympus", now=NOW)
    with pytest.raises(ValueError, match="time zone"):
        current_billing_period(1, tz="", now=NOW)


def test_helpers_default_to_the_clock() -> None:
    before = time.time_ns()
    periods = [current_month(), today(), this_week(), current_billing_period(10), current_period(60)]
    after = time.time_ns()
    for period in periods:
        assert period.start <= after and before < period.end
