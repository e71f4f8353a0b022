"""What every gRPC call runs inside: request ids, API-key checks, per-RPC metrics and logs, and
the answer to malformed bodies and escaped exceptions, wrapped around each method's handler once,
when the handler is registered (:class:`WrappingServer`).

grpc.aio's server interceptors did the same through an interceptor chain run per call (a
coroutine per interceptor, a continuation, the handler lookup, a new handler for each refusal);
a wrapper built at registration costs a call only its own lines: a single-event SYNC call's p50
fell by 30 µs (docs/benchmarks-history.md, "Call wrapping instead of interceptors").

Each call, in order:

* it gets a request id (the caller's ``x-request-id`` if it sent a sane one, else a new one), set
  in the context variable that log records read and echoed in the trailing metadata;
* when API keys are configured, its ``authorization: Bearer <key>`` metadata is checked against
  the scope the method needs: UNAUTHENTICATED or PERMISSION_DENIED before its body is parsed;
* its body is parsed (handlers are registered without a deserializer, so that a refused call's
  body never is): one that does not decode is answered INVALID_ARGUMENT (``MALFORMED_REQUEST``)
  with a rate-limited one-line warning, never grpc's UNKNOWN with a traceback;
* an exception escaping the handler (health and reflection included) is mapped by
  ``status_mapping``;
* its status code and latency are counted, refused and malformed calls included.

All four handler kinds are wrapped, for servicers written as coroutines, as async generators or
as plain functions (like the generated base classes).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from types import CoroutineType
from typing import Any

import grpc

from cluster_client.errors import PermissionDeniedError, UnauthenticatedError, UnimeterError

from .api_keys import ApiKeyStore
from .log_throttle import ThrottledLog
from .request_context import REQUEST_ID_HEADER, accept_request_id, api_key_name_var, request_id_var
from .service_stats import MethodStats, ServiceStats
from .status_mapping import abort_for_exception, abort_with_error, malformed_request_error

__all__ = ["OPEN_METHOD_PREFIXES", "REQUIRED_SCOPE", "CallWrapping", "KeyCheck", "WrappingServer"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("unimeter.access")

MALFORMED_LOG_INTERVAL_SECONDS = 10.0
"""At most one warning line per this many seconds about malformed request bodies."""

REQUIRED_SCOPE: dict[str, str] = {
    "/unimeter.v1.IngestService/Ingest": "ingest",
    "/unimeter.v1.QueryService/QueryRealtime": "read",
    "/unimeter.v1.QueryService/Query": "read",
    "/unimeter.v1.QueryService/ListEvents": "read",
    "/unimeter.v1.AlertService/ListAlerts": "read",
    "/unimeter.v1.AlertService/AlertSubscribe": "read",
    "/unimeter.v1.ClusterService/GetClusterStatus": "read",
    "/unimeter.v1.MetricsService/GetMetric": "read",
    "/unimeter.v1.MetricsService/ListMetrics": "read",
    "/unimeter.v1.MetricsService/CreateMetric": "admin",
    "/unimeter.v1.MetricsService/DeleteMetric": "admin",
}
"""The scope each RPC needs; a method in neither this table nor the open prefixes needs admin."""

OPEN_METHOD_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
"""Methods served without a key: load balancers probe health, tools discover the API."""

Metadata = Sequence[tuple[str, "str | bytes"]]


def _values(metadata: Metadata | None, key: str) -> list[str | bytes]:
    return [v for k, v in (metadata or ()) if k == key]


class KeyCheck:
    """Whether a call's ``authorization`` metadata carries a configured API key of the scope its
    method needs."""

    def __init__(self, keys: ApiKeyStore, stats: ServiceStats) -> None:
        self._keys = keys
        self._stats = stats

    def refusal(self, path: str, metadata: Metadata | None) -> UnimeterError | None:
        """The error refusing a call to ``path`` with this metadata (counted and logged), or None."""
        error = self.check(path, _values(metadata, "authorization"))
        if error is not None:
            self._stats.auth_failures[error.reason] += 1
            log.debug("refused %s: %s", path, error.message)
        return error

    def check(self, path: str, authorization: Sequence[str | bytes]) -> UnimeterError | None:
        """Why a call to ``path`` with these ``authorization`` values is refused, or None."""
        if not authorization:
            return UnauthenticatedError(
                "missing API key: send the metadata 'authorization: Bearer <api key>'",
                reason="API_KEY_MISSING",
            )
        if len(authorization) > 1:
            return UnauthenticatedError(
                f"malformed authorization: {len(authorization)} authorization entries; send exactly one",
                reason="AUTHORIZATION_MALFORMED",
            )
        value = authorization[0]
        # The value is never echoed back: it may be a key sent with the wrong scheme.
        scheme, _, token = value.partition(" ") if isinstance(value, str) else ("", "", "")
        if scheme.lower() != "bearer":
            return UnauthenticatedError(
                "malformed authorization: expected 'Bearer <api key>'", reason="AUTHORIZATION_MALFORMED"
            )
        token = token.strip(" ")
        if not token or any(c.isspace() for c in token):
            return UnauthenticatedError(
                "malformed authorization: the bearer token is empty or contains spaces",
                reason="AUTHORIZATION_MALFORMED",
            )
        key = self._keys.authenticate(token)
        if key is None:
            return UnauthenticatedError("unknown API key", reason="API_KEY_INVALID")
        # Set also when the scope is missing: the refusal's log lines then say who tried.
        api_key_name_var.set(key.name)
        scope = REQUIRED_SCOPE.get(path, "admin")
        if not key.allows(scope):
            return PermissionDeniedError(
                f"API key {key.name!r} lacks the {scope!r} scope that {path} needs",
                reason="API_KEY_SCOPE_MISSING",
            )
        return None


class _Malformed(Exception):
    """A request body that did not decode, as the call's answer."""

    def __init__(self, error: UnimeterError) -> None:
        super().__init__(error.message)
        self.error = error


