"""An alert whose value does not fit the API's int64 field: sums are exact past 64 bits, so a
threshold can be crossed by a value no Alert can carry. The alert fires with the field's largest
value, every call that stored its event succeeds, and a restart regenerates the same alerts from the
log (before, the alert record failed to encode after the event record was stored: the caller got an
error for a stored event and the alert was missing)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cluster_client import AggType, AlertThreshold, Client, Metric
from cluster_client.errors import OutOfRangeError
from cluster_client.types import Event
from node.node import NodeConfig
from service.convert import alert_batch_response, alert_to_proto
from tests.engines import ENGINES, target_named

INT64_MAX = 2**63 - 1
VALUE = 2**63 - 1  # the largest value an event of a SUM metric may carry
THRESHOLD = 2**62


async def _alerts_after_ingest(data: Path, engine: str) -> list[tuple[int, int, int]]:
    node = target_named(f"{engine}-embedded").make_node(NodeConfig(data, partitions=2))
    await node.start()
    try:
        client = await Client.in_process(node)
        await client.metrics.create(
            Metric("bytes", AggType.SUM, thresholds=(AlertThreshold("every-2-62", THRESHOLD, True),)),
            timeout=5,
        )
        now = time.time_ns()
        for i in range(4):
            result = await client.ingest([Event(7, "bytes", VALUE, now, event_id=f"e{i}")], timeout=5)
            assert (result.n_stored, result.offsets) == (1, [i + 1])
        with pytest.raises(OutOfRangeError):
            await client.query_realtime(7, "bytes", timeout=5)
        return await _listed(client)
    finally:
        await node.close()


async def _listed(client: Client) -> list[tuple[int, int, int]]:
    for _ in range(200):  # alerts are published by the flusher within its interval
        alerts, _more = await client.alerts.list(7, timeout=5)
        if len(alerts) == 4:
            break
        await asyncio.sleep(0.01)
    # What ListAlerts and AlertSubscribe send must encode, one alert a message or in a batch.
    batch = alert_batch_response(alerts)
    assert list(batch.batch.alerts) == [alert_to_proto(alert) for alert in alerts]
    return [(a.offset, a.multiple, a.value_at_cross) for a in alerts]


def _forget_alerts(data: Path) -> None:
    """Remove snapshots and alert segments: recovery regenerates the alerts from the events log."""
    for path in [*data.rglob("snapshot.msgpack"), *data.glob("partitions/*/alerts/*")]:
        path.unlink()


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_crossing_past_int64_fires_with_the_largest_value_and_survives_a_restart(
    tmp_path: Path, engine: str
) -> None:
    # The sums after each event: 2^63-1, 2^64-2, 3*2^63-3, 2^65-4: multiples 1, 3, 5, 7.
    expected = [(1, 1, INT64_MAX), (2, 3, INT64_MAX), (3, 5, INT64_MAX), (4, 7, INT64_MAX)]
    assert await _alerts_after_ingest(tmp_path, engine) == expected
    _forget_alerts(tmp_path)
    node = target_named(f"{engine}-embedded").make_node(NodeConfig(tmp_path, partitions=2))
    await node.start()
    try:
        assert await _listed(await Client.in_process(node)) == expected
    finally:
        await node.close()
