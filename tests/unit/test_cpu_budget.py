"""``python -m bench.cpu_budget``'s parts: the ceiling that burns CPU per event answers Ingest as the
plain one does (its offsets, on the loop's thread and on a worker thread), and the node's place on
the modelled curve is interpolated in time per event. Timing never decides a test."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from bench.cpu_budget import node_equivalent_ns
from bench.processes import start_ceiling
from unimeter.v1 import ingest_service_pb2, ingest_service_pb2_grpc, types_pb2

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("where", ["loop", "thread"])
def test_a_burning_ceiling_answers_ingest_like_the_plain_one(tmp_path: Path, where: str) -> None:
    server = start_ceiling(tmp_path, "--burn-ns-per-event", "2000", "--burn-on", where)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            events = [types_pb2.Event(account_id=a, metric_code="m", value=1) for a in (1, 2, 3)]
            first = stub.Ingest(ingest_service_pb2.IngestRequest(events=events), timeout=10)
            second = stub.Ingest(ingest_service_pb2.IngestRequest(events=events[:2]), timeout=10)
    finally:
        server.kill()
    assert (first.n_stored, list(first.offsets)) == (3, [1, 2, 3])
    assert (second.n_stored, list(second.offsets)) == (2, [4, 5])


def test_the_node_is_placed_on_the_curve_by_time_per_event() -> None:
    curve = [(0.0, 1000.0), (1000.0, 500.0), (2000.0, 250.0)]
    assert node_equivalent_ns(curve, 1000.0) == 0.0
    # 1/rate halfway between 1/1000 and 1/500: halfway along the burn, not at the rates' midpoint.
    assert node_equivalent_ns(curve, 1000.0 / 1.5) == pytest.approx(500.0)
    assert node_equivalent_ns(curve, 250.0) == pytest.approx(2000.0)
    assert node_equivalent_ns(curve, 1200.0) is None
    assert node_equivalent_ns(curve, 100.0) is None
