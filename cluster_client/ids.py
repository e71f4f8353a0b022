"""UUIDv7 event ids: time-ordered, random, generated before an event's first try."""

from __future__ import annotations

import os
import time

__all__ = ["uuid7"]


def uuid7() -> str:
    """A new RFC 9562 version-7 UUID as its canonical string."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 68 & 0xFFF) << 64
        | 0b10 << 62
        | rand & (1 << 62) - 1
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
