"""The small pure pieces behind observability and security: histograms, field labels, request
ids, JSON log lines, API-key parsing and hashing, and the cluster-secret proofs."""

from __future__ import annotations

import io
import json
import logging

import pytest

from cluster_client.node_auth import client_proof, new_nonce, proof_matches, secret_bytes, server_proof
from node.stats import Histogram
from service.api_keys import ApiKeyStore, generate_key, hash_key, load_api_keys, main, parse_api_keys
from service.logging_setup import JsonFormatter, RequestIdFilter, configure_logging
from service.request_context import accept_request_id, request_id_var
from service.service_stats import field_label


def test_histogram_buckets_are_prometheus_le_and_cumulative() -> None:
    h = Histogram([0.001, 0.01, 0.1])
    for v in (0.0005, 0.001, 0.005, 0.5, 2.0):
        h.observe(v)
    assert h.cumulative() == [(0.001, 2), (0.01, 3), (0.1, 3), (float("inf"), 5)]
    assert h.count == 5 and h.sum == pytest.approx(2.5065)
    with pytest.raises(ValueError):
        Histogram([0.1, 0.01])


def test_a_histogram_takes_one_value_observed_several_times() -> None:
    h = Histogram([0.001, 0.01])
    h.observe(0.005, 3)
    h.observe(0.0005)
    assert h.cumulative() == [(0.001, 1), (0.01, 4), (float("inf"), 4)]
    assert h.count == 4 and h.sum == pytest.approx(0.0155)


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("events[7].metric_code", "metric_code"),
        ("events[0].properties[region]", "properties"),
        ("events[12].account_id", "account_id"),
        ("events", "events"),
        ("events[1].Weird-Field", "other"),
    ],
)
def test_field_label_is_bounded(path: str, label: str) -> None:
    assert field_label(path) == label


def test_request_ids_are_accepted_only_when_short_and_printable() -> None:
    assert accept_request_id("req-1.2_3:4/5+6=7@8") == "req-1.2_3:4/5+6=7@8"
    for bad in (None, "", "a b", "x" * 129, "é", b"bytes-id"):
        generated = accept_request_id(bad)
        assert len(generated) == 16 and int(generated, 16) >= 0
    assert accept_request_id(None) != accept_request_id(None)


def test_json_log_lines_carry_request_id_extras_and_tracebacks() -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("unimeter.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    token = request_id_var.set("req-5")
    try:
        logger.warning("hello %s", "world", extra={"partition": 3})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed")
    finally:
        request_id_var.reset(token)
        logger.removeHandler(handler)
        logger.propagate = True
    first, second = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert first["msg"] == "hello world" and first["partition"] == 3 and first["request_id"] == "req-5"
    assert first["level"] == "WARNING" and first["logger"] == "unimeter.test.json"
    assert second["msg"] == "failed" and "RuntimeError: boom" in second["exc"]


def test_configure_logging_rejects_unknown_formats() -> None:
    with pytest.raises(ValueError, match="json, text"):
        configure_logging("INFO", "xml")


def test_api_key_lines_json_and_environment() -> None:
    h1, h2 = hash_key("k1"), hash_key("k2")
    lines = parse_api_keys(f"# comment\n\nbilling:{h1}:ingest, read\nops:{h2.upper()}:admin\n", source="f")
    assert [(k.name, k.sha256, sorted(k.scopes)) for k in lines] == [
        ("billing", h1, ["ingest", "read"]),
        ("ops", h2, ["admin"]),
    ]
    as_json = parse_api_keys(json.dumps([{"name": "billing", "sha256": h1, "scopes": ["read"]}]), source="f")
    assert as_json[0].scopes == frozenset({"read"})
    store = load_api_keys(None, f"a:{h1}:read;b:{h2}:ingest")
    assert store is not None and [k.name for k in store.keys] == ["a", "b"]
    assert load_api_keys(None, None) is None
    assert load_api_keys(None, "") is None


def test_key_store_authenticates_by_hash_and_admin_implies_every_scope() -> None:
    store = ApiKeyStore(parse_api_keys(f"r:{hash_key('kr')}:read\na:{hash_key('ka')}:admin", source="t"))
    reader, admin = store.authenticate("kr"), store.authenticate("ka")
    assert reader is not None and reader.name == "r"
    assert reader.allows("read") and not reader.allows("ingest") and not reader.allows("admin")
    assert admin is not None and all(admin.allows(s) for s in ("read", "ingest", "admin"))
    assert store.authenticate("nope") is None
    assert store.authenticate(hash_key("kr")) is None
    assert store.authenticate("\udcff") is None  # not encodable as UTF-8: still just a miss


def test_generated_keys_are_random_and_the_helper_prints_the_config_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert generate_key() != generate_key() and generate_key().startswith("umk_")
    assert main(["new", "billing", "ingest,read"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].split()[-1]
    assert out[1] == f"config: billing:{hash_key(key)}:ingest,read"
    assert main(["hash", "abc"]) == 0
    assert capsys.readouterr().out.strip() == hash_key("abc")


def test_proofs_are_bound_to_the_nonces_and_to_the_side() -> None:
    secret = secret_bytes("s3cret")
    node_nonce, client_nonce = new_nonce(), new_nonce()
    proof = client_proof(secret, node_nonce, client_nonce)
    assert proof_matches(proof, client_proof(secret, node_nonce, client_nonce))
    assert not proof_matches(proof, client_proof(secret, new_nonce(), client_nonce))  # replay elsewhere
    assert not proof_matches(proof, client_proof(b"other", node_nonce, client_nonce))
    assert not proof_matches(proof, server_proof(secret, node_nonce, client_nonce))  # reflection
    assert not proof_matches(proof, proof.hex())
    with pytest.raises(ValueError):
        secret_bytes("")
