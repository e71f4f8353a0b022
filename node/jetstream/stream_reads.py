"""Reading stored records back from the deployment's stream, by stream sequence, in batches.

A subject log knows the stream sequence of each of its records; reading a run of consecutive
records is one batched direct get (``$JS.API.DIRECT.GET.<stream>`` with ``next_by_subj`` and
``batch``: the server streams the subject's messages from a sequence, then an end-of-batch status),
so a ListEvents page or a recovery chunk costs a round trip, not one per record. Several runs are
read at once. Direct gets may be answered by any server holding the stream, and a replica still
catching up may not have the newest messages yet: every message read is checked against the
sequence expected at that place, and whatever a replica did not have is read from the stream
leader (``STREAM.MSG.GET``). A read never answers with a wrong or partial record list: it raises
UnavailableError when NATS does not answer in time, and OSError when the stream no longer holds a
record this node knows it stored. Not here: which records are in memory (``subject_log``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
from collections.abc import Sequence

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from cluster_client.errors import UnavailableError

__all__ = ["READ_SECONDS", "StreamReader"]

READ_SECONDS = 2.0
"""Longest wait for one request's answer (a batch: for each of its messages)."""
_BATCH = 256
"""Records asked for in one request."""
_BATCH_BYTES = 4 << 20
"""Payload bytes a server sends for one request at most (it sends at least one message)."""
_AT_ONCE = 64
"""Requests of one read in flight together."""
_RETRY_AFTER_SECONDS = 1.0


class StreamReader:
    """Batched reads of one stream's messages over the node's connection."""

    def __init__(self, client: NatsClient, js: JetStreamContext, stream: str) -> None:
        self._client = client
        self._js = js
        self._stream = stream
        self._api = f"$JS.API.DIRECT.GET.{stream}"
        self._prefix = client.new_inbox()
        self._tokens = itertools.count()
        self._replies: dict[str, asyncio.Queue[Msg]] = {}
        self._sub: Subscription | None = None
        self._subscribing = asyncio.Lock()
        self.requests = 0
        """Requests sent so far (direct gets and leader gets): what reads cost in round trips."""

    async def read(self, subject: str, runs: Sequence[Sequence[int]]) -> list[list[bytes]]:
        """The records of ``subject`` at the stream sequences of each run (a run: consecutive
        records of the subject, increasing sequences), run by run; every run is read at once, one
        request per ``_BATCH`` records of it."""
        if not self._client.is_connected:
            raise _unavailable(subject, "the node's connection to NATS is down (reconnecting)")
        parts = [(i, run[j : j + _BATCH]) for i, run in enumerate(runs) for j in range(0, len(run), _BATCH)]
        found: list[list[bytes]] = [[] for _ in parts]
        gate = asyncio.Semaphore(_AT_ONCE)

        async def one(k: int) -> None:
            async with gate:
                found[k] = await self._run(subject, parts[k][1])

        try:
            async with asyncio.TaskGroup() as group:
                for k in range(len(parts)):
                    group.create_task(one(k))
        except* (UnavailableError, OSError) as failed:
            raise failed.exceptions[0] from None
        out: list[list[bytes]] = [[] for _ in runs]
        for (i, _), records in zip(parts, found, strict=True):
            out[i] += records
        return out

    async def close(self) -> None:
        """Stop receiving answers (the connection is closing)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(nats.errors.Error):  # closed already: nothing left to stop
                await sub.unsubscribe()

    async def _run(self, subject: str, seqs: Sequence[int]) -> list[bytes]:
        """One run of a subject's records: batched direct gets, each taking as many as the
        answering server has, and a leader get for a record it had not."""
        out: list[bytes] = []
        while len(out) < len(seqs):
            got = await self._batch(subject, seqs[len(out) :])
            if not got:
                got = [await self._from_leader(subject, seqs[len(out)])]
            out += got
        return out

    async def _batch(self, subject: str, seqs: Sequence[int]) -> list[bytes]:
        """The longest prefix of ``seqs`` one direct get answers (empty: the answering server
        does not have the first one)."""
        token = str(next(self._tokens))
        replies = self._replies[token] = asyncio.Queue()
        body = {"seq": seqs[0], "next_by_subj": subject, "batch": len(seqs), "max_bytes": _BATCH_BYTES}
        out: list[bytes] = []
        try:
            await self._subscribe()
            request = json.dumps(body).encode()
            self.requests += 1
            await self._client.publish(self._api, request, reply=f"{self._prefix}.{token}")
            while True:
                async with asyncio.timeout(READ_SECONDS):
                    msg = await replies.get()
                headers = msg.headers or {}
                status = headers.get("Status")
                if status:
                    # 204: the end of the batch; 404: nothing from there on; 503: no server
                    # answers direct gets yet (seen just after a stream's servers started): the
                    # leader answers the rest.
                    if status not in ("204", "404", "503"):
                        raise _unavailable(subject, f"direct get answered {status}")
                    return out
                if (
                    len(out) == len(seqs)
                    or int(headers.get("Nats-Sequence", "0")) != seqs[len(out)]
                    or headers.get("Nats-Subject") != subject
                ):
                    return out  # not what this node stored there: the rest comes from the leader
                out.append(msg.data)
        except TimeoutError:
            raise _unavailable(subject, f"no answer within {READ_SECONDS:.0f}s") from None
        except nats.errors.Error as exc:
            raise _unavailable(subject, str(exc) or type(exc).__name__) from None
        finally:
            del self._replies[token]

    async def _subscribe(self) -> None:
        async with self._subscribing:
            if self._sub is None:
                async with asyncio.timeout(READ_SECONDS):
                    self._sub = await self._client.subscribe(f"{self._prefix}.*", cb=self._deliver)

    async def _deliver(self, msg: Msg) -> None:
        queue = self._replies.get(msg.subject.rpartition(".")[2])
        if queue is not None:  # an answer after its read gave up is dropped
            queue.put_nowait(msg)

    async def _from_leader(self, subject: str, seq: int) -> bytes:
        """Message ``seq`` as the stream leader has it: OSError unless it is this subject's."""
        self.requests += 1
        try:
            async with asyncio.timeout(READ_SECONDS + 0.5):
                msg = await self._js.get_msg(self._stream, seq)
        except NotFoundError:
            raise OSError(
                errno.EIO, f"stream {self._stream} no longer holds sequence {seq} of {subject}"
            ) from None
        except (TimeoutError, nats.errors.Error, APIError) as exc:
            why = str(exc) or type(exc).__name__
            raise _unavailable(subject, f"the stream leader did not answer: {why}") from None
        if msg.subject != subject:
            found = f"stream {self._stream} sequence {seq} is a message of {msg.subject}"
            raise OSError(errno.EIO, f"{found}, not {subject}")
        return msg.data or b""


def _unavailable(subject: str, why: str) -> UnavailableError:
    return UnavailableError(
        f"records of {subject} cannot be read from JetStream now: {why}; retry later",
        reason="NATS_UNAVAILABLE",
        retry_after_seconds=_RETRY_AFTER_SECONDS,
    )
