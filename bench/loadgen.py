"""Load generators: separate processes, each with its own grpc.aio channel, driven by the orchestrator.

A load generator is what a user's service is to Unimeter: another process calling the public gRPC
API. ``WorkerPool`` starts them once per run and sends them commands over pipes; each command runs
to completion in the worker's event loop and answers with one result (plus progress messages for
long fills). Timed runs start at an agreed ``time.monotonic()`` instant, which is the same clock in
every process on Linux, as are the send, ack and receive timestamps the alert run joins across
processes.

Requests are sent pre-encoded (``request_serializer=None``) so a caller spends its CPU on gRPC,
not on building messages; see ``bench.payloads``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, cast

__all__ = ["WorkerError", "WorkerPool", "worker_main"]

_MAX_MESSAGE_BYTES = 17 << 20
_RETRYABLE = ("RESOURCE_EXHAUSTED", "UNAVAILABLE")


class WorkerError(RuntimeError):
    """A load generator failed; carries its traceback."""


# ---------------------------------------------------------------------------------------- worker


class _Worker:
    """The worker side: channels per address and one handler per command."""

    def __init__(self, index: int, results: Connection) -> None:
        import grpc

        from unimeter.v1 import (
            alert_service_pb2,
            ingest_service_pb2,
            metrics_service_pb2,
            query_service_pb2,
            types_pb2,
        )

        from . import payloads

        self._grpc = grpc
        self._pb = {
            "alert": alert_service_pb2,
            "ingest": ingest_service_pb2,
            "metrics": metrics_service_pb2,
            "query": query_service_pb2,
            "types": types_pb2,
        }
        self._payloads = payloads
        self.index = index
        self._results = results
        self._channels: dict[str, Any] = {}
        self._prepared: dict[str, Any] | None = None
        self._subscription: dict[str, Any] | None = None

    # -- plumbing

    def _channel(self, addr: str) -> Any:
        channel = self._channels.get(addr)
        if channel is None:
            channel = self._grpc.aio.insecure_channel(
                addr,
                options=[
                    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ],
            )
            self._channels[addr] = channel
        return channel

    def _method(self, addr: str, path: str, response: Any) -> Any:
        return self._channel(addr).unary_unary(
            path, request_serializer=None, response_deserializer=response.FromString
        )

    def _ingest(self, addr: str) -> Any:
        return self._method(addr, "/unimeter.v1.IngestService/Ingest", self._pb["ingest"].IngestResponse)

    def progress(self, value: float) -> None:
        self._results.send(("progress", self.index, value))

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, self._grpc.aio.AioRpcError):
            return f"{exc.code().name}: {exc.details()}"
        return repr(exc)

    def _code(self, exc: BaseException) -> str:
        return exc.code().name if isinstance(exc, self._grpc.aio.AioRpcError) else ""

    async def close(self) -> None:
        await self.cmd_unsubscribe(settle=0)
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    # -- commands

    async def cmd_hello(self) -> int:
        return self.index

    async def cmd_create_metrics(self, addr: str, n_metrics: int) -> list[str]:
        """Create the run's metrics (an existing one is fine)."""
        stub = self._channel(addr).unary_unary(
            "/unimeter.v1.MetricsService/CreateMetric",
            request_serializer=self._pb["metrics"].CreateMetricRequest.SerializeToString,
            response_deserializer=self._pb["metrics"].CreateMetricResponse.FromString,
        )
        created = []
        for metric in self._payloads.metric_definitions(n_metrics):
            try:
                await stub(self._pb["metrics"].CreateMetricRequest(metric=metric), timeout=30)
                created.append(metric.code)
            except self._grpc.aio.AioRpcError as exc:
                if exc.code() != self._grpc.StatusCode.ALREADY_EXISTS:
                    raise
        return created

    async def cmd_prepare_ingest(
        self,
        addr: str,
        *,
        tag: int,
        slot: int,
        batch: int,
        templates: int,
        accounts: int,
        metrics: int,
        now_ns: int,
        sync: bool = False,
        record_latency: bool = True,
        alert: dict[str, int] | None = None,
        calls_per_second: float | None = None,
        phase: float = 0.0,
    ) -> dict[str, int]:
        """Encode this caller's templates, connect, and send one warm-up call (not measured).

        ``alert`` adds ``per_batch`` alert-metric events to each call, at unique times
        ``base_ns + (call * per_batch + i) * stride + slot``; ``batch`` counts them too.
        ``calls_per_second`` paces the calls; ``phase`` (0-1) offsets this caller's schedule by
        that share of an interval, so paced callers interleave instead of arriving in bursts.
        """
        p = self._payloads
        per_alert = alert["per_batch"] if alert else 0
        bodies = p.ingest_templates(
            slot=slot,
            batch=batch - per_alert,
            count=templates,
            accounts=accounts,
            metrics=metrics,
            now_ns=now_ns,
        )
        ingest = self._ingest(addr)
        await self._channel(addr).channel_ready()
        warm = bodies[0].replace(p.ID_SENTINEL, p.unique_prefix(tag, slot, 0))
        await ingest(warm + (p.DELIVERY_SYNC if sync else b""), timeout=60)
        self._prepared = {
            "ingest": ingest,
            "bodies": bodies,
            "tag": tag,
            "slot": slot,
            "batch": batch,
            "sync": sync,
            "record_latency": record_latency,
            "alert": alert,
            "accounts": accounts,
            "calls_per_second": calls_per_second,
            "phase": phase,
        }
        return {"template_bytes": len(bodies[0])}

    async def cmd_go(self, *, start_at: float, duration: float) -> dict[str, Any]:
        """Run the prepared ingest loop from ``start_at`` for ``duration`` seconds, one call at a time."""
        prep = self._prepared
        if prep is None:
            raise RuntimeError("go without prepare_ingest")
        self._prepared = None
        p = self._payloads
        ingest, bodies, tag, slot = prep["ingest"], prep["bodies"], prep["tag"], prep["slot"]
        batch, record_latency, alert = prep["batch"], prep["record_latency"], prep["alert"]
        tail = p.DELIVERY_SYNC if prep["sync"] else b""
        interval = 1.0 / prep["calls_per_second"] if prep["calls_per_second"] else 0.0
        phase = prep["phase"]
        sentinel, prefix, n_bodies = p.ID_SENTINEL, p.unique_prefix, len(bodies)
        monotonic_ns = time.monotonic_ns
        aio_error = self._grpc.aio.AioRpcError
        latencies: list[int] = []
        alert_calls: list[tuple[int, int, int]] = []
        """(alert event time, send, ack) of each alert-metric event of an acked call."""
        events = calls = errors = duplicates = 0
        first_error = ""
        deadline = start_at + duration
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        first_send = last_ack = monotonic_ns()
        seq = 0
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if interval:
                due = start_at + (calls + phase) * interval
                if due > now:
                    await asyncio.sleep(due - now)
                    if time.monotonic() >= deadline:
                        break
            seq += 1
            request = bodies[seq % n_bodies].replace(sentinel, prefix(tag, slot, seq))
            times: list[int] = []
            if alert:
                k = alert["per_batch"]
                times = [alert["base_ns"] + (seq * k + i) * alert["stride"] + slot for i in range(k)]
                request += p.alert_events(times=times, accounts=prep["accounts"])
            sent = monotonic_ns()
            try:
                response = await ingest(request + tail, timeout=60)
            except aio_error as exc:
                errors += 1
                first_error = first_error or self._describe(exc)
                if self._code(exc) in _RETRYABLE:
                    await asyncio.sleep(0.01)
                    continue
                raise
            last_ack = monotonic_ns()
            calls += 1
            events += batch
            duplicates += response.n_duplicates
            if record_latency:
                latencies.append(last_ack - sent)
            if times:
                alert_calls.extend((t, sent, last_ack) for t in times)
        return {
            "events": events,
            "calls": calls,
            "errors": errors,
            "first_error": first_error,
            "duplicates": duplicates,
            "first_send_ns": first_send,
            "last_ack_ns": last_ack,
            "latencies_ns": latencies,
            "alert_calls": alert_calls,
        }

    async def cmd_fill(self, addr: str, spec: dict[str, Any], *, inflight: int = 2) -> dict[str, Any]:
        """Send every batch of ``spec`` (see ``payloads.fill_batches``) as fast as the server takes them.

        ``inflight`` calls are outstanding at once so the next batch is encoded while one is served.
        Backpressure answers are retried with the same request (event ids make that safe).
        """
        ingest = self._ingest(addr)
        batches = self._payloads.fill_batches(spec)
        done = {"events": 0, "calls": 0, "retries": 0, "duplicates": 0}
        started = time.monotonic()

        async def sender() -> None:
            for request, n in batches:
                for attempt in range(200):
                    try:
                        response = await ingest(request, timeout=120)
                        break
                    except self._grpc.aio.AioRpcError as exc:
                        if self._code(exc) not in _RETRYABLE or attempt == 199:
                            raise
                        done["retries"] += 1
                        await asyncio.sleep(0.05)
                done["events"] += n
                done["calls"] += 1
                done["duplicates"] += response.n_duplicates

        async def reporter() -> None:
            while True:
                await asyncio.sleep(0.5)
                self.progress(done["events"])

        ticker = asyncio.create_task(reporter())
        try:
            await asyncio.gather(*(sender() for _ in range(inflight)))
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        return {**done, "seconds": time.monotonic() - started}

    async def cmd_latency(
        self,
        addr: str,
        *,
        kind: str,
        duration: float,
        max_calls: int,
        warmup_calls: int = 20,
        tag: int = 0,
        account: int = 1,
        metric: str = "",
        start_ns: int = 0,
        end_ns: int = 0,
        sync: bool = True,
        calls_per_second: float | None = None,
    ) -> dict[str, Any]:
        """Sequential calls of one kind (``ingest1``, ``realtime`` or ``query``); per-call latency.
        ``calls_per_second`` paces them (a call that is late is sent at once, never skipped)."""
        p, pb = self._payloads, self._pb
        if kind == "ingest1":
            method = self._ingest(addr)
            body: bytes = p.ingest_templates(
                slot=self.index, batch=1, count=1, accounts=1, metrics=1, now_ns=time.time_ns(),
                account_base=account,
            )[0] + (p.DELIVERY_SYNC if sync else b"")  # fmt: skip
            seq = 0

            def make() -> bytes:
                nonlocal seq
                seq += 1
                return body.replace(p.ID_SENTINEL, p.unique_prefix(tag, self.index, seq))

        elif kind == "realtime":
            method = self._method(
                addr, "/unimeter.v1.QueryService/QueryRealtime", pb["query"].QueryRealtimeResponse
            )
            fixed: bytes = (
                pb["query"].QueryRealtimeRequest(account_id=account, metric_code=metric).SerializeToString()
            )

            def make() -> bytes:
                return fixed

        elif kind == "query":
            method = self._method(addr, "/unimeter.v1.QueryService/Query", pb["query"].QueryResponse)
            fixed = (
                pb["query"]
                .QueryRequest(
                    account_id=account,
                    metric_code=metric,
                    period=pb["types"].Period(start_unix_nano=start_ns, end_unix_nano=end_ns),
                )
                .SerializeToString()
            )

            def make() -> bytes:
                return fixed

        else:
            raise ValueError(f"unknown latency kind {kind!r}")
        await self._channel(addr).channel_ready()
        last: Any = None
        for _ in range(warmup_calls):
            last = await method(make(), timeout=60)
        monotonic_ns = time.monotonic_ns
        latencies: list[int] = []
        started = time.monotonic()
        deadline = started + duration
        interval = 1.0 / calls_per_second if calls_per_second else 0.0
        while len(latencies) < max_calls and time.monotonic() < deadline:
            if interval:
                due = started + len(latencies) * interval
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                    if time.monotonic() >= deadline:
                        break
            request = make()
            sent = monotonic_ns()
            last = await method(request, timeout=60)
            latencies.append(monotonic_ns() - sent)
        answer: dict[str, Any] = {}
        if kind in ("realtime", "query") and last is not None:
            answer = {"count": last.value.count, "sum": last.value.sum, "as_of_offset": last.as_of_offset}
        return {"latencies_ns": latencies, "answer": answer}

    async def cmd_subscribe(
        self, addr: str, *, metric_codes: Sequence[str], max_alerts_per_message: int = 0, timeout: float = 60
    ) -> bool:
        """Open AlertSubscribe and return once its first message (a heartbeat) arrived."""
        pb = self._pb["alert"]
        call = self._channel(addr).unary_stream(
            "/unimeter.v1.AlertService/AlertSubscribe",
            request_serializer=pb.AlertSubscribeRequest.SerializeToString,
            response_deserializer=pb.AlertSubscribeResponse.FromString,
        )(
            pb.AlertSubscribeRequest(
                metric_codes=list(metric_codes), max_alerts_per_message=max_alerts_per_message
            )
        )
        received: list[tuple[int, int]] = []
        first = asyncio.get_running_loop().create_future()

        async def reader() -> None:
            try:
                async for item in call:
                    now = time.monotonic_ns()
                    if not first.done():
                        first.set_result(True)
                    if item.HasField("alert"):
                        received.append((item.alert.event_time_unix_nano, now))
                    elif item.HasField("batch"):
                        received.extend((a.event_time_unix_nano, now) for a in item.batch.alerts)
            except asyncio.CancelledError:
                raise
            except self._grpc.aio.AioRpcError as exc:
                if not first.done():
                    first.set_exception(exc)
                if exc.code() != self._grpc.StatusCode.CANCELLED:
                    raise

        task = asyncio.create_task(reader())
        self._subscription = {"call": call, "task": task, "received": received}
        async with asyncio.timeout(timeout):
            await first
        return True

    async def cmd_unsubscribe(self, *, settle: float = 0.5) -> list[tuple[int, int]]:
        """Wait ``settle`` s for alerts in flight, close the stream; returns (event time, receive ns)."""
        sub = self._subscription
        self._subscription = None
        if sub is None:
            return []
        await asyncio.sleep(settle)
        sub["call"].cancel()
        sub["task"].cancel()
        with contextlib.suppress(asyncio.CancelledError, self._grpc.aio.AioRpcError):
            await sub["task"]
        return list(sub["received"])

    async def cmd_first_query(
        self, addr: str, *, account: int, metric: str, timeout: float = 600
    ) -> dict[str, Any]:
        """Poll QueryRealtime until it succeeds; returns the monotonic instant of the first success."""
        pb = self._pb["query"]
        method = self._method(addr, "/unimeter.v1.QueryService/QueryRealtime", pb.QueryRealtimeResponse)
        request = pb.QueryRealtimeRequest(account_id=account, metric_code=metric).SerializeToString()
        deadline = time.monotonic() + timeout
        attempts = 0
        while True:
            attempts += 1
            try:
                answer = await method(request, timeout=5)
                return {"ok_ns": time.monotonic_ns(), "attempts": attempts, "count": answer.value.count}
            except self._grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.005)


