"""The answer of an ingest call on the native engine against its Python reference.

``unimeter_native.request_offsets`` against ``cluster_client.client.request_offsets``: a
request's offsets put back in request order from its partitions' outcomes. For random splits of a
request (partitions in any order, duplicates pointing at earlier offsets) both give the same list
and duplicate count, whether the indexes and offsets come as lists, tuples or ``UintList``s (the
native engine's; its placer answers one); an outcome with too few or too many offsets, or outcomes
that do not cover the request, are a ValueError on both, which ``Client.ingest_partitioned``
answers as INTERNAL.

``unimeter_native.encode_ingest_response``: the bytes protobuf's serializer writes for the same
``IngestResponse``, for any counts and offsets, given as a list or a ``UintList``. And through the
client core, a node whose answer does not fit the request fails the call as INTERNAL with either
placer. Collected only where the extension is built (tests/conftest.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import unimeter_native
from hypothesis import given, settings
from hypothesis import strategies as st
from unimeter_native import UintList

from cluster_client import AggType, Client, Metric
from cluster_client.client import request_offsets
from cluster_client.errors import InternalError
from cluster_client.node_api import IngestOutcome
from cluster_client.partitioning import partition_of
from node.node import Node, NodeConfig
from unimeter.v1 import ingest_service_pb2

PLACERS = [request_offsets, unimeter_native.request_offsets]
T = 1_772_323_200 * 10**9


def _split(partition_of: list[int], seed: int) -> tuple[dict, dict, list[int]]:
    """``(by_partition, outcomes, expected offsets)`` of a request whose event ``i`` goes to
    partition ``partition_of[i]``; some events answered as duplicates of an earlier offset."""
    rng = random.Random(seed)
    by_partition: dict[int, tuple[list[object], list[int]]] = {}
    for i, p in enumerate(partition_of):
        by_partition.setdefault(p, ([], []))[1].append(i)
    expected = [0] * len(partition_of)
    outcomes = {}
    for p in rng.sample(sorted(by_partition), len(by_partition)):
        offsets, n_dup, next_offset = [], 0, rng.randrange(1, 2**64 - 2000)
        for i in by_partition[p][1]:
            if offsets and rng.random() < 0.2:
                offsets.append(rng.choice(offsets))
                n_dup += 1
            else:
                offsets.append(next_offset)
                next_offset += 1
            expected[i] = offsets[-1]
        outcomes[p] = IngestOutcome(offsets, n_dup)
    return by_partition, outcomes, expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 70), max_size=300), st.integers(0, 2**32))
def test_both_put_every_offset_at_its_request_index(partition_of: list[int], seed: int) -> None:
    by_partition, outcomes, expected = _split(partition_of, seed)
    n_dup = sum(o.n_duplicates for o in outcomes.values())
    # Lists (the python engine's and a remote owner's), UintLists (the native engine's, read in
    # place natively), other sequences, and a mix of them in one request.
    as_tuples = {p: (rows, tuple(indexes)) for p, (rows, indexes) in by_partition.items()}
    native = {p: (rows, UintList(indexes)) for p, (rows, indexes) in by_partition.items()}
    native_outcomes = {p: IngestOutcome(UintList(o.offsets), o.n_duplicates) for p, o in outcomes.items()}
    mixed = {p: native[p] if p % 2 else by_partition[p] for p in by_partition}
    for place in PLACERS:
        for split, answers in [
            (by_partition, outcomes),
            (as_tuples, outcomes),
            (native, native_outcomes),
            (mixed, native_outcomes),
            (native, outcomes),
        ]:
            assert place(len(partition_of), split, answers) == (expected, n_dup)
    placed, _ = unimeter_native.request_offsets(len(partition_of), native, native_outcomes)
    assert isinstance(placed, UintList)
    assert list(placed) == expected


@pytest.mark.parametrize("place", PLACERS, ids=["python", "native"])
def test_an_answer_that_does_not_fit_the_request_is_a_value_error(place: object) -> None:
    by_partition, outcomes, _ = _split([0, 1, 1, 2], seed=1)
    short = {**outcomes, 1: IngestOutcome([5], 0)}
    with pytest.raises(ValueError, match="partition 1 answered 1 offsets for 2 events"):
        place(4, by_partition, short)  # type: ignore[operator]
    missing = {p: o for p, o in outcomes.items() if p != 2}
    with pytest.raises(ValueError, match="answered for 3 of the request's 4 events"):
        place(4, by_partition, missing)  # type: ignore[operator]


def test_an_answer_of_other_than_unsigned_ints_is_a_value_error_natively() -> None:
    by_partition, outcomes, _ = _split([0, 1, 1, 2], seed=1)
    negative = {**outcomes, 1: IngestOutcome([5, -1], 0)}
    with pytest.raises(ValueError, match="partition 1's offsets are not unsigned ints"):
        unimeter_native.request_offsets(4, by_partition, negative)
    texts = {**by_partition, 2: ([], ["3"])}
    with pytest.raises(ValueError, match="partition 2's request indexes are not unsigned ints"):
        unimeter_native.request_offsets(4, texts, outcomes)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.lists(st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1)), max_size=200),
)
def test_the_response_bytes_are_protobufs(stored: int, duplicates: int, offsets: list[int]) -> None:
    expected = ingest_service_pb2.IngestResponse(n_stored=stored, n_duplicates=duplicates, offsets=offsets)
    encoded = unimeter_native.encode_ingest_response(stored, duplicates, offsets)
    assert encoded == expected.SerializeToString()
    assert unimeter_native.encode_ingest_response(stored, duplicates, UintList(offsets)) == encoded
    assert ingest_service_pb2.IngestResponse.FromString(encoded) == expected


class _ShortAnswers:
    """A node whose ingest answers one offset too few for its first part (a bug's shape)."""

    def __init__(self, node: object) -> None:
        self._node = node

    def __getattr__(self, name: str) -> object:
        return getattr(self._node, name)

    async def ingest(self, parts: object, sync: bool, batch_id: str, *, validated: bool = False) -> list:
        outcomes = await self._node.ingest(parts, sync, batch_id, validated=validated)  # type: ignore[attr-defined]
        first = outcomes[0]
        return [IngestOutcome(first.offsets[:-1], first.n_duplicates), *outcomes[1:]]


@pytest.mark.parametrize("place", PLACERS, ids=["python", "native"])
async def test_a_node_answer_that_does_not_fit_the_request_is_internal(tmp_path: Path, place: object) -> None:
    node = Node(NodeConfig(tmp_path / "data", partitions=4))
    await node.start()
    try:
        client = await Client.in_process(_ShortAnswers(node), metric_lookup=node.metric_of)  # type: ignore[arg-type]
        await client.metrics.create(Metric("calls", AggType.SUM))
        rows = [(1, "calls", 1, T, None, 1, "a"), (1, "calls", 1, T, None, 1, "b")]
        by_partition = {partition_of(1, 4): (rows, [0, 1])}
        with pytest.raises(InternalError, match=r"answered 1 offsets for 2 events"):
            await client.ingest_partitioned(by_partition, 2, sync=False, place_offsets=place)  # type: ignore[arg-type]
    finally:
        await node.close()
