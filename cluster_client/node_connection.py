"""One TCP connection from the client core to a node, speaking the node protocol of :mod:`.wire`.

A :class:`NodeConnection` multiplexes many requests on one socket: each gets a request id and a
future, and the asyncio protocol's ``data_received`` (the reader; no task hop per chunk) resolves
the futures as responses arrive, in whatever order the node answers. Frames sent in the same
event-loop tick leave in one ``write``; a lone caller's go at once. It can run over TLS and, when
the node asks for it, proves the cluster secret during the handshake (see :mod:`.node_auth`). It
knows nothing of methods or types beyond the frame kinds (``RemoteNode`` maps NodeApi onto it) and
never retries or reconnects: once closed, it stays closed and every call fails with UnavailableError.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator, Sequence
from ssl import SSLContext
from typing import Any

from .errors import DeadlineExceededError, InvalidArgumentError, UnauthenticatedError, UnavailableError
from .node_auth import (
    AUTH_METHOD,
    AUTH_SCHEME,
    NONCE_BYTES,
    client_proof,
    new_nonce,
    proof_matches,
    secret_bytes,
    server_proof,
)
from .wire import (
    DEFAULT_MAX_FRAME_BYTES,
    HELLO,
    PUSH,
    RESPONSE,
    Body,
    FrameDecoder,
    ProtocolError,
    check_hello,
    encode_cancel,
    encode_hello,
    encode_request,
    remote_error,
)

__all__ = ["NodeConnection"]

# Buffered frames are written at once past this size instead of waiting for the end of the tick:
# batching helps small frames only, and a big ingest batch should start moving immediately.
_FLUSH_NOW_BYTES = 256 * 1024

_CLOSE_WAIT_SECONDS = 1.0

# Stream queue entries: (tag, value).
_ITEM = 0
_END = 1
_FAIL = 2


class _Stream:
    """Items a node pushed for one stream that its consumer has not taken yet."""

    __slots__ = ("items", "paused", "started", "waiter")

    def __init__(self) -> None:
        self.items: collections.deque[tuple[int, Any]] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.started = False
        self.paused = False

    def put(self, tag: int, value: Any) -> None:
        self.items.append((tag, value))
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Protocol(asyncio.Protocol):
    """asyncio callbacks forwarded to the owning connection (kept apart to keep its API small)."""

    def __init__(self, conn: NodeConnection) -> None:
        self._conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._conn._transport = transport

    def data_received(self, data: bytes) -> None:
        self._conn._data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn._connection_lost(exc)

    def pause_writing(self) -> None:
        self._conn._write_paused = True

    def resume_writing(self) -> None:
        self._conn._resume_writing()


class NodeConnection:
    """A connected, hello'd node protocol connection. Build it with :meth:`connect`."""

    def __init__(self, peer: str, *, max_frame_bytes: int, max_stream_buffer: int) -> None:
        """Private: use :meth:`connect`."""
        self.peer = peer
        self.peer_version: tuple[int, int] = (0, 0)
        self.peer_info: dict[str, Any] = {}
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(max_frame_bytes)
        self._max_stream_buffer = max_stream_buffer
        self._peer_max_frame = DEFAULT_MAX_FRAME_BYTES
        self._transport: asyncio.Transport | None = None
        self._hello: asyncio.Future[Body] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._woken = 0  # callers woken by answers since the last flush: likely to send again
        self._wbuf: list[bytes] = []
        self._wbuf_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._read_pauses = 0
        self._closed = False
        self._close_reason = ""

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_stream_buffer: int = 1024,
        hello_info: dict[str, Any] | None = None,
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
        cluster_secret: str | bytes | None = None,
    ) -> NodeConnection:
        """Open a connection and exchange hellos (and the cluster-secret proofs) within ``timeout``
        seconds.

        Raises UnavailableError when the node cannot be reached, does not answer in time, or speaks
        a protocol major version this side does not (``reason`` UNSUPPORTED_PROTOCOL_VERSION);
        UnauthenticatedError when the node wants a cluster secret this side lacks, either side's
        proof is wrong, or this side has a secret and the node does not ask for one (a node that
        cannot prove the secret is not trusted). ``ssl`` connects over TLS (``server_hostname``,
        default ``host``, is what the certificate must name). ``max_stream_buffer`` is how many
        pushed items a stream may hold before reading pauses.
        """
        peer = f"{host}:{port}"
        secret = secret_bytes(cluster_secret) if cluster_secret else None
        conn = cls(peer, max_frame_bytes=max_frame_bytes, max_stream_buffer=max_stream_buffer)
        client_nonce = new_nonce()
        info = {
            "client": "unimeter-python",
            "max_frame_bytes": max_frame_bytes,
            **(hello_info or {}),
            "nonce": client_nonce,
        }
        tls_name = (server_hostname or host) if ssl is not None else None
        try:
            async with asyncio.timeout(timeout):
                await conn._loop.create_connection(
                    lambda: _Protocol(conn), host, port, ssl=ssl, server_hostname=tls_name
                )
                conn._write_now(encode_hello(info))
                body = await conn._hello
                if body[0] == RESPONSE and not body[2]:
                    refusal = remote_error(body[3])
                    raise UnavailableError(
                        f"node {peer} refused the connection: {refusal.message}", reason=refusal.reason
                    )
                conn.peer_version, conn.peer_info = check_hello(body)
                await conn._authenticate(secret, client_nonce)
        except TimeoutError:
            conn._abort("connect timed out")
            raise UnavailableError(f"node {peer} did not complete the hello within {timeout}s") from None
        except OSError as exc:
            conn._abort(str(exc))
            raise UnavailableError(f"cannot connect to node {peer}: {exc}") from exc
        except ProtocolError as exc:
            conn._abort(exc.message)
            raise UnavailableError(f"node {peer}: {exc.message}", reason=exc.reason) from exc
        except BaseException:
            conn._abort("connect failed")
            raise
        peer_max = conn.peer_info.get("max_frame_bytes")
        if type(peer_max) is int and peer_max > 0:
            conn._peer_max_frame = peer_max
        return conn

    async def _authenticate(self, secret: bytes | None, client_nonce: bytes) -> None:
        """Check the node's proof and send ours, when either side has a cluster secret."""
        info = self.peer_info
        scheme = info.get("auth")
        if scheme is None:
            if secret is not None:
                raise UnauthenticatedError(
                    f"node {self.peer} does not ask for the cluster secret this client was given; "
                    "refusing to talk to a node that cannot prove it",
                    reason="NODE_NOT_AUTHENTICATED",
                )
            return
        if scheme != AUTH_SCHEME:
            raise UnauthenticatedError(
                f"node {self.peer} asks for an unknown authentication scheme {scheme!r}",
                reason="UNSUPPORTED_AUTH_SCHEME",
            )
        if secret is None:
            raise UnauthenticatedError(
                f"node {self.peer} requires the cluster secret (UNIMETER_CLUSTER_SECRET)",
                reason="CLUSTER_SECRET_REQUIRED",
            )
        node_nonce = info.get("nonce")
        if type(node_nonce) is not bytes or len(node_nonce) != NONCE_BYTES:
            raise ProtocolError(f"node {self.peer} sent a malformed auth nonce")
        if not proof_matches(server_proof(secret, node_nonce, client_nonce), info.get("proof")):
            raise UnauthenticatedError(
                f"node {self.peer} does not know this cluster secret (its proof does not match)",
                reason="CLUSTER_SECRET_MISMATCH",
            )
        await self.call(AUTH_METHOD, [client_proof(secret, node_nonce, client_nonce)])

    @property
    def closed(self) -> bool:
        """True once the connection is gone; it never reopens."""
        return self._closed

    @property
    def in_flight(self) -> int:
        """Calls waiting for their answer."""
        return len(self._pending)

    async def call(
        self,
        method: str,
        args: Sequence[Any],
        *,
        # A timer per call is cheaper than an asyncio.timeout scope and lets the answer be a
        # DeadlineExceededError naming the node and method.
        timeout: float | None = None,
    ) -> Any:
        """Send one request and return the node's result in wire form.

        A failed response is re-raised as its UnimeterError subclass; a lost connection as
        UnavailableError; no answer within ``timeout`` seconds as DeadlineExceededError (the node may
        still carry the request out: a unary request is never cancelled once sent).
        """
        if self._closed:
            raise UnavailableError(self._close_reason)
        rid = self._next_id
        self._next_id = rid + 1
        frame = self._encode_request(rid, method, args)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[rid] = fut
        self._send(frame)
        handle = (
            None if timeout is None else self._loop.call_later(timeout, self._expire, rid, method, timeout)
        )
        try:
            if self._write_paused:
                await self._drain(fut)
            return await fut
        except asyncio.CancelledError:
            self._pending.pop(rid, None)
            raise
        finally:
            if handle is not None:
                handle.cancel()

    async def stream(self, method: str, args: Sequence[Any]) -> AsyncGenerator[Any, None]:
        """Open a server push stream and yield each pushed payload in wire form, in order.

        The node accepts the request with a first ok response, pushes items, and ends the stream
        with a second response (ok: the iterator ends; an error: it is raised). Closing the
        iterator early sends stream-cancel. A consumer that falls more than ``max_stream_buffer``
        items behind pauses reading on the whole connection (TCP then slows the node down), so
        long-lived streams belong on a connection of their own.
        """
        if self._closed:
            raise UnavailableError(self._close_reason)
        rid = self._next_id
        self._next_id = rid + 1
        frame = self._encode_request(rid, method, args)
        st = _Stream()
        self._streams[rid] = st
        finished = False
        try:
            self._send(frame)
            while True:
                if not st.items:
                    st.waiter = self._loop.create_future()
                    await st.waiter
                    st.waiter = None
                tag, value = st.items.popleft()
                if st.paused and len(st.items) <= self._max_stream_buffer // 2:
                    st.paused = False
                    self._resume_reading()
                if tag == _ITEM:
                    yield value
                elif tag == _END:
                    finished = True
                    return
                else:
                    finished = True
                    raise value
        finally:
            self._streams.pop(rid, None)
            if st.paused:
                self._resume_reading()
            if not finished and not self._closed:
                self._send(encode_cancel(rid))

    async def close(self) -> None:
        """Close the connection; pending calls fail with UnavailableError. Idempotent."""
        self._shutdown("connection closed by the client")
        transport = self._transport
        if transport is not None and not self._lost.done():
            try:
                async with asyncio.timeout(_CLOSE_WAIT_SECONDS):
                    await asyncio.shield(self._lost)
            except TimeoutError:
                # The node stopped reading, so the kernel cannot take our last bytes: stop waiting.
                transport.abort()

    async def __aenter__(self) -> NodeConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---------------------------------------------------------------------------------------------

    def _encode_request(self, rid: int, method: str, args: Sequence[Any]) -> bytes:
        try:
            frame = encode_request(rid, method, args)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgumentError(f"cannot encode the arguments of {method}: {exc}") from exc
        if len(frame) - 4 > self._peer_max_frame:
            # The node would drop the whole connection for it; fail just this call instead.
            raise InvalidArgumentError(
                f"{method} request of {len(frame) - 4} bytes exceeds node {self.peer}'s frame limit of "
                f"{self._peer_max_frame} bytes",
                reason="FRAME_TOO_LARGE",
            )
        return frame

    def _expire(self, rid: int, method: str, timeout: float) -> None:
        fut = self._pending.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_exception(
                DeadlineExceededError(f"node {self.peer} did not answer {method} within {timeout}s")
            )

    def _send(self, frame: bytes) -> None:
        self._wbuf.append(frame)
        self._wbuf_bytes += len(frame)
        if self._wbuf_bytes >= _FLUSH_NOW_BYTES or (
            len(self._pending) <= 1 and self._woken <= 1 and self._flush_handle is None
        ):
            # A lone caller (nothing else in flight, no other caller woken by the last answers)
            # has nobody to share a write with: waiting a tick would only add latency.
            self._flush()
        elif self._flush_handle is None:
            # Every frame queued before this callback runs goes out in the same write: with many
            # callers that is one syscall per tick instead of one per request.
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._woken = 0
        if not self._wbuf:
            return
        data = self._wbuf[0] if len(self._wbuf) == 1 else b"".join(self._wbuf)
        self._wbuf = []
        self._wbuf_bytes = 0
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _write_now(self, frame: bytes) -> None:
        self._send(frame)
        self._flush()

    async def _drain(self, fut: asyncio.Future[Any]) -> None:
        """Wait until the transport takes writes again, or ``fut`` is settled (answered, expired or
        failed), whichever comes first: backpressure must not outlast the call's own deadline."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiters.append(waiter)
        fut.add_done_callback(lambda _: _wake(waiter))
        await waiter

    def _resume_writing(self) -> None:
        self._write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            _wake(waiter)

    def _pause_reading(self) -> None:
        self._read_pauses += 1
        if self._read_pauses == 1 and self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        self._read_pauses -= 1
        if self._read_pauses == 0 and self._transport is not None and not self._closed:
            self._transport.resume_reading()

    def _data_received(self, data: bytes) -> None:
        try:
            bodies = self._decoder.feed(data)
        except ProtocolError as exc:
            self._shutdown(f"protocol error from node {self.peer}: {exc.message}")
            return
        for body in bodies:
            kind = body[0]
            if kind == RESPONSE:
                rid = body[1]
                fut = self._pending.pop(rid, None)
                if fut is not None:
                    self._woken += 1
                    if not fut.done():
                        if body[2]:
                            fut.set_result(body[3])
                        else:
                            fut.set_exception(remote_error(body[3]))
                    continue
                st = self._streams.get(rid)
                if st is not None:
                    if not body[2]:
                        st.put(_FAIL, remote_error(body[3]))
                    elif st.started:
                        st.put(_END, None)
                    else:
                        st.started = True
                    continue
                if not self._hello.done():
                    self._hello.set_result(body)
                elif rid == 0 and not body[2]:
                    # The node is about to close the connection; say why to every caller.
                    err = remote_error(body[3])
                    self._shutdown(f"node {self.peer} closed the connection: {err.message}")
                    return
                # Otherwise: the answer to a call that timed out or was cancelled; nobody waits.
            elif kind == PUSH:
                st = self._streams.get(body[1])
                if st is not None:
                    st.put(_ITEM, body[2])
                    if not st.paused and len(st.items) > self._max_stream_buffer:
                        st.paused = True
                        self._pause_reading()
                # else: items sent before the node saw our stream-cancel.
            elif kind == HELLO and not self._hello.done():
                self._hello.set_result(body)
            else:
                self._shutdown(f"protocol error from node {self.peer}: unexpected frame kind {kind}")
                return

    def _connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc is not None else ""
        self._shutdown(f"connection to node {self.peer} lost{detail}")
        if not self._lost.done():
            self._lost.set_result(None)
        if not self._hello.done():
            self._hello.set_exception(ConnectionResetError(f"node {self.peer} closed the connection"))
            # connect() may already have given up waiting; don't warn about an unread exception.
            self._hello.exception()

    def _shutdown(self, reason: str) -> None:
        """Mark closed, fail everything waiting with UnavailableError, close the transport."""
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason
        if self._transport is not None:
            self._flush()
            self._transport.close()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(UnavailableError(reason))
        for st in self._streams.values():
            st.put(_FAIL, UnavailableError(reason))
        self._resume_writing()

    def _abort(self, reason: str) -> None:
        self._shutdown(reason)
        if self._transport is not None:
            self._transport.abort()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
