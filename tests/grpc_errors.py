"""Reading the rich error details of a failed call in tests."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def details(err: grpc.aio.AioRpcError) -> tuple[str, list[tuple[str, str]], float | None]:
    """(ErrorInfo reason, [(field, description)], retry delay seconds) of a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "the status carries no details"
    reason = ""
    violations: list[tuple[str, str]] = []
    retry: float | None = None
    for any_detail in status.details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            assert info.domain == "unimeter"
            reason = info.reason
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
        elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info_r = error_details_pb2.RetryInfo()
            any_detail.Unpack(info_r)
            retry = info_r.retry_delay.ToNanoseconds() / 1e9
    return reason, violations, retry


def fields(err: grpc.aio.AioRpcError) -> list[str]:
    """The field paths of a failed call's violations."""
    return [f for f, _ in details(err)[1]]
