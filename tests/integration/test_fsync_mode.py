"""``--fsync-mode``: one syncfs per flush of many logs (default, where safe) or one fdatasync per log."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from node import filesystem_sync
from service.config import add_serve_arguments, serve_config_from_args
from service.server import UnimeterServer
from tests.conftest import open_api, serve_config
from tests.integration.helpers import create_metric, ev, ingest
from unimeter.v1 import types_pb2 as t


def test_the_mode_comes_from_the_flag_or_the_environment() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert serve_config_from_args(parser.parse_args([]), {}).fsync_mode == "filesystem"
    assert serve_config_from_args(parser.parse_args([]), {"UNIMETER_FSYNC_MODE": "file"}).fsync_mode == "file"
    args = parser.parse_args(["--fsync-mode", "file"])
    assert serve_config_from_args(args, {"UNIMETER_FSYNC_MODE": "filesystem"}).fsync_mode == "file"
    with pytest.raises(SystemExit, match="fsync mode must be filesystem or file"):
        serve_config_from_args(parser.parse_args(["--fsync-mode", "fast"]), {})


@pytest.mark.parametrize("mode", ["filesystem", "file"])
async def test_sync_batches_over_partitions_are_durable_in_either_mode(tmp_path: Path, mode: str) -> None:
    server = UnimeterServer(serve_config(tmp_path / "data", fsync_mode=mode))
    await server.start()
    try:
        node = server.node
        assert node is not None
        uses_syncfs = mode == "filesystem" and filesystem_sync.syncfs_supported()
        assert node.backend.syncs_filesystem == uses_syncfs
        api = await open_api(server)
        await create_metric(api, "calls", t.AGG_TYPE_SUM)
        response = await ingest(
            api, *[ev(a, "calls", a, time=1_772_323_200 * 10**9 + a) for a in range(1, 41)], sync=True
        )
        assert response.n_stored == 40
        touched = [p for p in node.partitions if p.last_offset]
        assert len(touched) == 8  # 40 accounts reach every partition: a grouped round
        for partition in touched:
            assert partition.events.durable_position == partition.events.end_position
        await api.channel.close()
    finally:
        await server.stop(grace=1)
