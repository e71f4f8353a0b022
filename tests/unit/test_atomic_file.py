"""Files replaced whole (``node/atomic_file.py``): the bytes land as given whatever the pieces'
sizes, and the file is written back a slice at a time as it goes, so that no more than a slice of
it is ever dirty when the logs' ``syncfs`` runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import atomic_file, filesystem_sync
from node.atomic_file import WRITE_BACK_BYTES, write_file_atomically

SLICE = 16


def record_write_backs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Make files go in slices of ``SLICE`` bytes, and record the (offset, length) ranges that
    would be written back instead of writing them back."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(atomic_file, "WRITE_BACK_BYTES", SLICE)

    def record(fd: int, offset: int, length: int) -> None:
        assert os.fstat(fd).st_size >= offset + length  # the range is in the file already
        calls.append((offset, length))

    monkeypatch.setattr(atomic_file, "write_back", record)
    return calls


@pytest.fixture
def written_back(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    return record_write_backs(monkeypatch)


def test_every_full_slice_is_written_back_in_order(
    tmp_path: Path, written_back: list[tuple[int, int]]
) -> None:
    pieces: list[bytes | memoryview] = [b"a" * 10, memoryview(b"b" * 40), b"", b"c" * 5]
    write_file_atomically(tmp_path / "f", *pieces)
    assert (tmp_path / "f").read_bytes() == b"a" * 10 + b"b" * 40 + b"c" * 5
    # 55 bytes: each full slice of 16 is written back once it is written; the 7 bytes after the
    # last are left to the fsync.
    assert written_back == [(0, 16), (16, 16), (32, 16)]
    assert not (tmp_path / "f.tmp").exists()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=70), max_size=6))
def test_the_file_holds_the_pieces_whatever_their_sizes(
    tmp_path_factory: pytest.TempPathFactory, pieces: list[bytes]
) -> None:
    path = tmp_path_factory.mktemp("atomic") / "f"
    with pytest.MonkeyPatch.context() as monkeypatch:  # hypothesis runs examples in one test call
        calls = record_write_backs(monkeypatch)
        write_file_atomically(path, *pieces)
    data = b"".join(pieces)
    assert path.read_bytes() == data
    assert calls == [(start, SLICE) for start in range(0, len(data) - SLICE + 1, SLICE)]


def test_write_back_leaves_a_real_file_intact(tmp_path: Path) -> None:
    data = os.urandom(3 * WRITE_BACK_BYTES + 123)
    write_file_atomically(tmp_path / "snapshot", data)  # the real sync_file_range where there is one
    assert (tmp_path / "snapshot").read_bytes() == data
    with open(tmp_path / "snapshot", "rb+") as f:
        filesystem_sync.write_back(f.fileno(), 0, len(data))
