"""The one error hierarchy of Unimeter.

Every layer raises these; ``service/`` maps them to gRPC status codes in exactly one place, and the
node protocol carries them as ``(kind, message, details)`` so a remote error is re-raised as the
same class on the caller's side.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimeterError",
    "UnimplementedError",
    "error_from_wire",
]


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (``events[7].metric_code``) and what is wrong."""

    field: str
    description: str


class UnimeterError(Exception):
    """Base of every Unimeter error. ``reason`` is an UPPER_SNAKE code stable across versions."""

    kind = "UNKNOWN"
    default_reason = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        violations: tuple[FieldViolation, ...] | list[FieldViolation] = (),
        retry_after_seconds: float | None = None,
        owner_hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.violations = tuple(violations)
        self.retry_after_seconds = retry_after_seconds
        self.owner_hint = owner_hint
        """For a partition this node does not serve: the node address of its owner, if known, so
        a router can go there at once instead of refreshing the whole partition map first."""

    def to_wire(self) -> list[object]:
        """The error as a msgpack-friendly list for the node protocol."""
        return [
            self.kind,
            self.message,
            self.reason,
            [[v.field, v.description] for v in self.violations],
            self.retry_after_seconds,
            self.owner_hint,
        ]


class InvalidArgumentError(UnimeterError):
    """Bad input; ``violations`` names each bad field."""

    kind = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"


class NotFoundError(UnimeterError):
    """The named thing (metric, …) does not exist."""

    kind = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExistsError(UnimeterError):
    """The named thing already exists."""

    kind = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class OutOfRangeError(UnimeterError):
    """A value or offset outside what exists or fits (a sum past int64, an offset past the log end)."""

    kind = "OUT_OF_RANGE"
    default_reason = "OUT_OF_RANGE"


class ResourceExhaustedError(UnimeterError):
    """Backpressure or a limit; retry after ``retry_after_seconds``."""

    kind = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class UnavailableError(UnimeterError):
    """No reachable owner for a partition, or the node is shutting down; retryable."""

    kind = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"


class DeadlineExceededError(UnimeterError):
    """The caller's deadline passed before the work finished."""

    kind = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"


class UnauthenticatedError(UnimeterError):
    """Missing or wrong credentials."""

    kind = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class PermissionDeniedError(UnimeterError):
    """Credentials valid but without the needed scope."""

    kind = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class UnimplementedError(UnimeterError):
    """The server does not implement the method (an optional RPC of a standard service)."""

    kind = "UNIMPLEMENTED"
    default_reason = "UNIMPLEMENTED"


class InternalError(UnimeterError):
    """A bug. Never raised for bad input."""

    kind = "INTERNAL"
    default_reason = "INTERNAL"


_BY_KIND: dict[str, type[UnimeterError]] = {
    cls.kind: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        OutOfRangeError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        UnauthenticatedError,
        PermissionDeniedError,
        UnimplementedError,
        InternalError,
    )
}


def error_from_wire(payload: list[object]) -> UnimeterError:
    """Rebuild an error sent by :meth:`UnimeterError.to_wire`; unknown kinds become InternalError."""
    kind, message, reason, violations, retry, hint = (list(payload) + [None] * 6)[:6]
    cls = _BY_KIND.get(str(kind), InternalError)
    return cls(
        str(message),
        reason=str(reason) if reason else None,
        violations=[FieldViolation(str(f), str(d)) for f, d in (violations or [])],  # type: ignore[attr-defined]
        retry_after_seconds=float(retry) if retry is not None else None,  # type: ignore[arg-type]
        owner_hint=str(hint) if hint else None,
    )
