"""``unimeter ingest``: one Ingest call, from flags (one event) or from JSON lines on stdin.

Either way it is exactly one batch, so it is all or nothing like the RPC: if any event is invalid,
nothing is stored and every bad event is reported. Backfills larger than a batch, or that should go
on past bad events, are what ``unimeter import`` is for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc

from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import types_pb2

from .connection import Api
from .errors import CliError, ExitCode, event_index, rpc_failure
from .output import print_json, print_stdout
from .parsing import event_from_json

__all__ = ["MAX_BATCH", "ingest_event", "ingest_lines"]

MAX_BATCH = 10_000


def _send(api: Api, events: list[types_pb2.Event], *, sync: bool, as_json: bool) -> int:
    delivery = types_pb2.DELIVERY_MODE_SYNC if sync else types_pb2.DELIVERY_MODE_UNSPECIFIED
    response = api.ingest.Ingest(ing.IngestRequest(events=events, delivery=delivery), timeout=api.timeout)
    if as_json:
        print_json(
            {
                "n_stored": response.n_stored,
                "n_duplicates": response.n_duplicates,
                "offsets": list(response.offsets),
            }
        )
    elif len(events) == 1:
        print_stdout(
            f"stored {response.n_stored}, duplicates {response.n_duplicates}, offset {response.offsets[0]}"
        )
    else:
        print_stdout(f"stored {response.n_stored}, duplicates {response.n_duplicates}")
    return 0


def ingest_event(
    api: Api,
    *,
    account_id: int,
    metric_code: str,
    value: int,
    time_unix_nano: int,
    properties: Mapping[str, str],
    remove: bool,
    event_id: str,
    sync: bool,
    as_json: bool,
) -> int:
    """Send one event built from flags."""
    event = types_pb2.Event(
        account_id=account_id,
        metric_code=metric_code,
        value=value,
        time_unix_nano=time_unix_nano,
        properties=dict(properties),
        operation=types_pb2.OPERATION_TYPE_REMOVE if remove else types_pb2.OPERATION_TYPE_UNSPECIFIED,
        event_id=event_id,
    )
    return _send(api, [event], sync=sync, as_json=as_json)


def ingest_lines(api: Api, lines: Iterable[str], *, sync: bool, as_json: bool) -> int:
    """Send the JSON-lines events (blank lines skipped) as one batch; nothing is sent if a line is bad."""
    events: list[types_pb2.Event] = []
    line_of: list[int] = []
    bad: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(event_from_json(line))
            line_of.append(number)
        except ValueError as exc:
            bad.append(f"line {number}: {exc}")
    if bad:
        raise CliError("nothing was sent: some input lines are not events", ExitCode.BAD_INPUT, tuple(bad))
    if not events:
        raise CliError("no events on stdin", ExitCode.BAD_INPUT)
    if len(events) > MAX_BATCH:
        raise CliError(
            f"{len(events)} events are more than one batch ({MAX_BATCH}); use `unimeter import`",
            ExitCode.BAD_INPUT,
        )
    try:
        return _send(api, events, sync=sync, as_json=as_json)
    except grpc.RpcError as err:
        # Name the input line of each violation: that is what the person will edit.
        failure = rpc_failure(err)
        error = failure.to_cli_error(api.options.addr)
        annotated = []
        for field, description in failure.violations:
            where = event_index(field)
            prefix = f"line {line_of[where[0]]}: " if where is not None and where[0] < len(line_of) else ""
            annotated.append(f"{prefix}{field}: {description}")
        raise CliError(error.message, error.exit_code, tuple(annotated)) from None
