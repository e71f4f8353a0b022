"""The ceiling: a no-op gRPC server with Unimeter's IngestService, QueryService and AlertService.

It is what the same Python + grpc.aio stack does with no storage at all, measured in the same run
with the same load generators and payloads, so each Unimeter number can be read as a fraction of
what is reachable on this machine. ``Ingest`` decodes the request and reads every field of every
event once (as any real servicer must), stores nothing and returns offsets; ``QueryRealtime`` and
``Query`` return a fixed ``AggValue``; ``AlertSubscribe`` sends a heartbeat, then one alert for
each ingested event of the alert metric (the events the real server's recurring threshold fires
on; batched like the real server's when the request asks), so the alert run has a floor too.

Run as ``python -m bench.ceiling``; it prints one JSON ready line like ``unimeter serve``. With
``--burn-ns-per-event N`` each Ingest call also burns N ns of CPU per event with the GIL released,
on the event loop's thread or (``--burn-on thread``) on a worker thread the call awaits: the
model ``python -m bench.cpu_budget`` uses to show what per-event work costs a server on this
machine, and what moving it off the loop's thread buys.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from unimeter.v1 import (
    alert_service_pb2,
    alert_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
    types_pb2,
)

__all__ = ["CpuBurner", "main", "serve"]

# Same limits as unimeter serve (service/server.py), so both accept the same batches.
_MAX_MESSAGE_BYTES = 17 << 20
_FIXED = types_pb2.AggValue(value=42, count=1, sum=42, max=42, last_value=42)
_PERIOD = types_pb2.Period(start_unix_nano=1, end_unix_nano=2)


class CpuBurner:
    """Burns CPU for a given time per event with the GIL released: SHA-256 over a buffer of zeros
    (hashlib lets go of the GIL for inputs over 2 KiB), its length calibrated at start."""

    def __init__(self, ns_per_event: float, *, on_thread: bool) -> None:
        self._bytes_per_ns = _hash_bytes_per_ns()
        self._ns_per_event = ns_per_event
        self._buffer = b""
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="burn") if on_thread else None

    async def burn(self, n_events: int) -> None:
        """Burn ``n_events`` events' CPU, on the loop's thread or on the worker thread."""
        size = int(n_events * self._ns_per_event * self._bytes_per_ns)
        if len(self._buffer) < size:
            self._buffer = bytes(size)
        work = memoryview(self._buffer)[:size]
        if self._pool is None:
            hashlib.sha256(work)
        else:
            await asyncio.get_running_loop().run_in_executor(self._pool, hashlib.sha256, work)


def _hash_bytes_per_ns() -> float:
    """SHA-256's speed on this machine, in bytes per ns (best of a few 4 MiB runs)."""
    data = bytes(4 << 20)
    best = min(_timed(hashlib.sha256, data) for _ in range(5))
    return len(data) / best


def _timed(fn: Callable[[bytes], object], data: bytes) -> int:
    started = time.perf_counter_ns()
    fn(data)
    return max(1, time.perf_counter_ns() - started)


class _Ingest(ingest_service_pb2_grpc.IngestServiceServicer):
    def __init__(self, alerts: _Alerts, burner: CpuBurner | None) -> None:
        self._next = 1
        self._alerts = alerts
        self._burner = burner

    async def Ingest(
        self, request: ingest_service_pb2.IngestRequest, context: grpc.aio.ServicerContext
    ) -> ingest_service_pb2.IngestResponse:
        n = 0
        sink = 0
        alert_code = self._alerts.metric_code
        crossing: list[types_pb2.Event] = []
        for e in request.events:
            # Read each field once, as the real servicer's conversion does; keep nothing.
            account, code, value, t = e.account_id, e.metric_code, e.value, e.time_unix_nano
            props = e.properties
            if props:
                sink += len(dict(props))
            sink += e.operation + e.delivery + len(e.event_id) + account + value + t
            if code == alert_code:
                crossing.append(e)
            n += 1
        first = self._next
        self._next += n
        if self._burner is not None:
            await self._burner.burn(n)
        if crossing and self._alerts.subscribers:
            self._alerts.publish(crossing, first)
        return ingest_service_pb2.IngestResponse(n_stored=n, offsets=range(first, first + n))


