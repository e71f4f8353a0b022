"""Snapshot data that is captured at once but packed in slices, so a snapshot never stalls the loop.

A snapshot must describe one log position, so the state is captured in one go on the event loop.
Capturing takes only what later ingestion would change, cheaply: key lists, ``bytes`` of arrays,
and for the aggregate cells nothing at all (they are copy-on-write while their snapshot packs:
``SeriesStore.to_snapshot``). The costly part, turning the state into msgpack-safe columns (keys
past 64 bits split, huge sums as strings) and packing them, is wrapped in :class:`Deferred` and
:class:`Chunked` values and runs later, in slices between which the loop serves requests. At a few
million events a partition's snapshot went from one 35-45 ms stall to stalls of a few ms.

Captured data is plain msgpack data (dicts, lists, ints, strings, bytes) in which any value may be a
:class:`Deferred` or :class:`Chunked`. :func:`pack_in_slices` packs it on the loop; :func:`pack`
packs it in one call (tests, tools). Both give the same bytes, which ``msgpack.unpackb`` reads back
as plain data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgpack

__all__ = ["Chunked", "Deferred", "Piece", "pack", "pack_in_slices"]

_CHUNK = 4096  # elements of a plain list packed per step
_FIRST_CHUNK = 1  # elements of a column's first chunk, before what an element costs is known
_CHUNK_SECONDS = 0.0005  # loop time a column's chunk is sized to take: a quarter of a slice
_STRUCTURE = 64  # lists up to this long are walked element by element, longer ones packed in chunks
_SHARED_BYTES = 4096  # bytes values longer than this become pieces of their own, not copied
_SLICE_SECONDS = 0.002  # loop time a packing step may take before it yields
_HEADER = msgpack.Packer()

Piece = bytes | memoryview
"""A piece of a packed snapshot: packed bytes, or a captured column shared as it is (the native
engine's are ``memoryview``s of memory kept from one capture to the next)."""


class Deferred:
    """A value computed when it is packed, from copies taken at capture time."""

    __slots__ = ("_args", "_fn")

    def __init__(self, fn: Callable[..., object], *args: Any) -> None:
        self._fn = fn
        self._args = args

    def __call__(self) -> object:
        return self._fn(*self._args)


class Chunked:
    """A long list whose elements are computed a chunk at a time, as each chunk is packed:
    ``chunk(lo, hi)`` returns elements ``lo`` to ``hi`` of ``length``. A column read from live
    state under copy-on-write (see ``SeriesStore.to_snapshot``) is one: nothing is copied at
    capture, and each chunk reads the values as they were then.

    How many elements a chunk takes is measured, not declared: an element may be a cell or an
    account with a hundred thousand event positions, so :func:`pack_in_slices` times each chunk
    and sizes the next to take about ``_CHUNK_SECONDS``. (A fixed 4,096 accounts a chunk packed
    a partition's whole event index in one step: stalls of 9 ms on average and 81 ms at most in a
    snapshot round after 15 M events, where a slice is meant to take 2 ms.)

    With ``packed``, ``chunk`` returns those elements already packed (their msgpack bytes, one
    after the other, without the list's header): the native engine's stores pack their cells
    themselves, to the bytes msgpack gives the same elements, instead of making Python objects
    of them to be packed here."""

    __slots__ = ("chunk", "length", "packed")

    def __init__(self, length: int, chunk: Callable[[int, int], Any], *, packed: bool = False) -> None:
        self.length = length
        self.chunk = chunk
        self.packed = packed


def _resolve(value: object) -> object:
    if isinstance(value, Deferred):
        return value()
    if isinstance(value, Chunked):
        elements = value.chunk(0, value.length)
        if value.packed:  # read back, to be packed again by msgpack to the same bytes
            return msgpack.unpackb(_HEADER.pack_array_header(value.length) + elements, strict_map_key=False)
        return elements
    raise TypeError(f"cannot pack {type(value).__name__} in a snapshot")


def pack(data: object) -> bytes:
    """``data`` as msgpack, in one call."""
    return msgpack.packb(data, default=_resolve)  # type: ignore[no-any-return]


Crc32 = Callable[[Any, int], int]
"""``zlib.crc32(data, value)``, or the native engine's ``unimeter_native.crc32`` (the same numbers)."""


async def pack_in_slices(data: object, *, crc32_trailer: Crc32 | None = None) -> list[Piece]:
    """``data`` as msgpack (the bytes :func:`pack` gives), yielding to the loop every few ms; with
    ``crc32_trailer`` (a CRC-32 function), followed by the CRC-32 of those bytes (4 bytes, little
    endian), computed a piece at a time so that a large snapshot does not stall the loop. Returned
    as the pieces they were packed in, not joined: a file takes them one after the other without a
    second copy of the whole in memory."""
    packing = _SlicedPacking()
    await packing.walk(data)
    out = packing.out
    if crc32_trailer is not None:
        crc = 0
        for piece in out:
            crc = crc32_trailer(piece, crc)
            await packing.step_done()
        out.append(crc.to_bytes(4, "little"))
    return out


class _SlicedPacking:
    """One :func:`pack_in_slices` call's state: the packed pieces so far and the current slice.

    A class, not closures: a recursive nested function is a reference cycle (the function, its
    closure cell, the function again) that kept ``out``, every piece of the snapshot, alive until
    the cyclic garbage collector's next full collection. The node snapshots its partitions one
    after another, so each round's snapshots piled up in memory (+100-250 MiB for the whole
    round at the soak's shape, docs/reliability.md "Snapshot memory"); without a cycle they are
    freed when the call returns."""

    __slots__ = ("out", "packer", "step_started")

    def __init__(self) -> None:
        self.packer = msgpack.Packer(default=_resolve)
        self.out: list[Piece] = []
        self.step_started = time.perf_counter()

    async def step_done(self) -> None:
        if time.perf_counter() - self.step_started >= _SLICE_SECONDS:
            await asyncio.sleep(0)
            self.step_started = time.perf_counter()

    async def walk(self, value: object) -> None:
        out, packer = self.out, self.packer
        if isinstance(value, Deferred):
            value = value()
            await self.step_done()
        if isinstance(value, Chunked):
            out.append(packer.pack_array_header(value.length))
            lo, step = 0, _FIRST_CHUNK
            while lo < value.length:
                hi = min(lo + step, value.length)
                started = time.perf_counter()
                elements = value.chunk(lo, hi)
                out.append(elements if value.packed else _pack_items(packer, elements))
                step = _next_step(step, time.perf_counter() - started)
                lo = hi
                await self.step_done()
        elif isinstance(value, dict):
            out.append(packer.pack_map_header(len(value)))
            for key, item in value.items():
                await self.walk(key)
                await self.walk(item)
        elif isinstance(value, list | tuple) and len(value) <= _STRUCTURE:
            # Short lists are the structure around columns: walk them for Deferred values.
            out.append(packer.pack_array_header(len(value)))
            for item in value:
                await self.walk(item)
        elif isinstance(value, list | tuple):
            # Long lists are columns of leaves: pack them a chunk at a time.
            out.append(packer.pack_array_header(len(value)))
            for i in range(0, len(value), _CHUNK):
                out.append(_pack_items(packer, value[i : i + _CHUNK]))
                await self.step_done()
        elif isinstance(value, bytes | memoryview) and len(value) > _SHARED_BYTES:
            # Captured columns (the dedup table's) go out as they are, not copied into a packed
            # piece: the snapshot holds them once, not twice, until it is written. (The native
            # engine's are memoryviews of one byte an element: their length is their size.)
            out.append(_bin_header(len(value)))
            out.append(value)
        else:
            out.append(packer.pack(value))


def _next_step(step: int, took: float) -> int:
    """Elements for the chunk after one of ``step`` elements that took ``took`` seconds: sized to
    take ``_CHUNK_SECONDS``, at least one, and at most twice as many (a chunk too quick to time
    well says little about the next)."""
    if took <= 0:
        return step * 2
    return max(1, min(step * 2, int(step * _CHUNK_SECONDS / took)))


def _bin_header(n: int) -> bytes:
    """The msgpack bin header the packer writes before ``n`` bytes (the smallest that fits)."""
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _pack_items(packer: msgpack.Packer, items: list[object] | tuple[object, ...]) -> bytes:
    """The packed elements of ``items`` without the array header (one C call for all of them)."""
    packed: bytes = packer.pack(items)  # a slice already: tuples pack as arrays too
    n = len(items)
    header = 1 if n < 16 else 3 if n < 1 << 16 else 5
    return packed[header:]
