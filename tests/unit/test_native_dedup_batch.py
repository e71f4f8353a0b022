"""``unimeter_native.dedup_record`` against ``node.partition_engine.python_dedup_record``: for
random batches (ids, content keys with properties in any order, empty properties, unicode, big
ints, REMOVE operations, rows without a time, duplicates inside the batch and of keys already in
the index, metrics of several generations, batch ids) both return the same offsets, duplicate
count, stored rows and generations (in the same order), add the same keys to their indexes, and
write the same event record bytes as ``node.records.encode_event_record``. ``replay_keys``
(recovery's loop): the same keys and offsets for a decoded record's rows, stamped ones without a
key. Collected only where the extension is built (tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import unimeter_native
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_client.types import EventRow, OperationType
from node.dedup_index import DedupIndex
from node.partition_engine import (
    PYTHON,
    DedupTable,
    partition_engine,
    python_add_new_keys,
    python_dedup_record,
    python_replay_keys,
)
from node.records import decode_event_record

T = 1_772_323_200 * 10**9
ARRIVAL = T + 77


@dataclass(frozen=True)
class Spec:
    generation: int


SPECS = {"calls": Spec(11), "bytes": Spec(2**40), "peak": Spec(3)}

MANY_PROPS = {f"k{i:02}": "v" * i for i in range(17)}  # a map16, strings past fixstr

rows_st = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 2, 127, 128, 65_536, 2**63, 2**64 - 1]),
        st.sampled_from(list(SPECS)),
        st.sampled_from([0, 1, 5, 255, 2**32, 2**63, 2**64 - 1]),
        st.sampled_from([0, T, T + 1]),
        st.sampled_from(
            [None, {}, {"region": "eu"}, {"b": "2", "a": "1"}, {"a": "1", "b": "2"}, {"ré": "日"}, MANY_PROPS]
        ),
        st.sampled_from([1, 2, OperationType.ADD, OperationType.REMOVE]),
        st.sampled_from(["", "x", "y", "é" * 70, "🙂" * 80]),
    ),
    max_size=40,
)
batch_ids = st.sampled_from(["", "b-1", "lot-é", "z" * 300])


def _dedup(index: DedupTable, rows: list[EventRow], first: int, arrival: int, batch_id: str) -> tuple:
    """One engine's dedup step, its new keys added as the partition adds them."""
    native = not isinstance(index, DedupIndex)
    step = unimeter_native.dedup_record if native else python_dedup_record
    *result, new_keys = step(index, rows, SPECS.get, first, arrival, batch_id)
    add = unimeter_native.DedupIndex.add_new_keys if native else python_add_new_keys
    add(index, arrival, new_keys)
    return tuple(result)


def _both(rows: list[EventRow], known: list[EventRow], batch_id: str) -> None:
    """Fill both indexes with ``known`` (through their own steps), then compare on ``rows``."""
    indexes = (DedupIndex(10**12), unimeter_native.DedupIndex(10**12))
    results = []
    for index in indexes:
        _dedup(index, known, 1, T, "")
        results.append(_dedup(index, rows, len(known) + 1, ARRIVAL, batch_id))
    python, native = results
    assert python == native  # offsets, duplicates, record bytes, stored rows, generations
    assert list(python[4]) == list(native[4])  # generations in the same order
    python_index, native_index = indexes
    assert python_index.to_snapshot() == native_index.to_snapshot()  # the same keys and offsets
    offsets, n_dups, record, stored, gens = python
    assert len(offsets) == len(rows) and len(stored) + n_dups == len(rows)
    if not stored and not batch_id:
        assert record is None
    else:
        back = decode_event_record(record)
        assert (back.first_offset, back.batch_id, back.n_requested) == (len(known) + 1, batch_id, len(rows))
        assert back.rows == tuple(tuple(r) for r in stored) and back.generations == gens


@settings(max_examples=300, deadline=None)
@given(rows_st, rows_st, batch_ids)
def test_random_batches_give_the_same_answers_keys_and_record_bytes(
    rows: list[EventRow], known: list[EventRow], batch_id: str
) -> None:
    _both(rows, known, batch_id)


def test_a_value_msgpack_cannot_hold_fails_the_same_way_before_anything_is_stored() -> None:
    row: EventRow = (1, "calls", 2**64, T, None, 1, "id")
    for index in (DedupIndex(10), unimeter_native.DedupIndex(10)):
        with pytest.raises(OverflowError, match="Integer value out of range"):
            _dedup(index, [row], 1, ARRIVAL, "")
        assert len(index) == 0


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
    native = unimeter_native.dedup_record(index, as_lists, SPECS.get, 1, ARRIVAL, "")
    assert native[:5] == python_dedup_record(DedupIndex(10**12), as_lists, SPECS.get, 1, ARRIVAL, "")[:5]


def test_an_unknown_metric_is_a_bug_not_a_silent_drop() -> None:
    row: EventRow = (1, "nope", 1, T, None, 1, "")
    with pytest.raises(AssertionError, match="validated before ingest"):
        python_dedup_record(DedupIndex(10), [row], SPECS.get, 1, ARRIVAL, "")
    with pytest.raises(AssertionError, match="validated before ingest"):
        unimeter_native.dedup_record(unimeter_native.DedupIndex(10), [row], SPECS.get, 1, ARRIVAL, "")


def test_the_engines_hold_their_own_parts() -> None:
    native = partition_engine("native")
    assert (PYTHON.name, native.name) == ("python", "native")
    assert (PYTHON.dedup_record, PYTHON.add_new_keys) == (python_dedup_record, python_add_new_keys)
    assert native.dedup_record is unimeter_native.dedup_record
    assert native.add_new_keys == unimeter_native.DedupIndex.add_new_keys
    assert (PYTHON.replay_keys, native.replay_keys) == (python_replay_keys, unimeter_native.replay_keys)
    with pytest.raises(ValueError, match="partition engine must be one of python, native"):
        partition_engine("auto")
