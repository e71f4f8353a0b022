"""Opening one of the cluster's KV buckets: get it, or create it, and wait until it can be written.

Opening or creating it is tried again while JetStream answers as a cluster just started does ("no
suitable peers", no responders, timeouts). A bucket just created (or one whose servers are
electing a leader) answers writes with "no responders" until its stream has a leader; the
cluster's state (``metric_registry``, ``leases``) is written right after it is opened, so opening
waits for the leader, bounded. Watching a bucket is tried again the same way: on a busy cluster
creating the watch's consumer can take longer than one request's timeout. Not here: what the
buckets hold.
"""

from __future__ import annotations

import asyncio
import time

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from .stream import PEERS_OFFLINE

__all__ = ["NOT_STORED", "open_bucket", "watch_bucket"]

NOT_STORED = (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError)
"""A write nobody answered: for that moment the bucket's stream had no leader (an election, a
server restarting), so the write was not stored and writing it again is safe. (A timeout is not
one of these: the write may have been stored.)"""

_LEADER_WAIT_SECONDS = 20.0
"""Longer than a leader election (about 6 s measured)."""


async def open_bucket(js: JetStreamContext, config: api.KeyValueConfig) -> KeyValue:
    """Bucket ``config.bucket`` (created with ``config`` when missing), once its stream has a
    leader; TimeoutError if it gets none within 20 s."""
    deadline = time.monotonic() + _LEADER_WAIT_SECONDS
    while True:
        try:
            try:
                kv = await js.key_value(config.bucket)
            except nats.js.errors.BucketNotFoundError:
                kv = await js.create_key_value(config)
            break
        except (TimeoutError, *NOT_STORED):
            if time.monotonic() > deadline:
                raise
        except nats.js.errors.APIError as exc:
            # "No suitable peers": a server of the replicas is starting or catching up.
            transient = exc.err_code == PEERS_OFFLINE or isinstance(
                exc, nats.js.errors.ServiceUnavailableError
            )
            if not transient or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)
    while True:
        try:
            info = await js.stream_info(f"KV_{config.bucket}")
            if info.cluster is None or info.cluster.leader:
                return kv
        except (TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"KV bucket {config.bucket} has no leader after {_LEADER_WAIT_SECONDS:.0f}s")
        await asyncio.sleep(0.1)


async def watch_bucket(kv: KeyValue) -> KeyValue.KeyWatcher:
    """A watch of every key of ``kv`` (its current values first), tried again while creating its
    consumer times out or finds no leader; TimeoutError after 20 s. A consumer a timed-out request
    did create is ephemeral and has no subscriber, so the servers remove it by themselves."""
    deadline = time.monotonic() + _LEADER_WAIT_SECONDS
    while True:
        try:
            return await kv.watchall()
        except (TimeoutError, *NOT_STORED):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)
