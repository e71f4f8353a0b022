"""A partition part's ingest (``node.partition_engine.PartIngest``) on each engine, for both
forms a part arrives in: ``EventRow`` tuples (an in-process caller's, the node protocol's), and the
``EventBatch`` the server's native decoder makes, which the native engine ingests in one call.

* A step that fails after the part's record is appended (the apply step, here) is raised to the
  caller only once the partition has remembered the batch: the record is in the log, so a retry
  of the batch id is answered with the first call's offsets and stores nothing. The partition's
  state is then behind its log, so it takes no snapshot, and after a restart every event counts
  exactly once.
* A metric deleted (or deleted and created again) while a batch is applied in slices leaves the
  rest of the batch logged and counted by nobody, never applied to the new generation.
* A metric deleted and created again between requests starts empty: what the native part ingest
  remembers of a metric (its generation, store and cells) never serves the new generation.
* A slice of parts goes through ``Partition.ingest_parts`` (the native engine's in one call):
  a part whose log refuses its record stops the slice there, after the parts before it are
  stored and finished (their alerts logged), and its error is raised; a part that fails after
  its record is stored does not stop the parts after it, and the first such error is raised once
  all are finished.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from cluster_client import AggType, AlertThreshold, Client, Metric, Period
from cluster_client.partitioning import partition_of
from cluster_client.types import EventRow
from node.aggregation import MetricSpec, PartitionAggregates
from node.node import Node, NodeConfig
from tests.engines import ENGINES

pytestmark = pytest.mark.timeout(60)

T0 = 1_772_323_200 * 1_000_000_000  # 2026-03-01T00:00:00Z
MINUTE = 60 * 1_000_000_000
DAY = Period(T0, T0 + 24 * 60 * MINUTE)
PARTITIONS = 16

FORMS = [("python", "rows")]
if "native" in ENGINES:
    FORMS += [("native", "rows"), ("native", "batches")]


class SetClock:
    """A wall clock that stays where it is put (events without a time are stamped with it)."""

    def __init__(self, now: int) -> None:
        self.now = now

    def now_ns(self) -> int:
        return self.now


def _parts(node: Node, rows: list[EventRow], form: str) -> list[tuple[int, Any]]:
    """The partition parts of ``rows`` in the form asked for, ordered by partition."""
    if form == "rows":
        by_partition: dict[int, list[EventRow]] = {}
        for row in rows:
            by_partition.setdefault(partition_of(row[0], PARTITIONS), []).append(row)
        return sorted(by_partition.items())
    import unimeter_native

    from unimeter.v1 import ingest_service_pb2, types_pb2

    events = [
        types_pb2.Event(account_id=a, metric_code=code, value=v, time_unix_nano=t, operation=op, event_id=e)
        for a, code, v, t, _, op, e in rows
    ]
    data = ingest_service_pb2.IngestRequest(events=events).SerializeToString()
    _, _, batches, rejection = unimeter_native.decode_ingest(data, node.registry.get, PARTITIONS)
    assert rejection is None
    return sorted((p, batch) for p, (batch, _) in batches.items())


async def _node(root: Path, engine: str) -> tuple[Node, Client]:
    node = Node(NodeConfig(root, partitions=PARTITIONS, engine=engine, clock=SetClock(T0 + 30 * MINUTE)))
    await node.start()
    return node, await Client.in_process(node, metric_lookup=node.metric_of)


@pytest.mark.parametrize(("engine", "form"), FORMS)
async def test_a_failure_after_the_record_is_appended_is_raised_and_a_retry_is_its_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str, form: str
) -> None:
    broken = {"calls"}
    real_store_for = PartitionAggregates._store_for

    def store_for(self: PartitionAggregates, spec: MetricSpec) -> Any:
        if spec.code in broken:
            raise RuntimeError("the store could not be made")
        return real_store_for(self, spec)

    # Patched before the node exists: the native engine binds the method once per partition.
    monkeypatch.setattr(PartitionAggregates, "_store_for", store_for)
    node, client = await _node(tmp_path / "data", engine)
    try:
        await client.metrics.create(Metric("calls", AggType.SUM))
        rows: list[EventRow] = [
            (7, "calls", 10, T0, None, 1, "with-id"),
            (7, "calls", 5, T0 + MINUTE, None, 1, ""),  # a content key
            (7, "calls", 1, 0, None, 1, ""),  # stamped: only the batch id knows it
        ]
        parts = _parts(node, rows, form)
        assert len(parts) == 1
        partition = node.partitions[parts[0][0]]
        with pytest.raises(RuntimeError, match="could not be made"):
            await node.ingest(parts, False, "lot-1", validated=True)
        end = partition.events.end_position
        assert partition.last_offset == 3
        broken.clear()
        retry = await node.ingest(_parts(node, rows, form), False, "lot-1", validated=True)
        assert [(list(o.offsets), o.n_duplicates) for o in retry] == [([1, 2, 3], 0)]  # the first call's
        assert partition.events.end_position == end  # nothing stored again
        assert partition.last_offset == 3
        # The state is behind the log: no snapshot may say otherwise, so a restart replays it.
        with pytest.raises(RuntimeError, match="behind its log"):
            await partition.snapshot()
    finally:
        with pytest.raises(RuntimeError, match="behind its log"):
            await node.close()  # every other partition is closed all the same
    node, client = await _node(tmp_path / "data", engine)
    try:  # the log is the truth: recovery applies the record, once
        assert (await client.query(7, "calls", DAY)).value.sum == 16
    finally:
        await node.close()


@pytest.mark.parametrize("recreate", [False, True], ids=["deleted", "deleted-and-created-again"])
@pytest.mark.parametrize(("engine", "form"), FORMS)
async def test_a_metric_deleted_while_a_batch_is_sliced_in_is_applied_by_nobody(
    tmp_path: Path, engine: str, form: str, recreate: bool
) -> None:
    node, client = await _node(tmp_path / "data", engine)
    try:
        await client.metrics.create(Metric("calls", AggType.SUM))
        await client.metrics.create(Metric("kept", AggType.SUM))
        rows: list[EventRow] = [
            (1 + n, "calls" if n % 2 else "kept", 1, T0 + n * MINUTE, None, 1, f"e{n}") for n in range(64)
        ]
        parts = _parts(node, rows, form)
        assert len(parts) > 8  # several slices
        ingest = asyncio.create_task(node.ingest(parts, False, "", validated=True))
        await asyncio.sleep(0)  # the first slice is in
        assert not ingest.done()
        await node.delete_metric("calls")
        if recreate:
            await client.metrics.create(Metric("calls", AggType.SUM))  # a new generation
        outcomes = await asyncio.wait_for(ingest, 5)
        assert sum(len(o.offsets) for o in outcomes) == 64
        assert sum(p.last_offset for p in node.partitions) == 64  # every event logged once
        # No store was made for the deleted generation (nor its events given to the new one).
        assert not any("calls" in p.aggregates._stores for p in node.partitions)
        assert {(await client.query(a, "kept", DAY)).value.sum for a in range(1, 65, 2)} == {1}
        if recreate:  # the deleted generation's events count for nobody
            assert {(await client.query(a, "calls", DAY)).value.sum for a in range(2, 66, 2)} == {0}
    finally:
        await node.close()


@pytest.mark.parametrize(("engine", "form"), FORMS)
async def test_a_metric_created_again_between_requests_counts_only_its_own_events(
    tmp_path: Path, engine: str, form: str
) -> None:
    node, client = await _node(tmp_path / "data", engine)
    try:
        await client.metrics.create(Metric("calls", AggType.SUM))
        first: list[EventRow] = [(7, "calls", 10, T0, None, 1, "a"), (7, "calls", 5, T0 + 1, None, 1, "b")]
        await node.ingest(_parts(node, first, form), False, "", validated=True)
        assert (await client.query(7, "calls", DAY)).value.sum == 15
        await node.delete_metric("calls")
        await client.metrics.create(Metric("calls", AggType.SUM))  # a new generation, empty
        again: list[EventRow] = [(7, "calls", 1, T0 + 2 * MINUTE, None, 1, "a")]  # "a" is new to it
        outcomes = await node.ingest(_parts(node, again, form), False, "", validated=True)
        assert [o.n_duplicates for o in outcomes] == [0]
        assert (await client.query(7, "calls", DAY)).value.sum == 1
        partition = node.partitions[partition_of(7, PARTITIONS)]
        spec = node.registry.get("calls")
        assert spec is not None
        assert partition.aggregates._stores["calls"].spec.generation == spec.create_time_unix_nano
    finally:
        await node.close()


def _one_event_per_partition(code: str) -> list[EventRow]:
    """One event of 5 for each of the first accounts that fall into each partition, in partition
    order (so the parts come in that order)."""
    first: dict[int, int] = {}
    account = 1
    while len(first) < PARTITIONS:
        first.setdefault(partition_of(account, PARTITIONS), account)
        account += 1
    return [(first[p], code, 5, T0 + p, None, 1, f"e{p}") for p in sorted(first)]


@pytest.mark.parametrize(("engine", "form"), FORMS)
async def test_a_part_whose_log_refuses_it_stops_its_slice_after_the_parts_before_it_are_finished(
    tmp_path: Path, engine: str, form: str
) -> None:
    node, client = await _node(tmp_path / "data", engine)
    try:
        await client.metrics.create(Metric("calls", AggType.SUM, thresholds=(AlertThreshold("over-4", 4),)))
        rows = _one_event_per_partition("calls")
        parts = _parts(node, rows, form)
        assert [p for p, _ in parts] == list(range(PARTITIONS))
        failed = node.partitions[2]  # the third part of the first slice (of 4)
        failed.events._fail(None, OSError(errno.EIO, "the disk went away"))
        with pytest.raises(OSError, match="refuses further use"):
            await node.ingest(parts, False, "", validated=True)
        # The parts before it: stored, applied, and their alerts logged.
        for number in (0, 1):
            partition = node.partitions[number]
            assert partition.last_offset == 1
            assert [(a.account_id, a.threshold_code) for a in partition.alerts[:]] == [
                (rows[number][0], "over-4")
            ]
            assert (await client.query(rows[number][0], "calls", DAY)).value.sum == 5
        # It and the parts after it: nothing stored.
        assert [p.last_offset for p in node.partitions[2:]] == [0] * (PARTITIONS - 2)
    finally:
        with pytest.raises(OSError):
            await node.close()


@pytest.mark.parametrize(("engine", "form"), FORMS)
async def test_parts_that_fail_after_their_records_are_stored_do_not_stop_their_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str, form: str
) -> None:
    real_store_for = PartitionAggregates._store_for
    made: list[str] = []

    def store_for(self: PartitionAggregates, spec: MetricSpec) -> Any:
        made.append(spec.code)
        if len(made) in (2, 3):  # the second and third partitions' stores of the first slice
            raise RuntimeError(f"store {len(made)} could not be made")
        return real_store_for(self, spec)

    # Patched before the node exists: the native engine binds the method once per partition.
    monkeypatch.setattr(PartitionAggregates, "_store_for", store_for)
    node, client = await _node(tmp_path / "data", engine)
    try:
        await client.metrics.create(Metric("calls", AggType.SUM))
        rows = _one_event_per_partition("calls")
        with pytest.raises(RuntimeError, match="store 2 could not be made"):
            await node.ingest(_parts(node, rows, form), False, "", validated=True)
        # Every part of the first slice is stored (the failed ones behind their logs); the
        # batch stops at the slice's end.
        assert [p.last_offset for p in node.partitions] == [1] * 4 + [0] * (PARTITIONS - 4)
        assert [(await client.query(rows[n][0], "calls", DAY)).value.sum for n in (0, 3)] == [5, 5]
    finally:
        with pytest.raises(RuntimeError, match="behind its log"):
            await node.close()
    node, client = await _node(tmp_path / "data", engine)
    try:  # the log is the truth: recovery applies every stored record, once
        assert [(await client.query(rows[n][0], "calls", DAY)).value.sum for n in range(4)] == [5] * 4
        assert [p.last_offset for p in node.partitions] == [1] * 4 + [0] * (PARTITIONS - 4)
    finally:
        await node.close()


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_call_without_parts_stores_nothing_and_answers_nothing(tmp_path: Path, engine: str) -> None:
    node, _ = await _node(tmp_path / "data", engine)
    try:
        assert await node.ingest([], False, "") == []
        assert await node.ingest([], True, "lot-1") == []
        assert [p.last_offset for p in node.partitions] == [0] * PARTITIONS
    finally:
        await node.close()
