"""Snapshot data packed in slices: the same bytes as one call, with the loop served in between."""

from __future__ import annotations

import asyncio
import gc
import time
import zlib

import msgpack
import pytest

from node.aggregation import snapshot_data
from node.aggregation.snapshot_data import Chunked, Deferred, pack, pack_in_slices


def _data() -> dict[str, object]:
    cells = [[i, i * 3, 2**63 - i, -(2**63) + i, 0, i] for i in range(10_000)]
    return {
        "v": 1,
        "small": [1, "two", b"three", None, [4, [5]], {"k": [6]}],
        "levels": [[Deferred(lambda: [list(range(5000)), cells]), Deferred(list, (1, 2, 3))]],
        "ints": list(range(20_000)),
        "bytes": bytes(range(256)) * 100,
        "empty": [],
        "short": list(range(15)) + list(range(40)),
    }


async def test_slices_give_exactly_the_bytes_of_one_call_and_read_back_as_plain_data() -> None:
    sliced = b"".join(await pack_in_slices(_data()))
    assert sliced == pack(_data())
    back = msgpack.unpackb(sliced)
    assert back["levels"][0][1] == [1, 2, 3]
    assert back["levels"][0][0][1][9_999] == [9_999, 29_997, 2**63 - 9_999, -(2**63) + 9_999, 0, 9_999]
    assert back["ints"] == list(range(20_000)) and back["empty"] == []


@pytest.mark.parametrize("n", [0, 1, 15, 16, 4095, 4096, 4097, 65_535, 65_536, 70_000])
async def test_chunk_boundaries_and_array_header_sizes(n: int) -> None:
    data = {"column": [[i, -i] for i in range(n)], "ints": list(range(n))}
    assert b"".join(await pack_in_slices(data)) == pack(data)


def contiguous(asked: list[tuple[int, int]], n: int) -> bool:
    """Whether the chunks asked for cover elements 0 to ``n`` in order, each once, none empty."""
    if not asked:
        return n == 0
    starts = [lo for lo, _ in asked]
    ends = [hi for _, hi in asked]
    return starts == [0, *ends[:-1]] and all(lo < hi for lo, hi in asked) and ends[-1] == n


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 4097, 70_000])
async def test_a_chunked_column_is_computed_chunk_by_chunk_and_packs_like_a_list(n: int) -> None:
    asked: list[tuple[int, int]] = []

    def chunk(lo: int, hi: int) -> list[object]:
        asked.append((lo, hi))
        return [[i, str(i)] for i in range(lo, hi)]

    sliced = b"".join(await pack_in_slices({"column": Chunked(n, chunk), "chunks": Deferred(len, asked)}))
    assert contiguous(asked, n)
    assert asked[:1] == ([(0, 1)] if n else [])  # before an element's cost is known: one
    # A Deferred after the column is resolved once every chunk was computed.
    assert msgpack.unpackb(sliced) == {"column": [[i, str(i)] for i in range(n)], "chunks": len(asked)}
    assert pack({"column": Chunked(n, chunk)}) == pack({"column": [[i, str(i)] for i in range(n)]})


@pytest.mark.parametrize("n", [0, 1, 15, 16, 4097, 70_000])
async def test_a_packed_column_goes_out_as_its_chunks_bytes_and_packs_like_a_list(n: int) -> None:
    # The native stores' chunks: each element already packed, the list's header left out.
    rows = [[i, -i, 2**64 - 1 - i, str(i)] for i in range(n)]

    def chunk(lo: int, hi: int) -> bytes:
        return b"".join(msgpack.packb(row) for row in rows[lo:hi])

    plain = pack({"column": rows})
    assert b"".join(await pack_in_slices({"column": Chunked(n, chunk, packed=True)})) == plain
    assert pack({"column": Chunked(n, chunk, packed=True)}) == plain


CHEAP, DEAR = 0.00001, 0.002


@pytest.mark.parametrize(
    ("costs", "overshoots"),
    [([CHEAP] * 5000, 0), ([DEAR] * 40, 0), ([CHEAP] * 3000 + [DEAR / 5] * 200 + [CHEAP] * 3000, 2)],
)
async def test_a_column_s_chunks_are_sized_by_what_its_elements_cost(
    costs: list[float], overshoots: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However much an element costs, a chunk takes about ``_CHUNK_SECONDS`` (on a clock only the
    elements move here): never over twice that beyond one element, so a slice never holds the
    loop much past its 2 ms. Where the cost jumps, two chunks overshoot: the one across the jump,
    and the next, sized by the average of cheap and dear elements; the one after is right."""
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    took: list[float] = []
    asked: list[tuple[int, int]] = []

    def chunk(lo: int, hi: int) -> list[int]:
        asked.append((lo, hi))
        spent = sum(costs[lo:hi])
        now[0] += spent
        took.append(spent)
        return list(range(lo, hi))

    packed = b"".join(await pack_in_slices({"column": Chunked(len(costs), chunk)}))
    assert packed == pack({"column": list(range(len(costs)))})
    assert contiguous(asked, len(costs))
    budget = snapshot_data._CHUNK_SECONDS
    over = [t for t, (lo, hi) in zip(took, asked, strict=True) if t > 2 * budget + max(costs[lo:hi])]
    assert len(over) == overshoots
    if not overshoots:  # and not needlessly small: once sized, a chunk takes over a quarter of it
        sized = [t for t, (lo, hi) in zip(took, asked, strict=True) if lo >= 64 and hi < len(costs)]
        assert all(t >= budget / 4 for t in sized)


async def test_the_loop_runs_between_slices() -> None:
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await pack_in_slices({"cells": [[i, i, i, i, i, i] for i in range(400_000)]})
    done = True
    await task
    assert ticks - before > 3


def test_unknown_objects_are_refused() -> None:
    with pytest.raises(TypeError, match="cannot pack object"):
        pack({"x": object()})


async def test_packing_leaves_no_cyclic_garbage() -> None:
    """Every piece of a packed snapshot is freed when the call returns, not at the garbage
    collector's next full collection: a reference cycle in the packer kept whole snapshots in
    memory until then (docs/reliability.md, "Snapshot memory")."""
    gc.collect()
    gc.disable()
    try:
        packed = b"".join(await pack_in_slices(_data(), crc32_trailer=zlib.crc32))
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert packed[:-4] == pack(_data())


@pytest.mark.parametrize("n", [0, 255, 256, 4096, 4097, 65_535, 65_536, 70_000])
async def test_long_bytes_are_pieces_of_their_own_with_the_packers_header(n: int) -> None:
    column = bytes(range(256)) * (n // 256) + bytes(n % 256)
    data = {"dedup": ["tag", column, 7], "after": b"x" * 10}
    pieces = await pack_in_slices(data, crc32_trailer=zlib.crc32)
    assert b"".join(pieces)[:-4] == pack(data) == msgpack.packb(data)
    # A long column is not copied: the very object is one of the pieces.
    assert any(piece is column for piece in pieces) == (n > 4096)
