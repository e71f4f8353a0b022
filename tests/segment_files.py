"""What a test needs to know of a segment file on disk: where its records end.

A log reserves space past its records in its active segment file (``segment_log._RESERVE_BYTES``),
so a file's size is not where its records end; tests that damage or measure a log's records use
this instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from node import segment_log

__all__ = ["records_length"]


def records_length(path: Path) -> int:
    """Bytes of whole records at the start of the segment file ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return segment_log.valid_prefix(fd, os.fstat(fd).st_size)[0]
    finally:
        os.close(fd)
