"""The metric registry file (``metrics.msgpack``): versioned and checksummed, so a damaged file is
refused in one clear line instead of read as wrong metric definitions; files from before the
version (no ``"v"``, no checksum) are read and rewritten in the current version on the next change.
"""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_client import AggType, AlertThreshold, Metric
from cluster_client.wire import metric_to_wire
from node.metric_registry import (
    REGISTRY_FILE_VERSION,
    FileMetricRegistry,
    decode_registry_file,
    encode_registry_file,
)
from tests.crash.test_one_server_per_data_directory import serve_refused

METRICS = [
    Metric(
        "api.calls", AggType.SUM, thresholds=(AlertThreshold("every-50", 50, True),), create_time_unix_nano=7
    ),
    Metric("seats", AggType.COUNT_UNIQUE, create_time_unix_nano=9),
]
FILE = encode_registry_file(9, METRICS)


def test_the_file_round_trips_with_its_version_and_a_crc_trailer() -> None:
    assert decode_registry_file(FILE) == (9, METRICS)
    body = FILE[:-4]
    assert msgpack.unpackb(body)["v"] == REGISTRY_FILE_VERSION
    assert FILE[-4:] == zlib.crc32(body).to_bytes(4, "little")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_damage_is_refused_never_decoded_as_other_metrics(data: st.DataObject) -> None:
    damaged = bytearray(FILE)
    kind = data.draw(st.sampled_from(["flip", "truncate", "garbage"]))
    if kind == "flip":
        for position in data.draw(
            st.lists(st.integers(0, len(FILE) * 8 - 1), min_size=1, max_size=4, unique=True)
        ):
            damaged[position // 8] ^= 1 << (position % 8)
    elif kind == "truncate":
        del damaged[data.draw(st.integers(0, len(FILE) - 1)) :]
    else:
        damaged = bytearray(data.draw(st.binary(max_size=200)))
    with pytest.raises(ValueError) as refused:
        decode_registry_file(bytes(damaged))
    assert str(refused.value)


def test_a_version_0_file_is_read_and_rewritten_as_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "metrics.msgpack"
    path.write_bytes(msgpack.packb({"last_generation": 9, "metrics": [metric_to_wire(m) for m in METRICS]}))
    registry = FileMetricRegistry(path)
    assert registry.list() == METRICS
    asyncio.run(registry.delete("seats"))
    assert decode_registry_file(path.read_bytes()) == (9, METRICS[:1])


def test_an_unknown_version_with_a_valid_checksum_is_refused() -> None:
    body = msgpack.packb({"v": 2, "last_generation": 1, "metrics": []})
    with pytest.raises(ValueError, match=r"^version 2 is not supported$"):
        decode_registry_file(body + zlib.crc32(body).to_bytes(4, "little"))


def test_a_damaged_file_stops_the_node_in_one_line_naming_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    registry = data / "metrics.msgpack"
    damaged = bytearray(FILE)
    damaged[10] ^= 0x40
    registry.write_bytes(bytes(damaged))
    refused = serve_refused(data, "--grpc-addr", "127.0.0.1:0")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        f"unimeter serve: metric registry {registry} is damaged (checksum mismatch): restore it from a "
        "backup of the data directory; metric definitions cannot be rebuilt from the event log\n"
    )
    assert registry.read_bytes() == bytes(damaged)
