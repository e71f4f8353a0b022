"""Fuzzing the node's storage decoders: damaged copies of REAL segment files and snapshots.

``build_reference`` runs a real Node in process on a data directory (two partitions, small
segments so each log has several, SUM and COUNT metrics with a recurring threshold so alerts are
logged), storing known batches with SYNC ingest and noting after each one where its record ends in
its partition's events log (from the segment files' sizes, so nothing here depends on the record
format). It keeps two variants: ``final`` (the snapshot written at close covers the whole log) and
``stale`` (the snapshot written half-way, with the whole log after it). ``check_damage`` copies a
variant, damages one file of it (an events segment, an alerts segment or a snapshot) and opens a
Node on the copy through its public API. Opening must not fail; the answers must be exactly those
of a model holding the events of every record that ends before the first damaged byte of an
events log (all of them when the damage is elsewhere): the same events with the same offsets, the
same sums and counts, the same alerts. Finally every batch is sent again: exactly the lost events
are stored, the rest are duplicates, and the numbers are the undamaged run's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cluster_client import AggType, Client, Metric, Period
from cluster_client.partitioning import partition_of
from cluster_client.types import Alert, AlertThreshold, EventRow
from node.node import Node, NodeConfig
from tests.segment_files import records_length

from .mutations import damage

__all__ = ["Reference", "build_reference", "check_damage", "check_damaged_copy"]

PARTITIONS = 2
SEGMENT_BYTES = 1024
T0 = 1_772_323_200 * 1_000_000_000  # 2026-03-01T00:00:00Z
ALL_TIME = Period(0, 2**63 - 1)
METRICS = (
    Metric("api.calls", AggType.SUM, thresholds=(AlertThreshold("every-50", 50, True),)),
    Metric("api.hits", AggType.COUNT),
)
BATCHES = 40
ROWS_PER_BATCH = 4
_ALERT_POLLS = 1000  # x 10 ms: the flusher publishes within its 10 ms interval


@dataclass(frozen=True, slots=True)
class _Record:
    partition: int
    end: int  # global position just past this record in its partition's events log
    rows: tuple[EventRow, ...]


@dataclass
class Reference:
    """Where the variants are, the record each batch became, and the undamaged run's alerts."""

    root: Path
    records: list[_Record] = field(default_factory=list)
    alerts: dict[int, list[Alert]] = field(default_factory=dict)
    accounts: list[int] = field(default_factory=list)

    def variant(self, name: str) -> Path:
        return self.root / name


def _config(data_dir: Path) -> NodeConfig:
    # No background snapshot: the snapshots are exactly the ones written at close.
    return NodeConfig(
        data_dir,
        partitions=PARTITIONS,
        segment_bytes=SEGMENT_BYTES,
        snapshot_interval=3600.0,
        snapshot_every_records=10**9,
        min_free_disk_bytes=0,
    )


def _events_end(data_dir: Path, partition: int) -> int:
    """One past the last byte of a partition's events log: its last segment's base (the file name)
    plus the length of its records."""
    segments = sorted((data_dir / "partitions" / f"{partition:04d}" / "events").glob("*.seg"))
    last = segments[-1]
    return int(last.stem) + records_length(last)


def _batch_rows(i: int, accounts_of: dict[int, list[int]]) -> list[EventRow]:
    """Batch ``i``: events of one partition's accounts only, so that it is one record of one log."""
    accounts = accounts_of[i % PARTITIONS]
    rows: list[EventRow] = []
    for j in range(ROWS_PER_BATCH):
        account = accounts[(i + j) % len(accounts)]
        code = METRICS[j % 2].code
        rows.append((account, code, 7 + (i * 13 + j * 5) % 23, T0 + i * 1000 + j, None, 1, f"b{i}e{j}"))
    return rows


async def build_reference(root: Path) -> Reference:
    """Store the batches on a real Node and keep the ``final`` and ``stale`` variants under ``root``."""
    ref = Reference(root)
    work = root / "build"
    accounts_of: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for account in range(1, 13):
        accounts_of[partition_of(account, PARTITIONS)].append(account)
    ref.accounts = sorted(a for accounts in accounts_of.values() for a in accounts)
    node = Node(_config(work))
    await node.start()
    client = await Client.in_process(node, metric_lookup=node.metric_of)
    for metric in METRICS:
        await client.metrics.create(metric)
    for i in range(BATCHES):
        if i == BATCHES // 2:
            await node.close()  # writes the half-way snapshots the stale variant keeps
            shutil.copytree(work, root / "half")
            node = Node(_config(work))
            await node.start()
            client = await Client.in_process(node, metric_lookup=node.metric_of)
        rows = _batch_rows(i, accounts_of)
        await client.ingest_rows(rows, sync=True)
        p = partition_of(rows[0][0], PARTITIONS)
        ref.records.append(_Record(p, _events_end(work, p), tuple(rows)))
    for account in ref.accounts:
        ref.alerts[account] = (await client.list_alerts(account, -1, page_size=1000))[0]
    await node.close()
    work.rename(ref.variant("final"))
    shutil.copytree(ref.variant("final"), ref.variant("stale"))
    for p in range(PARTITIONS):
        snapshot = Path("partitions") / f"{p:04d}" / "snapshot.msgpack"
        shutil.copyfile(root / "half" / snapshot, ref.variant("stale") / snapshot)
    shutil.rmtree(root / "half")
    assert sum(len(a) for a in ref.alerts.values()) > 0, "the reference run must log alerts"
    return ref


