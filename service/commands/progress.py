"""A one-line progress bar on stderr, redrawn with a plain carriage return (no terminal library)."""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["Progress"]

_WIDTH = 30
_INTERVAL = 0.1  # redraws per second are capped: a terminal is slower than the import


class Progress:
    """Shows bytes read of the input (when its size is known) and the running counts."""

    def __init__(self, stream: TextIO, *, total_bytes: int | None, enabled: bool) -> None:
        self._stream = stream
        self._total = total_bytes if total_bytes else None
        self._enabled = enabled
        self._last_draw = 0.0
        self._shown = 0  # characters on the line now, to blank out a shorter redraw

    def update(self, done_bytes: int, text: str, *, force: bool = False) -> None:
        """Redraw with ``text`` after the bar (at most every 0.1 s unless ``force``)."""
        if not self._enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < _INTERVAL:
            return
        self._last_draw = now
        if self._total is not None:
            fraction = min(done_bytes / self._total, 1.0)
            filled = int(fraction * _WIDTH)
            line = f"[{'#' * filled}{'.' * (_WIDTH - filled)}] {fraction:4.0%}  {text}"
        else:
            line = text
        self._stream.write("\r" + line.ljust(self._shown))
        self._stream.flush()
        self._shown = len(line)

    def clear(self) -> None:
        """Blank the line, so another message can be printed on stderr."""
        if self._enabled and self._shown:
            self._stream.write("\r" + " " * self._shown + "\r")
            self._stream.flush()
            self._shown = 0
            self._last_draw = 0.0

    def finish(self, done_bytes: int, text: str) -> None:
        """Draw the final state and end the line."""
        if self._enabled:
            self.update(done_bytes, text, force=True)
            self._stream.write("\n")
            self._stream.flush()
            self._shown = 0
