"""When an ASYNC batch's alerts are flushed: slice by slice as the batch is stored, and one urgent
group at a time, the partitions that ask meanwhile sharing the next one, which keeps its distance
from the one before while batches wait in line (docs/design.md, "Durability and group commit").
Real nodes on real disks; the backend's group commit runs as is, only its completion is held where
a test needs a group in flight."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster_client import AggType, AlertThreshold, Client, Metric
from cluster_client.partitioning import partition_of
from cluster_client.types import EventRow
from node import commit_scheduler
from node.ingest_turns import IngestTurns
from node.node import Node, NodeConfig
from node.partition import Partition

T0 = 1_772_323_200 * 1_000_000_000  # 2026-03-01T00:00:00Z
CAPPED = Metric("calls", AggType.SUM, thresholds=(AlertThreshold("cap", 10),))


def account_in(partition: int, partitions: int, skip: int = 0) -> int:
    """The ``skip``-th account (from 1) that lives on ``partition``."""
    accounts = (a for a in range(1, 100_000) if partition_of(a, partitions) == partition)
    for _ in range(skip):
        next(accounts)
    return next(accounts)


async def node_with_capped_metric(directory: Path) -> tuple[Node, Client]:
    """A started node of 8 partitions in ``directory``, with :data:`CAPPED` created."""
    node = Node(NodeConfig(directory / "data", partitions=8))
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(CAPPED)
    except BaseException:
        await node.close()
        raise
    return node, client


def urgent_groups_recorded(
    node: Node, monkeypatch: pytest.MonkeyPatch, *, hold: bool
) -> tuple[list[list[int]], list[Callable[[], None]]]:
    """Record the partitions of every urgent (not background) group commit of ``node``, in
    order; with ``hold``, each group is committed for real but its completion waits in the
    returned list until the test calls it. A group started while another is in flight is
    recorded with a ``-1`` in front of its partitions."""
    groups: list[list[int]] = []
    held: list[Callable[[], None]] = []
    in_flight = [0]
    real = node.backend.commit_group

    def recording(partitions: Sequence[int], *, background: bool, then: Callable[[], None]) -> None:
        if background:
            real(partitions, background=background, then=then)
            return
        groups.append([-1, *partitions] if in_flight[0] else list(partitions))
        in_flight[0] += 1

        def finished() -> None:
            in_flight[0] -= 1
            then()

        real(partitions, background=False, then=(lambda: held.append(finished)) if hold else finished)

    monkeypatch.setattr(node.backend, "commit_group", recording)
    return groups, held


async def completion_held(held: list[Callable[[], None]]) -> Callable[[], None]:
    """The completion of the next group whose commit finished (5 s at most)."""
    async with asyncio.timeout(5):
        while not held:
            await asyncio.sleep(0.002)
    return held.pop(0)


async def test_an_alert_stored_in_a_batch_s_first_slice_is_flushed_before_the_next_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch over 16 partitions is stored 4 parts a slice. The alert its first slice logs gets
    its urgent flush right after that slice, while the other three are stored, not after the
    batch's last one; it is published once, and the batch is stored whole."""
    node = Node(NodeConfig(tmp_path / "data", partitions=16))
    await node.start()
    order: list[tuple[str, list[int]]] = []
    real_ingest_parts = Partition.ingest_parts

    def recording(partitions: list[Partition], *args: object) -> object:
        order.append(("slice", [p.number for p in partitions]))
        return real_ingest_parts(partitions, *args)  # type: ignore[arg-type]

    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(CAPPED)
        groups, _ = urgent_groups_recorded(node, monkeypatch, hold=False)
        monkeypatch.setattr(Partition, "ingest_parts", staticmethod(recording))
        alerting = account_in(1, 16)
        parts: list[tuple[int, list[EventRow]]] = [
            (p, [(account_in(p, 16), "calls", 10 if p == 1 else 1, T0, None, 1, f"e{p}")]) for p in range(16)
        ]
        async with client.alerts.subscribe() as subscription:
            monkeypatch.setattr(
                node.commit, "flush_urgent", _recorded(node.commit.flush_urgent, order), raising=True
            )
            await node.ingest(parts, False, "")
            assert order == [
                ("slice", [0, 1, 2, 3]),
                ("urgent", [1]),
                ("slice", [4, 5, 6, 7]),
                ("slice", [8, 9, 10, 11]),
                ("slice", [12, 13, 14, 15]),
            ]
            alert = await asyncio.wait_for(anext(aiter(subscription)), 5)
            assert (alert.account_id, alert.threshold_code, alert.value_at_cross) == (alerting, "cap", 10)
            assert groups == [[1]]
            assert sum(p.last_offset for p in node.partitions) == 16
            await asyncio.sleep(0.05)
            assert subscription.offsets()[1] == 1  # nothing after it: published once
    finally:
        monkeypatch.undo()
        await node.close()


