"""``unimeter alerts list|tail``: an account's alert history, and the live alert stream.

``tail`` prints each alert as one ``key=value`` line (or a JSON line), keeps the resume offsets of
alerts and heartbeats, and with ``--offsets-file`` persists them after every message so a restarted
tail resumes where it stopped (at least once: an alert shown just before a crash may be shown again;
dedupe on partition and offset). A dropped connection is re-established with those offsets.

It asks for up to 256 alerts a stream message (``_TAIL_ALERTS_PER_MESSAGE``): alerts that are ready
together (a burst from one ingest call, a backlog) come in one message and cost one save of the
offsets file (a write, an fsync and a rename), where one message per alert made both the stream
and the file writes fall behind a node firing thousands of alerts a second.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from cluster_client.retry import RESUBSCRIBE_MAX_BACKOFF, backoff_bounds
from unimeter.v1 import alert_service_pb2 as als
from unimeter.v1 import types_pb2

from .connection import Api
from .errors import CliError, ExitCode, rpc_failure
from .offsets_file import load_offsets, save_offsets
from .output import print_json, print_stdout, table, to_plain
from .parsing import format_time

__all__ = ["alert_line", "list_alerts", "reconnect_delays", "tail"]

_TAIL_ALERTS_PER_MESSAGE = 256
"""The ``max_alerts_per_message`` ``tail`` asks for (the server allows up to 1000)."""

# A stream that breaks with these after it was established is re-opened (the server restarted,
# the network blipped); any other failure ends the command.
_RECONNECT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL}
_FIRST_BACKOFF = 0.25


def reconnect_delays() -> Iterator[float]:
    """Seconds to wait before each attempt to re-open a lost stream: one client re-dialing a
    restarting node is cheap and the person is waiting, so at most a second (the channel's own
    reconnect backoff is capped likewise, in ``connection``)."""
    return backoff_bounds(_FIRST_BACKOFF, RESUBSCRIBE_MAX_BACKOFF)


def alert_line(a: types_pb2.Alert) -> str:
    """One alert as ``key=value`` pairs (record time left out: it is the node's clock)."""
    return (
        f"partition={a.partition} offset={a.offset} account={a.account_id} metric={a.metric_code} "
        f"threshold={a.threshold_code} threshold_value={a.threshold_value} multiple={a.multiple} "
        f"value_at_cross={a.value_at_cross} period_start={format_time(a.period_start_unix_nano)} "
        f"event_time={format_time(a.event_time_unix_nano)}"
    )


def list_alerts(api: Api, *, account_id: int, after_offset: int, limit: int | None, as_json: bool) -> int:
    """Page through the account's alerts after ``after_offset``."""
    alerts: list[types_pb2.Alert] = []
    after = after_offset
    more = True
    while more and (limit is None or len(alerts) < limit):
        page_size = 1000 if limit is None else min(1000, limit - len(alerts))
        response = api.alerts.ListAlerts(
            als.ListAlertsRequest(account_id=account_id, after_offset=after, page_size=page_size),
            timeout=api.timeout,
        )
        alerts.extend(response.alerts)
        more = response.has_more and bool(response.alerts)
        if response.alerts:
            after = response.alerts[-1].offset
    if as_json:
        for a in alerts:
            print_json(to_plain(a))
    elif alerts:
        rows = [
            [
                a.partition,
                a.offset,
                a.metric_code,
                a.threshold_code,
                a.threshold_value,
                a.multiple,
                a.value_at_cross,
                format_time(a.period_start_unix_nano),
                format_time(a.event_time_unix_nano),
            ]
            for a in alerts
        ]
        headers = ["PARTITION", "OFFSET", "METRIC", "THRESHOLD", "THRESHOLD_VALUE", "MULTIPLE"]
        print_stdout(table([*headers, "VALUE_AT_CROSS", "PERIOD_START", "EVENT_TIME"], rows))
    else:
        print_stdout("no alerts")
    if more:
        print(f"(stopped after {len(alerts)} alerts; more follow: raise --limit)", file=sys.stderr)
    return 0


def tail(
    api: Api,
    *,
    account_ids: Sequence[int],
    metric_codes: Sequence[str],
    threshold_codes: Sequence[str],
    from_beginning: bool,
    offsets_file: Path | None,
    max_alerts: int | None,
    as_json: bool,
) -> int:
    """Stream matching alerts until Ctrl-C (or ``max_alerts`` of them)."""
    if offsets_file is not None and not offsets_file.parent.is_dir():
        message = f"--offsets-file {offsets_file}: no directory {offsets_file.parent}"
        raise CliError(message, ExitCode.BAD_INPUT)
    offsets = load_offsets(offsets_file) if offsets_file is not None else {}
    received = 0
    established = False
    delays = reconnect_delays()
    while True:
        request = als.AlertSubscribeRequest(
            account_ids=list(account_ids),
            metric_codes=list(metric_codes),
            threshold_codes=list(threshold_codes),
            since_offsets=offsets,
            from_beginning=from_beginning,
            max_alerts_per_message=_TAIL_ALERTS_PER_MESSAGE,
        )
        call = api.alerts.AlertSubscribe(request)
        try:
            for message in call:
                established = True
                delays = reconnect_delays()
                kind = message.WhichOneof("kind")
                if kind == "heartbeat":
                    for partition, offset in message.heartbeat.offsets.items():
                        offsets[partition] = max(offsets.get(partition, 0), offset)
                elif kind is not None:
                    # A single alert if the server sends them one by one (a server that predates
                    # batches ignores the request's field).
                    alerts = message.batch.alerts if kind == "batch" else [message.alert]
                    if max_alerts is not None:
                        alerts = alerts[: max_alerts - received]
                    for alert in alerts:
                        if as_json:
                            print_json(to_plain(alert))
                        else:
                            print_stdout(alert_line(alert))
                        offsets[alert.partition] = max(offsets.get(alert.partition, 0), alert.offset)
                    received += len(alerts)
                # Persist after printing: a crash in between shows the alerts again, never loses
                # one. Alerts of a message left unprinted (--max-alerts) are not counted in.
                if offsets_file is not None:
                    save_offsets(offsets_file, offsets)
                if max_alerts is not None and received >= max_alerts:
                    call.cancel()
                    return 0
            reason = "the server ended the stream"
        except grpc.RpcError as err:
            failure = rpc_failure(err)
            if not established or failure.code not in _RECONNECT:
                raise
            reason = f"{failure.code.name}: {failure.message}"
        delay = next(delays)
        print(f"alert stream lost ({reason}); reconnecting in {delay:g}s", file=sys.stderr, flush=True)
        time.sleep(delay)