def _damaged_at(original: bytes, damaged: bytes) -> int | None:
    """Index of the first byte that differs (or the shorter length), None when identical."""
    if original == damaged:
        return None
    n = min(len(original), len(damaged))
    return next((i for i in range(n) if original[i] != damaged[i]), n)


async def check_damage(ref: Reference, rng: random.Random, work: Path) -> str:
    """Damage one file of a copy of a variant at random, open a Node on it, check every answer (see
    the module docstring); returns a short description of what was damaged."""
    variant = rng.choice(("final", "stale"))
    files = sorted(p for p in (ref.variant(variant) / "partitions").rglob("*") if p.is_file())
    target = rng.choice(files).relative_to(ref.variant(variant))
    original = (ref.variant(variant) / target).read_bytes()
    kind, damaged = damage(rng, original) if original else ("append", rng.randbytes(9))
    where = f"{variant}:{target}:{kind}"
    await check_damaged_copy(ref, variant, target, damaged, work, where)
    return where


async def check_damaged_copy(
    ref: Reference, variant: str, target: Path, damaged: bytes, work: Path, where: str
) -> None:
    """Copy ``variant`` to ``work`` with file ``target`` (relative to the data directory) replaced by
    ``damaged``, open a Node on it and check every answer."""
    shutil.copytree(ref.variant(variant), work)
    try:
        original = (work / target).read_bytes()
        # Damage past a segment's records (in the space the log reserves ahead) loses no record.
        records_end = records_length(work / target) if target.suffix == ".seg" else len(original)
        (work / target).write_bytes(damaged)
        cut_partition, cut_at = -1, 2**63
        at = _damaged_at(original, damaged)
        if target.parent.name == "events" and at is not None and at < records_end:
            cut_partition, cut_at = int(target.parent.parent.name), int(target.stem) + at
        kept = [r for r in ref.records if r.partition != cut_partition or r.end <= cut_at]
        await _check_node(ref, work, kept, where)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _check_node(ref: Reference, data_dir: Path, kept: list[_Record], where: str) -> None:
    node = Node(_config(data_dir))
    try:
        await node.start()
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        kept_rows = [row for r in kept for row in r.rows]
        await _check_answers(ref, client, kept_rows, where)
        again = 0
        for record in ref.records:
            result = await client.ingest_rows(list(record.rows), sync=True)
            again += result.n_stored
        assert again == len(ref.records) * ROWS_PER_BATCH - len(kept_rows), f"{where}: resend stored {again}"
        await _check_answers(ref, client, [row for r in ref.records for row in r.rows], where)
    finally:
        await node.close()


async def _check_answers(ref: Reference, client: Client, rows: list[EventRow], where: str) -> None:
    event_times = {row[3] for row in rows}
    for account in ref.accounts:
        mine = [row for row in rows if row[0] == account]
        events, _ = await client.list_events(account, 0, 2**63 - 1, page_size=1000)
        assert sorted(e.event_id for e in events) == sorted(row[6] for row in mine), where
        calls = await client.query(account, "api.calls", ALL_TIME)
        assert calls.value.sum == sum(row[2] for row in mine if row[1] == "api.calls"), where
        hits = await client.query(account, "api.hits", ALL_TIME)
        assert hits.value.count == sum(1 for row in mine if row[1] == "api.hits"), where
        expected = [_alert_key(a) for a in ref.alerts[account] if a.event_time_unix_nano in event_times]
        # Alerts regenerated by recovery are published once the flusher has made them durable.
        for _ in range(_ALERT_POLLS):
            alerts, _ = await client.list_alerts(account, -1, page_size=1000)
            if len(alerts) >= len(expected):
                break
            await asyncio.sleep(0.01)
        assert [_alert_key(a) for a in alerts] == expected, where


def _alert_key(alert: Alert) -> Alert:
    # A resent event's record is a new arrival: every field but the record time is the reference's.
    return dataclasses.replace(alert, record_time_unix_nano=0)
