"""A log line that clients can trigger at will, written at most once per interval.

For events caused by client input (malformed request bodies, calls to unimplemented methods): each
one is worth a line for the operator, but a client sending thousands a second must not be able to
fill the disk through the log. The first occurrence is logged at once; later ones within the
interval are only counted, and the next line written says how many were left out. Not for errors
of the server itself, which are logged in full every time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["ThrottledLog"]


class ThrottledLog:
    """At most one line per ``interval_seconds`` on ``logger``, counting the lines left out."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        *,
        interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._interval = interval_seconds
        self._clock = clock
        self._next_at = float("-inf")
        self.suppressed = 0
        """Occurrences not logged since the last line written."""

    def emit(self, message: str, *args: object) -> bool:
        """Log ``message % args`` unless a line was written less than an interval ago; whether it was."""
        now = self._clock()
        if now < self._next_at:
            self.suppressed += 1
            return False
        self._next_at = now + self._interval
        if self.suppressed:
            message += f" (and {self.suppressed} more since the previous line, not logged)"
            self.suppressed = 0
        self._logger.log(self._level, message, *args)
        return True
