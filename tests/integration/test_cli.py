"""The human CLI (``unimeter metrics|ingest|query|events|alerts|import|status``) against real servers.

Commands run in-process through ``service.cli.main`` in a worker thread (the server shares the test's
event loop), or as child processes where stdin, signals or a restart matter. Every call carries
``--timeout``, and every child process is waited on with a deadline.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.cli import main
from tests.conftest import Api
from tests.engines import ENGINES
from tests.integration.helpers import DAY, SEC, T0
from tests.process import REPO, start_serve
from unimeter.v1 import (
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
)

START = "2024-09-14T00:00:00Z"  # T0
END = "2024-10-14T00:00:00Z"  # T0 + 30 days: the FIXED period holding T0
CLI = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'proto'}"}


@dataclass
class Run:
    code: int
    out: str
    err: str


class Cli:
    """Runs ``unimeter ...`` in-process against one server and captures what it prints."""

    def __init__(self, addr: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.addr = addr
        self.capsys = capsys

    async def __call__(self, *argv: str, stdin: str | None = None) -> Run:
        self.capsys.readouterr()
        saved = sys.stdin
        if stdin is not None:
            sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8")
        try:
            args = ["--addr", self.addr, "--timeout", "10", *argv]
            code = await asyncio.wait_for(asyncio.to_thread(main, args), 30)
        finally:
            sys.stdin = saved
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err, err
        return Run(code, out, err)


@pytest.fixture
def cli(api: Api, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(f"127.0.0.1:{api.server.grpc_port}", capsys)


async def child(addr: str, *argv: str, stdin: str = "", timeout: float = 30) -> Run:
    """``unimeter ...`` as a child process (the server keeps running in this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "--addr",
        addr,
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
        cwd=REPO,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def create_api_calls(cli: Cli) -> None:
    run = await cli(
        "metrics",
        "create",
        "api_calls",
        "--dimension",
        "region=eu,us",
        "--threshold",
        "free_tier_exceeded=3",
        "--threshold",
        "hard_cap=5",
    )
    assert run.code == 0, run.err


def ns(t: int) -> str:
    return str(t)


# ---------------------------------------------------------------------------------------- metrics


async def test_metrics_create_list_get_and_delete(cli: Cli) -> None:
    run = await cli(
        "metrics",
        "create",
        "gb_hours",
        "--agg-type",
        "sum",
        "--period-type",
        "calendar",
        "--billing-cycle-day",
        "15",
        "--time-zone",
        "Europe/Paris",
        "--dimension",
        "provider=aws,gcp",
        "--dimension",
        "region=eu,us",
        "--threshold",
        "every_100=100:recurring",
    )
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[:-1] == [
        "code                  gb_hours",
        "agg_type              sum",
        "period_type           calendar",
        "fixed_period_seconds  2592000",
        "billing_cycle_day     15",
        "time_zone             Europe/Paris",
        "carry_over            false",
        "dimension             provider=aws,gcp",
        "dimension             region=eu,us",
        "threshold             every_100=100:recurring",
    ]
    assert lines[-1].startswith("created               20") and lines[-1].endswith("Z")
    assert (await cli("metrics", "create", "seats", "--agg-type", "count_unique", "--carry-over")).code == 0

    listing = await cli("metrics", "list")
    assert listing.out.splitlines() == [
        "CODE      AGG_TYPE      PERIOD                             CARRY_OVER  "
        "DIMENSIONS                     THRESHOLDS",
        "gb_hours  sum           calendar from day 15 Europe/Paris  no          "
        "provider=aws,gcp region=eu,us  every_100=100:recurring",
        "seats     count_unique  fixed 2592000s                     yes         "
        "-                              -",
    ]

    got = await cli("metrics", "get", "gb_hours", "--json")
    metric = json.loads(got.out)
    assert metric["create_time_unix_nano"] > 0
    del metric["create_time_unix_nano"]
    assert metric == {
        "code": "gb_hours",
        "agg_type": "AGG_TYPE_SUM",
        "period_type": "PERIOD_TYPE_CALENDAR",
        "billing_cycle_day": 15,
        "fixed_period_seconds": 2592000,
        "time_zone": "Europe/Paris",
        "carry_over": False,
        "filters": [{"key": "provider", "values": ["aws", "gcp"]}, {"key": "region", "values": ["eu", "us"]}],
        "thresholds": [{"code": "every_100", "value": 100, "recurring": True}],
    }

    assert [m["code"] for m in json.loads((await cli("metrics", "list", "--json")).out)] == [
        "gb_hours",
        "seats",
    ]
    deleted = await cli("metrics", "delete", "seats")
    assert (deleted.code, deleted.out) == (0, "deleted metric seats\n")
    missing = await cli("metrics", "get", "seats")
    assert (missing.code, missing.out, missing.err) == (
        2,
        "",
        "error: NOT_FOUND: metric 'seats' does not exist\n",
    )


async def test_metrics_create_if_not_exists_accepts_only_the_same_definition(cli: Cli) -> None:
    paris = ("--agg-type", "sum", "--period-type", "day", "--time-zone", "Europe/Paris", "--threshold", "t=5")
    first = await cli("metrics", "create", "daily", *paris, "--if-not-exists")
    assert first.code == 0, first.err
    again = await cli("metrics", "create", "daily", *paris, "--if-not-exists")
    assert (again.code, again.out, again.err) == (0, first.out, "")
    plain = await cli("metrics", "create", "daily", *paris)
    assert (plain.code, plain.err) == (2, "error: ALREADY_EXISTS: metric 'daily' already exists\n")
    other = await cli("metrics", "create", "daily", *paris[:-1], "t=6", "--if-not-exists")
    assert (other.code, other.out) == (2, "")
    assert other.err == (
        "error: metric daily already exists with a different definition (see `unimeter metrics get daily`)\n"
    )
    assert "threshold             t=5" in (await cli("metrics", "get", "daily")).out


async def test_metrics_create_reports_every_invalid_field(cli: Cli) -> None:
    run = await cli("metrics", "create", "9bad", "--billing-cycle-day", "40", "--time-zone", "Mars/Olympus")
    assert run.code == 2
    assert run.out == ""
    assert run.err.splitlines() == [
        "error: INVALID_ARGUMENT: invalid metric: metric.code must be 1-64 characters of A-Z a-z 0-9 _ . : - "
        "starting with a letter",
        "  metric.code: must be 1-64 characters of A-Z a-z 0-9 _ . : - starting with a letter",
        "  metric.billing_cycle_day: must be between 1 and 28",
        "  metric.time_zone: unknown IANA time zone 'Mars/Olympus'",
    ]
    await create_api_calls(cli)
    again = await cli("metrics", "create", "api_calls")
    assert (again.code, again.err) == (2, "error: ALREADY_EXISTS: metric 'api_calls' already exists\n")


# ----------------------------------------------------------------------------------------- ingest


async def test_ingest_one_event_from_flags(cli: Cli) -> None:
    await create_api_calls(cli)
    first = await cli(
        "ingest",
        "--account",
        "42",
        "--metric",
        "api_calls",
        "--time",
        START,
        "--prop",
        "region=eu",
        "--event-id",
        "r1",
    )
    assert (first.code, first.out) == (0, "stored 1, duplicates 0, offset 1\n")
    retry = await cli(
        "ingest", "--account", "42", "--metric", "api_calls", "--time", START, "--event-id", "r1"
    )
    assert retry.out == "stored 0, duplicates 1, offset 1\n"
    removal = await cli(
        "ingest",
        "--account",
        "42",
        "--metric",
        "api_calls",
        "--time",
        ns(T0 + 5),
        "--remove",
        "--sync",
        "--json",
    )
    assert json.loads(removal.out) == {"n_stored": 1, "n_duplicates": 0, "offsets": [2]}
    listed = await cli("events", "--account", "42", "--json")
    events = [json.loads(line) for line in listed.out.splitlines()]
    assert [(e["offset"], e["event"]) for e in events] == [
        (
            1,
            {
                "account_id": 42,
                "metric_code": "api_calls",
                "value": 1,
                "time_unix_nano": T0,
                "properties": {"region": "eu"},
                "operation": "OPERATION_TYPE_ADD",
                "delivery": "DELIVERY_MODE_UNSPECIFIED",
                "event_id": "r1",
            },
        ),
        (
            2,
            {
                "account_id": 42,
                "metric_code": "api_calls",
                "value": 1,
                "time_unix_nano": T0 + 5,
                "properties": {},
                "operation": "OPERATION_TYPE_REMOVE",
                "delivery": "DELIVERY_MODE_UNSPECIFIED",
                "event_id": "",
            },
        ),
    ]


async def test_ingest_json_lines_from_stdin_is_one_batch(api: Api, cli: Cli) -> None:
    await create_api_calls(cli)
    lines = [
        {
            "account_id": 7,
            "metric_code": "api_calls",
            "time_unix_nano": T0 + 1,
            "properties": {"region": "us"},
        },
        {"accountId": "7", "metricCode": "api_calls", "timeUnixNano": str(T0 + 2), "eventId": "a"},
        {"account_id": 7, "metric_code": "api_calls", "time_unix_nano": T0 + 3, "event_id": "a"},
    ]
    stdin = "\n".join(json.dumps(x) for x in lines) + "\n\n"
    run = await child(cli.addr, "ingest", "-", stdin=stdin)
    assert (run.code, run.out, run.err) == (0, "stored 2, duplicates 1\n", "")
    # One bad event rejects the whole batch, and the error names its input line.
    bad = [
        lines[0],
        {"account_id": 7, "metric_code": "nope"},
        {"account_id": 7, "metric_code": "api_calls", "properties": {"region": "mars"}},
    ]
    run = await child(cli.addr, "ingest", "-", stdin="\n".join(json.dumps(x) for x in bad))
    assert run.code == 2
    assert run.err.splitlines() == [
        "error: INVALID_ARGUMENT: invalid event: events[1].metric_code: unknown metric 'nope' (and 1 more)",
        "  line 2: events[1].metric_code: unknown metric 'nope'",
        "  line 3: events[2].properties[region]: 'mars' is not an allowed value of dimension 'region'",
    ]
    # A line that is not an event stops everything before anything is sent.
    run = await cli(
        "ingest", "-", stdin='{"account_id": 7, "metric_code": "api_calls"}\n{"acount_id": 7}\nnot json\n'
    )
    assert run.code == 2
    assert run.err.splitlines() == [
        "error: nothing was sent: some input lines are not events",
        '  line 2: an event has no field named "acount_id" (fields: account_id, metric_code, value, '
        "time_unix_nano, properties, operation, delivery, event_id)",
        "  line 3: not JSON: Expecting value (column 1)",
    ]
    listed = await cli("events", "--account", "7")
    assert len(listed.out.splitlines()) == 3  # header + the two stored events


async def test_ingest_usage_errors_exit_2(cli: Cli) -> None:
    missing = await cli("ingest", "--metric", "api_calls")
    assert (missing.code, missing.err) == (
        2,
        "error: --account and --metric are required (or '-' to read JSON lines from stdin)\n",
    )
    mixed = await cli("ingest", "-", "--account", "1")
    assert (mixed.code, mixed.err) == (
        2,
        "error: --account cannot be combined with '-' (events come from stdin)\n",
    )
    bad_time = await cli("ingest", "--account", "1", "--metric", "m", "--time", "yesterday")
    assert bad_time.code == 2
    assert bad_time.err.splitlines()[-1] == (
        "unimeter ingest: error: argument --time: 'yesterday' is not a time: use RFC3339 "
        "(2024-09-14T00:00:00Z), a date (2024-09-14) or Unix nanoseconds"
    )
    bad_threshold = await cli("metrics", "create", "m", "--threshold", "cap=lots")
    assert bad_threshold.code == 2
    assert bad_threshold.err.splitlines()[-1].endswith(
        "argument --threshold: 'cap=lots' is not code=value[:recurring] with an integer value"
    )


# ------------------------------------------------------------------------------------------ query


async def seed_regions(cli: Cli) -> None:
    await create_api_calls(cli)
    regions = ["eu", "eu", "us", "eu", None, "us"]
    events = [
        {
            "account_id": 42,
            "metric_code": "api_calls",
            "value": 1,
            "time_unix_nano": T0 + i * SEC,
            # None: only an undeclared property, which is stored but not aggregated on
            "properties": {"region": r} if r else {"tier": "free"},
        }
        for i, r in enumerate(regions)
    ]
    run = await cli("ingest", "-", "--sync", stdin="\n".join(json.dumps(e) for e in events))
    assert run.out == "stored 6, duplicates 0\n"


async def test_query_prints_a_table_and_exact_json(cli: Cli) -> None:
    await seed_regions(cli)
    table = await cli("query", "--account", "42", "--metric", "api_calls", "--start", START, "--end", END)
    assert table.code == 0, table.err
    assert table.out.splitlines() == [
        f"account 42  metric api_calls  period {START} .. {END}  as of offset 6",
        "VALUE  COUNT  SUM  MAX  LAST_VALUE  LAST_EVENT_TIME       UNIQUE_COUNT  ALERT_FLAGS",
        "    6      6    0    1           1  2024-09-14T00:00:05Z             0            3",
    ]
    grouped = await cli(
        "query",
        "--account",
        "42",
        "--metric",
        "api_calls",
        "--start",
        ns(T0),
        "--end",
        ns(T0 + 30 * DAY),
        "--group-by",
        "region",
    )
    assert grouped.out.splitlines()[1:] == [
        "region   VALUE  COUNT  SUM  MAX  LAST_VALUE  LAST_EVENT_TIME       UNIQUE_COUNT  ALERT_FLAGS",
        "(total)      6      6    0    1           1  2024-09-14T00:00:05Z             0            3",
        "(none)       1      1    0    1           1  2024-09-14T00:00:04Z             0            0",
        "eu           3      3    0    1           1  2024-09-14T00:00:03Z             0            0",
        "us           2      2    0    1           1  2024-09-14T00:00:05Z             0            0",
    ]
    # A range cut inside the period, exact to the nanosecond, with a filter; JSON keeps exact integers.
    as_json = await cli(
        "query",
        "--account",
        "42",
        "--metric",
        "api_calls",
        "--start",
        ns(T0 + 1),
        "--end",
        "2024-09-14T00:00:03Z",
        "--filter",
        "region=eu",
        "--json",
    )
    assert json.loads(as_json.out) == {
        "account_id": 42,
        "metric_code": "api_calls",
        "value": {
            "value": 1,
            "count": 1,
            "sum": 0,
            "max": 1,
            "last_value": 1,
            "last_event_time_unix_nano": T0 + SEC,
            "unique_count": 0,
            "alert_flags": 0,
        },
        "period": {"start_unix_nano": T0 + 1, "end_unix_nano": T0 + 3 * SEC},
        "groups": [],
        "as_of_offset": 6,
    }


async def test_query_current_and_previous_periods(cli: Cli) -> None:
    await create_api_calls(cli)
    await cli("ingest", "--account", "5", "--metric", "api_calls")  # stamped now: the current period
    current = json.loads((await cli("query", "--account", "5", "--metric", "api_calls", "--json")).out)
    previous = json.loads(
        (await cli("query", "--account", "5", "--metric", "api_calls", "--previous", "--json")).out
    )
    assert (current["value"]["count"], previous["value"]["count"]) == (1, 0)
    assert previous["period"]["end_unix_nano"] == current["period"]["start_unix_nano"]
    assert current["period"]["end_unix_nano"] - current["period"]["start_unix_nano"] == 30 * DAY
    bad = await cli("query", "--account", "5", "--metric", "api_calls", "--filter", "zone=x")
    assert (bad.code, bad.err.splitlines()[1:]) == (
        2,
        ["  filters[zone]: 'zone' is not a declared dimension of api_calls"],
    )


# ----------------------------------------------------------------------------------------- events


async def test_events_pages_through_list_events(cli: Cli) -> None:
    await seed_regions(cli)
    run = await cli("events", "--account", "42", "--page-size", "2")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    partition = int(lines[1].split()[1])
    props = ["region=eu", "region=eu", "region=us", "region=eu", "tier=free", "region=us"]
    assert lines == [
        "TIME                  PARTITION  OFFSET  METRIC     VALUE  OP   EVENT_ID  PROPERTIES",
        *[
            f"2024-09-14T00:00:0{i}Z  {partition:>9}  {i + 1:>6}  api_calls      1  add  -         {p}"
            for i, p in enumerate(props)
        ],
    ]
    limited = await cli("events", "--account", "42", "--page-size", "2", "--limit", "3", "--json")
    assert [json.loads(line)["offset"] for line in limited.out.splitlines()] == [1, 2, 3]
    assert limited.err == "(stopped after 3 events; more follow: raise --limit)\n"
    window = await cli(
        "events",
        "--account",
        "42",
        "--metric",
        "api_calls",
        "--start",
        "2024-09-14T00:00:02Z",
        "--end",
        ns(T0 + 4 * SEC),
        "--json",
    )
    assert [json.loads(line)["event"]["time_unix_nano"] for line in window.out.splitlines()] == [
        T0 + 2 * SEC,
        T0 + 3 * SEC,
    ]
    none = await cli("events", "--account", "43")
    assert (none.code, none.out) == (0, "no events\n")


# ----------------------------------------------------------------------------------------- alerts


async def test_alerts_list(cli: Cli) -> None:
    await seed_regions(cli)  # 6 events: free_tier_exceeded at the 3rd, hard_cap at the 5th
    run = await cli("alerts", "list", "--account", "42")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    partition = lines[1].split()[0]
    assert lines == [
        "PARTITION  OFFSET  METRIC     THRESHOLD           THRESHOLD_VALUE  MULTIPLE  VALUE_AT_CROSS  "
        "PERIOD_START          EVENT_TIME",
        f"{partition:>9}       1  api_calls  free_tier_exceeded                3         1               3  "
        f"{START}  2024-09-14T00:00:02Z",
        f"{partition:>9}       2  api_calls  hard_cap                          5         1               5  "
        f"{START}  2024-09-14T00:00:04Z",
    ]
    after = await cli("alerts", "list", "--account", "42", "--after", "1", "--json")
    assert [(a["threshold_code"], a["offset"]) for a in map(json.loads, after.out.splitlines())] == [
        ("hard_cap", 2)
    ]
    assert (await cli("alerts", "list", "--account", "9")).out == "no alerts\n"


async def wait_for_file(path: Path, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(path.exists):
            await asyncio.sleep(0.02)


async def test_alerts_tail_saves_offsets_and_resumes_from_them(cli: Cli, tmp_path: Path) -> None:
    await create_api_calls(cli)
    offsets = tmp_path / "offsets.json"
    tail = asyncio.create_task(
        child(
            cli.addr,
            "alerts",
            "tail",
            "--account",
            "42",
            "--offsets-file",
            str(offsets),
            "--max-alerts",
            "1",
            "--json",
        )
    )
    await wait_for_file(offsets)  # the first heartbeat is saved: the stream is live
    first = await cli(
        "ingest",
        "-",
        stdin="\n".join(
            json.dumps({"account_id": 42, "metric_code": "api_calls", "time_unix_nano": T0 + i})
            for i in range(3)
        ),
    )
    assert first.code == 0
    run = await asyncio.wait_for(tail, 30)
    assert run.code == 0, run.err
    alert = json.loads(run.out)
    partition = alert["partition"]
    assert {
        k: alert[k]
        for k in ("account_id", "metric_code", "threshold_code", "multiple", "value_at_cross", "offset")
    } == {
        "account_id": 42,
        "metric_code": "api_calls",
        "threshold_code": "free_tier_exceeded",
        "multiple": 1,
        "value_at_cross": 3,
        "offset": 1,
    }
    saved = json.loads(offsets.read_text())["since_offsets"]
    assert saved == {str(p): (1 if p == partition else 0) for p in range(8)}

    # While no tail runs, two more events cross the hard cap; a new tail resumes after offset 1.
    await cli(
        "ingest",
        "-",
        stdin="\n".join(
            json.dumps({"account_id": 42, "metric_code": "api_calls", "time_unix_nano": T0 + i})
            for i in range(3, 5)
        ),
    )
    resumed = await cli("alerts", "tail", "--offsets-file", str(offsets), "--max-alerts", "1")
    assert resumed.code == 0, resumed.err
    assert resumed.out == (
        f"partition={partition} offset=2 account=42 metric=api_calls threshold=hard_cap threshold_value=5 "
        f"multiple=1 value_at_cross=5 period_start={START} event_time=2024-09-14T00:00:00.000000004Z\n"
    )
    assert json.loads(offsets.read_text())["since_offsets"][str(partition)] == 2


async def test_alerts_tail_stopped_inside_a_message_of_many_resumes_without_a_gap(
    cli: Cli, tmp_path: Path
) -> None:
    """``tail`` asks for many alerts a message, so a backlog comes in few. Stopped by --max-alerts
    in the middle of one, it prints and saves only the alerts it counted: the next tail starts
    with the first one it left, and between them every alert is shown exactly once."""
    await create_api_calls(cli)
    events = [
        {"account_id": account, "metric_code": "api_calls", "time_unix_nano": T0 + i}
        for account in range(100, 110)
        for i in range(5)
    ]
    assert (await cli("ingest", "-", stdin="\n".join(map(json.dumps, events)))).code == 0  # 20 alerts
    offsets = tmp_path / "offsets.json"
    first = await cli(
        "alerts", "tail", "--from-beginning", "--offsets-file", str(offsets), "--max-alerts", "7", "--json"
    )
    assert first.code == 0, first.err
    shown = [json.loads(line) for line in first.out.splitlines()]
    assert len(shown) == 7
    saved = json.loads(offsets.read_text())["since_offsets"]
    for partition in {a["partition"] for a in shown}:
        assert saved[str(partition)] == max(a["offset"] for a in shown if a["partition"] == partition)
    rest = await cli("alerts", "tail", "--offsets-file", str(offsets), "--max-alerts", "13", "--json")
    assert rest.code == 0, rest.err
    shown += [json.loads(line) for line in rest.out.splitlines()]
    keys = [(a["partition"], a["offset"]) for a in shown]
    assert len(keys) == len(set(keys)) == 20
    assert sorted((a["account_id"], a["threshold_code"]) for a in shown) == sorted(
        (account, code) for account in range(100, 110) for code in ("free_tier_exceeded", "hard_cap")
    )


async def test_alerts_tail_from_beginning_and_bad_filters(cli: Cli) -> None:
    await seed_regions(cli)
    run = await cli(
        "alerts", "tail", "--from-beginning", "--threshold", "hard_cap", "--max-alerts", "1", "--json"
    )
    assert (run.code, json.loads(run.out)["threshold_code"]) == (0, "hard_cap")
    bad = await cli("alerts", "tail", "--metric", "nope")
    assert (bad.code, bad.err.splitlines()[1:]) == (2, ["  metric_codes[0]: unknown metric 'nope'"])


async def test_alerts_tail_stops_quietly_on_ctrl_c(cli: Cli, tmp_path: Path) -> None:
    offsets = tmp_path / "o.json"
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "--addr",
        cli.addr,
        "alerts",
        "tail",
        "--offsets-file",
        str(offsets),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
        cwd=REPO,
    )
    try:
        await wait_for_file(offsets)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (proc.returncode, out, err) == (130, b"", b"interrupted\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_alerts_tail_reconnects_after_a_server_restart(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    extra = ("--grpc-addr", addr, "--partitions", "4", "--flush-interval-ms", "5")
    server = start_serve(tmp_path / "data", *extra)
    offsets = tmp_path / "offsets.json"
    tail: subprocess.Popen[bytes] | None = None

    def run(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*CLI, "--addr", addr, "--timeout", "10", *argv],
            input=stdin.encode(),
            capture_output=True,
            env=ENV,
            timeout=30,
        )

    def ingest(times: Sequence[int]) -> None:
        lines = "\n".join(
            json.dumps({"account_id": 42, "metric_code": "api_calls", "time_unix_nano": t}) for t in times
        )
        assert run("ingest", "-", "--sync", stdin=lines).returncode == 0

    try:
        assert (
            run("metrics", "create", "api_calls", "--threshold", "free=3", "--threshold", "cap=5").returncode
            == 0
        )
        tail = subprocess.Popen(
            [*CLI, "--addr", addr, "alerts", "tail", "--offsets-file", str(offsets), "--max-alerts", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV,
            cwd=REPO,
        )
        deadline = time.monotonic() + 10
        while not offsets.exists():
            assert time.monotonic() < deadline, "the tail never saved its first heartbeat"
            time.sleep(0.02)
        ingest([T0, T0 + 1, T0 + 2])
        assert tail.stdout is not None
        assert b"threshold=free " in tail.stdout.readline()
        server.kill9()  # a crash: the tail must notice and come back (--sync kept the events)
        server = start_serve(tmp_path / "data", *extra)
        ingest([T0 + 3, T0 + 4])
        out, err = tail.communicate(timeout=30)
        assert tail.returncode == 0, err
        assert b"threshold=cap " in out and b"offset=2 " in out
        assert b"alert stream lost" in err and b"reconnecting" in err
        assert b"Traceback" not in err
    finally:
        if tail is not None and tail.poll() is None:
            tail.kill()
            tail.wait()
        server.terminate()


# ----------------------------------------------------------------------------------------- import


async def test_import_reports_each_rejected_line_and_goes_on(cli: Cli, tmp_path: Path) -> None:
    await create_api_calls(cli)
    lines = [
        json.dumps(
            {
                "account_id": 42,
                "metric_code": "api_calls",
                "time_unix_nano": T0 + i,
                "properties": {"region": "eu"},
            }
        )
        for i in range(10)
    ]
    lines[2] = json.dumps({"account_id": 42, "metric_code": "nope", "time_unix_nano": T0 + 2})  # line 3
    lines[4] = "{ not json"  # line 5
    lines[5] = json.dumps({"account_id": 0, "metric_code": "api_calls", "time_unix_nano": T0 + 5})  # line 6
    lines[6] = lines[7]  # line 7 and line 8 are the same event: one duplicate
    lines[8] = json.dumps(
        {"account_id": 42, "metric_code": "api_calls", "properties": {"region": "mars"}}
    )  # line 9
    path = tmp_path / "backfill.jsonl"
    path.write_text("\n".join(lines[:6]) + "\n\n" + "\n".join(lines[6:]) + "\n")  # line 7 is blank
    # Batches of 4 parsed events: lines 1-4 (3 rejected, the rest re-sent), 6 8 9 10 (6 and 10 rejected;
    # 8 and 9 are one event: stored once, one duplicate), then 11. Line 5 is never sent.
    run = await cli("import", str(path), "--batch-size", "4")
    assert run.code == 2
    assert run.out == "stored 5, duplicates 1, rejected 4\n"
    assert run.err.splitlines() == [
        "rejected line 3: metric_code: unknown metric 'nope'",
        "rejected line 5: not JSON: Expecting property name enclosed in double quotes (column 3)",
        "rejected line 6: account_id: must be a non-zero uint64",
        "rejected line 10: properties[region]: 'mars' is not an allowed value of dimension 'region'",
    ]
    query = await cli(
        "query", "--account", "42", "--metric", "api_calls", "--start", START, "--end", END, "--json"
    )
    assert json.loads(query.out)["value"]["count"] == 5
    # Importing the same file again stores nothing new: every valid event carries its time.
    again = await cli("import", str(path), "--progress")
    assert again.out == "stored 0, duplicates 6, rejected 4\n"
    assert (
        "\r[##############################] 100%  11 lines  stored 0  duplicates 6  rejected 4\n" in again.err
    )


async def test_import_from_stdin_with_everything_valid_exits_0(cli: Cli) -> None:
    await create_api_calls(cli)
    stdin = "\n".join(
        json.dumps({"account_id": 1 + i % 3, "metric_code": "api_calls", "event_id": f"e{i}"})
        for i in range(2500)
    )
    empty = await cli("import", "-", stdin="")
    assert (empty.code, empty.out, empty.err) == (0, "stored 0, duplicates 0, rejected 0\n", "")
    run = await cli("import", "-", stdin=stdin)
    assert (run.code, run.out, run.err) == (0, "stored 2500, duplicates 0, rejected 0\n", "")
    unreachable = await Cli(f"127.0.0.1:{free_port()}", cli.capsys)("import", "-", stdin=stdin)
    assert unreachable.code == 1
    assert unreachable.out == "stored 0, duplicates 0, rejected 0\n"
    assert unreachable.err.startswith("error: import stopped at line 1: cannot reach a Unimeter server at ")
    missing = await cli("import", "/nonexistent/x.jsonl")
    assert (missing.code, missing.err) == (
        2,
        "error: cannot read /nonexistent/x.jsonl: No such file or directory\n",
    )


# ----------------------------------------------------------------------------------------- status


@pytest.mark.parametrize("api_engine", ENGINES)
async def test_status_shows_a_summary_and_the_partitions_on_request(
    api: Api, cli: Cli, api_engine: str
) -> None:
    await seed_regions(cli)
    run = await cli("status")
    assert run.code == 0, run.err
    summary, nodes = run.out.rstrip("\n").split("\n\n")
    p42 = api.server.client.partition_of(42)  # type: ignore[union-attr]
    assert summary.splitlines() == [
        "backend     embedded",
        f"engine      {api_engine}",
        "partitions  8",
        "events      6",
        "alerts      2",
        f"busiest     partition {p42}: 6 events (100%)",
    ]
    node_lines = nodes.splitlines()
    assert node_lines[0].split() == [
        "NODE_ID", "NODE_ADDR", "GRPC_ADDR", "ALIVE", "PARTITIONS", "EVENTS", "ALERTS"
    ]  # fmt: skip
    assert len(node_lines) == 2
    node_id, node_addr, grpc_addr, alive, *owned = node_lines[1].split()
    assert (node_addr, grpc_addr, alive, owned) == ("-", cli.addr, "yes", ["8", "6", "2"])

    detailed = await cli("status", "--partitions")
    assert detailed.code == 0, detailed.err
    head, partitions = detailed.out.rstrip("\n").rsplit("\n\n", 1)
    assert head == run.out.rstrip("\n")
    assert partitions.splitlines() == [
        "PARTITION  OWNER              LAST_OFFSET  LAST_ALERT_OFFSET  LEASE_EPOCH  LAG",
        *[
            f"{p:>9}  {node_id}  {6 if p == p42 else 0:>11}  {2 if p == p42 else 0:>17}  -            {0:>3}"
            for p in range(8)
        ],
    ]
    as_json = json.loads((await cli("status", "--json")).out)
    assert (as_json["partitions"], as_json["backend"], len(as_json["partition_infos"])) == (8, "embedded", 8)
    assert as_json["engine"] == api_engine


async def test_status_of_an_empty_node_has_no_busiest_partition(api: Api, cli: Cli) -> None:
    run = await cli("status")
    assert run.code == 0, run.err
    summary, nodes = run.out.rstrip("\n").split("\n\n")
    engine = api.server.stats.ingest_engine
    assert summary.splitlines() == [
        "backend     embedded",
        f"engine      {engine}",
        "partitions  8",
        "events      0",
        "alerts      0",
    ]
    assert nodes.splitlines()[1].split()[-3:] == ["8", "0", "0"]


# ------------------------------------------------------------------------------- errors, connection


async def test_connection_errors_exit_1_with_a_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    addr = f"127.0.0.1:{free_port()}"
    run = await Cli(addr, capsys)("status")
    assert run.code == 1
    assert run.err.startswith(f"error: cannot reach a Unimeter server at {addr} (UNAVAILABLE: ")
    assert run.err.endswith("); is it running? (--addr, UNIMETER_ADDR)\n")


async def test_addr_comes_from_the_environment_and_the_flag_wins(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UNIMETER_ADDR", cli.addr)
    assert await asyncio.to_thread(main, ["metrics", "list"]) == 0
    assert capsys.readouterr().out == "no metrics\n"
    monkeypatch.setenv("UNIMETER_ADDR", f"127.0.0.1:{free_port()}")
    assert await asyncio.to_thread(main, ["metrics", "list", "--addr", cli.addr]) == 0


class _RecordingCluster(cluster_service_pb2_grpc.ClusterServiceServicer):
    """Answers GetClusterStatus and remembers each call's authorization metadata."""

    def __init__(self) -> None:
        self.authorization: list[str] = []

    async def GetClusterStatus(
        self, request: cluster_service_pb2.GetClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> cluster_service_pb2.GetClusterStatusResponse:
        self.authorization += [v for k, v in context.invocation_metadata() if k == "authorization"]
        if not self.authorization or self.authorization[-1] != "Bearer s3cret":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key")
        return cluster_service_pb2.GetClusterStatusResponse(partitions=1, backend="embedded")


def self_signed_certificate(directory: Path) -> tuple[bytes, bytes]:
    """(key, certificate) PEM for 127.0.0.1, made by openssl."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return key.read_bytes(), cert.read_bytes()


async def test_api_key_and_tls_ca_reach_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key, cert = self_signed_certificate(tmp_path)
    (tmp_path / "ca.pem").write_bytes(cert)
    recorder = _RecordingCluster()
    server = grpc.aio.server()
    cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(recorder, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    try:
        cli = Cli(f"127.0.0.1:{port}", capsys)
        ok = await cli("status", "--json", "--tls-ca", str(tmp_path / "ca.pem"), "--api-key", "s3cret")
        assert (ok.code, json.loads(ok.out)["partitions"]) == (0, 1)
        monkeypatch.setenv("UNIMETER_API_KEY", "s3cret")
        monkeypatch.setenv("UNIMETER_TLS_CA", str(tmp_path / "ca.pem"))
        assert (await cli("status", "--json")).code == 0
        denied = await cli("status", "--api-key", "wrong")
        assert (denied.code, denied.err) == (
            2,
            "error: UNAUTHENTICATED: missing or unknown API key (pass --api-key or set UNIMETER_API_KEY)\n",
        )
        assert recorder.authorization == ["Bearer s3cret", "Bearer s3cret", "Bearer wrong"]
        unreadable = await cli("status", "--tls-ca", str(tmp_path / "missing.pem"))
        assert (unreadable.code, unreadable.err) == (
            2,
            f"error: cannot read --tls-ca {tmp_path / 'missing.pem'}: No such file or directory\n",
        )
    finally:
        await server.stop(grace=1)


async def test_help_and_usage_errors_return_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "import" in capsys.readouterr().out
    assert main(["metrics"]) == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err
    assert main(["query", "--account", "1"]) == 2
    assert "the following arguments are required: --metric" in capsys.readouterr().err


class _ScriptedIngest(ingest_service_pb2_grpc.IngestServiceServicer):
    """Answers each Ingest call with the next scripted failure, or stores the batch when none is left."""

    def __init__(self, script: list[status_pb2.Status | None]) -> None:
        self.script = script
        self.batches: list[int] = []

    async def Ingest(
        self, request: ingest_service_pb2.IngestRequest, context: grpc.aio.ServicerContext
    ) -> ingest_service_pb2.IngestResponse:
        step = self.script.pop(0) if self.script else None
        if step is not None:
            await context.abort_with_status(rpc_status.to_status(step))
        self.batches.append(len(request.events))
        n = len(request.events)
        return ingest_service_pb2.IngestResponse(n_stored=n, offsets=list(range(1, n + 1)))


def rich_status(code: grpc.StatusCode, message: str, *details: Message) -> status_pb2.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return status


async def scripted_import(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, script: list[status_pb2.Status | None], lines: int
) -> tuple[Run, _ScriptedIngest]:
    servicer = _ScriptedIngest(script)
    server = grpc.aio.server()
    ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    path = tmp_path / "events.jsonl"
    path.write_text(
        "".join(
            json.dumps({"account_id": 1, "metric_code": "m", "event_id": f"e{i}"}) + "\n"
            for i in range(lines)
        )
    )
    try:
        run = await Cli(f"127.0.0.1:{port}", capsys)("import", str(path), "--batch-size", "2")
    finally:
        await server.stop(grace=1)
    return run, servicer


async def test_import_retries_backpressure_after_the_delay_the_server_asks_for(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    delay = duration_pb2.Duration(nanos=20_000_000)
    busy = rich_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "too busy", error_details_pb2.RetryInfo(retry_delay=delay)
    )
    run, servicer = await scripted_import(capsys, tmp_path, [None, busy, busy], lines=5)
    assert (run.code, run.out) == (0, "stored 5, duplicates 0, rejected 0\n")
    assert run.err.splitlines() == [
        "RESOURCE_EXHAUSTED: too busy; retrying line 3 in 0.02s (1/8)",
        "RESOURCE_EXHAUSTED: too busy; retrying line 3 in 0.02s (2/8)",
    ]
    assert servicer.batches == [2, 2, 1]


async def test_import_stops_at_a_failure_it_cannot_get_past(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    internal = rich_status(grpc.StatusCode.INTERNAL, "internal error; see the server log")
    run, servicer = await scripted_import(capsys, tmp_path, [None, internal], lines=6)
    assert (run.code, run.out) == (1, "stored 2, duplicates 0, rejected 0\n")
    assert run.err == (
        "error: import stopped at line 3: INTERNAL: internal error; see the server log. "
        "Lines from there on may not be stored; re-running the import is safe for events "
        "with an event_id or a time (duplicates are recognised)\n"
    )
    # A rejection that names no event cannot be narrowed down to lines: stop rather than drop the batch.
    unnamed = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown delivery mode",
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="delivery", description="unknown")
            ]
        ),
    )
    run, servicer = await scripted_import(capsys, tmp_path, [unnamed], lines=3)
    assert (run.code, run.out) == (2, "stored 0, duplicates 0, rejected 0\n")
    assert run.err.splitlines() == [
        "error: import stopped at line 1: INVALID_ARGUMENT: unknown delivery mode. "
        "Lines from there on may not be stored; re-running the import is safe for events "
        "with an event_id or a time (duplicates are recognised)",
        "  delivery: unknown",
    ]
    assert servicer.batches == []
