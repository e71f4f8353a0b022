"""The node side of the node protocol: a TCP server that answers :mod:`cluster_client.wire` requests
by calling a ``NodeApi``.

Each connection must open with a hello (and, when the node has a cluster secret, prove it knows
the secret: see :mod:`cluster_client.node_auth`) within the handshake timeout; after that every
request runs as its own task, so one connection carries many requests at once and answers them in
completion order. Requests name ``NodeApi`` methods from an explicit table whose entries check the
arguments before anything runs. A client that breaks the protocol (bad bytes, a frame over the size
limit, an unknown method, wrong argument types, no hello) gets an InvalidArgumentError, one without
the right proof an UnauthenticatedError, one that stays silent a DeadlineExceededError, and its
connection is closed; every other connection carries on. It is transport only: validation of
values, routing and storage belong to the ``NodeApi`` it serves.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from ssl import SSLContext
from typing import Any

from cluster_client import wire
from cluster_client.errors import (
    DeadlineExceededError,
    InternalError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimeterError,
)
from cluster_client.node_api import NodeApi
from cluster_client.node_auth import (
    AUTH_METHOD,
    AUTH_SCHEME,
    NONCE_BYTES,
    client_proof,
    new_nonce,
    proof_matches,
    secret_bytes,
    server_proof,
)
from cluster_client.wire import (
    CANCEL,
    DEFAULT_MAX_FRAME_BYTES,
    REQUEST,
    Args,
    ProtocolError,
    check_hello,
    encode_error,
    encode_hello,
    encode_push,
    encode_response,
)

__all__ = ["SERVED_METHODS", "NodeProtocolServer"]

logger = logging.getLogger(__name__)

_FLUSH_NOW_BYTES = 256 * 1024
_ABORT_AFTER_SECONDS = 5.0
# Until the handshake is done a peer is a stranger: a hello is a few hundred bytes, so a stranger
# may not make the node buffer a full 64 MiB frame.
_HANDSHAKE_MAX_FRAME_BYTES = 64 * 1024

# A unary handler checks the arguments at once (a ProtocolError means a malformed request) and
# returns the coroutine that calls the api and encodes its answer; the api is only called inside
# the request's task, so an error it raises is an answer, never a protocol violation.
_Unary = Callable[[NodeApi, Args], Coroutine[Any, Any, object]]
# A stream handler likewise checks the arguments and returns the iterator of wire-form items.
_Stream = Callable[[NodeApi, Args], AsyncIterator[object]]


def _cluster_status(api: NodeApi, args: Args) -> Coroutine[Any, Any, object]:
    wire.decode_no_args(args, "cluster_status")

    async def run() -> object:
        return wire.cluster_status_to_wire(await api.cluster_status())

    return run()


def _create_metric(api: NodeApi, args: Args) -> Coroutine[Any, Any, object]:
    metric = wire.decode_create_metric_args(args)

    async def run() -> object:
        return wire.metric_to_wire(await api.create_metric(metric))

    return run()


def _get_metric(api: NodeApi, args: Args) -> Coroutine[Any, Any, object]:
    code = wire.decode_code_args(args, "get_metric")

    async def run() -> object:
        return wire.metric_to_wire(await api.get_metric(code))

    return run()


def _list_metrics(api: NodeApi, args: Args) -> Coroutine[Any, Any, object]:
    wire.decode_no_args(args, "list_metrics")

    async def run() -> object:
        return wire.metrics_to_wire(await api.list_metrics())

    return run()


def _delete_metric(api: NodeApi, args: Args) -> Coroutine[Any, Any, object]:
    code = wire.decode_code_args(args, "delete_metric")

    async def run() -> object:
        await api.delete_metric(code)
        return None

    return run()


def _ingest(api: NodeApi, args: Args) -> Coroutine[Any, Any, object]:
    parts, sync, batch_id = wire.decode_ingest_args(args)

    async def run() -> object:
        return wire.ingest_outcomes_to_wire(await api.ingest(parts, sync, batch_id))

    return run()


def _query_realtime(api: NodeApi, args: Args) -> Coroutine[Any, Any, object]:
    partition, account_id, metric_code = wire.decode_query_realtime_args(args)

    async def run() -> object:
        return wire.query_result_to_wire(await api.query_realtime(partition, account_id, metric_code))

    return run()


def _query(api: NodeApi, args: Args) -> Coroutine[Any, Any, object]:
    a = wire.decode_query_args(args)

    async def run() -> object:
        return wire.query_result_to_wire(await api.query(*a))

    return run()


def _list_events(api: NodeApi, args: Args) -> Coroutine[Any, Any, object]:
    a = wire.decode_list_events_args(args)

    async def run() -> object:
        return wire.events_page_to_wire(await api.list_events(*a))

    return run()


def _list_alerts(api: NodeApi, args: Args) -> Coroutine[Any, Any, object]:
    a = wire.decode_list_alerts_args(args)

    async def run() -> object:
        return wire.alerts_page_to_wire(await api.list_alerts(*a))

    return run()


def _subscribe_alerts(api: NodeApi, args: Args) -> AsyncIterator[object]:
    a = wire.decode_subscribe_alerts_args(args)

    async def run() -> AsyncIterator[object]:
        source = api.subscribe_alerts(*a)
        try:
            async for item in source:
                yield wire.alert_stream_item_to_wire(item)
        finally:
            # Close the node's iterator now, not whenever it is garbage collected: it may hold a
            # subscriber slot.
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()

    return run()


_UNARY: dict[str, _Unary] = {
    "cluster_status": _cluster_status,
    "create_metric": _create_metric,
    "get_metric": _get_metric,
    "list_metrics": _list_metrics,
    "delete_metric": _delete_metric,
    "ingest": _ingest,
    "query_realtime": _query_realtime,
    "query": _query,
    "list_events": _list_events,
    "list_alerts": _list_alerts,
}

_STREAMS: dict[str, _Stream] = {
    "subscribe_alerts": _subscribe_alerts,
}

SERVED_METHODS = frozenset(_UNARY) | frozenset(_STREAMS)
"""Every NodeApi method the server answers (a test keeps this in step with the NodeApi Protocol)."""


class _Connection(asyncio.Protocol):
    """One client connection: decodes frames, runs requests as tasks, batches answers per tick."""

    def __init__(self, server: NodeProtocolServer) -> None:
        self._server = server
        self._api = server._api
        self._loop = asyncio.get_running_loop()
        self._decoder = wire.FrameDecoder(min(server._max_frame_bytes, _HANDSHAKE_MAX_FRAME_BYTES))
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._hello_done = False
        self._ready = False  # hello exchanged and, with a cluster secret, the client's proof checked
        self._node_nonce = b""
        self._client_nonce = b""
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._peer_max_frame = DEFAULT_MAX_FRAME_BYTES
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: dict[int, asyncio.Task[None]] = {}
        self._wbuf: list[bytes] = []
        self._wbuf_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._write_paused = False
        self._reading_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.lost: asyncio.Future[None] = self._loop.create_future()

    # asyncio callbacks -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._server._connections.add(self)
        # A peer that connects and says nothing (or never proves the secret) is dropped, so idle
        # sockets cannot pile up.
        self._handshake_timer = self._loop.call_later(
            self._server._handshake_timeout, self._handshake_expired
        )

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            bodies = self._decoder.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        for body in bodies:
            if self._closed:
                return
            kind = body[0]
            if self._ready:
                if kind == REQUEST:
                    self._on_request(body[1], body[2], body[3])
                elif kind == CANCEL:
                    task = self._streams.pop(body[1], None)
                    if task is not None:
                        task.cancel()
                    # else: the stream already ended; its end frame and this cancel crossed.
                else:
                    self._fail(ProtocolError(f"a client may not send frame kind {kind}"))
                    return
            elif not self._hello_done:
                try:
                    _version, info = check_hello(body)
                except ProtocolError as exc:
                    self._fail(exc, body[1] if kind == REQUEST else 0)
                    return
                self._on_hello(info)
            else:
                self._on_proof(body)

    def _on_hello(self, info: dict[str, Any]) -> None:
        peer_max = info.get("max_frame_bytes")
        if type(peer_max) is int and peer_max > 0:
            self._peer_max_frame = peer_max
        nonce = info.get("nonce")
        if type(nonce) is bytes and len(nonce) == NONCE_BYTES:
            self._client_nonce = nonce
        self._hello_done = True
        secret = self._server._secret
        if secret is None:
            self._send(encode_hello(self._server._hello_info))
            self._handshake_complete()
            return
        self._node_nonce = new_nonce()
        hello = {**self._server._hello_info, "auth": AUTH_SCHEME, "nonce": self._node_nonce}
        if self._client_nonce:
            hello["proof"] = server_proof(secret, self._node_nonce, self._client_nonce)
        self._send(encode_hello(hello))

    def _on_proof(self, body: tuple[Any, ...]) -> None:
        """The one frame allowed between the hellos and the first request: the client's proof."""
        secret = self._server._secret
        assert secret is not None
        if body[0] != REQUEST or body[2] != AUTH_METHOD:
            self._reject(
                UnauthenticatedError(
                    "this node requires the cluster secret: send authenticate before any request",
                    reason="CLUSTER_SECRET_REQUIRED",
                ),
                body[1] if body[0] == REQUEST else 0,
            )
            return
        rid, args = body[1], body[3]
        expected = client_proof(secret, self._node_nonce, self._client_nonce)
        if len(args) != 1 or not proof_matches(expected, args[0]):
            self._reject(
                UnauthenticatedError(
                    "wrong cluster secret: the proof does not match", reason="CLUSTER_SECRET_MISMATCH"
                ),
                rid,
            )
            return
        self._handshake_complete()
        self._send(encode_response(rid, True, None))

    def _handshake_complete(self) -> None:
        self._ready = True
        self._decoder.max_frame_bytes = self._server._max_frame_bytes
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self._ready or self._closed:
            return
        timeout = self._server._handshake_timeout
        self._reject(
            DeadlineExceededError(
                f"no {'proof' if self._hello_done else 'hello'} within {timeout}s", reason="HANDSHAKE_TIMEOUT"
            ),
            0,
        )

    def _reject(self, exc: UnimeterError, rid: int) -> None:
        self._server.handshake_failures[exc.reason] += 1
        self._fail(exc, rid)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self._server._connections.discard(self)
        self._cancel_streams()
        self._wake_drain_waiters()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain_waiters()
        self._update_reading()

    # requests ----------------------------------------------------------------------------------------

    def _on_request(self, rid: int, method: str, args: Args) -> None:
        if self._server._closing:
            self._send(encode_error(rid, UnavailableError("node is shutting down")))
            return
        unary = _UNARY.get(method)
        stream = _STREAMS.get(method) if unary is None else None
        if unary is None and stream is None:
            self._fail(ProtocolError(f"unknown method {method!r}", reason="UNKNOWN_METHOD"), rid)
            return
        if rid in self._streams:
            self._fail(ProtocolError(f"request id {rid} is already in use by a stream"), rid)
            return
        try:
            if unary is not None:
                task = self._loop.create_task(self._run_unary(rid, method, unary(self._api, args)))
            else:
                assert stream is not None
                task = self._loop.create_task(self._run_stream(rid, method, stream(self._api, args)))
                self._streams[rid] = task
        except ProtocolError as exc:
            self._fail(ProtocolError(f"bad arguments for {method}: {exc.message}"), rid)
            return
        except Exception:
            # A bug in an argument decoder must not take the server down; this connection goes.
            logger.exception("cannot decode the arguments of %s from %s", method, self._peer)
            self._fail(ProtocolError(f"cannot decode the arguments of {method}"), rid)
            return
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        self._update_reading()

    async def _run_unary(self, rid: int, method: str, call: Coroutine[Any, Any, object]) -> None:
        try:
            frame = encode_response(rid, True, await call)
            if len(frame) - 4 > self._peer_max_frame:
                # The client would drop the connection over it; fail only this request.
                raise ResourceExhaustedError(
                    f"the answer to {method} is {len(frame) - 4} bytes, over the client's frame limit "
                    f"of {self._peer_max_frame} bytes",
                    reason="FRAME_TOO_LARGE",
                )
        except UnimeterError as exc:
            frame = self._error_frame(rid, method, exc)
        except Exception:
            logger.exception("node method %s failed (request from %s)", method, self._peer)
            frame = encode_error(rid, InternalError(f"internal error in node method {method}"))
        self._send(frame)

    async def _run_stream(self, rid: int, method: str, items: AsyncIterator[object]) -> None:
        # The first ok response says the stream is open; a second response ends it.
        self._send(encode_response(rid, True, None))
        try:
            async for payload in items:
                self._send(encode_push(rid, payload), batch=True)
                if self._write_paused:
                    # The client reads slower than the node produces: wait for TCP to drain rather
                    # than buffering the whole stream in memory.
                    await self._drain()
                if self._closed:
                    return
            frame = encode_response(rid, True, None)
        except UnimeterError as exc:
            frame = self._error_frame(rid, method, exc)
        except Exception:
            logger.exception("node stream %s failed (request from %s)", method, self._peer)
            frame = encode_error(rid, InternalError(f"internal error in node stream {method}"))
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
        self._streams.pop(rid, None)
        self._send(frame)

    def _error_frame(self, rid: int, method: str, exc: UnimeterError) -> bytes:
        try:
            return encode_error(rid, exc)
        except Exception:
            logger.exception("cannot encode the error of node method %s", method)
            return encode_error(rid, InternalError(f"internal error in node method {method}"))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._update_reading()

    def _cancel_streams(self) -> None:
        streams, self._streams = self._streams, {}
        for task in streams.values():
            task.cancel()

    # writing and flow control ------------------------------------------------------------------------

    def _send(self, frame: bytes, *, batch: bool = False) -> None:
        if self._closed:
            return  # the answer to a request whose connection is gone: nobody can receive it
        self._wbuf.append(frame)
        self._wbuf_bytes += len(frame)
        if self._wbuf_bytes >= _FLUSH_NOW_BYTES or (
            not batch and len(self._tasks) <= 1 and self._flush_handle is None
        ):
            # The only request running has nobody to share a write with: waiting a tick would
            # only add latency.
            self._flush()
        elif self._flush_handle is None:
            # Answers completed in the same tick leave in one write (one syscall, fewer packets).
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._wbuf or self._transport is None or self._transport.is_closing():
            self._wbuf = []
            self._wbuf_bytes = 0
            return
        data = self._wbuf[0] if len(self._wbuf) == 1 else b"".join(self._wbuf)
        self._wbuf = []
        self._wbuf_bytes = 0
        self._transport.write(data)

    async def _drain(self) -> None:
        if self._write_paused and not self._closed:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _update_reading(self) -> None:
        # Stop reading new requests while the client is not reading our answers, or while too many
        # of its requests are running: TCP then pushes back on the client instead of us queueing.
        want_paused = self._write_paused or len(self._tasks) >= self._server._max_in_flight
        if want_paused == self._reading_paused or self._closed or self._transport is None:
            return
        self._reading_paused = want_paused
        if want_paused:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    # closing -----------------------------------------------------------------------------------------

    def _fail(self, exc: UnimeterError, rid: int | None = None) -> None:
        """Answer a protocol violation (an InvalidArgumentError), a failed proof or a handshake
        timeout with ``exc``, then close this connection."""
        logger.warning("closing node-protocol connection from %s: %s", self._peer, exc.message)
        request_id = rid if rid is not None else (getattr(exc, "request_id", None) or 0)
        self._send(encode_error(request_id, exc))
        self.close()
        # close() waits for the client to read our last frame; one that never reads must not keep
        # the socket forever.
        self._loop.call_later(_ABORT_AFTER_SECONDS, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.lost.done() and self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Flush what is queued and close; running unary requests finish but are not answered."""
        if self._closed:
            return
        self._flush()
        self._closed = True
        self._cancel_streams()
        self._wake_drain_waiters()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self.close()
        if self._transport is not None:
            self._transport.abort()


class NodeProtocolServer:
    """Serves a ``NodeApi`` over the node protocol on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        api: NodeApi,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        hello_info: dict[str, Any] | None = None,
        max_in_flight: int = 1024,
        ssl: SSLContext | None = None,
        cluster_secret: str | bytes | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        """``hello_info`` goes to every client in the server's hello (node id, say);
        ``max_in_flight`` is how many requests one connection may have running before the server
        stops reading from it; ``ssl`` makes it a TLS server; with ``cluster_secret`` only clients
        that prove they know it are served; ``handshake_timeout`` bounds the TLS handshake, the
        hello and the proof of each connection."""
        if handshake_timeout <= 0:
            raise ValueError(f"handshake_timeout must be positive, got {handshake_timeout}")
        self._api = api
        self._ssl = ssl
        self._secret = secret_bytes(cluster_secret) if cluster_secret else None
        self._handshake_timeout = handshake_timeout
        self.handshake_failures: Counter[str] = Counter()
        """Connections refused during the handshake, by reason (for metrics)."""
        self._host = host
        self._requested_port = port
        self._max_frame_bytes = max_frame_bytes
        self._max_in_flight = max_in_flight
        self._hello_info: dict[str, Any] = {
            "server": "unimeter-node",
            **(hello_info or {}),
            "max_frame_bytes": max_frame_bytes,
        }
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._closing = False
        self._port = 0

    async def start(self) -> None:
        """Bind and start accepting connections."""
        loop = asyncio.get_running_loop()
        self._closing = False
        self._server = await loop.create_server(
            lambda: _Connection(self),
            self._host,
            self._requested_port,
            reuse_address=True,
            ssl=self._ssl,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl is not None else None,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        return self._port

    @property
    def connection_count(self) -> int:
        """Open client connections."""
        return len(self._connections)

    async def close(self, *, grace: float = 5.0) -> None:
        """Stop accepting, end streams, give running requests up to ``grace`` seconds to answer,
        then cancel what is left and close every connection. Clients see UnavailableError."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        server.close()
        connections = list(self._connections)
        for conn in connections:
            conn._cancel_streams()
        running = [t for conn in connections for t in conn._tasks]
        if running:
            await asyncio.wait(running, timeout=grace)
        for conn in connections:
            conn.close()
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        await server.wait_closed()
        lost = [conn.lost for conn in connections]
        if lost:
            _done, not_lost = await asyncio.wait(lost, timeout=1.0)
            for conn in connections:
                if conn.lost in not_lost:
                    conn.abort()

    async def __aenter__(self) -> NodeProtocolServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
