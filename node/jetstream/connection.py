"""Connecting to NATS for the JetStream backend, and checking the servers can promise SYNC.

The options come from ``unimeter serve``'s flags (``service.config``); secrets (password, token)
are passed to the client and never logged: what is logged names the URLs only. The first
connection is bounded: unreachable servers give :class:`NatsUnavailable` naming every URL. Once
connected the client reconnects by itself for as long as the node runs. SYNC is only as good as
the servers' ``sync_interval``: :func:`check_sync_always` asks each server's monitoring endpoint
(``/varz``), since the client protocol does not expose it. Not here: streams and records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient

from .errors import NatsRefused, NatsUnavailable

__all__ = [
    "MIN_SERVER_VERSION",
    "NatsOptions",
    "check_sync_always",
    "connect",
]

log = logging.getLogger(__name__)

MIN_SERVER_VERSION = (2, 10)
"""The oldest nats-server the backend accepts (stream metadata, ``sync_interval``)."""


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """How to reach the NATS servers. Empty strings and None mean "not used"."""

    urls: tuple[str, ...]
    user: str = ""
    password: str = ""
    token: str = ""
    credentials_file: Path | None = None
    """A ``.creds`` file (user JWT and NKey seed)."""
    nkey_seed_file: Path | None = None
    """A file holding an NKey seed (``SU...``)."""
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    connect_timeout: float = 5.0
    """Seconds the first connection may take before the start is refused."""

    def __repr__(self) -> str:  # never the secrets, whatever logs an options object
        return f"NatsOptions(urls={list(self.urls)})"

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context, or None when no TLS option is given."""
        if self.tls_ca is None and self.tls_cert is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        if self.tls_cert is not None:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key) if self.tls_key else None)
        return context


async def connect(options: NatsOptions) -> NatsClient:
    """A connected client, reconnecting by itself from then on; NatsUnavailable naming the URLs
    when none of them answers within the connect timeout."""
    urls = ", ".join(options.urls)
    connected: list[NatsClient] = []

    async def on_error(exc: Exception) -> None:
        log.warning("NATS connection: %s", exc)

    async def on_disconnected() -> None:
        if connected and not connected[0].is_closed:  # not when this node closes it
            log.warning("NATS connection lost; reconnecting to %s", urls)

    async def on_reconnected() -> None:
        log.info("NATS connection back")

    kwargs: dict[str, object] = {}
    if options.user:
        kwargs["user"] = options.user
        kwargs["password"] = options.password
    if options.token:
        kwargs["token"] = options.token
    if options.credentials_file is not None:
        kwargs["user_credentials"] = str(options.credentials_file)
    if options.nkey_seed_file is not None:
        kwargs["nkeys_seed"] = str(options.nkey_seed_file)
    tls = options.tls_context()
    if tls is not None:
        kwargs["tls"] = tls
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation.
        async with asyncio.timeout(options.connect_timeout * max(1, len(options.urls)) + 1):
            client = await nats.connect(
                servers=list(options.urls),
                connect_timeout=max(1, int(options.connect_timeout)),
                allow_reconnect=True,
                # The first connection tries each server twice, then gives up (a refused start
                # is better than a node hanging on a typo); once connected, the limit is lifted.
                max_reconnect_attempts=1,
                reconnect_time_wait=1,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                **kwargs,
            )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise NatsUnavailable(f"cannot connect to NATS at {urls}: {exc or type(exc).__name__}") from None
    client.options["max_reconnect_attempts"] = -1  # from now on: reconnect for as long as the node runs
    connected.append(client)
    return client


def check_server_version(client: NatsClient) -> None:
    """NatsRefused unless the connected server runs JetStream at ``MIN_SERVER_VERSION`` or later."""
    version = client.connected_server_version
    if (version.major, version.minor) < MIN_SERVER_VERSION:
        raise NatsRefused(f"nats-server {version} is too old for the JetStream backend: run 2.10 or later")
    if not client._server_info.get("jetstream"):  # the INFO the server sent
        raise NatsRefused(
            "the NATS server has JetStream disabled: enable it (a `jetstream { ... }` block in its "
            "configuration, or -js)"
        )


def _varz(monitor_url: str, timeout: float) -> dict[str, object]:
    with urllib.request.urlopen(monitor_url.rstrip("/") + "/varz", timeout=timeout) as response:
        doc = json.loads(response.read())
    if not isinstance(doc, dict):
        raise ValueError("/varz is not a JSON object")
    return doc


async def check_sync_always(
    monitor_urls: Sequence[str], servers: Sequence[str], timeout: float = 5.0
) -> None:
    """NatsRefused unless every server in ``servers`` (names, as the stream's cluster lists them)
    reports ``sync_always`` on one of ``monitor_urls`` (its ``/varz``), JetStream on, version ≥ 2.10.

    The client protocol does not say how a server syncs its store, so the monitoring endpoint is
    the only place it can be read; a server not covered by a monitor URL cannot be vouched for.
    """
    if not monitor_urls:
        raise NatsRefused(
            "cannot verify that the NATS servers sync every write to disk: give each server's "
            "monitoring URL with --nats-monitor-url (its `http:` port), and configure every server "
            "with `jetstream { sync_interval: always }`; or pass --allow-unsynced-jetstream "
            "(development only: SYNC then does not mean on disk)"
        )
    verified: dict[str, str] = {}
    for url in monitor_urls:
        try:
            varz = await asyncio.to_thread(_varz, url, timeout)
        except (OSError, ValueError) as exc:
            raise NatsRefused(f"cannot read {url}/varz to verify the server's sync setting: {exc}") from None
        name = str(varz.get("server_name", ""))
        jetstream = varz.get("jetstream")
        config = jetstream.get("config") if isinstance(jetstream, dict) else None
        if not isinstance(config, dict):
            raise NatsRefused(f"nats-server {name} ({url}) has JetStream disabled: enable it")
        version = tuple(int(p) for p in str(varz.get("version", "0.0")).split("-")[0].split(".")[:2])
        if version < MIN_SERVER_VERSION:
            raise NatsRefused(f"nats-server {name} ({url}) runs {varz.get('version')}: run 2.10 or later")
        if not config.get("sync_always"):
            raise NatsRefused(
                f"nats-server {name} ({url}) does not sync every write to disk: set "
                "`jetstream { sync_interval: always }` in its configuration (or pass "
                "--allow-unsynced-jetstream, development only)"
            )
        verified[name] = url
    missing = [s for s in servers if s not in verified]
    if missing:
        raise NatsRefused(
            f"nats-server {', '.join(missing)} holds the stream but no --nats-monitor-url covers it: "
            "give every server's monitoring URL so its sync setting can be verified"
        )