def _recorded(
    flush_urgent: Callable[[Sequence[Partition]], None], order: list[tuple[str, list[int]]]
) -> Callable[[Sequence[Partition]], None]:
    def recording(partitions: Sequence[Partition]) -> None:
        order.append(("urgent", [p.number for p in partitions]))
        flush_urgent(partitions)

    return recording


async def test_partitions_that_ask_while_an_urgent_flush_is_in_flight_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One urgent group at a time: while the first is in flight, two more batches' alerts wait
    for the next group, which starts as the first ends and covers both partitions (one group
    commit, not one each). The tick leaves partitions waiting for an urgent group alone. Every
    alert is published exactly once, after its group."""
    node, client = await node_with_capped_metric(tmp_path)
    try:
        groups, held = urgent_groups_recorded(node, monkeypatch, hold=True)
        accounts = {p: account_in(p, 8) for p in (2, 5, 7)}
        async with client.alerts.subscribe() as subscription:
            for n, account in enumerate(accounts.values()):
                await client.ingest_rows([(account, "calls", 10, T0, None, 1, f"a{n}")], sync=False)
            first = await completion_held(held)
            assert groups == [[2]]
            assert node.partitions[5].alerts_unpublished and node.partitions[7].alerts_unpublished
            await asyncio.sleep(0.05)  # five ticks: none takes partitions 5 and 7
            for waiting in (node.partitions[5], node.partitions[7]):
                assert waiting.events.durable_position < waiting.events.end_position
            first()
            second = await completion_held(held)
            assert groups == [[2], [5, 7]]
            second()
            received = [await asyncio.wait_for(anext(aiter(subscription)), 5) for _ in range(3)]
            assert sorted(a.account_id for a in received) == sorted(accounts.values())
            await asyncio.sleep(0.05)
            assert groups == [[2], [5, 7]]
            assert [subscription.offsets()[p] for p in (2, 5, 7)] == [1, 1, 1]  # each published once
    finally:
        monkeypatch.undo()
        await node.close()


def urgent_starts_recorded(node: Node, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The loop's time at the start of each urgent group commit of ``node``, in order (on top of
    :func:`urgent_groups_recorded`)."""
    starts: list[float] = []
    recording = node.backend.commit_group

    def timed(partitions: Sequence[int], *, background: bool, then: Callable[[], None]) -> None:
        if not background:
            starts.append(asyncio.get_running_loop().time())
        recording(partitions, background=background, then=then)

    monkeypatch.setattr(node.backend, "commit_group", timed)
    return starts