def _parser(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserialize``, raising ``_Malformed`` (naming the message type) on bytes it rejects. A
    unary request's deserializer may answer a coroutine instead (a body decoded off the loop):
    parsing then answers a coroutine too, whose rejection is ``_Malformed`` the same way."""
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = str(getattr(descriptor, "full_name", "the method's request"))

    def parse(raw: bytes) -> Any:
        try:
            parsed = deserialize(raw)
        except Exception as exc:  # protobuf's DecodeError, or anything else the bytes provoke
            raise _Malformed(malformed_request_error(message_type, exc)) from None
        return _parsing(parsed) if type(parsed) is CoroutineType else parsed

    async def _parsing(parsed: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await parsed
        except Exception as exc:
            raise _Malformed(malformed_request_error(message_type, exc)) from None

    return parse


def _behavior(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    for behavior in (handler.unary_unary, handler.unary_stream, handler.stream_unary):
        if behavior is not None:
            return behavior  # type: ignore[no-any-return]
    return handler.stream_stream  # type: ignore[no-any-return]


def _handler_like(handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind running ``behavior`` on the raw request bytes."""
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(behavior, None, serialize)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(behavior, None, serialize)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(behavior, None, serialize)
    return grpc.stream_stream_rpc_method_handler(behavior, None, serialize)


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    if error is None or isinstance(error, grpc.aio.AbortError):
        code = context.code()
        if code is None:
            return "OK" if error is None else "UNKNOWN"
        return str(code.name)
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"  # what grpc answers for an exception a handler let escape


class CallWrapping:
    """Builds the wrapped handler of each method (the module's docstring says what it does)."""

    def __init__(self, stats: ServiceStats, keys: ApiKeyStore | None = None) -> None:
        self._stats = stats
        self._key_check = None if keys is None else KeyCheck(keys, stats)
        self._malformed_log = ThrottledLog(
            log, logging.WARNING, interval_seconds=MALFORMED_LOG_INTERVAL_SECONDS
        )
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        """Per method path: the handler registered and its wrapped handler (a method registered
        both as a generic and as a registered handler is wrapped once)."""

    def wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` of the method ``path`` (``/package.Service/Method``), wrapped."""
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._build(path, handler)
        self._wrapped[path] = (handler, wrapped)
        return wrapped

    def _build(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        stats = self._stats.method(path, streaming=bool(handler.response_streaming))
        parse = _parser(handler.request_deserializer)
        key_check = None if path.startswith(OPEN_METHOD_PREFIXES) else self._key_check
        inner = _behavior(handler)
        if handler.request_streaming and parse is not None:
            inner = _parsing_each_request(inner, parse)
            parse = None

        async def admit(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            """The request id set and echoed, the key checked, the body parsed: the request."""
            metadata = context.invocation_metadata()
            given = _values(metadata, REQUEST_ID_HEADER)
            request_id = accept_request_id(given[0] if len(given) == 1 else None)
            # Everything the call logs names it, and its answer echoes it.
            request_id_var.set(request_id)
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            if key_check is not None:
                refusal = key_check.refusal(path, metadata)
                if refusal is not None:
                    await abort_with_error(context, refusal)
            if parse is None:
                return raw
            request = parse(raw)
            # A deserializer decoding off the loop (the native engine's large Ingest bodies)
            # answers a coroutine.
            return await request if type(request) is CoroutineType else request

        async def fail(exc: Exception, context: grpc.aio.ServicerContext) -> None:
            if isinstance(exc, _Malformed):
                stats.malformed += 1
                self._malformed_log.emit("%s answered INVALID_ARGUMENT: %s", path, exc.error.message)
                await abort_with_error(context, exc.error)
            await abort_for_exception(context, exc, path)

        if inspect.isasyncgenfunction(inner):

            async def stream_behavior(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                error: BaseException | None = None
                try:
                    try:
                        request = await admit(raw, context)
                        async for item in inner(request, context):
                            yield item
                    except grpc.aio.AbortError:
                        raise
                    except Exception as exc:
                        await fail(exc, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    _record(stats, path, context, error, started)

            return _handler_like(handler, stream_behavior)

        async def behavior(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                try:
                    result = inner(await admit(raw, context), context)
                    # A servicer written as a plain function (like generated base classes) returns
                    # its response, or raises, without an awaitable.
                    return await result if inspect.isawaitable(result) else result
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await fail(exc, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _record(stats, path, context, error, started)

        return _handler_like(handler, behavior)


def _parsing_each_request(inner: Callable[..., Any], parse: Callable[[bytes], Any]) -> Callable[..., Any]:
    """``inner`` reading a stream of raw requests, each parsed; one that does not decode ends the
    call (its ``_Malformed`` reaches the wrapper)."""

    def parsed(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        async def each() -> AsyncIterator[Any]:
            async for raw in requests:
                yield parse(raw)

        return inner(each(), context)

    if inspect.isasyncgenfunction(inner):

        async def parsed_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            async for item in parsed(requests, context):
                yield item

        return parsed_stream
    return parsed


def _record(
    stats: MethodStats,
    path: str,
    context: grpc.aio.ServicerContext,
    error: BaseException | None,
    started: float,
) -> None:
    elapsed = time.perf_counter() - started
    code = _code_of(context, error)
    stats.codes[code] += 1
    stats.latency.observe(elapsed)
    if access_log.isEnabledFor(logging.DEBUG):
        access_log.debug(
            "%s %s %.3fms",
            path,
            code,
            elapsed * 1000,
            extra={"grpc_method": path, "grpc_code": code, "duration_ms": round(elapsed * 1000, 3)},
        )


class _MethodTable(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    """Every method of the server, wrapped: the one generic handler grpc is given.

    The methods registered by path (what the generated ``add_*_to_server`` functions, health and
    reflection register) are answered from a dict; a generic handler added on its own is asked
    after them, and its handler comes out wrapped too."""

    def __init__(self, wrapping: CallWrapping) -> None:
        self._wrapping = wrapping
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []

    def add_methods(self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        wrap = self._wrapping.wrap
        for name, handler in method_handlers.items():
            path = f"/{service_name}/{name}"
            self._methods[path] = wrap(path, handler)

    def add_generic(self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(generic_rpc_handlers)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str | bytes = handler_call_details.method
        path = method.decode() if isinstance(method, bytes) else method
        handler = self._methods.get(path)
        if handler is not None:
            return handler
        for generic in self._generic:
            handler = generic.service(handler_call_details)
            if handler is not None:
                return self._wrapping.wrap(path, handler)
        return None  # no such method: grpc answers UNIMPLEMENTED


class WrappingServer(grpc.aio.Server):  # type: ignore[misc]  # grpc is untyped
    """A grpc.aio server on which every handler registered runs inside ``wrapping``; the
    generated ``add_*_to_server`` functions, health and reflection register on it as on any
    grpc.aio server.

    None of them is registered with grpc by path: grpc is given one generic handler, the method
    table. grpc.aio's serving loop keeps one pending request per registered method and waits on
    all of them (``asyncio.wait``) once for every call it accepts, so each registered method cost
    every call about 75 bytecodes of asyncio's Python: with this server's 14 methods, ~1,070 a
    call, where the table's lookup is one dict read (docs/benchmarks-history.md, "One method table
    instead of registered methods")."""

    def __init__(self, server: grpc.aio.Server, wrapping: CallWrapping) -> None:
        self._server = server
        self._table = _MethodTable(wrapping)
        server.add_generic_rpc_handlers((self._table,))

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._table.add_generic(generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._table.add_methods(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        return int(self._server.add_insecure_port(address))

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return int(self._server.add_secure_port(address, server_credentials))

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(await self._server.wait_for_termination(timeout))
