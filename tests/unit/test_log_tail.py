"""The extension's ``LogTail`` against ``node.log_tail.LogTail``: random programs of appends, rounds
taken, reads, cuts and resets give both the same positions, segment starts, blocks and state; and
a record the native ingest writes straight into a tail is the frame ``SegmentLog.append`` makes of
the same payload. Collected only where the extension is built (tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest
import unimeter_native
from hypothesis import given, settings
from hypothesis import strategies as st

from node.log_tail import LogTail
from node.segment_log import SegmentLog

SEGMENT = 200

_frames = st.binary(min_size=1, max_size=150)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), _frames),
        st.tuples(st.just("detach"), st.none()),
        st.tuples(st.just("buffered"), st.none()),
        st.tuples(st.just("cut"), st.integers(0, 400)),
        st.tuples(st.just("reset"), st.integers(0, 50)),
        st.tuples(st.just("refuse"), st.booleans()),
    ),
    max_size=60,
)


def _state(tail: Any) -> tuple[object, ...]:
    return tail.start, tail.end, tail.seg_fill, list(tail.pending_bases), tail.refusing, tail.buffered()


@settings(max_examples=300, deadline=None)
@given(start=st.integers(0, 1000), fill=st.integers(0, SEGMENT), ops=_ops)
def test_both_tails_keep_the_same_state(start: int, fill: int, ops: list[tuple[str, Any]]) -> None:
    tails = [LogTail(start, fill, SEGMENT), unimeter_native.LogTail(start, fill, SEGMENT)]
    for op, arg in ops:
        if op == "append":
            answers = [tail.append(arg) for tail in tails]
        elif op == "detach":
            answers = [tail.detach() for tail in tails]
        elif op == "buffered":
            answers = [tail.buffered() for tail in tails]
        elif op == "cut":
            # A cut lands on a record start, the end, or before the buffer, as the log asks for.
            python = tails[0]
            position = max(0, python.start - arg) if arg % 3 == 0 else min(python.start + arg, python.end)
            answers = [tail.cut(position) for tail in tails]
        elif op == "reset":
            position = tails[0].end + arg
            for tail in tails:
                tail.reset(position, arg)
            answers = []
        else:
            for tail in tails:
                tail.refusing = arg
            answers = []
        if answers:
            assert answers[0] == answers[1], op
        assert _state(tails[0]) == _state(tails[1]), op


@pytest.mark.parametrize("size", [1, 60, 500])
def test_a_native_record_is_the_frame_append_makes(tmp_path: Any, size: int) -> None:
    """``SegmentLog.append`` through each tail, and the frame it makes, read back alike."""
    payload = bytes(range(256)) * (size // 256 + 1)
    logs = [
        SegmentLog.open(tmp_path / name, segment_bytes=SEGMENT, new_tail=new_tail)
        for name, new_tail in (("python", LogTail), ("native", unimeter_native.LogTail))
    ]
    try:
        positions = [[log.append(payload[:size]) for _ in range(3)] for log in logs]
        assert positions[0] == positions[1]
        assert logs[0].tail.buffered() == logs[1].tail.buffered()
        assert [log.read(positions[0][2]) for log in logs] == [payload[:size]] * 2
    finally:
        for log in logs:
            log.close_sync()
