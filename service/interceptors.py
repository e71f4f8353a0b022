"""grpc.aio server interceptors: request ids, per-RPC metrics and logs, and API-key checks.

``ObservabilityInterceptor`` goes first: it gives every call a request id (the caller's
``x-request-id`` if it sent a sane one, else a new one), sets it in the context variable that log
records read, echoes it in the trailing metadata, and counts the call's status code and latency.
Being outermost, it also settles whatever would otherwise reach grpc's own "Unexpected error"
handler (an answer of UNKNOWN and a traceback in the log): a request body that does not decode is
answered INVALID_ARGUMENT (``MALFORMED_REQUEST``) with a rate-limited one-line warning, and an
exception escaping any handler (health and reflection included) is mapped by ``status_mapping``.
``AuthInterceptor`` goes second: when API keys are configured, it checks the ``authorization:
Bearer <key>`` metadata against the scope the method needs and answers UNAUTHENTICATED or
PERMISSION_DENIED itself, so a refused call never reaches a servicer (nor has its body parsed).
Both handle all four handler kinds, for servicers written as coroutines or as async generators.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from cluster_client.errors import PermissionDeniedError, UnauthenticatedError, UnimeterError

from .api_keys import ApiKeyStore
from .log_throttle import ThrottledLog
from .request_context import REQUEST_ID_HEADER, accept_request_id, api_key_name_var, request_id_var
from .service_stats import MethodStats, ServiceStats
from .status_mapping import abort_for_exception, abort_with_error, malformed_request_error

__all__ = ["OPEN_METHOD_PREFIXES", "REQUIRED_SCOPE", "AuthInterceptor", "ObservabilityInterceptor"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("unimeter.access")

MALFORMED_LOG_INTERVAL_SECONDS = 10.0
"""At most one warning line per this many seconds about malformed request bodies."""

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

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


def _method_path(details: grpc.HandlerCallDetails) -> str:
    method: str | bytes = details.method
    return method.decode() if isinstance(method, bytes) else method


def _metadata(details: grpc.HandlerCallDetails, key: str) -> list[str | bytes]:
    return [v for k, v in (details.invocation_metadata or ()) if k == key]


def _is_streaming_response(handler: grpc.RpcMethodHandler) -> bool:
    return bool(handler.response_streaming)


def _behavior(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    if handler.unary_unary is not None:
        return handler.unary_unary  # type: ignore[no-any-return]
    if handler.unary_stream is not None:
        return handler.unary_stream  # type: ignore[no-any-return]
    if handler.stream_unary is not None:
        return handler.stream_unary  # type: ignore[no-any-return]
    return handler.stream_stream  # type: ignore[no-any-return]


def _with_behavior(
    handler: grpc.RpcMethodHandler,
    behavior: Callable[..., Any],
    *,
    parse_request: bool = True,
    tolerate_malformed: bool = False,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` running ``behavior``; with ``tolerate_malformed``,
    a body that does not decode reaches ``behavior`` as a ``_MalformedRequest``."""
    deserialize = handler.request_deserializer if parse_request else None
    if tolerate_malformed:
        deserialize = _tolerant(deserialize)
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(behavior, deserialize, serialize)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(behavior, deserialize, serialize)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(behavior, deserialize, serialize)
    return grpc.stream_stream_rpc_method_handler(behavior, deserialize, serialize)


