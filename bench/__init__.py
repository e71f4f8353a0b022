"""Unimeter's benchmark harness (``make bench``): a real server, a no-op ceiling, the same load.

It starts ``unimeter serve`` and a no-op gRPC server implementing the same protos, drives both from
separate load-generator processes with identical payloads, and reports every number as value,
ceiling and ratio, with issue 5's targets marked met or missed. It is not a load-testing tool for
production clusters: it runs everything on one machine and compares inside one run only.
"""

from .config import SECTIONS, BenchConfig, preset
from .run import RunOutput, run_bench

__all__ = ["SECTIONS", "BenchConfig", "RunOutput", "preset", "run_bench"]
