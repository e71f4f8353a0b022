"""``python -m bench``: the command line of the benchmark harness."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import SECTIONS, preset
from .run import DEFAULT_OUT, run_bench

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark `unimeter serve` against a no-op gRPC ceiling measured in the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and short windows (< 60 s)")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of the JSON and PNG files")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where the temporary data directories go (default: $TMPDIR)",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the data directories after the run")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every `unimeter serve` (repeatable), e.g. --server-arg=--partitions=16",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; the exit status is 0 whether or not targets were met (it is a report)."""
    args = _parser().parse_args(argv)
    config = preset("quick" if args.quick else "full")
    if args.only:
        chosen = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = [s for s in chosen if s not in SECTIONS]
        if unknown:
            print(
                f"unknown section(s): {', '.join(unknown)}; choose from {', '.join(SECTIONS)}",
                file=sys.stderr,
            )
            return 2
        config = dataclasses.replace(config, sections=chosen)
    run_bench(
        config,
        out_dir=args.out,
        data_root=args.data_root,
        keep_data=args.keep_data,
        server_args=tuple(args.server_arg),
        chart=not args.no_chart,
        progress=not args.no_progress,
    )
    return 0
