"""Fuzzed node protocol: the frame codec on its own, and a real node-protocol server fed garbage.

Bounded for ``make test`` (a few hundred inputs); ``make fuzz`` runs the same checks far longer.
"""

from __future__ import annotations

import logging
import random
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster_client import wire
from cluster_client.wire import FrameDecoder, ProtocolError
from node.protocol_server import SERVED_METHODS

from .frame_fuzz import ARG_DECODERS, SEED_FRAMES, check_frames, frame_input
from .node_server_fuzz import ServerUnderFuzz, TracebackCounter

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_served_method_has_a_fuzzed_argument_decoder() -> None:
    assert set(ARG_DECODERS) == SERVED_METHODS


def test_every_seed_frame_decodes() -> None:
    decoder = FrameDecoder()
    bodies = decoder.feed(b"".join(SEED_FRAMES))
    assert len(bodies) == len(SEED_FRAMES)
    assert decoder.buffered == 0


@FUZZ
@given(st.randoms(use_true_random=False))
def test_the_frame_decoder_gives_bodies_or_a_protocol_error(rng: random.Random) -> None:
    check_frames(rng, frame_input(rng))


@pytest.mark.parametrize("size", [2**32 - 1, 2**31, wire.DEFAULT_MAX_FRAME_BYTES + 1])
def test_a_declared_length_over_the_limit_is_refused_without_allocating(size: int) -> None:
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as raised:
            decoder.feed(size.to_bytes(4, "big") + b"\x93\x00\x01")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raised.value.reason == "FRAME_TOO_LARGE"
    assert f"frame of {size} bytes exceeds the limit" in raised.value.message
    assert peak < 1 << 20


def test_a_length_under_the_limit_waits_for_its_bytes_without_allocating_them() -> None:
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        assert decoder.feed((wire.DEFAULT_MAX_FRAME_BYTES - 1).to_bytes(4, "big") + b"\x93") == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.buffered == 5
    assert peak < 1 << 20


def test_a_body_declaring_four_billion_items_is_a_protocol_error() -> None:
    body = b"\xdd\xff\xff\xff\xff\x00"
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        FrameDecoder().feed(len(body).to_bytes(4, "big") + body)


@pytest.mark.parametrize("secret", [False, True], ids=["open", "cluster-secret"])
async def test_a_real_node_serves_its_good_client_after_each_garbage_client(
    tmp_path: Path, secret: bool
) -> None:
    counter = TracebackCounter()
    logging.getLogger().addHandler(counter)
    rng = random.Random(14)
    try:
        async with ServerUnderFuzz(tmp_path / "data", secret=secret) as target:
            for _ in range(150):
                await target.check_garbage_client(rng)
            await target.check_good_client(new_connection=True)
            assert await target.garbage_connections_closed()
    finally:
        logging.getLogger().removeHandler(counter)
    assert counter.count == 0, counter.first
