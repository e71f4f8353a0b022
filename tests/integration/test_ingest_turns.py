"""Batches stored in slices take turns: one at a time in arrival order, a batch past a turn's
events going to the back of the line, and cancellations never leaving half a batch or a stuck
line (``Node._ingest_in_slices``, ``node.ingest_turns``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cluster_client import AggType, Metric
from cluster_client.partitioning import partition_of
from cluster_client.types import EventRow
from node import node as node_module
from node.node import Node, NodeConfig

T0 = 1_772_323_200 * 1_000_000_000  # 2026-03-01T00:00:00Z
PARTITIONS = 32


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(NodeConfig(tmp_path / "data", partitions=PARTITIONS))
    await node.start()
    await node.create_metric(Metric("calls", AggType.SUM))
    try:
        yield node
    finally:
        await node.close()


def account_in(partition: int) -> int:
    return next(a for a in range(1, 10_000) if partition_of(a, PARTITIONS) == partition)


def batch(tag: str, partitions: range, events_each: int) -> list[tuple[int, list[EventRow]]]:
    """``events_each`` new events in each of ``partitions``, as ``Node.ingest`` takes them."""
    parts = []
    for p in partitions:
        account = account_in(p)
        rows: list[EventRow] = [
            (account, "calls", 1, T0 + i, None, 1, f"{tag}-{p}-{i}") for i in range(events_each)
        ]
        parts.append((p, rows))
    return parts


def stored(node: Node, partitions: range) -> int:
    return sum(node.partitions[p].last_offset for p in partitions)


async def test_batches_in_flight_together_are_stored_one_after_the_other(node: Node) -> None:
    """Sharing the loop slice by slice finished both batches at the same moment; in turns, the
    first is whole before the second stores anything."""
    first, second = range(0, 16), range(16, 32)  # four slices each, no partition in common
    seen_when_first_done: list[int] = []

    async def ingest_first() -> None:
        await node.ingest(batch("a", first, 10), False, "")
        seen_when_first_done.append(stored(node, second))  # in the same step as its return

    async with asyncio.timeout(10):
        await asyncio.gather(ingest_first(), node.ingest(batch("b", second, 10), False, ""))
    assert seen_when_first_done == [0]
    assert stored(node, first) == stored(node, second) == 160


async def test_a_batch_past_a_turn_steps_back_for_the_batch_that_arrived_meanwhile(
    node: Node,
) -> None:
    large, small = range(0, 12), range(16, 24)  # three slices of 512 events; two slices of one each
    assert node_module._TURN_EVENTS == 1024
    seen: dict[str, int] = {}

    async def ingest_large() -> None:
        await node.ingest(batch("large", large, 128), False, "")
        seen["small when large done"] = stored(node, small)

    async def ingest_small() -> None:  # arrives during the large batch's first turn
        await node.ingest(batch("small", small, 1), False, "")
        seen["large when small done"] = stored(node, large)

    async with asyncio.timeout(10):
        await asyncio.gather(ingest_large(), ingest_small())
    # The large batch's first turn ended after two slices (1024 events); the small one went next.
    assert seen == {"large when small done": 1024, "small when large done": 8}
    assert stored(node, large) == 12 * 128


async def test_a_batch_cancelled_before_its_turn_stores_nothing_and_the_line_moves_on(
    node: Node,
) -> None:
    first, gone, last = range(0, 16), range(16, 24), range(24, 32)
    async with asyncio.timeout(10):
        holding = asyncio.create_task(node.ingest(batch("first", first, 10), False, ""))
        await asyncio.sleep(0)  # its first slice (of four) is in; it holds the turn
        cancelled = asyncio.create_task(node.ingest(batch("gone", gone, 10), False, ""))
        after = asyncio.create_task(node.ingest(batch("last", last, 10), False, ""))
        await asyncio.sleep(0)  # both wait for the turn
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await asyncio.gather(holding, after)
        assert (stored(node, first), stored(node, gone), stored(node, last)) == (160, 0, 80)
        # Nothing stays held: a new batch stored in slices gets its turn at once.
        await node.ingest(batch("again", gone, 1), False, "")
    assert stored(node, gone) == 8


async def test_a_batch_cancelled_while_stepped_back_is_stored_whole_then_cancelled(
    node: Node,
) -> None:
    large, small = range(0, 12), range(16, 24)
    seen: list[int] = []

    async def ingest_large() -> None:
        await node.ingest(batch("large", large, 128), False, "")

    async def ingest_small_then_cancel_large() -> None:
        await node.ingest(batch("small", small, 1), False, "")
        seen.append(stored(node, large))
        large_task.cancel()  # stepped back: its turn is handed back, and not yet resumed

    async with asyncio.timeout(10):
        large_task = asyncio.create_task(ingest_large())
        await asyncio.sleep(0)  # its first slice is in; it holds the turn
        await ingest_small_then_cancel_large()
        with pytest.raises(asyncio.CancelledError):
            await large_task
    assert seen == [1024]
    assert stored(node, large) == 12 * 128  # whole, none twice
    assert stored(node, small) == 8
