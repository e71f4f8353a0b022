"""``bench.alert_rounds``' summary: medians over rounds, and the CPU ratio of this checkout's
server to each baseline's, round by round."""

from __future__ import annotations

from typing import Any

from bench.alert_rounds import cpu_per_event_us, summary


def _run(p50: float, p99: float, cpu_share: float, events_per_s: float) -> dict[str, Any]:
    return {"p50_ms": p50, "p99_ms": p99, "server_cpu_share": cpu_share, "events_per_s": events_per_s}


def test_cpu_an_event_is_the_cpu_share_over_the_events_taken() -> None:
    assert cpu_per_event_us(_run(1, 2, 1.2, 200_000)) == 6.0


def test_summary_gives_medians_and_the_ratios_of_paired_rounds() -> None:
    runs = {
        "this": [_run(1.0, 10.0, 1.0, 200_000), _run(2.0, 30.0, 1.2, 200_000), _run(3.0, 20.0, 0.9, 150_000)],
        "baseline1": [
            _run(2.0, 20.0, 1.2, 200_000),
            _run(1.0, 40.0, 1.0, 200_000),
            _run(4.0, 5.0, 1.2, 200_000),
        ],
    }
    assert summary(runs) == [
        "      this: p50 2.000 ms, p99 20.00 ms, 6.00 µs an event (medians over 3 rounds)",
        " baseline1: p50 2.000 ms, p99 20.00 ms, 6.00 µs an event (medians over 3 rounds)",
        # rounds: 5.0 / 6.0, 6.0 / 5.0, 6.0 / 6.0
        "this / baseline1: CPU an event x1.000 (median of 3 rounds; lower in 1)",
    ]


def test_summary_of_one_server_has_no_ratio() -> None:
    assert summary({"this": [_run(1.0, 2.0, 1.0, 100_000)]}) == [
        "      this: p50 1.000 ms, p99 2.00 ms, 10.00 µs an event (medians over 1 rounds)"
    ]
