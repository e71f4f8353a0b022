"""``unimeter_native.dedup_batch`` against ``node.partition_engine.python_dedup_batch``: for random
batches (ids, content keys with properties in any order, rows without a time, duplicates inside
the batch and of keys already in the index, metrics of several generations) both return the same
offsets, stored rows, stamped indexes, duplicates, generations (in the same order) and new keys,
and the event record built from them is the same bytes. ``replay_keys`` (recovery's loop): the
same keys and offsets for a decoded record's rows, stamped ones without a key. Collected only
where the extension is built (tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import unimeter_native
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_client.types import EventRow
from node.dedup_index import DedupIndex
from node.partition_engine import PYTHON, partition_engine, python_dedup_batch, python_replay_keys
from node.records import EventRecord, encode_event_record

T = 1_772_323_200 * 10**9
ARRIVAL = T + 77


@dataclass(frozen=True)
class Spec:
    generation: int


SPECS = {"calls": Spec(11), "bytes": Spec(2**40), "peak": Spec(3)}

rows_st = st.lists(
    st.tuples(
        st.sampled_from([1, 2, 2**64 - 1]),
        st.sampled_from(list(SPECS)),
        st.sampled_from([0, 1, 5, 2**63]),
        st.sampled_from([0, T, T + 1]),
        st.sampled_from([None, {"region": "eu"}, {"b": "2", "a": "1"}, {"a": "1", "b": "2"}]),
        st.sampled_from([1, 2]),
        st.sampled_from(["", "x", "y", "é" * 70]),
    ),
    max_size=40,
)


def _both(rows: list[EventRow], known: list[EventRow]) -> None:
    """Fill both indexes with ``known`` (through their own batch loops), then compare on ``rows``."""
    results = []
    for index in (DedupIndex(10**12), unimeter_native.DedupIndex(10**12)):
        batch = python_dedup_batch if isinstance(index, DedupIndex) else unimeter_native.dedup_batch
        _, _, _, _, _, keys, offsets = batch(index, known, SPECS.get, 1, T)
        index.add(T, keys, offsets)
        results.append(batch(index, rows, SPECS.get, len(known) + 1, ARRIVAL))
    python, native = results
    assert python == native
    assert list(python[4]) == list(native[4])  # generations in the same order
    offsets, stored, _, dups, _, _, _ = python
    records = [
        encode_event_record(EventRecord(len(known) + 1, "", ARRIVAL, r[4], r[1], r[2], len(rows), r[3]))
        for r in results
    ]
    assert records[0] == records[1]
    assert len(offsets) == len(rows) and len(stored) + len(dups) == len(rows)


@settings(max_examples=200, deadline=None)
@given(rows_st, rows_st)
def test_random_batches_give_the_same_lists_and_record_bytes(
    rows: list[EventRow], known: list[EventRow]
) -> None:
    _both(rows, known)


@settings(max_examples=200, deadline=None)
@given(rows_st, st.sets(st.integers(0, 45)), st.integers(1, 2**40))
def test_replayed_records_give_the_same_keys(rows: list[EventRow], stamped: set[int], first: int) -> None:
    generations = {code: spec.generation for code, spec in SPECS.items()}
    # A decoded record: rows are tuples in a tuple, times stamped where ``stamped`` says so.
    record_rows = tuple((a, c, v, t or ARRIVAL, p, o, e) for a, c, v, t, p, o, e in rows)
    stamped_list = sorted(i for i in stamped if i < len(rows))
    python = python_replay_keys(record_rows, generations, stamped_list, first)
    assert unimeter_native.replay_keys(record_rows, generations, stamped_list, first) == python
    keys, offsets = python
    assert len(keys) == len(offsets) == len(rows) - len(set(stamped_list) - _with_id(rows))
    assert offsets == sorted(set(offsets)) and all(first <= o < first + len(rows) for o in offsets)


def _with_id(rows: list[EventRow]) -> set[int]:
    return {i for i, row in enumerate(rows) if row[6]}


def test_a_replayed_code_without_a_generation_is_a_key_error_on_both() -> None:
    rows: list[EventRow] = [(1, "calls", 1, T, None, 1, "a")]
    for replay in (python_replay_keys, unimeter_native.replay_keys):
        with pytest.raises(KeyError):
            replay(rows, {"bytes": 1}, [], 1)


def test_rows_as_lists_work_like_tuples() -> None:
    rows: list[EventRow] = [(1, "calls", 1, 0, None, 1, "a"), (1, "calls", 1, T, {"k": "v"}, 1, "")]
    as_lists = [list(r) for r in rows]
    index = unimeter_native.DedupIndex(10**12)
    assert unimeter_native.dedup_batch(index, as_lists, SPECS.get, 1, ARRIVAL)[0] == [1, 2]


def test_an_unknown_metric_is_a_bug_not_a_silent_drop() -> None:
    row: EventRow = (1, "nope", 1, T, None, 1, "")
    with pytest.raises(AssertionError, match="validated before ingest"):
        python_dedup_batch(DedupIndex(10), [row], SPECS.get, 1, ARRIVAL)
    with pytest.raises(AssertionError, match="validated before ingest"):
        unimeter_native.dedup_batch(unimeter_native.DedupIndex(10), [row], SPECS.get, 1, ARRIVAL)


def test_the_engines_hold_their_own_parts() -> None:
    native = partition_engine("native")
    assert (PYTHON.name, native.name) == ("python", "native")
    assert PYTHON.dedup_batch is python_dedup_batch
    assert native.dedup_batch is unimeter_native.dedup_batch
    assert (PYTHON.replay_keys, native.replay_keys) == (python_replay_keys, unimeter_native.replay_keys)
    with pytest.raises(ValueError, match="partition engine must be one of python, native"):
        partition_engine("auto")
