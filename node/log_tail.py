"""The tail of a segment log: the records appended since its last round, and where the next goes.

``SegmentLog`` (node/segment_log.py) owns one and keeps in it everything about positions past what
its rounds have taken: the appended frames, the end, the fill of the last segment and the
segments the buffered records start. The native engine has the same object in Rust
(``unimeter_native.LogTail``, native/src/py_log_tail.rs), which a partition part's ingest appends
its record to without a Python call and without making a ``bytes`` of it; this class is its
reference, and the Python engine's. Both keep the same numbers, and a test holds them together.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["LogTail", "Tail"]


class Tail(Protocol):
    """What ``SegmentLog`` asks of a tail (this module's ``LogTail`` or the extension's)."""

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...

    @property
    def seg_fill(self) -> int: ...

    @property
    def pending_bases(self) -> list[int]: ...

    refusing: bool

    def append(self, frame: bytes) -> int: ...

    def detach(self) -> tuple[bytes, int, int, list[int]]: ...

    def buffered(self) -> bytes: ...

    def cut(self, position: int) -> bytes: ...

    def reset(self, position: int, seg_fill: int) -> None: ...


class LogTail:
    """The records appended since the last round, as the frames their callers made: a round joins
    them once. (Appended to one ``bytearray`` instead, a round's few records of ~1 KiB reallocated
    it at every append: docs/benchmarks-history.md, "Position lists in chained cache lines".)"""

    __slots__ = ("_frames", "end", "pending_bases", "refusing", "seg_fill", "segment_bytes", "start")

    def __init__(self, end: int, seg_fill: int, segment_bytes: int) -> None:
        self._frames: list[bytes] = []
        self.start = end
        """Global position of the first buffered byte."""
        self.end = end
        """Where the next record goes."""
        self.seg_fill = seg_fill
        """Bytes in the last (logical) segment: on disk and buffered."""
        self.segment_bytes = segment_bytes
        self.pending_bases: list[int] = []
        """Segments the buffered records start, whose files do not exist yet."""
        self.refusing = False
        """Set by the log once it is closed or failed: an append must go through the log, which
        raises (the native ingest checks it before appending on its own)."""

    def append(self, frame: bytes) -> int:
        """Buffer one framed record; its position. A record that does not fit the last segment's
        room starts a new segment (unless that segment is empty: a record larger than a segment
        has one of its own)."""
        size = len(frame)
        position = self.end
        fill = self.seg_fill
        if fill and fill + size > self.segment_bytes:
            self.pending_bases.append(position)
            fill = 0
        self.seg_fill = fill + size
        self.end = position + size
        self._frames.append(frame)
        return position

    def detach(self) -> tuple[bytes, int, int, list[int]]:
        """``(data, start, end, new_bases)``: the buffered records as one block, from where to
        where, and the segments they start. The tail is empty afterwards, starting at ``end``."""
        data, start, end, bases = b"".join(self._frames), self.start, self.end, self.pending_bases
        self._frames = []
        self.start = end
        if bases:
            self.pending_bases = []
        else:
            bases = []
        return data, start, end, bases

    def buffered(self) -> bytes:
        """The buffered records as one block (for a read or a cut of what is not written yet,
        which are rare; kept joined until the next append)."""
        frames = self._frames
        if len(frames) > 1:
            frames[:] = [b"".join(frames)]
        return frames[0] if frames else b""

    def cut(self, position: int) -> bytes:
        """Drop the buffered records at and after ``position`` (everything if it is before
        :attr:`start`); what is kept, which now ends the log."""
        kept = b""
        if position >= self.start:
            kept = self.buffered()[: position - self.start]
            self.pending_bases = [b for b in self.pending_bases if b < position]
        else:
            self.pending_bases = []
        self._frames = [kept] if kept else []
        self.end = self.start + len(kept)
        return kept

    def reset(self, position: int, seg_fill: int) -> None:
        """Empty, with everything before ``position`` written, and ``seg_fill`` bytes in the last
        segment."""
        self._frames = []
        self.pending_bases = []
        self.start = self.end = position
        self.seg_fill = seg_fill
