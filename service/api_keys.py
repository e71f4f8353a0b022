"""API keys: parsing the configured keys, hashing, and checking a presented key in constant time.

Keys are configured by their SHA-256 hex digest only, never in plain text, so the key file and the
environment hold nothing a reader could replay. A key has a name (for logs) and scopes: ``ingest``,
``read``, ``admin`` (admin implies the other two). Two formats are accepted, in a file or in the
``UNIMETER_API_KEYS`` environment variable:

- lines ``name:sha256hex:scope,scope`` (in the environment separated by ``;``; in a file by new
  lines; blank lines and ``#`` comments are ignored);
- JSON: ``{"keys": [{"name": "...", "sha256": "...", "scopes": ["ingest", "read"]}]}`` or just the
  list.

Run ``python -m service.api_keys new NAME SCOPES`` to make a key (it prints the key once and the
line to configure), or ``python -m service.api_keys hash KEY`` to hash an existing one. What this
module does not do is decide which RPC needs which scope: that is ``service.call_wrapping``'s table.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SCOPES",
    "ApiKey",
    "ApiKeyStore",
    "generate_key",
    "hash_key",
    "load_api_keys",
    "parse_api_keys",
]

SCOPES = frozenset({"ingest", "read", "admin"})

_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_KEY_PREFIX = "umk_"


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of a key (what the configuration stores).

    Same as ``printf %s "$KEY" | sha256sum`` or
    ``python3 -c 'import hashlib,sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest())' "$KEY"``.
    """
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    """A new random key: ``umk_`` and 256 bits of randomness, URL-safe."""
    return _KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key: its name, the SHA-256 hex of the key, and its scopes."""

    name: str
    sha256: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """Whether the key grants ``scope`` (admin grants everything)."""
        return scope in self.scopes or "admin" in self.scopes


class ApiKeyStore:
    """The configured keys. :meth:`authenticate` compares against every one in constant time."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys: tuple[ApiKey, ...] = tuple(keys)
        self._digests = [bytes.fromhex(k.sha256) for k in self.keys]

    def __len__(self) -> int:
        return len(self.keys)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The key whose hash matches ``presented``, or None.

        Every configured hash is compared, with ``hmac.compare_digest``, whatever matches, so the
        time taken says nothing about which keys exist or how close a guess came.
        """
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: ApiKey | None = None
        for key, stored in zip(self.keys, self._digests, strict=True):
            if hmac.compare_digest(digest, stored):
                found = key
        return found


def _key(name: object, sha: object, scopes: object, where: str) -> ApiKey:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}: key name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . @ -")
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha.lower()):
        raise ValueError(
            f"{where}: key {name!r} needs the SHA-256 of the key as 64 hex digits "
            "(configure the hash, never the key itself)"
        )
    if isinstance(scopes, str):
        scope_list = [s.strip() for s in scopes.split(",") if s.strip()]
    elif isinstance(scopes, list) and all(isinstance(s, str) for s in scopes):
        scope_list = list(scopes)
    else:
        raise ValueError(f"{where}: key {name!r} scopes must be a list of strings")
    unknown = sorted(set(scope_list) - SCOPES)
    if unknown or not scope_list:
        raise ValueError(
            f"{where}: key {name!r} has scopes {scope_list}; each must be one of {sorted(SCOPES)}"
        )
    return ApiKey(name, sha.lower(), frozenset(scope_list))


def parse_api_keys(text: str, *, source: str, separator: str = "\n") -> list[ApiKey]:
    """Keys from ``text`` (JSON, or ``name:sha256:scopes`` entries split by ``separator``).

    ValueError naming ``source`` and the entry for anything malformed, a duplicate name, or a
    duplicate hash.
    """
    stripped = text.strip()
    keys: list[ApiKey] = []
    if stripped.startswith(("{", "[")):
        try:
            doc = json.loads(stripped)
        except ValueError as exc:
            raise ValueError(f"{source}: not valid JSON: {exc}") from None
        entries = doc.get("keys") if isinstance(doc, dict) else doc
        if not isinstance(entries, list):
            raise ValueError(f'{source}: expected a list of keys or {{"keys": [...]}}')
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(f"{source}: keys[{i}] is not an object")
            keys.append(
                _key(entry.get("name"), entry.get("sha256"), entry.get("scopes"), f"{source} keys[{i}]")
            )
    else:
        for n, raw in enumerate(stripped.split(separator), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":")
            if len(parts) != 3:
                raise ValueError(
                    f"{source} entry {n}: expected name:sha256hex:scopes, got {len(parts)} fields"
                )
            keys.append(_key(parts[0], parts[1], parts[2], f"{source} entry {n}"))
    _check_unique(keys, source)
    return keys


def _check_unique(keys: Sequence[ApiKey], source: str) -> None:
    names: set[str] = set()
    hashes: set[str] = set()
    for key in keys:
        if key.name in names:
            raise ValueError(f"{source}: key name {key.name!r} appears twice")
        if key.sha256 in hashes:
            # Two names for one key would make the logs lie about who called.
            raise ValueError(f"{source}: key {key.name!r} has the same hash as another key")
        names.add(key.name)
        hashes.add(key.sha256)


def load_api_keys(file: Path | None, env_value: str | None) -> ApiKeyStore | None:
    """The keys of ``file`` and ``env_value`` (``;``-separated lines) together; None when neither
    is configured (the API is then open)."""
    keys: list[ApiKey] = []
    configured = False
    if file is not None:
        configured = True
        try:
            text = file.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the API keys file {file}: {exc}") from None
        keys += parse_api_keys(text, source=str(file))
    if env_value:
        configured = True
        keys += parse_api_keys(env_value, source="UNIMETER_API_KEYS", separator=";")
    if not configured:
        return None
    if not keys:
        # An empty file must not silently open the API to everyone.
        raise ValueError(
            "API keys are configured but none is defined; remove the setting to run without keys"
        )
    _check_unique(keys, "API keys file and UNIMETER_API_KEYS together")
    return ApiKeyStore(keys)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.api_keys new NAME SCOPES`` | ``hash KEY``."""
    parser = argparse.ArgumentParser(prog="python -m service.api_keys", description="Make or hash API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="generate a key; prints the key once and its config line")
    new.add_argument("name")
    new.add_argument("scopes", help="comma-separated: ingest, read, admin")
    hashed = commands.add_parser("hash", help="print the SHA-256 hex of a key")
    hashed.add_argument("key")
    args = parser.parse_args(argv)
    if args.command == "hash":
        print(hash_key(args.key))
        return 0
    key = generate_key()
    entry = _key(args.name, hash_key(key), args.scopes, "arguments")
    # The key is shown once and stored nowhere; only the config line (its hash) is kept.
    print(f"key:    {key}")
    print(f"config: {entry.name}:{entry.sha256}:{','.join(sorted(entry.scopes))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
