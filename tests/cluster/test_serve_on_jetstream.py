"""``unimeter serve --backend nats`` as a real process: refusals at start, and a kill -9 after
SYNC and ASYNC ingests recovers exactly the answers it gave, which are the answers an embedded
node gives for the same workload."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.conftest import Api, api_on_port
from tests.integration.helpers import SEC, T0, create_metric, ev, ingest
from tests.process import CLI, ENV, REPO, start_serve
from tools.nats_cluster import NatsCluster
from unimeter.v1 import alert_service_pb2 as als
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

ACCOUNTS = [1, 2, 3, 4, 5, 6]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_refused(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [*CLI, "serve", "--data-dir", str(tmp_path / "data"), "--grpc-addr", "127.0.0.1:0", *flags]
    return subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def test_unreachable_nats_refuses_the_start_and_touches_nothing(tmp_path: Path) -> None:
    urls = f"nats://127.0.0.1:{_free_port()},nats://127.0.0.1:{_free_port()}"
    done = _serve_refused(tmp_path, "--backend", "nats", "--nats-url", urls)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("unimeter serve: cannot connect to NATS at nats://127.0.0.1:")
    assert all(url in last for url in urls.split(","))
    assert not (tmp_path / "data").exists()


def test_unverified_sync_refuses_the_start(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    done = _serve_refused(
        tmp_path, "--backend", "nats", "--nats-url", nats_cluster.urls[0], "--nats-stream", stream_name
    )
    assert done.returncode != 0
    assert "cannot verify that the NATS servers sync every write" in done.stderr
    assert "--nats-monitor-url" in done.stderr
    assert not (tmp_path / "data").exists()


async def _workload(api: Api) -> list[list[int]]:
    """Metrics with thresholds, ASYNC and SYNC batches with duplicates; the offsets answered."""
    await create_metric(api, "calls", thresholds=[t.AlertThreshold(code="ten", value=10)])
    await create_metric(api, "bytes", t.AGG_TYPE_SUM, thresholds=[t.AlertThreshold(code="k", value=1000)])
    answers = []
    for round_ in range(6):
        events = [
            ev(a, "calls", 1, T0 + (round_ * 10 + a) * SEC, event_id=f"c{round_}-{a}") for a in ACCOUNTS
        ] + [
            ev(a, "bytes", 100 * a, T0 + (round_ * 10 + a) * SEC, event_id=f"b{round_}-{a}") for a in ACCOUNTS
        ]
        events.append(events[0])  # a duplicate in the batch
        reply = await ingest(api, *events, sync=round_ % 2 == 1)
        answers.append(list(reply.offsets))
    # SYNC over every account: each partition's log is durable up to its end, ASYNC records included.
    reply = await ingest(
        api, *[ev(a, "calls", 1, T0 + 100 * SEC, event_id=f"last-{a}") for a in ACCOUNTS], sync=True
    )
    answers.append(list(reply.offsets))
    return answers


async def _answers(api: Api) -> list[object]:
    out: list[object] = []
    for account in ACCOUNTS:
        for code in ("calls", "bytes"):
            q = await api.query.Query(
                qs.QueryRequest(
                    account_id=account,
                    metric_code=code,
                    period=t.Period(start_unix_nano=T0, end_unix_nano=T0 + 3600 * SEC),
                ),
                timeout=10,
            )
            out.append(q.SerializeToString(deterministic=True))
        page = await api.query.ListEvents(
            qs.ListEventsRequest(account_id=account, start_unix_nano=T0, end_unix_nano=T0 + 3600 * SEC),
            timeout=10,
        )
        out.append([e.SerializeToString(deterministic=True) for e in page.events])
        alerts = await api.alerts.ListAlerts(als.ListAlertsRequest(account_id=account), timeout=10)
        # Not the record time: that is when each node stored the batch.
        out.append(
            [
                (a.offset, a.threshold_code, a.metric_code, a.value_at_cross, a.event_time_unix_nano)
                for a in alerts.alerts
            ]
        )
    return out


async def test_kill9_recovers_the_answers_an_embedded_node_gives(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    nats_flags = [
        "--backend", "nats",
        "--nats-url", ",".join(nats_cluster.urls),
        "--nats-monitor-url", ",".join(nats_cluster.monitor_urls),
        "--nats-stream", stream_name,
        "--partitions", "4",
    ]  # fmt: skip
    embedded = start_serve(tmp_path / "embedded", "--partitions", "4")
    try:
        api = api_on_port(embedded.grpc_port)
        expected_offsets = await _workload(api)
        expected = await _answers(api)
        await api.channel.close()
    finally:
        embedded.terminate()

    node = start_serve(tmp_path / "nats", *nats_flags)
    try:
        api = api_on_port(node.grpc_port)
        assert await _workload(api) == expected_offsets
        before = await _answers(api)
        await api.channel.close()
    finally:
        node.kill9()
    assert before == expected
    assert any(alerts for alerts in expected[3::4]), "the workload fires alerts"

    again = start_serve(tmp_path / "nats", *nats_flags)
    try:
        api = api_on_port(again.grpc_port)
        assert await _answers(api) == expected
        # A retry of a SYNC batch after the restart is answered from the recovered dedup keys.
        retry = await ingest(
            api, *[ev(a, "calls", 1, T0 + 100 * SEC, event_id=f"last-{a}") for a in ACCOUNTS], sync=True
        )
        assert list(retry.offsets) == expected_offsets[-1]
        await api.channel.close()
    finally:
        assert again.terminate() == 0