async def _serve(index: int, commands: Connection, results: Connection) -> None:
    loop = asyncio.get_running_loop()
    worker = _Worker(index, results)
    results.send(("ok", index, index))
    try:
        while True:
            try:
                name, args = await loop.run_in_executor(None, commands.recv)
            except EOFError:
                return
            if name == "exit":
                return
            try:
                value = await getattr(worker, f"cmd_{name}")(**args)
                results.send(("ok", index, value))
            except Exception:
                results.send(("error", index, traceback.format_exc()))
    finally:
        await worker.close()


def worker_main(index: int, commands: Connection, results: Connection) -> None:
    """Entry point of a load-generator process."""
    asyncio.run(_serve(index, commands, results))


# ---------------------------------------------------------------------------------------- parent


class WorkerPool:
    """``n`` load-generator processes, started once and reused by every workload of a run."""

    def __init__(self, n: int, *, timeout: float = 120) -> None:
        # forkserver, not fork: the orchestrator may already hold gRPC state (a test process
        # surely does), and a fork would inherit it. The fork server itself is a fresh process
        # that imports gRPC and the protos once, so each worker starts in milliseconds, not the
        # half second a spawned interpreter needs (16 of those on 2 cores take seconds).
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["bench.loadgen", "bench.payloads", "grpc"])
        self._commands: list[Connection] = []
        self._results: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        for i in range(n):
            cmd_read, cmd_write = ctx.Pipe(duplex=False)
            res_read, res_write = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=worker_main, args=(i, cmd_read, res_write), name=f"bench-loadgen-{i}", daemon=True
            )
            proc.start()
            cmd_read.close()
            res_write.close()
            self._commands.append(cmd_write)
            self._results.append(res_read)
            self._procs.append(proc)
        self.collect(range(n), timeout=timeout)

    def __len__(self) -> int:
        return len(self._procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid or 0 for p in self._procs]

    def submit(self, index: int, command: str, **args: Any) -> None:
        """Send one command to worker ``index`` (collect its answer with ``collect``)."""
        self._commands[index].send((command, args))

    def collect(
        self,
        indices: Sequence[int] | range,
        *,
        tick: Callable[[dict[int, float]], None] | None = None,
        timeout: float | None = None,
    ) -> list[Any]:
        """The answers of ``indices`` (in that order); ``tick`` sees progress values ~5 times a second."""
        pending = {self._results[i]: i for i in indices}
        answers: dict[int, Any] = {}
        progress: dict[int, float] = {}
        failure = ""
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"load generators {sorted(pending.values())} did not answer in {timeout}s")
            for ready in wait(list(pending), timeout=0.2):
                conn = cast(Connection, ready)
                index = pending[conn]
                try:
                    kind, _, value = conn.recv()
                except EOFError:
                    raise WorkerError(f"load generator {index} died") from None
                if kind == "progress":
                    progress[index] = value
                    continue
                del pending[conn]
                if kind == "error":
                    failure = failure or f"load generator {index} failed:\n{value}"
                answers[index] = value
            if tick is not None:
                tick(progress)
        if failure:
            raise WorkerError(failure)
        return [answers[i] for i in indices]

    def run(
        self,
        jobs: Sequence[tuple[int, str, dict[str, Any]]],
        *,
        tick: Callable[[dict[int, float]], None] | None = None,
        timeout: float | None = None,
    ) -> list[Any]:
        """Submit ``(worker, command, args)`` jobs (one per worker) and collect their answers."""
        for index, command, args in jobs:
            self.submit(index, command, **args)
        return self.collect([j[0] for j in jobs], tick=tick, timeout=timeout)

    def close(self) -> None:
        """Ask every worker to exit, then reap them (killing any that hang)."""
        for conn in self._commands:
            with contextlib.suppress(OSError):
                conn.send(("exit", {}))
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in [*self._commands, *self._results]:
            conn.close()
