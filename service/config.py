"""Configuration of ``unimeter serve``: one frozen dataclass, parsed once from flags and environment.

Every flag has an environment variable of the same name (``--data-dir`` ↔ ``UNIMETER_DATA_DIR``);
a flag given on the command line wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServeConfig", "add_serve_arguments", "serve_config_from_args"]


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``unimeter serve`` needs."""

    data_dir: Path = Path("./data")
    """Directory of the embedded backend's logs, snapshots and metric registry."""
    grpc_addr: str = "127.0.0.1:50051"
    """host:port of the public gRPC API (port 0 picks a free port)."""
    node_addr: str = ""
    """host:port of the node protocol for remote client cores; empty disables it."""
    http_addr: str = ""
    """host:port of the HTTP endpoint (/metrics, /healthz, /readyz); empty disables it."""
    partitions: int | None = None
    """Partitions of a new data directory (default 64; an existing one keeps its own)."""
    flush_interval_ms: float = 10.0
    """Longest time an ASYNC write waits before its fsync."""
    fsync_mode: str = "filesystem"
    """``filesystem``: a flush tick (or a SYNC batch over partitions) makes all its logs durable
    with one syncfs of the data directory's filesystem, where that is safe (Linux 5.8+, all logs
    on it); ``file``: one fdatasync per log (for a data directory sharing its filesystem with
    heavy writers, whose dirty data a syncfs would wait for)."""
    sync_spin_us: float = 300.0
    """Longest a lone SYNC call's fdatasync is waited for with the event loop's CPU kept awake
    (yielding it, not sleeping), while the loop has nothing else to do; 0: always sleep. Costs that
    CPU time per such call, saves the idle CPU's wake-up (tens of µs on a virtual machine)."""
    dedup_window_seconds: float = 86_400.0
    """How long an event's dedup key is remembered."""
    alerts_in_memory: int = 10_000
    """Newest alerts each partition keeps in memory; older ones are read from its alert log."""
    snapshot_interval_seconds: float = 60.0
    """Seconds between a changed partition's snapshots; the partitions are spread over the interval
    (``node/snapshot_schedule.py``), not snapshotted in one round."""
    memory_horizon_seconds: float = 172_800.0
    """Embedded backend: the ListEvents index positions of an (account, hour) whose hour ended more
    than this long before the node's clock move to on-disk index runs; 0: keep them all in memory.
    A cluster node (``nats``) keeps them in memory (docs/operations.md, "Memory horizon")."""
    log_level: str = "INFO"
    """Python logging level."""
    log_format: str = "json"
    """``json`` (one object per line, for log pipelines) or ``text`` (for humans)."""
    api_keys_file: Path | None = None
    """File of API keys (SHA-256 hashes with scopes); with it or ``api_keys`` every call needs a key."""
    api_keys: str = ""
    """API keys as ``name:sha256hex:scopes`` entries separated by ``;`` (usually from the environment)."""
    tls_cert: Path | None = None
    """PEM certificate chain: serve gRPC and the node protocol over TLS (needs ``tls_key``)."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    cluster_secret: str = ""
    """Shared secret node-protocol clients must prove (HMAC challenge); empty: none required."""
    insecure_node_protocol: bool = False
    """Serve the node protocol without a cluster secret even though API keys are configured (the
    node protocol does not take API keys, so anyone reaching it skips them): only on a network
    where every host that can reach the node port is trusted. Without it that start is refused."""
    max_inflight_ingest_events: int = 1_000_000
    """Events of ingest calls in flight past which new calls get RESOURCE_EXHAUSTED."""
    min_free_disk_mb: float = 256.0
    """Free space (MiB) of the data directory's filesystem below which ingest gets
    RESOURCE_EXHAUSTED (reason DISK_FULL); 0: never. Embedded backend only (with ``nats`` the
    records are not in the data directory)."""
    handshake_timeout_seconds: float = 10.0
    """Connections that do not finish their handshake (TLS, HTTP/2 or node hello) in time are closed."""
    engine: str = "auto"
    """Ingest engine: ``native`` (the compiled extension), ``python`` (the reference), or ``auto``:
    native when the extension is installed."""
    node_id: str = ""
    """Id of a new data directory's node (generated when empty); an existing one keeps its own."""
    backend: str = "embedded"
    """Where records and snapshots live: ``embedded`` (segment files in the data directory) or
    ``nats`` (a NATS JetStream stream; the data directory keeps the lock and the node's identity)."""
    nats_url: str = ""
    """Comma-separated NATS server URLs (``--backend nats``)."""
    nats_stream: str = "UNIMETER"
    """The deployment's JetStream stream (its snapshots: object store bucket ``<stream>_snapshots``)."""
    nats_replicas: int = 3
    """Replicas of a stream this node creates (1 only for a development cluster)."""
    nats_monitor_url: str = ""
    """Comma-separated monitoring URLs (``http://host:8222``) of every server holding the stream,
    read to verify ``sync_interval: always``."""
    allow_unsynced_jetstream: bool = False
    """Start although the servers' sync setting is not verified ``always`` (a WARNING is logged):
    development only, SYNC then does not mean on disk."""
    nats_user: str = ""
    """NATS user name (with ``nats_password``)."""
    nats_password: str = ""
    """NATS password (prefer the environment variable)."""
    nats_token: str = ""
    """NATS authentication token (prefer the environment variable)."""
    nats_credentials_file: Path | None = None
    """NATS ``.creds`` file (user JWT and NKey seed)."""
    nats_nkey_seed_file: Path | None = None
    """File holding an NKey seed."""
    nats_tls_ca: Path | None = None
    """PEM CA bundle the NATS servers' certificates are checked against (turns TLS on)."""
    nats_tls_cert: Path | None = None
    """PEM client certificate for NATS (with ``nats_tls_key``)."""
    nats_tls_key: Path | None = None
    """PEM private key of ``nats_tls_cert``."""
    lease_ttl_seconds: float = 10.0
    """Partition leases (``--backend nats``) expire this long after their last renewal; renewed
    every third of it. Every node must use the lease bucket's TTL."""
    nats_record_cache_bytes: int = 256 << 10
    """``--backend nats``: bytes of stored records each JetStream log (two per partition served:
    events and alerts) keeps in memory, the ones acknowledged or read last, so the edges of a range
    query and ListEvents pages read recent records without a round trip to the stream; 0: every
    read of a stored record goes to the stream. The default is ``JetStreamSettings.cache_bytes``'s
    (not imported from there: that would load the NATS client on every backend)."""

    def __post_init__(self) -> None:
        if self.fsync_mode not in ("filesystem", "file"):
            raise ValueError(f"fsync mode must be filesystem or file, got {self.fsync_mode!r}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"log format must be json or text, got {self.log_format!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
        if self.max_inflight_ingest_events < 1:
            raise ValueError("max in-flight ingest events must be at least 1")
        if self.min_free_disk_mb < 0:
            raise ValueError("the free disk floor must not be negative")
        if self.alerts_in_memory < 0:
            raise ValueError("--alerts-in-memory must not be negative")
        if not 0 <= self.sync_spin_us <= 10_000:  # NaN too; a longer wait would hold the loop
            raise ValueError("--sync-spin-us must be 0 (off) to 10000")
        if not self.memory_horizon_seconds >= 0:  # NaN too
            raise ValueError("--memory-horizon-seconds must be 0 (off) or positive")
        if self.handshake_timeout_seconds <= 0:
            raise ValueError("the handshake timeout must be positive")
        if self.backend not in ("embedded", "nats"):
            raise ValueError(f"backend must be embedded or nats, got {self.backend!r}")
        if self.backend == "nats" and not self.nats_urls:
            raise ValueError("--backend nats needs --nats-url (UNIMETER_NATS_URL): the NATS servers to use")
        if self.lease_ttl_seconds < 1:
            raise ValueError("--lease-ttl-seconds must be at least 1")
        if self.nats_replicas < 1:
            raise ValueError("--nats-replicas must be at least 1")
        if self.nats_record_cache_bytes < 0:
            raise ValueError("--nats-record-cache-bytes must not be negative (0: no cache)")
        if (self.nats_tls_cert is None) != (self.nats_tls_key is None):
            raise ValueError("a NATS client certificate needs its key (--nats-tls-cert and --nats-tls-key)")
        keys = self.api_keys_file is not None or bool(self.api_keys)
        if keys and self.node_addr and not self.cluster_secret and not self.insecure_node_protocol:
            raise ValueError(
                "API keys are configured but the node protocol (--node-addr) has no cluster secret, so "
                "anyone reaching it would bypass the keys: set a secret with UNIMETER_CLUSTER_SECRET "
                "(or --cluster-secret), or pass --insecure-node-protocol on a trusted network"
            )
        if self.engine not in ("auto", "native", "python"):
            raise ValueError(f"engine must be auto, native or python, got {self.engine!r}")

    @property
    def nats_urls(self) -> tuple[str, ...]:
        """The NATS server URLs of ``nats_url``."""
        return _split(self.nats_url)

    @property
    def nats_monitor_urls(self) -> tuple[str, ...]:
        """The monitoring URLs of ``nats_monitor_url``."""
        return _split(self.nats_monitor_url)


def _split(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _switch(raw: str) -> bool:
    """An on/off flag's value in the environment."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


_FLAGS: list[tuple[str, str, Callable[[str], object], str]] = [
    ("data_dir", "--data-dir", Path, "directory of logs, snapshots and the metric registry"),
    ("grpc_addr", "--grpc-addr", str, "host:port of the public gRPC API"),
    ("node_addr", "--node-addr", str, "host:port of the node protocol (empty: off)"),
    ("http_addr", "--http-addr", str, "host:port of /metrics, /healthz, /readyz (empty: off)"),
    ("partitions", "--partitions", int, "number of partitions"),
    ("flush_interval_ms", "--flush-interval-ms", float, "max milliseconds before an ASYNC write is fsynced"),
    ("fsync_mode", "--fsync-mode", str, "filesystem (one syncfs per flush, where safe) or file (per log)"),
    (
        "sync_spin_us",
        "--sync-spin-us",
        float,
        "longest a lone SYNC call's fsync is waited for on the loop's CPU, yielding it (0: sleep)",
    ),
    ("dedup_window_seconds", "--dedup-window-seconds", float, "dedup window by arrival time"),
    (
        "alerts_in_memory",
        "--alerts-in-memory",
        int,
        "newest alerts each partition keeps in memory (older ones are read from its alert log)",
    ),
    (
        "snapshot_interval_seconds",
        "--snapshot-interval-seconds",
        float,
        "seconds between a changed partition's snapshots (the partitions spread over them)",
    ),
    (
        "memory_horizon_seconds",
        "--memory-horizon-seconds",
        float,
        "seconds after an hour ends before its ListEvents positions move to disk (0: never)",
    ),
    ("log_level", "--log-level", str, "DEBUG, INFO, WARNING or ERROR"),
    ("log_format", "--log-format", str, "json (for log pipelines) or text (for humans)"),
    ("api_keys_file", "--api-keys-file", Path, "file of API keys: name:sha256hex:scopes lines, or JSON"),
    ("api_keys", "--api-keys", str, "API keys as name:sha256hex:scopes entries separated by ';'"),
    ("tls_cert", "--tls-cert", Path, "PEM certificate chain: TLS for gRPC and the node protocol"),
    ("tls_key", "--tls-key", Path, "PEM private key of --tls-cert"),
    ("cluster_secret", "--cluster-secret", str, "secret node-protocol peers must prove (prefer the env var)"),
    (
        "insecure_node_protocol",
        "--insecure-node-protocol",
        _switch,
        "serve the node protocol without a cluster secret although API keys are set (trusted networks only)",
    ),
    (
        "max_inflight_ingest_events",
        "--max-inflight-ingest-events",
        int,
        "events in flight past which ingest answers RESOURCE_EXHAUSTED",
    ),
    (
        "min_free_disk_mb",
        "--min-free-disk-mb",
        float,
        "MiB free on the data directory's filesystem below which ingest answers RESOURCE_EXHAUSTED",
    ),
    (
        "handshake_timeout_seconds",
        "--handshake-timeout-seconds",
        float,
        "seconds a new connection has to finish its TLS/HTTP2/node hello",
    ),
    ("engine", "--engine", str, "ingest engine: auto (native if installed), native or python"),
    ("node_id", "--node-id", str, "id of a new data directory's node (an existing one keeps its own)"),
    ("backend", "--backend", str, "embedded (files in the data directory) or nats (NATS JetStream)"),
    ("nats_url", "--nats-url", str, "comma-separated NATS server URLs (--backend nats)"),
    ("nats_stream", "--nats-stream", str, "the deployment's JetStream stream"),
    ("nats_replicas", "--nats-replicas", int, "replicas of the stream when this node creates it"),
    (
        "nats_monitor_url",
        "--nats-monitor-url",
        str,
        "comma-separated monitoring URLs of the NATS servers, to verify sync_interval: always",
    ),
    (
        "allow_unsynced_jetstream",
        "--allow-unsynced-jetstream",
        _switch,
        "start although the NATS servers are not verified to sync every write (development only)",
    ),
    ("nats_user", "--nats-user", str, "NATS user name"),
    ("nats_password", "--nats-password", str, "NATS password (prefer the env var)"),
    ("nats_token", "--nats-token", str, "NATS token (prefer the env var)"),
    ("nats_credentials_file", "--nats-credentials-file", Path, "NATS .creds file (JWT and NKey seed)"),
    ("nats_nkey_seed_file", "--nats-nkey-seed-file", Path, "file holding a NATS NKey seed"),
    ("nats_tls_ca", "--nats-tls-ca", Path, "PEM CA bundle for the NATS servers' certificates (TLS on)"),
    ("nats_tls_cert", "--nats-tls-cert", Path, "PEM client certificate for NATS"),
    ("nats_tls_key", "--nats-tls-key", Path, "PEM private key of --nats-tls-cert"),
    (
        "lease_ttl_seconds",
        "--lease-ttl-seconds",
        float,
        "seconds a partition lease outlives its last renewal (--backend nats; the lease bucket's TTL)",
    ),
    (
        "nats_record_cache_bytes",
        "--nats-record-cache-bytes",
        int,
        "bytes of recently stored records each JetStream log keeps in memory for reads (0: every "
        "read goes to the stream)",
    ),
]


_DEFAULT_WORDS: dict[str, str] = {
    # The node decides (NodeConfig.partitions): 64 for a new directory, else what the directory has.
    "partitions": "64 for a new data directory; an existing one keeps its own",
    "api_keys_file": "none",
    "api_keys": "none; without any key the gRPC API is open",
    "tls_cert": "none: plain TCP",
    "tls_key": "none",
    "cluster_secret": "none",
    "node_id": "generated for a new data directory",
    "nats_url": "none",
    "nats_monitor_url": "none",
    "nats_password": "none",
    "nats_token": "none",
}
"""How a default that is not a plain value reads in ``--help``."""


def _default_text(name: str, value: object) -> str:
    """A default as ``--help`` shows it: words where the value alone would mean nothing."""
    if name in _DEFAULT_WORDS:
        return _DEFAULT_WORDS[name]
    if value is None or value == "" or value is False:
        return "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path) and not value.is_absolute():
        return f"./{value}"  # as the README writes it: relative to the working directory
    return str(value)


def _env_name(flag: str) -> str:
    return "UNIMETER_" + flag.lstrip("-").replace("-", "_").upper()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every serve flag (default None, so the environment can fill what is not given)."""
    defaults = ServeConfig()
    for name, flag, kind, help_text in _FLAGS:
        default = _default_text(name, getattr(defaults, name))
        help_text = f"{help_text} (env {_env_name(flag)}; default: {default})"
        if kind is _switch:  # given: on; the environment can only turn it on when it is not given
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)


def serve_config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServeConfig:
    """Flags over environment over defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name, flag, kind, _ in _FLAGS:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
        elif _env_name(flag) in env:
            raw = env[_env_name(flag)]
            try:
                values[name] = kind(raw)
            except ValueError as exc:
                raise SystemExit(f"{_env_name(flag)}={raw!r}: {exc}") from None
    try:
        return ServeConfig(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise SystemExit(f"unimeter serve: {exc}") from None


def env_names() -> Sequence[str]:
    """Every environment variable serve reads (for docs and tests)."""
    return [_env_name(flag) for _, flag, _, _ in _FLAGS]
