"""``unimeter serve --backend nats``: the JetStream backend opened from serve's configuration.

Imported only when that backend is chosen, so an embedded node never loads the NATS client. Not
here: the backend itself (``node.jetstream``).
"""

from __future__ import annotations

from node.jetstream.backend import JetStreamBackend, JetStreamSettings, open_jetstream_backend
from node.jetstream.connection import NatsOptions

from .config import ServeConfig

__all__ = ["open_backend"]


async def open_backend(cfg: ServeConfig) -> JetStreamBackend:
    """Connect to ``cfg``'s NATS servers and open the deployment's stream (see
    ``node.jetstream.backend.open_jetstream_backend`` for what is checked and refused)."""
    options = NatsOptions(
        urls=cfg.nats_urls,
        user=cfg.nats_user,
        password=cfg.nats_password,
        token=cfg.nats_token,
        credentials_file=cfg.nats_credentials_file,
        nkey_seed_file=cfg.nats_nkey_seed_file,
        tls_ca=cfg.nats_tls_ca,
        tls_cert=cfg.nats_tls_cert,
        tls_key=cfg.nats_tls_key,
    )
    settings = JetStreamSettings(
        stream=cfg.nats_stream,
        replicas=cfg.nats_replicas,
        partitions=cfg.partitions,
        monitor_urls=cfg.nats_monitor_urls,
        allow_unsynced=cfg.allow_unsynced_jetstream,
    )
    return await open_jetstream_backend(options, settings)
