"""Fixtures for tests against a real local JetStream cluster (``tools.nats_cluster``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tools.nats_cluster import NatsCluster


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three nats-server processes in one JetStream cluster, shared by a test module."""
    cluster = NatsCluster(tmp_path_factory.mktemp("nats"), 3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
