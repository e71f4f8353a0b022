"""The request id (and API key name) of the gRPC call being handled, carried in context variables.

grpc.aio runs a call's handler (wrapped by ``service.call_wrapping``) in one
``contextvars.Context``, and everything the handler awaits in-process (client core, node) runs in
that context too, so any log record emitted while handling a call can name it. This module only
holds and vets the values; the call wrapping sets them and the logging filter reads them.
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar

__all__ = [
    "NO_REQUEST",
    "REQUEST_ID_HEADER",
    "accept_request_id",
    "api_key_name_var",
    "current_request_id",
    "request_id_var",
]

REQUEST_ID_HEADER = "x-request-id"
NO_REQUEST = "-"
"""The request id of log records emitted outside any call (startup, background loops)."""

request_id_var: ContextVar[str] = ContextVar("unimeter_request_id", default=NO_REQUEST)
api_key_name_var: ContextVar[str] = ContextVar("unimeter_api_key_name", default="")
"""Name of the API key the call authenticated with ("" when keys are off): who did it, in the logs."""

# A caller's id is echoed into logs and metadata: keep it short and printable so it can neither
# forge log lines nor bloat them.
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def current_request_id() -> str:
    """The id of the call being handled, or ``"-"``."""
    return request_id_var.get()


def accept_request_id(given: str | bytes | None) -> str:
    """The caller's id if it is 1-128 characters of ``A-Z a-z 0-9 . _ : / + = @ -``, else a new
    random one (16 hex digits)."""
    if isinstance(given, str) and _ACCEPTABLE.fullmatch(given):
        return given
    # An id to find a call's log lines by, not a secret: the process's generator, not getrandom,
    # which was one more system call in every call.
    return f"{random.getrandbits(64):016x}"
