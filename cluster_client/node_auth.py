"""The cluster-secret handshake of the node protocol: nonces and HMAC proofs, with no I/O.

When a node has a cluster secret, its hello carries ``auth = "hmac-sha256"`` and a fresh random
``nonce``; the client's hello carries a nonce of its own. Before any request is served the client
sends the request ``authenticate(proof)`` with ``proof = HMAC-SHA256(secret, "client" label ||
node nonce || client nonce)``, and the node's hello already carries ``proof = HMAC-SHA256(secret,
"server" label || node nonce || client nonce)``, so each side learns the other knows the secret
without the secret ever crossing the wire. A proof is bound to the node's nonce, which is new on
every connection, so a proof recorded from one connection is worthless on the next (no replay);
the distinct labels stop a node's proof from being reflected back as a client's. This module only
computes and compares; ``node_connection`` and ``node.protocol_server`` run the exchange.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = [
    "AUTH_METHOD",
    "AUTH_SCHEME",
    "NONCE_BYTES",
    "client_proof",
    "new_nonce",
    "proof_matches",
    "secret_bytes",
    "server_proof",
]

AUTH_METHOD = "authenticate"
"""The request a client sends, right after the hellos, to prove it knows the cluster secret."""

AUTH_SCHEME = "hmac-sha256"
"""Value of ``auth`` in a node's hello when it requires the cluster secret."""

NONCE_BYTES = 32

_CLIENT_LABEL = b"unimeter node-protocol auth v1: client\x00"
_SERVER_LABEL = b"unimeter node-protocol auth v1: server\x00"


def secret_bytes(secret: str | bytes) -> bytes:
    """The secret as the HMAC key (a str is taken as UTF-8); ValueError if empty."""
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the cluster secret must not be empty")
    return key


def new_nonce() -> bytes:
    """A fresh random nonce from the OS CSPRNG."""
    return os.urandom(NONCE_BYTES)


def client_proof(secret: bytes, node_nonce: bytes, client_nonce: bytes) -> bytes:
    """What a client sends to prove it knows ``secret`` on the connection with these nonces."""
    return hmac.new(secret, _CLIENT_LABEL + node_nonce + client_nonce, hashlib.sha256).digest()


def server_proof(secret: bytes, node_nonce: bytes, client_nonce: bytes) -> bytes:
    """What a node sends in its hello to prove it knows ``secret``."""
    return hmac.new(secret, _SERVER_LABEL + node_nonce + client_nonce, hashlib.sha256).digest()


def proof_matches(expected: bytes, given: object) -> bool:
    """Constant-time comparison; anything that is not bytes never matches."""
    return isinstance(given, bytes) and hmac.compare_digest(expected, given)
