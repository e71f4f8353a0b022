"""What the CLI says when something fails: one sentence a person understands, and an exit code.

A failed call is shown as its status code and message followed by every ``BadRequest`` field
violation, one per line. Exit codes: 2 when the request itself was wrong (the person can fix it),
1 when the server or the connection failed. Never a traceback.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = ["CliError", "ExitCode", "RpcFailure", "event_index", "rpc_failure"]


class ExitCode(enum.IntEnum):
    """Process exit codes of the client commands."""

    OK = 0
    SERVER = 1
    """The server or the connection failed; retrying later may help."""
    BAD_INPUT = 2
    """The request was wrong (flags, input lines, or rejected by the server as invalid)."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C."""


class CliError(Exception):
    """A failure to report to the person and exit with ``exit_code``; ``lines`` follow the message."""

    def __init__(self, message: str, exit_code: ExitCode, lines: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.lines = lines


# Codes that mean "your request is wrong": fixing the input (or the key) is the remedy.
_BAD_INPUT = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}


@dataclass(frozen=True, slots=True)
class RpcFailure:
    """The parts of a failed call a person (or the import command) needs."""

    code: grpc.StatusCode
    message: str
    violations: tuple[tuple[str, str], ...]
    """(field, description) of every BadRequest field violation."""
    retry_after: float | None
    """RetryInfo's delay in seconds, when the server sent one."""

    @property
    def exit_code(self) -> ExitCode:
        """2 for a bad request, 1 otherwise."""
        return ExitCode.BAD_INPUT if self.code in _BAD_INPUT else ExitCode.SERVER

    def to_cli_error(self, addr: str) -> CliError:
        """The error to print, with a hint where one helps."""
        text = f"{self.code.name}: {self.message}"
        if self.code == grpc.StatusCode.UNAVAILABLE:
            text = (
                f"cannot reach a Unimeter server at {addr} ({text}); is it running? (--addr, UNIMETER_ADDR)"
            )
        elif self.code == grpc.StatusCode.UNAUTHENTICATED:
            text += " (pass --api-key or set UNIMETER_API_KEY)"
        elif self.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            text += " (raise --timeout if the server is busy)"
        elif self.retry_after is not None:
            text += f" (retry in {self.retry_after:g}s)"
        lines = tuple(f"{field}: {description}" for field, description in self.violations)
        return CliError(text, self.exit_code, lines)


def rpc_failure(err: grpc.RpcError) -> RpcFailure:
    """Read the code, message and rich details (google.rpc.Status) of a failed call."""
    call: Any = err
    code = call.code() if callable(getattr(call, "code", None)) else grpc.StatusCode.UNKNOWN
    message = (call.details() if callable(getattr(call, "details", None)) else None) or str(err)
    violations: list[tuple[str, str]] = []
    retry_after: float | None = None
    try:
        status = rpc_status.from_call(call)
    except ValueError:  # a status whose details do not match the call's code and message
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry_after = info.retry_delay.ToNanoseconds() / 1e9
    return RpcFailure(code, message, tuple(violations), retry_after)


_EVENT_FIELD = re.compile(r"events\[(\d+)\](?:\.(.*))?")


def event_index(field: str) -> tuple[int, str] | None:
    """``events[3].metric_code`` → (3, "metric_code"); None for a field outside the events list."""
    m = _EVENT_FIELD.fullmatch(field)
    return None if m is None else (int(m.group(1)), m.group(2) or "event")
