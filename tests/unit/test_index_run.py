"""Index runs (``node.index_run``, ``node.index_runs``): the file format round trips, and a
truncated, bit-flipped, foreign or other-version file is refused with a clear RunFormatError,
never read as other positions; a partition's runs, merged down to their bound, answer lookups
like a dict of everything handed to them."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.index_run import RUN_VERSION, IndexRun, RunColumns, RunFormatError, RunInfo, write_run
from node.index_runs import MAX_RUNS, IndexRuns

Keys = dict[tuple[int, int], list[int]]

_keys = st.dictionaries(
    st.tuples(st.integers(0, 2**64 - 1), st.integers(-(2**40), 2**40)),
    st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=5, unique=True).map(sorted),
    max_size=30,
)


def _columns(keys: Keys) -> RunColumns:
    columns = RunColumns.empty()
    for (account, hour), positions in sorted(keys.items()):
        columns.append(account, hour, positions)
    return columns


def _lookup(keys: Keys, account: int, first: int, last: int) -> list[tuple[int, list[int]]]:
    return sorted((h, p) for (a, h), p in keys.items() if a == account and first <= h <= last)


def _written(tmp: Path, keys: Keys, partition: int = 3) -> tuple[Path, RunInfo]:
    path = tmp / "run-0000000001.umx"
    return path, write_run(path, partition, _columns(keys))


@settings(max_examples=100, deadline=None)
@given(keys=_keys, probe=st.integers(-(2**40), 2**40))
def test_a_run_answers_every_lookup_like_the_dict_it_was_written_from(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, probe: int
) -> None:
    path, info = _written(tmp_path_factory.mktemp("run"), keys)
    run = IndexRun(path, 3, info)
    try:
        assert len(run) == len(keys)
        assert [(a, h, p.tolist()) for a, h, p in run.entries()] == [
            (a, h, p) for (a, h), p in sorted(keys.items())
        ]
        for account in {a for a, _ in keys} | {0, 2**64 - 1}:
            assert run.hours(account, -(2**62), 2**62) == _lookup(keys, account, -(2**62), 2**62)
            assert run.hours(account, probe, probe + 3) == _lookup(keys, account, probe, probe + 3)
    finally:
        run.close()


def test_the_layout_is_the_documented_one(tmp_path: Path) -> None:
    path, info = _written(tmp_path, {(7, 5): [1, 2], (9, -1): [3]})
    data = path.read_bytes()
    assert data[:8] == b"UMIDXRUN"
    assert struct.unpack_from("<IIQQ", data, 8) == (RUN_VERSION, 3, 2, 3)
    assert struct.unpack_from("<2Q2q2Q3Q", data, 32) == (7, 9, 5, -1, 2, 3, 1, 2, 3)
    assert info == RunInfo(path.name, len(data), struct.unpack_from("<I", data, len(data) - 4)[0])
    assert not list(tmp_path.glob("*.tmp"))


def test_every_truncation_is_refused(tmp_path: Path) -> None:
    path, _ = _written(tmp_path, {(7, 5): [1, 2], (9, -1): [3]})
    data = path.read_bytes()
    for n in range(len(data)):
        path.write_bytes(data[:n])
        with pytest.raises(RunFormatError, match=r"shorter than a header|not what its header counts"):
            IndexRun(path, 3)


def test_every_bit_flip_is_refused(tmp_path: Path) -> None:
    path, _ = _written(tmp_path, {(7, 5): [1, 2], (9, -1): [3]})
    data = path.read_bytes()
    for i in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            path.write_bytes(bytes(flipped))
            with pytest.raises(RunFormatError, match=r"index run run-0000000001\.umx: "):
                IndexRun(path, 3)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda d: b"NOTARUN!" + d[8:], "not an index run"),
        (lambda d: d[:8] + struct.pack("<I", RUN_VERSION + 1) + d[12:], "version 2 is not 1"),
    ],
)
def test_another_format_or_version_is_named(tmp_path: Path, change: object, error: str) -> None:
    path, _ = _written(tmp_path, {(7, 5): [1]})
    assert callable(change)
    path.write_bytes(change(path.read_bytes()))
    with pytest.raises(RunFormatError, match=error):
        IndexRun(path, 3)


def test_another_partitions_run_or_another_file_than_listed_is_refused(tmp_path: Path) -> None:
    path, info = _written(tmp_path, {(7, 5): [1]})
    with pytest.raises(RunFormatError, match="of partition 3, not 4"):
        IndexRun(path, 4)
    with pytest.raises(RunFormatError, match="not the file the snapshot lists"):
        IndexRun(path, 3, RunInfo(info.name, info.size, info.crc ^ 1))
    IndexRun(path, 3, info).close()


@settings(max_examples=40, deadline=None)
@given(
    handed=st.lists(
        st.lists(st.tuples(st.integers(1, 4), st.integers(0, 6)), min_size=1, max_size=8), max_size=20
    )
)
def test_runs_merged_to_their_bound_answer_like_everything_handed_over(
    tmp_path_factory: pytest.TempPathFactory, handed: list[list[tuple[int, int]]]
) -> None:
    """Each hand-over's positions are past every earlier one's (as the log's are)."""
    runs = IndexRuns(tmp_path_factory.mktemp("index"), 0)
    model: Keys = {}
    position = 0
    try:
        for keys in handed:
            columns: Keys = {}
            for key in keys:
                position += 1
                columns.setdefault(key, []).append(position)
                model.setdefault(key, []).append(position)
            asyncio.run(runs.add(_columns(columns)))
            asyncio.run(runs.compact())
            runs.delete_retired()
            assert len(runs) <= MAX_RUNS
            assert len(list(runs.directory.iterdir())) == len(runs)
            for account in range(6):
                assert runs.joined(account, 0, 9, []) == _lookup(model, account, 0, 9)
                assert runs.joined(account, 2, 3, [(3, [10**9])]) == [
                    (h, [*p, 10**9] if h == 3 else p) for h, p in _lookup(model, account, 2, 3)
                ] + ([] if (account, 3) in model else [(3, [10**9])])
        reopened = IndexRuns(runs.directory, 0)
        reopened.load(runs.listed())
        assert all(reopened.joined(a, 0, 9, []) == _lookup(model, a, 0, 9) for a in range(6))
        reopened.close()
    finally:
        runs.close()
