"""The ``unimeter`` console command: builds the argument tree and dispatches to ``service.commands``.

``unimeter serve`` runs a node. Every other subcommand is a client of the public gRPC API of any
node (``--addr``), for people at a terminal and for scripts (``--json``). Environment variables are
read here and nowhere else: ``UNIMETER_ADDR``, ``UNIMETER_API_KEY``, ``UNIMETER_TLS_CA``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from .commands import alerts, backfill, events, ingest, metrics, query, status
from .commands.connection import DEFAULT_ADDR, Api, ConnectionOptions
from .commands.errors import CliError, ExitCode, rpc_failure
from .commands.ingest import MAX_BATCH
from .commands.parsing import (
    INT64_MAX,
    parse_dimension,
    parse_key_value,
    parse_threshold,
    parse_time,
    parse_uint64,
)
from .config import add_serve_arguments, serve_config_from_args

__all__ = ["main"]

Handler = Callable[[argparse.Namespace, Api], int]


def _arg(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """An argparse ``type`` that shows the parser's own message on bad input."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


_UINT64 = _arg(parse_uint64, "integer")
_TIME = _arg(parse_time, "time")
_KV = _arg(parse_key_value, "key=value")


def _positive_or_zero(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_uint64(text)
        if value > limit:
            raise ValueError(f"{text} is larger than {limit}")
        return value

    return _arg(parse, "integer")


def _positive(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_uint64(text)
        if not 1 <= value <= limit:
            raise ValueError(f"{text} is not between 1 and {limit}")
        return value

    return _arg(parse, "count")


_UINT32 = _positive_or_zero(0xFFFF_FFFF)


def _connection_arguments(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--addr and friends, accepted before or after the subcommand (the later one wins)."""
    default = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--addr",
        default=default,
        help=f"host:port of a node's gRPC API, or several separated by commas: the first reachable is "
        f"used (env UNIMETER_ADDR, default {DEFAULT_ADDR})",
    )
    group.add_argument(
        "--api-key",
        default=default,
        metavar="KEY",
        help="API key, sent as 'authorization: Bearer <key>' (env UNIMETER_API_KEY; safer: flags show in ps)",
    )
    group.add_argument(
        "--tls-ca",
        type=Path,
        default=default,
        metavar="FILE",
        help="PEM root certificate: connect with TLS and trust it (env UNIMETER_TLS_CA)",
    )
    group.add_argument(
        "--timeout", type=float, default=default, metavar="SECONDS", help="deadline of each call (default 30)"
    )


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def _sentence(help_text: str) -> str:
    """A subcommand's one-line ``help`` as the description its own ``--help`` starts with."""
    return f"{help_text[0].upper()}{help_text[1:]}."


class _Tree:
    """Adds client subcommands with the shared connection options and a handler."""

    def __init__(self, subparsers: Any) -> None:
        self._subparsers = subparsers
        self._parent = argparse.ArgumentParser(add_help=False)
        _connection_arguments(self._parent, top=False)

    def add(self, name: str, help_text: str, handler: Handler | None = None) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._subparsers.add_parser(
            name, help=help_text, description=_sentence(help_text), parents=[self._parent]
        )
        if handler is not None:
            parser.set_defaults(handler=handler)
        return parser


def _add_metrics(tree: _Tree, commands: Any) -> None:
    group = commands.add_parser(
        "metrics", help="create, show and delete metrics", description="Create, show and delete metrics."
    )
    sub = _Tree(group.add_subparsers(dest="metrics_command", required=True, metavar="COMMAND"))

    create = sub.add(
        "create",
        "register a metric",
        lambda a, api: metrics.create(
            api,
            code=a.code,
            agg_type=a.agg_type,
            period_type=a.period_type,
            billing_cycle_day=a.billing_cycle_day,
            fixed_period_seconds=a.fixed_period_seconds,
            time_zone=a.time_zone,
            carry_over=a.carry_over,
            dimensions=a.dimension,
            thresholds=a.threshold,
            as_json=a.json,
            if_not_exists=a.if_not_exists,
        ),
    )
    create.add_argument("code", help="metric code: letters, digits, _ . : -, starting with a letter")
    create.add_argument("--agg-type", choices=list(metrics.AGG_TYPES), default="count", help="default count")
    create.add_argument(
        "--period-type", choices=list(metrics.PERIOD_TYPES), default="fixed", help="default fixed"
    )
    create.add_argument(
        "--billing-cycle-day",
        type=_UINT32,
        default=0,
        metavar="DAY",
        help="calendar: first day, 1-28 (default 1)",
    )
    create.add_argument(
        "--fixed-period-seconds",
        type=_UINT64,
        default=0,
        metavar="SECONDS",
        help="fixed: period length (default 2592000, 30 days)",
    )
    create.add_argument(
        "--time-zone", default="", metavar="ZONE", help="IANA zone of calendar/day/week periods (default UTC)"
    )
    create.add_argument(
        "--carry-over", action="store_true", help="count_unique: members carry across periods"
    )
    create.add_argument(
        "--dimension",
        action="append",
        default=[],
        type=_arg(parse_dimension, "dimension"),
        metavar="KEY=V1,V2",
        help="declared dimension and its allowed values (repeatable)",
    )
    create.add_argument(
        "--threshold",
        action="append",
        default=[],
        type=_arg(parse_threshold, "threshold"),
        metavar="CODE=VALUE[:recurring]",
        help="alert threshold (repeatable)",
    )
    create.add_argument(
        "--if-not-exists",
        action="store_true",
        help="succeed, showing the stored metric, when one with this code and definition exists",
    )
    _json_flag(create)

    get = sub.add("get", "show one metric", lambda a, api: metrics.get(api, code=a.code, as_json=a.json))
    get.add_argument("code")
    _json_flag(get)
    listing = sub.add("list", "list every metric", lambda a, api: metrics.list_metrics(api, as_json=a.json))
    _json_flag(listing)
    delete = sub.add("delete", "delete a metric", lambda a, api: metrics.delete(api, code=a.code))
    delete.add_argument("code")


def _ingest(a: argparse.Namespace, api: Api) -> int:
    flags = {
        "--account": a.account,
        "--metric": a.metric,
        "--value": a.value,
        "--time": a.time,
        "--prop": a.prop or None,
        "--remove": a.remove or None,
        "--event-id": a.event_id,
    }
    if a.source == "-":
        given = [name for name, value in flags.items() if value is not None]
        if given:
            raise CliError(
                f"{', '.join(given)} cannot be combined with '-' (events come from stdin)", ExitCode.BAD_INPUT
            )
        return ingest.ingest_lines(api, sys.stdin, sync=a.sync, as_json=a.json)
    if a.source is not None:
        raise CliError(
            f"unexpected argument {a.source!r}: use '-' to read JSON lines from stdin", ExitCode.BAD_INPUT
        )
    if a.account is None or a.metric is None:
        raise CliError(
            "--account and --metric are required (or '-' to read JSON lines from stdin)", ExitCode.BAD_INPUT
        )
    return ingest.ingest_event(
        api,
        account_id=a.account,
        metric_code=a.metric,
        value=1 if a.value is None else a.value,
        time_unix_nano=a.time or 0,
        properties=dict(a.prop or []),
        remove=a.remove,
        event_id=a.event_id or "",
        sync=a.sync,
        as_json=a.json,
    )


def _add_ingest(tree: _Tree) -> None:
    p = tree.add("ingest", "send one event from flags, or a batch of JSON lines from stdin ('-')", _ingest)
    p.add_argument("source", nargs="?", metavar="-", help="read one JSON event per line from stdin")
    p.add_argument("--account", type=_UINT64, help="account id (non-zero)")
    p.add_argument("--metric", help="metric code")
    p.add_argument("--value", type=_UINT64, help="value (default 1; the member id for count_unique)")
    p.add_argument("--time", type=_TIME, help="event time, RFC3339 or Unix ns (default: the server's clock)")
    p.add_argument("--prop", action="append", type=_KV, metavar="KEY=VALUE", help="property (repeatable)")
    p.add_argument("--remove", action="store_true", help="a correction (REMOVE operation)")
    p.add_argument("--event-id", help="idempotency key (up to 128 bytes)")
    p.add_argument("--sync", action="store_true", help="acknowledge only once fsynced")
    _json_flag(p)


def _query(a: argparse.Namespace, api: Api) -> int:
    if (a.start is None) != (a.end is None):
        raise CliError("--start and --end go together", ExitCode.BAD_INPUT)
    selector = 0 if a.start is not None else (2 if a.previous else 1)
    return query.query(
        api,
        account_id=a.account,
        metric_code=a.metric,
        selector=selector,
        start=a.start or 0,
        end=a.end or 0,
        filters=dict(a.filter),
        group_by=a.group_by,
        as_json=a.json,
    )


def _add_query(tree: _Tree) -> None:
    p = tree.add("query", "an account's usage: the current or previous period, or any range", _query)
    p.add_argument("--account", type=_UINT64, required=True, help="account id")
    p.add_argument("--metric", required=True, help="metric code")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--current", action="store_true", help="the metric's current period (the default)")
    when.add_argument("--previous", action="store_true", help="the metric's previous period")
    when.add_argument("--start", type=_TIME, help="range start (inclusive), RFC3339, date or Unix ns")
    p.add_argument("--end", type=_TIME, help="range end (exclusive); with --start")
    p.add_argument(
        "--filter", action="append", default=[], type=_KV, metavar="KEY=VALUE", help="dimension filter"
    )
    p.add_argument("--group-by", action="append", default=[], metavar="KEY", help="dimension to group by")
    _json_flag(p)


def _add_events(tree: _Tree) -> None:
    p = tree.add(
        "events",
        "an account's stored events, oldest first",
        lambda a, api: events.list_events(
            api,
            account_id=a.account,
            metric_code=a.metric or "",
            start=a.start,
            end=a.end,
            limit=a.limit,
            page_size=a.page_size,
            as_json=a.json,
        ),
    )
    p.add_argument("--account", type=_UINT64, required=True, help="account id")
    p.add_argument("--metric", help="only this metric")
    p.add_argument(
        "--start", type=_TIME, default=0, help="event time from (inclusive; default: the beginning)"
    )
    p.add_argument(
        "--end", type=_TIME, default=INT64_MAX, help="event time before (exclusive; default: no end)"
    )
    p.add_argument("--limit", type=_positive(1 << 62), help="show at most this many events (default: all)")
    p.add_argument(
        "--page-size", type=_positive(1000), default=100, help="events per call, 1-1000 (default 100)"
    )
    _json_flag(p)


def _add_alerts(tree: _Tree, commands: Any) -> None:
    group = commands.add_parser(
        "alerts",
        help="alert history and the live alert stream",
        description="Alert history and the live alert stream.",
    )
    sub = _Tree(group.add_subparsers(dest="alerts_command", required=True, metavar="COMMAND"))
    listing = sub.add(
        "list",
        "an account's alerts, in offset order",
        lambda a, api: alerts.list_alerts(
            api, account_id=a.account, after_offset=a.after, limit=a.limit, as_json=a.json
        ),
    )
    listing.add_argument("--account", type=_UINT64, required=True, help="account id")
    listing.add_argument(
        "--after", type=_UINT64, default=0, metavar="OFFSET", help="only alerts after this offset"
    )
    listing.add_argument("--limit", type=_positive(1 << 62), help="show at most this many (default: all)")
    _json_flag(listing)

    tail = sub.add(
        "tail",
        "follow the live alert stream (Ctrl-C to stop)",
        lambda a, api: alerts.tail(
            api,
            account_ids=a.account,
            metric_codes=a.metric,
            threshold_codes=a.threshold,
            from_beginning=a.from_beginning,
            offsets_file=a.offsets_file,
            max_alerts=a.max_alerts,
            as_json=a.json,
        ),
    )
    tail.add_argument(
        "--account", type=_UINT64, action="append", default=[], help="only this account (repeatable)"
    )
    tail.add_argument("--metric", action="append", default=[], help="only this metric (repeatable)")
    tail.add_argument(
        "--threshold", action="append", default=[], help="only this threshold code (repeatable)"
    )
    tail.add_argument(
        "--from-beginning",
        action="store_true",
        help="partitions without a saved offset start at their first alert",
    )
    tail.add_argument(
        "--offsets-file", type=Path, metavar="FILE", help="resume from and save the stream position in FILE"
    )
    tail.add_argument("--max-alerts", type=_positive(1 << 62), metavar="N", help="exit after N alerts")
    _json_flag(tail)


def _add_import(tree: _Tree) -> None:
    p = tree.add(
        "import",
        "backfill events from a JSON-lines file, reporting every rejected line",
        lambda a, api: backfill.import_file(
            api, path=a.file, batch_size=a.batch_size, sync=a.sync, progress=a.progress
        ),
    )
    p.add_argument("file", metavar="FILE.jsonl", help="one JSON event per line ('-': stdin)")
    p.add_argument(
        "--batch-size",
        type=_positive(MAX_BATCH),
        default=1000,
        help=f"events per call, 1-{MAX_BATCH} (default 1000)",
    )
    p.add_argument("--sync", action="store_true", help="acknowledge each batch only once fsynced")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def _version() -> str:
    """This installation's version, from the package metadata (pyproject.toml)."""
    try:
        return importlib.metadata.version("unimeter")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: run `pip install -e .`)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unimeter", description="Usage metering for usage-based billing.")
    parser.add_argument("--version", action="version", version=f"unimeter {_version()}")
    _connection_arguments(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_help = "run a node with embedded storage and the gRPC API"
    serve = commands.add_parser(
        "serve",
        help=serve_help,
        description=f"{_sentence(serve_help)} Every flag can also be set by the "
        "environment variable named after it; a flag wins over the environment.",
    )
    add_serve_arguments(serve)
    tree = _Tree(commands)
    _add_metrics(tree, commands)
    _add_ingest(tree)
    _add_query(tree)
    _add_events(tree)
    _add_alerts(tree, commands)
    _add_import(tree)
    status_parser = tree.add(
        "status",
        "nodes, the partitions each owns, and log offsets",
        lambda a, api: status.status(api, as_json=a.json, per_partition=a.partitions),
    )
    status_parser.add_argument(
        "--partitions", action="store_true", help="also list every partition's owner and offsets"
    )
    _json_flag(status_parser)
    return parser


def _options(args: argparse.Namespace, env: Mapping[str, str]) -> ConnectionOptions:
    tls_ca = args.tls_ca if args.tls_ca is not None else env.get("UNIMETER_TLS_CA") or None
    return ConnectionOptions(
        addr=args.addr or env.get("UNIMETER_ADDR") or DEFAULT_ADDR,
        api_key=args.api_key if args.api_key is not None else env.get("UNIMETER_API_KEY", ""),
        tls_ca=Path(tls_ca) if tls_ca else None,
        timeout=args.timeout if args.timeout is not None else 30.0,
    )


def _report(error: CliError) -> int:
    lines = "".join(f"\n  {line}" for line in error.lines)
    print(f"error: {error.message}{lines}", file=sys.stderr, flush=True)
    return int(error.exit_code)


def _run_client(args: argparse.Namespace) -> int:
    options = _options(args, os.environ)
    try:
        with Api(options) as api:
            return int(args.handler(args, api))
    except CliError as error:
        return _report(error)
    except grpc.RpcError as err:
        return _report(rpc_failure(err).to_cli_error(options.addr))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
    except OSError as exc:
        return _report(CliError(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), ExitCode.SERVER))
    except Exception as exc:  # a bug here must still read as a sentence, not a traceback
        message = f"unexpected {type(exc).__name__}: {exc} (a bug in the unimeter CLI; please report it)"
        return _report(CliError(message, ExitCode.SERVER))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unimeter`` command; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error (already printed; exit code 2)
        return exc.code if isinstance(exc.code, int) else ExitCode.BAD_INPUT
    if args.command == "serve":
        # Imported here: the node and server code would double the start-up time of client commands.
        from .commands.serve import run_serve

        return run_serve(serve_config_from_args(args))
    return _run_client(args)