class _MalformedRequest:
    """What a request body that does not decode is handed to the handler as: grpc would answer the
    deserializer's exception itself, as UNKNOWN with a traceback per call."""

    __slots__ = ("error",)

    def __init__(self, error: UnimeterError) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserialize``, returning a ``_MalformedRequest`` instead of raising on bytes it rejects."""
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = str(getattr(descriptor, "full_name", "the method's request"))

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:  # protobuf's DecodeError, or anything else the bytes provoke
            return _MalformedRequest(malformed_request_error(message_type, exc))

    return parse


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    if error is None or isinstance(error, grpc.aio.AbortError):
        code = context.code()
        if code is None:
            return "OK" if error is None else "UNKNOWN"
        return str(code.name)
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"  # what grpc answers for an exception a handler let escape


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Request ids, per-method status-code counts and latency histograms, a DEBUG access log, and
    the answer to malformed bodies and escaped exceptions."""

    def __init__(self, stats: ServiceStats) -> None:
        self._stats = stats
        self._malformed_log = ThrottledLog(
            log, logging.WARNING, interval_seconds=MALFORMED_LOG_INTERVAL_SECONDS
        )
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        """Per method path: the handler last given by the continuation and its wrapped handler."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        given = _metadata(handler_call_details, REQUEST_ID_HEADER)
        # The interceptors and the handler share one context: everything the call logs names it,
        # and the wrapped handler echoes it.
        request_id_var.set(accept_request_id(given[0] if len(given) == 1 else None))
        handler = await continuation(handler_call_details)
        if handler is None:
            # No such method: grpc itself answers UNIMPLEMENTED. Not counted per path, since
            # arbitrary client-chosen paths would make an unbounded metric label.
            return None
        # A method's handler is the same object call after call (a refusal of the auth
        # interceptor is a new one each time): its wrapping is built once, not per call, which
        # took closures, a deserializer wrapper and a handler tuple each time.
        path = _method_path(handler_call_details)
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, path)
        self._wrapped[path] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, path: str) -> grpc.RpcMethodHandler:
        """``handler`` with the request id echoed, its status code and latency counted, a body that
        did not decode answered, and an escaped exception mapped."""
        stats = self._stats.method(path, streaming=_is_streaming_response(handler))
        inner = _behavior(handler)
        if handler.request_streaming:
            inner = self._checking_each_request(inner, path, stats)
        if inspect.isasyncgenfunction(inner):

            async def stream_behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id_var.get()),))
                error: BaseException | None = None
                try:
                    try:
                        if isinstance(request, _MalformedRequest):
                            await self._refuse_malformed(request, context, path, stats)
                        async for item in inner(request, context):
                            yield item
                    except grpc.aio.AbortError:
                        raise
                    except Exception as exc:
                        await abort_for_exception(context, exc, path)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    _record(stats, path, context, error, started)

            return _with_behavior(handler, stream_behavior, tolerate_malformed=True)

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id_var.get()),))
            error: BaseException | None = None
            try:
                try:
                    if isinstance(request, _MalformedRequest):
                        await self._refuse_malformed(request, context, path, stats)
                    result = inner(request, context)
                    # A servicer written as a plain function (like generated base classes) returns
                    # its response, or raises, without an awaitable.
                    return await result if inspect.isawaitable(result) else result
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await abort_for_exception(context, exc, path)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _record(stats, path, context, error, started)

        return _with_behavior(handler, behavior, tolerate_malformed=True)

    async def _refuse_malformed(
        self, request: _MalformedRequest, context: grpc.aio.ServicerContext, path: str, stats: MethodStats
    ) -> None:
        """Answer INVALID_ARGUMENT for a body that did not decode."""
        stats.malformed += 1
        self._malformed_log.emit("%s answered INVALID_ARGUMENT: %s", path, request.error.message)
        await abort_with_error(context, request.error)

    def _checking_each_request(
        self, inner: Callable[..., Any], path: str, stats: MethodStats
    ) -> Callable[..., Any]:
        """``inner`` reading a request stream in which a message that did not decode ends the call."""

        def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            async def each() -> AsyncIterator[Any]:
                async for request in requests:
                    if isinstance(request, _MalformedRequest):
                        await self._refuse_malformed(request, context, path, stats)
                    yield request

            return inner(each(), context)

        if inspect.isasyncgenfunction(inner):

            async def checked_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                async for item in checked(requests, context):
                    yield item

            return checked_stream
        return checked


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


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Refuses calls without a configured API key of the scope the method needs."""

    def __init__(self, keys: ApiKeyStore, stats: ServiceStats) -> None:
        self._keys = keys
        self._stats = stats

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        path = _method_path(handler_call_details)
        if path.startswith(OPEN_METHOD_PREFIXES):
            return await continuation(handler_call_details)
        error = self.check(path, _metadata(handler_call_details, "authorization"))
        handler = await continuation(handler_call_details)
        if error is None or handler is None:
            return handler
        refusal: UnimeterError = error
        self._stats.auth_failures[refusal.reason] += 1
        log.debug("refused %s: %s", path, refusal.message)

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            await abort_with_error(context, refusal)

        # parse_request=False: the body of a refused call is never deserialized.
        return _with_behavior(handler, deny, parse_request=False)

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
