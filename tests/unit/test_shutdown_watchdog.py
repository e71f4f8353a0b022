"""A shutdown that takes long logs the tasks it still waits for, with their stacks, so a hang in
the field can be read from the log (``service.commands.serve``)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service.commands import serve


async def test_a_slow_shutdown_names_the_tasks_still_running(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(serve, "SLOW_SHUTDOWN_SECONDS", 0.05)

    async def stuck_on_a_peer() -> None:
        await asyncio.Event().wait()

    stuck = asyncio.create_task(stuck_on_a_peer(), name="stuck")
    watchdog = asyncio.create_task(serve._report_slow_shutdown(logging.getLogger("unimeter")))
    with caplog.at_level(logging.WARNING, logger="unimeter"):
        while len(caplog.records) < 2:  # bounded by the test's timeout
            await asyncio.sleep(0.01)
    watchdog.cancel()
    stuck.cancel()
    reports = [r.getMessage() for r in caplog.records]
    assert all(m.startswith("shutdown is taking longer than 0 s; still running:\n") for m in reports)
    assert all("in stuck_on_a_peer" in m and "name='stuck'" in m for m in reports)