def batches_in_line(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether batches wait for their turn, as the commit scheduler sees it: set by the test
    (``[0]``), the spacing of urgent groups then made 1 s, long enough to see."""
    waiting = [True]
    monkeypatch.setattr(IngestTurns, "others_waiting", property(lambda _: waiting[0]))
    monkeypatch.setattr(commit_scheduler, "_BUSY_URGENT_SPACING", 1.0)
    return waiting


async def test_while_batches_wait_in_line_the_next_urgent_group_keeps_its_distance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With batches waiting for their turn (the node at its capacity), the group after an urgent
    group starts no sooner than the spacing after that one started, not as it ends, and covers
    every partition that asked meanwhile. With nobody in line, it starts as the one before ends.
    Every alert is published once."""
    waiting = batches_in_line(monkeypatch)
    node, client = await node_with_capped_metric(tmp_path)
    try:
        groups, held = urgent_groups_recorded(node, monkeypatch, hold=True)
        starts = urgent_starts_recorded(node, monkeypatch)
        rows = [
            (account_in(p, 8, skip), "calls", 10, T0, None, 1, f"{p}-{skip}")
            for p, skip in ((1, 0), (3, 0), (6, 0), (1, 1))
        ]
        async with client.alerts.subscribe() as subscription:
            await client.ingest_rows([rows[0]], sync=False)
            assert groups == [[1]]  # the first group starts at once
            first = await completion_held(held)
            await client.ingest_rows([rows[1]], sync=False)
            await client.ingest_rows([rows[2]], sync=False)
            first()  # well within the spacing of its start (a commit of two logs)
            assert groups == [[1]]
            second = await completion_held(held)
            assert groups == [[1], [3, 6]]
            assert starts[1] - starts[0] >= 1.0 - 0.001
            waiting[0] = False
            await client.ingest_rows([rows[3]], sync=False)
            second()  # nobody in line: the next group starts as this one ends
            assert groups == [[1], [3, 6], [1]]
            (await completion_held(held))()
            received = [await asyncio.wait_for(anext(aiter(subscription)), 5) for _ in rows]
            assert sorted(a.account_id for a in received) == sorted(row[0] for row in rows)
            await asyncio.sleep(0.05)
            assert [subscription.offsets()[p] for p in (1, 3, 6)] == [2, 1, 1]  # each published once
    finally:
        monkeypatch.undo()
        await node.close()


async def test_a_node_closed_while_an_urgent_group_keeps_its_distance_keeps_its_alerts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing the node while a group waits for its start makes its partitions durable (as
    closing does every partition): nothing waits for the start, and the alerts are there after
    a restart."""
    batches_in_line(monkeypatch)
    node, client = await node_with_capped_metric(tmp_path)
    try:
        groups, held = urgent_groups_recorded(node, monkeypatch, hold=True)
        await client.ingest_rows([(account_in(2, 8), "calls", 10, T0, None, 1, "a")], sync=False)
        (await completion_held(held))()
        await client.ingest_rows([(account_in(5, 8), "calls", 10, T0, None, 1, "b")], sync=False)
        assert groups == [[2]]  # the next one waits for its distance from this one
    finally:
        async with asyncio.timeout(5):
            await node.close()
    monkeypatch.undo()
    again = Node(NodeConfig(tmp_path / "data", partitions=8))
    await again.start()
    try:
        assert [len(again.partitions[p].alerts) for p in (2, 5)] == [1, 1]
        assert [again.partitions[p].published_alert_offset for p in (2, 5)] == [1, 1]
    finally:
        await again.close()


RELEASE = None
"""A step of the model test: let the oldest urgent group whose commit finished complete."""
LINE = "line"
"""A step of the model test: batches start or stop waiting in line (the next groups keep their
distance, or not)."""

steps_strategy = st.lists(
    st.one_of(
        st.just(RELEASE),
        st.just(LINE),
        st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True),
    ),
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps_strategy)
def test_whatever_the_order_of_batches_and_completions_every_alert_is_published_once(
    steps: list[list[int] | str | None],
) -> None:
    """ASYNC batches that fire alerts on any partitions (each part one new account crossing the
    threshold; 5 parts or more are stored in two slices), interleaved with urgent groups
    completing in any order against them, and with batches in line or not (groups keeping their
    distance, 2 ms here, or not): one urgent group is ever in flight, no group names a partition
    twice, and every alert reaches a live subscriber exactly once, in offset order per
    partition."""
    root = Path(tempfile.mkdtemp(prefix="unimeter-urgent-"))
    try:
        asyncio.run(_urgent_scenario(root, steps))
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _urgent_scenario(root: Path, steps: list[list[int] | str | None]) -> None:
    node = Node(NodeConfig(root / "data", partitions=8))
    await node.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            client = await Client.in_process(node, metric_lookup=node.metric_of)
            await client.metrics.create(CAPPED)
            groups, held = urgent_groups_recorded(node, patch, hold=True)
            in_line = [False]
            patch.setattr(IngestTurns, "others_waiting", property(lambda _: in_line[0]))
            patch.setattr(commit_scheduler, "_BUSY_URGENT_SPACING", 0.002)
            fresh = {p: (account_in(p, 8, skip) for skip in itertools.count()) for p in range(8)}
            fired: list[int] = []
            async with client.alerts.subscribe() as subscription:
                for n, step in enumerate(steps):
                    if step is RELEASE:
                        if held:
                            held.pop(0)()
                        continue
                    if step == LINE:
                        in_line[0] = not in_line[0]
                        continue
                    assert isinstance(step, list)
                    rows = {p: (next(fresh[p]), "calls", 10, T0, None, 1, f"s{n}p{p}") for p in step}
                    await node.ingest([(p, [rows[p]]) for p in sorted(step)], False, "")
                    fired += [row[0] for row in rows.values()]
                    await asyncio.sleep(0)

                async def release_as_they_come() -> None:
                    while True:
                        while held:
                            held.pop(0)()
                        await asyncio.sleep(0.001)

                releaser = asyncio.create_task(release_as_they_come())
                try:
                    async with asyncio.timeout(10):
                        received = [await anext(aiter(subscription)) for _ in fired]
                    await asyncio.sleep(0.05)  # anything more would be a second publish
                    assert sorted(a.account_id for a in received) == sorted(fired)
                    for partition in range(8):
                        offsets = [a.offset for a in received if a.partition == partition]
                        assert offsets == list(range(1, len(offsets) + 1))
                        assert subscription.offsets().get(partition, 0) == len(offsets)
                finally:
                    releaser.cancel()
            assert all(-1 not in group and len(group) == len(set(group)) for group in groups)
    finally:
        await node.close()
