"""Byte-level damage for fuzzing: random bytes, truncations, bit flips, overwrites and splices.

Every mutator takes a ``random.Random`` so that the same function serves hypothesis (which hands a
seeded Random and can replay it) and the long ``make fuzz`` loop (which runs a plain seeded one).
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["MUTATIONS", "damage", "random_bytes"]


def random_bytes(rng: random.Random, max_len: int = 256) -> bytes:
    """Up to ``max_len`` uniformly random bytes (often short, sometimes empty)."""
    return rng.randbytes(rng.choice((0, 1, 4, 5, rng.randrange(max_len + 1))))


def _flip_bits(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 8))):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def _overwrite(rng: random.Random, data: bytes) -> bytes:
    start = rng.randrange(len(data))
    n = min(len(data) - start, rng.choice((1, 2, 4, 8, 64)))
    return data[:start] + rng.randbytes(n) + data[start + n :]


def _zero_fill(rng: random.Random, data: bytes) -> bytes:
    # What a filesystem shows after a crash that lost the data of allocated blocks.
    start = rng.randrange(len(data))
    n = min(len(data) - start, rng.choice((1, 16, 4096)))
    return data[:start] + bytes(n) + data[start + n :]


def _insert(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.choice((1, 4, 17))) + data[i:]


def _delete(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.choice((1, 4, 17)) :]


MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "flip": _flip_bits,
    "truncate": _truncate,
    "overwrite": _overwrite,
    "zero": _zero_fill,
    "insert": _insert,
    "delete": _delete,
}
"""Every damage kind by name; each takes non-empty data."""


def damage(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """``(kind, damaged copy)`` of non-empty ``data`` by one randomly chosen mutation."""
    kind = rng.choice(sorted(MUTATIONS))
    return kind, MUTATIONS[kind](rng, data)
