"""The one place where errors become gRPC statuses, with rich ``google.rpc`` details.

Every status carries an ``ErrorInfo`` (reason in UPPER_SNAKE, domain ``unimeter``); validation
errors add a ``BadRequest`` with one field violation per bad field; retryable ones a ``RetryInfo``;
a partition that moved (``PARTITION_NOT_OWNED``) names its owner in the ErrorInfo's metadata.
Exceptions that are not Unimeter errors are mapped here too: a request body that does not decode
is INVALID_ARGUMENT (``MALFORMED_REQUEST``), a ``NotImplementedError`` is UNIMPLEMENTED, anything
else is INTERNAL (a bug, the only case logged with a traceback).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cluster_client.errors import InternalError, InvalidArgumentError, UnimeterError, UnimplementedError

from .log_throttle import ThrottledLog

__all__ = [
    "DOMAIN",
    "MALFORMED_REQUEST",
    "OWNER_HINT_KEY",
    "abort_for_exception",
    "abort_with_error",
    "grpc_code_of",
    "malformed_request_error",
    "rpc_handler",
    "status_of",
]

log = logging.getLogger(__name__)

DOMAIN = "unimeter"

OWNER_HINT_KEY = "owner_hint"
"""ErrorInfo metadata key of a PARTITION_NOT_OWNED error's hint: the owner's node address."""

MALFORMED_REQUEST = "MALFORMED_REQUEST"
"""ErrorInfo reason of a call whose body does not decode as the method's request message."""

# Any client can call a method this server does not implement, as often as it likes: one line per
# minute at most, so the log cannot be filled through it.
_unimplemented_log = ThrottledLog(log, logging.INFO, interval_seconds=60.0)

_CODES: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "OUT_OF_RANGE": grpc.StatusCode.OUT_OF_RANGE,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "UNIMPLEMENTED": grpc.StatusCode.UNIMPLEMENTED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


def grpc_code_of(error: UnimeterError) -> grpc.StatusCode:
    """The gRPC code of an error."""
    return _CODES.get(error.kind, grpc.StatusCode.INTERNAL)


# A status travels in trailing metadata, which clients refuse past 8 KiB (grpc's default soft
# limit; the message goes twice: as grpc-message, percent-encoded, and inside the base64 details).
# Error texts quote what the client sent, so a huge field value or a batch of 10,000 bad events
# would make the answer itself undeliverable (the client saw RESOURCE_EXHAUSTED instead of
# INVALID_ARGUMENT): texts are shortened and violations listed up to a byte budget.
_MAX_MESSAGE_CHARS = 300
_MAX_FIELD_CHARS = 200
_VIOLATIONS_BUDGET_BYTES = 2048


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _bad_request(error: UnimeterError) -> error_details_pb2.BadRequest:
    bad = error_details_pb2.BadRequest()
    for i, v in enumerate(error.violations):
        entry = error_details_pb2.BadRequest.FieldViolation(
            field=_shorten(v.field, _MAX_FIELD_CHARS), description=_shorten(v.description, _MAX_FIELD_CHARS)
        )
        if bad.ByteSize() + entry.ByteSize() > _VIOLATIONS_BUDGET_BYTES and i > 0:
            more = len(error.violations) - i
            bad.field_violations.add(
                field=entry.field, description=f"and {more} more violation(s) not listed"
            )
            break
        bad.field_violations.append(entry)
    return bad


def status_of(error: UnimeterError) -> grpc.Status:
    """The rich status of an error: ErrorInfo, plus BadRequest and RetryInfo when they apply, small
    enough for any client to receive (long texts shortened, violations listed up to a budget)."""
    code = grpc_code_of(error)
    details = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    if error.owner_hint:
        # A partition that moved: the node protocol address of the node now serving it. Any node
        # routes any call, so a client only needs this to go straight to the owner next time.
        info.metadata[OWNER_HINT_KEY] = error.owner_hint
    details.append(info)
    if error.violations:
        details.append(_bad_request(error))
    if error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=_shorten(error.message, _MAX_MESSAGE_CHARS)
    )
    for detail in details:
        status.details.add().Pack(detail)
    return rpc_status.to_status(status)


async def abort_with_error(context: grpc.aio.ServicerContext, error: UnimeterError) -> NoReturn:
    """End the call with ``error``'s rich status, keeping trailing metadata set earlier (the
    request id): ``abort_with_status`` alone would replace it with the status details."""
    status = status_of(error)
    earlier = tuple(context.trailing_metadata() or ())
    await context.abort(status.code, status.details, (*earlier, *status.trailing_metadata))
    raise AssertionError("abort returned")  # pragma: no cover  (abort always raises)


def malformed_request_error(message_type: str, cause: Exception) -> InvalidArgumentError:
    """The error of a request body that does not decode as ``message_type``."""
    return InvalidArgumentError(
        f"malformed request: the body is not a valid {message_type} message ({cause})",
        reason=MALFORMED_REQUEST,
    )


async def abort_for_exception(context: grpc.aio.ServicerContext, exc: Exception, where: str) -> NoReturn:
    """End the call with the status ``exc`` maps to, an exception that escaped the handler
    ``where``: a Unimeter error is itself, ``NotImplementedError`` is UNIMPLEMENTED (logged in
    one line, rate-limited), anything else is INTERNAL (a bug: logged with its traceback)."""
    if isinstance(exc, UnimeterError):
        await abort_with_error(context, exc)
    if isinstance(exc, NotImplementedError):
        _unimplemented_log.emit("%s is not implemented by this server", where)
        await abort_with_error(context, UnimplementedError(f"{where} is not implemented by this server"))
    log.error("internal error in %s", where, exc_info=exc)
    await abort_with_error(context, InternalError("internal error; see the server log"))


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def rpc_handler(method: F) -> F:
    """Wrap a unary servicer method so every failure becomes the right status, never a crash."""

    @functools.wraps(method)
    async def wrapper(self: object, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_for_exception(context, exc, method.__qualname__)

    return wrapper  # type: ignore[return-value]
