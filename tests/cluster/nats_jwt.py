"""Minting the decentralised-auth documents a nats-server in operator mode trusts: an operator, an
account with JetStream enabled, a user, and the user's ``.creds`` file, for the credentials-file
tests. A test helper only; production deployments mint these with NATS's own tooling (``nsc``).

A NATS JWT is ``base64url(header).base64url(claims).base64url(signature)``, the signature an
Ed25519 signature of the first two parts by the issuer's NKey (the operator signs accounts, an
account signs its users).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass

import nkeys

__all__ = ["OperatorSetup", "mint_operator_setup"]

_UNLIMITED = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}
_JETSTREAM_UNLIMITED = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keypair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _jwt(issuer: nkeys.KeyPair, subject: nkeys.KeyPair, name: str, nats: dict[str, object]) -> str:
    claims: dict[str, object] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject.public_key.decode(),
        "nats": {**nats, "version": 2},
    }
    # The id of the claims: the server only needs it to be unique; NATS's tools hash the claims.
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = json.dumps({"typ": "JWT", "alg": "ed25519-nkey"})
    signed = f"{_b64(header.encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


@dataclass(frozen=True)
class OperatorSetup:
    """A server configuration fragment trusting one operator, and a user's ``.creds`` file text."""

    server_config: str
    creds: str


def mint_operator_setup() -> OperatorSetup:
    """A fresh operator, a system account, an account with unlimited JetStream, and one user."""
    operator = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    system = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user = _keypair(nkeys.PREFIX_BYTE_USER)
    account_jwt = _jwt(
        operator, account, "meter", {"type": "account", "limits": {**_UNLIMITED, **_JETSTREAM_UNLIMITED}}
    )
    system_jwt = _jwt(operator, system, "SYS", {"type": "account", "limits": _UNLIMITED})
    user_jwt = _jwt(account, user, "unimeter", {"type": "user", "subs": -1, "data": -1, "payload": -1})
    server_config = (
        f"operator: {_jwt(operator, operator, 'operator', {'type': 'operator'})}\n"
        f"system_account: {system.public_key.decode()}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n  {account.public_key.decode()}: {account_jwt}\n"
        f"  {system.public_key.decode()}: {system_jwt}\n}}\n"
    )
    creds = (
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
    )
    return OperatorSetup(server_config, creds)
