"""The ingest engines: how the raw bytes of an ``IngestRequest`` become per-partition event rows.

The engine decodes in the Ingest handler's request-deserializer slot (:class:`IngestRequestDecoder`),
so the call wrapping (``service.call_wrapping``) treats it as any method's message parsing: a body
that does not decode is ``MALFORMED_REQUEST``, counted and logged like every other method's.

``python`` is the reference: protobuf parses the message, ``service/convert.py`` turns it into
rows, and the client core validates and splits them. ``native`` hands the bytes to the compiled
``unimeter_native`` extension (``native/``), which decodes, validates and splits in one pass over
them, with the same rows, the same partition split and the same field violations, and gives the
per-partition rows to the client core. ``--engine`` / ``UNIMETER_ENGINE`` picks one; ``auto`` (the
default) runs native when the extension is installed. Not for: anything after the split, which
both engines share (the node's partitions, logs and aggregation).

A large request (``OFF_LOOP_BYTES`` and up) is decoded and split by the native engine on a worker
thread that never takes the GIL (:class:`DecodeJobs`), while the event loop goes on with other
calls: the deserializer then answers an awaitable, which the call wrapping awaits. The loop keeps
what needs Python, the metric lookups, the rules and the hand-over of the parts. A small request
is decoded in place: for it the hand-over would cost more than the decode.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cluster_client.client import Client, PlaceOffsets
from cluster_client.errors import FieldViolation, InternalError, InvalidArgumentError
from cluster_client.types import IngestResult
from unimeter.v1 import ingest_service_pb2

from .convert import ingest_rows_from_proto

__all__ = [
    "ENGINES",
    "OFF_LOOP_BYTES",
    "DecodeJobs",
    "DecodedIngest",
    "EngineChoice",
    "IngestEngine",
    "IngestRequestDecoder",
    "NativeIngestEngine",
    "PythonIngestEngine",
    "choose_engine",
]

log = logging.getLogger(__name__)

ENGINES = ("auto", "native", "python")
NATIVE_MODULE = "unimeter_native"
OFF_LOOP_BYTES = 16 << 10
"""Request bodies of this size and up (~200 events) are decoded by the native engine's worker
thread; smaller ones on the loop. Measured in docs/benchmarks-history.md ("Large requests decoded off the
loop")."""


class DecodedIngest(Protocol):
    """A decoded request: its event count (for the in-flight limit) and how to store it."""

    n_events: int

    async def store(self, timeout: float | None) -> IngestResult:
        """Validate (where not yet done) and store the batch; InvalidArgumentError if it is bad."""
        ...


class IngestEngine(Protocol):
    """Turns request bytes into a :class:`DecodedIngest` for ``client``, and an ingest's result
    into the response's bytes."""

    name: str

    def decode(self, data: bytes, client: Client) -> DecodedIngest | Awaitable[DecodedIngest]:
        """Decode ``data``, here or (an awaitable) off the loop; an exception (any), raised or
        awaited, if it is not an IngestRequest."""
        ...

    def encode_response(self, result: IngestResult) -> bytes:
        """The serialized ``IngestResponse`` of ``result`` (the same bytes on every engine)."""
        ...

    def close(self) -> None:
        """Stop what the engine runs besides the loop (once no call decodes any more)."""
        ...


class _PythonDecoded:
    __slots__ = ("_client", "_request", "n_events")

    def __init__(self, request: ingest_service_pb2.IngestRequest, client: Client) -> None:
        self._request = request
        self._client = client
        self.n_events = len(request.events)

    async def store(self, timeout: float | None) -> IngestResult:
        rows, sync = ingest_rows_from_proto(self._request)
        return await self._client.ingest_rows(rows, sync=sync, timeout=timeout)


class PythonIngestEngine:
    """The reference engine: protobuf parsing, then the client core's validation and split."""

    name = "python"

    def decode(self, data: bytes, client: Client) -> DecodedIngest:
        return _PythonDecoded(ingest_service_pb2.IngestRequest.FromString(data), client)

    def encode_response(self, result: IngestResult) -> bytes:
        response = ingest_service_pb2.IngestResponse(
            n_stored=result.n_stored, n_duplicates=result.n_duplicates, offsets=result.offsets
        )
        return response.SerializeToString()

    def close(self) -> None:
        pass


_FALLBACK = PythonIngestEngine()
"""The reference engine, for the bodies the native decoder refuses."""


def _names_unknown_metric(violations: list[tuple[str, str]]) -> bool:
    return any(what.startswith("unknown metric ") for _, what in violations)


Answer = tuple[int, bool, Any, Any]
"""``unimeter_native.decode_ingest``'s answer: (n_events, sync, by_partition, rejection)."""


class _NativeDecoded:
    __slots__ = ("_client", "_data", "_engine", "_outcome", "n_events")

    def __init__(self, engine: NativeIngestEngine, data: bytes, client: Client, outcome: Answer) -> None:
        self._engine = engine
        self._data = data
        self._client = client
        self._outcome = outcome
        self.n_events: int = outcome[0]

    async def store(self, timeout: float | None) -> IngestResult:
        n_events, sync, by_partition, rejection = self._outcome
        client = self._client
        # A remote client's metric cache may lag a metric created since; the Python path reloads
        # it when a code is missing, so this one does too before calling a code unknown.
        stale = rejection is not None and _names_unknown_metric(rejection[1])
        if stale and await client.refresh_metric_cache():
            n_events, sync, by_partition, rejection = self._engine.run(self._data, client)
        if rejection is not None:
            message, violations = rejection
            raise InvalidArgumentError(message, violations=[FieldViolation(f, d) for f, d in violations])
        return await client.ingest_partitioned(
            by_partition, n_events, sync=sync, timeout=timeout, place_offsets=self._engine.request_offsets
        )


class NativeIngestEngine:
    """The compiled engine: ``unimeter_native.decode_ingest`` decodes, validates and splits."""

    name = "native"

    def __init__(self, module: Any) -> None:
        self._module = module
        self._jobs: DecodeJobs | None = None
        self._decode_ingest = module.decode_ingest
        self.request_offsets: PlaceOffsets = module.request_offsets
        """Puts a request's offsets back in request order (``Client.ingest_partitioned``)."""
        self._encode_response: Callable[[int, int, Sequence[int]], bytes] = module.encode_ingest_response
        self._malformed_error: type[Exception] = module.MalformedRequest
        self._panic_error: type[Exception] = module.NativePanic

    def run(self, data: bytes, client: Client) -> Answer:
        """``unimeter_native.decode_ingest`` over ``data`` with ``client``'s metrics and partitions:
        ``MalformedRequest`` (a ValueError) for bytes that are not a message, InternalError if
        the extension panicked."""
        try:
            return self._decode_ingest(data, client.ingest_metric_lookup(), client.partitions)  # type: ignore[no-any-return]
        except self._panic_error as exc:
            raise self._internal(exc) from exc

    def _internal(self, exc: Exception) -> InternalError:
        # A bug, not bad input: this call fails, the server keeps serving.
        log.error("%s", exc)
        return InternalError(f"the native ingest engine failed: {exc}")

    def encode_response(self, result: IngestResult) -> bytes:
        return self._encode_response(result.n_stored, result.n_duplicates, result.offsets)

    def decode(self, data: bytes, client: Client) -> DecodedIngest | Awaitable[DecodedIngest]:
        if len(data) >= OFF_LOOP_BYTES:
            jobs = self._jobs
            if jobs is None:
                jobs = self._jobs = DecodeJobs(self._module.DecodeWorker())
            return self._decoded_off_loop(jobs.decode(data, client.partitions), data, client)
        try:
            return _NativeDecoded(self, data, client, self.run(data, client))
        except InternalError as exc:
            # Raised here it would read as a malformed body; the call must fail as INTERNAL.
            return _Failed(exc)
        except self._malformed_error:
            return self._fallback(data, client)

    async def _decoded_off_loop(
        self, decoded: asyncio.Future[Any], data: bytes, client: Client
    ) -> DecodedIngest:
        outcome = await decoded
        if isinstance(outcome, self._malformed_error):
            return self._fallback(data, client)
        if isinstance(outcome, self._panic_error):
            return _Failed(self._internal(outcome))
        try:
            answer = outcome.answer(client.ingest_metric_lookup())
        except self._panic_error as exc:
            return _Failed(self._internal(exc))
        return _NativeDecoded(self, data, client, answer)

    @staticmethod
    def _fallback(data: bytes, client: Client) -> DecodedIngest:
        # protobuf has the final word on what is a message: a few encodings no encoder writes
        # (an unknown group left open to the end of its event, say) it accepts where the native
        # decoder refuses. Such a body costs the slow path; every other answer is the same.
        return _FALLBACK.decode(data, client)

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.close()
            self._jobs = None


class DecodeJobs:
    """Requests decoded by the native engine's worker thread (``unimeter_native.DecodeWorker``,
    which never takes the GIL), each awaited on the loop; the worker's eventfd rings when one is
    done, as the tick writer's does (``node.tick_writes``)."""

    def __init__(self, worker: Any) -> None:
        self._worker = worker
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next_token = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def decode(self, data: bytes, partitions: int) -> asyncio.Future[Any]:
        """The worker's outcome for ``data``: a ``DecodedRequest``, or the exception it stands
        for (``MalformedRequest``, ``NativePanic``) as a value."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            loop.add_reader(self._worker.fileno(), self._collect)
        token = self._next_token = self._next_token + 1
        self._worker.submit(token, data, partitions)
        future = self._waiting[token] = loop.create_future()
        return future

    def _collect(self) -> None:
        for token, outcome in self._worker.done():
            future = self._waiting.pop(token)
            if not future.done():  # a caller that went away cancelled its wait
                future.set_result(outcome)

    def close(self) -> None:
        """Let the queued decodes finish, stop the worker, and hand the waiters their outcomes."""
        self._worker.stop()
        if self._loop is not None:
            self._loop.remove_reader(self._worker.fileno())
        self._collect()


class _Failed:
    """A decode that failed for a reason of the server's, reported when the handler runs."""

    __slots__ = ("_error", "n_events")

    def __init__(self, error: InternalError) -> None:
        self._error = error
        self.n_events = 0

    async def store(self, timeout: float | None) -> IngestResult:
        raise self._error


class IngestRequestDecoder:
    """``IngestRequest`` as ``engine`` decodes it for ``client``, in the shape grpc and the
    call wrapping expects of a request message class: ``FromString`` is the Ingest handler's request
    deserializer, ``DESCRIPTOR`` names the message in a malformed-request error."""

    DESCRIPTOR = ingest_service_pb2.IngestRequest.DESCRIPTOR

    def __init__(self, engine: IngestEngine, client: Client) -> None:
        self._engine = engine
        self._client = client

    # protobuf's name: the call wrapping reads a deserializer's message type off its owner.
    def FromString(self, data: bytes) -> DecodedIngest | Awaitable[DecodedIngest]:
        return self._engine.decode(data, self._client)


@dataclass(frozen=True, slots=True)
class EngineChoice:
    """The engine that runs and, for the log line at start, why."""

    engine: IngestEngine
    reason: str

    def announce(self) -> None:
        """The one log line saying which engine runs and why."""
        log.info("ingest engine: %s", self.reason)


def choose_engine(requested: str) -> EngineChoice:
    """The engine for ``requested`` (auto, native or python). ValueError for an unknown name or
    for ``native`` when the extension cannot be loaded: asking for it means wanting it."""
    if requested not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {requested!r}")
    if requested == "python":
        return EngineChoice(PythonIngestEngine(), "python engine (requested)")
    try:
        module = importlib.import_module(NATIVE_MODULE)
    except ImportError as exc:
        if requested == "native":
            raise ValueError(
                f"the native engine was requested but {NATIVE_MODULE} cannot be loaded ({exc}); "
                "build it with `make venv` on a machine with cargo, or use --engine python"
            ) from exc
        return EngineChoice(
            PythonIngestEngine(),
            f"python engine (auto: the native extension {NATIVE_MODULE} is not installed; "
            "`make venv` builds it where cargo is available)",
        )
    why = "requested" if requested == "native" else f"auto: {NATIVE_MODULE} is installed"
    return EngineChoice(NativeIngestEngine(module), f"native engine ({why})")
