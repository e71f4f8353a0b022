"""The cluster section's bare-publish measurement (``bench.cluster``) against real nats-servers: the
diagnostic run with a node's headers counts a fenced publish JetStream refuses and carries on from
the subject's last sequence, instead of ending the whole ``make bench`` run."""

from __future__ import annotations

from functools import partial

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from bench.cluster import _BARE_STREAM, _bare_publish
from node.jetstream.backend import when_settled
from tools.nats_cluster import NatsCluster

pytestmark = pytest.mark.timeout(90)


async def test_a_refused_fenced_publish_is_counted_and_the_run_goes_on(nats_cluster: NatsCluster) -> None:
    urls = nats_cluster.urls
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream(timeout=10)
        config = StreamConfig(
            name=_BARE_STREAM, subjects=["bench.bare.*"], storage=StorageType.FILE, num_replicas=len(urls)
        )
        # JetStream may still be electing its leaders when the servers report healthy (CI runs
        # met both: the stream's creation and its first publish timing out): the node's own wait.
        await when_settled(partial(js.add_stream, config), "the stream")
        # A message already on the subject: the run's first publish, fenced at 0, is refused.
        await when_settled(partial(js.publish, "bench.bare.fenced", b"earlier"), "the seed publish")
    finally:
        await nc.close()
    result = await _bare_publish(urls, 64, 60.0, 5, fenced=True)
    assert result["refused_wrong_last_sequence"] == 1
    assert result["n"] == 5
    plain = await _bare_publish(urls, 64, 60.0, 5)
    assert "refused_wrong_last_sequence" not in plain
    assert plain["n"] == 5
