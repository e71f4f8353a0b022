"""Helpers for the operator-facing tests: raw HTTP GETs against the HTTP endpoint and reading
Prometheus samples from /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def http_get(port: int, path: str) -> tuple[int, str]:
    """(status code, body) of ``GET path`` on 127.0.0.1."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


async def scrape(port: int) -> Samples:
    """Every sample of /metrics, keyed by (sample name, labels)."""
    status, body = await http_get(port, "/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def scrape_when(port: int, ready: Callable[[Samples], bool], timeout: float = 5.0) -> Samples:
    """/metrics once ``ready`` holds for it, or the last scrape after ``timeout``. A call's status
    reaches its client before the server's interceptor has counted it, so a scrape right after the
    call may lag by that one call."""
    async with asyncio.timeout(timeout + 5):
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            samples = await scrape(port)
            if ready(samples) or asyncio.get_running_loop().time() > deadline:
                return samples
            await asyncio.sleep(0.02)


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of one sample, or None when it is absent."""
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)
