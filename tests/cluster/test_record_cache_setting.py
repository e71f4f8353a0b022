"""``--nats-record-cache-bytes``: flag over environment over the JetStream backend's own default,
a negative or unparsable value refused at start naming the flag (or the variable), and the value
reaching the logs of the backend serve opens: 0 keeps no stored record in memory, so even the
newest is read from the stream, while a cache keeps the newest (against a real JetStream cluster)."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pytest

from node.jetstream.backend import JetStreamSettings
from node.record_log import RecordsNotLoaded
from service.config import ServeConfig, add_serve_arguments, serve_config_from_args
from service.nats_backend import open_backend
from tests.cluster.conftest import commit_partition, events_log
from tests.cluster.helpers import nats_serve_config
from tools.nats_cluster import NatsCluster

FLAG = "--nats-record-cache-bytes"
ENV = "UNIMETER_NATS_RECORD_CACHE_BYTES"


def _parse(argv: list[str], env: dict[str, str]) -> int:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return serve_config_from_args(parser.parse_args(argv), env).nats_record_cache_bytes


def test_the_cache_size_comes_from_the_flag_or_the_environment() -> None:
    assert _parse([], {}) == JetStreamSettings().cache_bytes == 262_144
    assert _parse([], {ENV: "1048576"}) == 1_048_576
    assert _parse([FLAG, "0"], {ENV: "4096"}) == 0
    assert _parse([FLAG, "4096"], {}) == 4096


@pytest.mark.parametrize(("argv", "env"), [([FLAG, "-1"], {}), ([], {ENV: "-4096"})])
def test_a_negative_cache_size_is_refused_naming_the_flag(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as refused:
        _parse(argv, env)
    assert (
        str(refused.value) == "unimeter serve: --nats-record-cache-bytes must not be negative (0: no cache)"
    )


def test_an_unparsable_cache_size_names_the_flag_or_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        _parse([FLAG, "256KiB"], {})
    assert refused.value.code == 2  # argparse's usage error
    assert "argument --nats-record-cache-bytes: invalid int value: '256KiB'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        _parse([], {ENV: "1.5"})
    assert (
        str(refused.value)
        == "UNIMETER_NATS_RECORD_CACHE_BYTES='1.5': invalid literal for int() with base 10: '1.5'"
    )


def _config(tmp_path: Path, cluster: NatsCluster, stream: str, cache: int) -> ServeConfig:
    return nats_serve_config(
        tmp_path / "data",
        cluster,
        stream,
        partitions=2,
        nats_record_cache_bytes=cache,
    )


@pytest.mark.parametrize("cache", [0, 2048])
async def test_the_size_reaches_the_logs_of_the_backend_serve_opens(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str, cache: int
) -> None:
    backend = await open_backend(_config(tmp_path, nats_cluster, stream_name, cache))
    try:
        await backend.load_partition(0)
        log = events_log(backend, 0)
        rng = random.Random(cache)
        appended = [f"record {i} ".encode() + rng.randbytes(90) for i in range(60)]  # 6 KiB
        for record in appended:
            log.append(record)
        await commit_partition(backend, 0)
        assert log.durable_position == len(appended)
        if cache == 0:
            assert log.memory_bytes == 0
            with pytest.raises(RecordsNotLoaded) as not_loaded:
                log.read(59)  # on the event loop: the stream would have to be asked
            assert not_loaded.value.positions == [59]
        else:
            assert 0 < log.memory_bytes <= cache
            assert log.read(59) == appended[59]  # the newest, from memory
        assert await log.read_many([0, 59]) == [appended[0], appended[59]]
    finally:
        await backend.disconnect()
