"""Process-wide logging for ``unimeter serve``: JSON lines for machines or plain text for humans,
every record stamped with the request id of the gRPC call it was emitted in.

Only the command line calls :func:`configure_logging`; library code (``UnimeterServer``, the node)
just logs, so embedding Unimeter never rewires the host program's logging.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

from .request_context import api_key_name_var, current_request_id

__all__ = ["LOG_FORMATS", "JsonFormatter", "RequestIdFilter", "configure_logging"]

LOG_FORMATS = ("json", "text")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

# Attributes every LogRecord has; anything else was passed with ``extra=`` and goes into the JSON.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "request_id"}
)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``"-"`` outside a call) and, when the call authenticated with an
    API key, ``record.api_key`` (its name). Install it on handlers, not loggers, so records of
    every logger pass through it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        key = api_key_name_var.get()
        if key and not hasattr(record, "api_key"):
            record.api_key = key
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (RFC 3339 UTC, ms), ``level``, ``logger``, ``msg``,
    ``request_id``, ``api_key`` (when the call used one), ``exc`` (traceback text, when there is
    one) and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, object] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", current_request_id()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure_logging(
    level: str = "INFO", fmt: str = "json", stream: TextIO | None = None
) -> logging.Handler:
    """Replace the root logger's handlers with one writing ``fmt`` (``json`` or ``text``) records
    at ``level`` to ``stream`` (default stderr); returns the handler."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
