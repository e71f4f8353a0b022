"""The capped backoff schedules of streams that re-open after their node went away."""

from __future__ import annotations

from itertools import islice

from cluster_client.retry import RESUBSCRIBE_MAX_BACKOFF, backoff_bounds
from cluster_client.subscription import resubscribe_bounds
from service.commands.alerts import reconnect_delays


def test_bounds_grow_by_the_multiplier_up_to_the_cap_and_stay_there() -> None:
    assert list(islice(backoff_bounds(0.25, 1.0), 6)) == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert list(islice(backoff_bounds(0.125, 1.0, multiplier=3.0), 4)) == [0.125, 0.375, 1.0, 1.0]
    assert list(islice(backoff_bounds(5.0, 1.0), 2)) == [1.0, 1.0]


def test_alert_streams_wait_at_most_a_second_between_attempts() -> None:
    assert RESUBSCRIBE_MAX_BACKOFF == 1.0
    assert list(islice(reconnect_delays(), 5)) == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert list(islice(resubscribe_bounds(), 7)) == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    # The total wait over a long outage grows by at most a second per attempt.
    assert max(islice(reconnect_delays(), 1000)) == max(islice(resubscribe_bounds(), 1000)) == 1.0
