"""ThrottledLog: one line per interval, and the next line counts the ones left out."""

from __future__ import annotations

import logging

import pytest

from service.log_throttle import ThrottledLog


def test_one_line_per_interval_and_the_next_line_counts_the_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    throttle = ThrottledLog(
        logging.getLogger("t"), logging.WARNING, interval_seconds=10.0, clock=lambda: now[0]
    )
    caplog.set_level(logging.WARNING, "t")
    assert throttle.emit("bad body on %s", "a") is True
    for t in (100.0, 105.0, 109.999):
        now[0] = t
        assert throttle.emit("bad body on %s", "b") is False
    assert throttle.suppressed == 3
    now[0] = 110.0
    assert throttle.emit("bad body on %s", "c") is True
    now[0] = 500.0
    assert throttle.emit("bad body on %s", "100%") is True
    assert [r.getMessage() for r in caplog.records] == [
        "bad body on a",
        "bad body on c (and 3 more since the previous line, not logged)",
        "bad body on 100%",
    ]
    assert throttle.suppressed == 0
