"""Which JetStream answers the node's set-up and snapshot writes wait out (``when_settled`` of
``node/jetstream/backend.py``): a stream without a leader answers a JetStream publish (an object
store put among them: every snapshot on a cluster node) with ``NoStreamResponseError``, and a
snapshot written during the snapshot bucket's leader election must be stored once the election
ends, not fail the partition's snapshot (or its clean close)."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from node.jetstream.backend import when_settled

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    "transient",
    [nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError, TimeoutError],
)
async def test_a_stream_without_a_leader_is_waited_for(transient: type[Exception]) -> None:
    attempts: list[int] = []

    async def put() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise transient()
        return "stored"

    assert await when_settled(put, "snapshot partition-0") == "stored"
    assert len(attempts) == 3


async def test_an_answer_that_will_not_change_is_raised_at_once() -> None:
    attempts: list[int] = []

    async def put() -> str:
        attempts.append(1)
        raise nats.js.errors.BadRequestError()

    with pytest.raises(nats.js.errors.BadRequestError):
        await when_settled(put, "snapshot partition-0")
    assert len(attempts) == 1