class _Query(query_service_pb2_grpc.QueryServiceServicer):
    async def QueryRealtime(
        self, request: query_service_pb2.QueryRealtimeRequest, context: grpc.aio.ServicerContext
    ) -> query_service_pb2.QueryRealtimeResponse:
        return query_service_pb2.QueryRealtimeResponse(value=_FIXED, period=_PERIOD, as_of_offset=1)

    async def Query(
        self, request: query_service_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> query_service_pb2.QueryResponse:
        return query_service_pb2.QueryResponse(value=_FIXED, period=_PERIOD, as_of_offset=1)

    async def ListEvents(
        self, request: query_service_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> query_service_pb2.ListEventsResponse:
        return query_service_pb2.ListEventsResponse()  # stores nothing, so there is nothing to list


class _Alerts(alert_service_pb2_grpc.AlertServiceServicer):
    def __init__(self, metric_code: str) -> None:
        self.metric_code = metric_code
        self._queues: set[asyncio.Queue[alert_service_pb2.AlertSubscribeResponse]] = set()
        self._offset = 0

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, events: list[types_pb2.Event], first_offset: int) -> None:
        now = time.time_ns()
        for e in events:
            self._offset += 1
            item = alert_service_pb2.AlertSubscribeResponse(
                alert=types_pb2.Alert(
                    account_id=e.account_id,
                    metric_code=e.metric_code,
                    threshold_code="every",
                    threshold_value=1,
                    multiple=1,
                    value_at_cross=e.value,
                    event_time_unix_nano=e.time_unix_nano,
                    record_time_unix_nano=now,
                    offset=self._offset,
                )
            )
            for queue in self._queues:
                queue.put_nowait(item)

    async def ListAlerts(
        self, request: alert_service_pb2.ListAlertsRequest, context: grpc.aio.ServicerContext
    ) -> alert_service_pb2.ListAlertsResponse:
        return alert_service_pb2.ListAlertsResponse()  # stores nothing, so there is nothing to list

    async def AlertSubscribe(
        self, request: alert_service_pb2.AlertSubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[alert_service_pb2.AlertSubscribeResponse]:
        queue: asyncio.Queue[alert_service_pb2.AlertSubscribeResponse] = asyncio.Queue()
        self._queues.add(queue)
        limit = request.max_alerts_per_message
        try:
            yield alert_service_pb2.AlertSubscribeResponse(heartbeat=alert_service_pb2.Heartbeat())
            while True:
                item = await queue.get()
                if limit <= 1:
                    yield item
                    continue
                # As the real server: the alerts that are ready together go in one message.
                alerts = [item.alert]
                while len(alerts) < limit and not queue.empty():
                    alerts.append(queue.get_nowait().alert)
                batch = alert_service_pb2.AlertBatch(alerts=alerts)
                yield alert_service_pb2.AlertSubscribeResponse(batch=batch)
        finally:
            self._queues.discard(queue)


async def serve(host: str, port: int, alert_metric: str, burner: CpuBurner | None = None) -> None:
    """Serve until SIGTERM/SIGINT; prints the ready line once listening."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    alerts = _Alerts(alert_metric)
    ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(_Ingest(alerts, burner), server)
    query_service_pb2_grpc.add_QueryServiceServicer_to_server(_Query(), server)
    alert_service_pb2_grpc.add_AlertServiceServicer_to_server(alerts, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"event": "ready", "grpc_addr": f"{host}:{bound}"}), flush=True)
    await stop.wait()
    await server.stop(1.0)


def main() -> int:
    """``python -m bench.ceiling [--host H] [--port P] [--alert-metric CODE] [--burn-ns-per-event N
    [--burn-on loop|thread]]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--alert-metric", default="bench.alerts")
    parser.add_argument("--burn-ns-per-event", type=float, default=0.0)
    parser.add_argument("--burn-on", choices=("loop", "thread"), default="loop")
    args = parser.parse_args()
    burner = None
    if args.burn_ns_per_event > 0:
        burner = CpuBurner(args.burn_ns_per_event, on_thread=args.burn_on == "thread")
    asyncio.run(serve(args.host, args.port, args.alert_metric, burner))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
