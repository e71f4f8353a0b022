"""Lists and arrays of ints that the cyclic garbage collector does not track.

Cells, member histories and record-ref lists hold nothing but ints, so they can never be part of a
reference cycle, yet CPython's GC tracks every list and re-walks the survivors at each older
collection: with millions of cells, a full or middle-generation collection stops the process for
hundreds of milliseconds to seconds (measured: 0.5 s young-middle pauses at 2M events), which is
every request's tail latency, alerts included. Untracking a list at creation (the public C API
``PyObject_GC_UnTrack``, safe on any list) takes it out of every collection for good; a list
stays untracked when ints are appended or assigned. An ``array`` holds no references either
(and is tracked since Python 3.10), so the same applies. Where ``ctypes.pythonapi`` is missing (not
CPython), lists stay tracked: correct, just with the pauses.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TypeVar

__all__ = ["untracked"]


def _load_untrack() -> Callable[[object], None] | None:
    api = getattr(ctypes, "pythonapi", None)
    if api is None:
        return None
    untrack = api.PyObject_GC_UnTrack
    untrack.argtypes = [ctypes.py_object]
    untrack.restype = None
    return untrack  # type: ignore[no-any-return]


_untrack = _load_untrack()


_Ints = TypeVar("_Ints")


def untracked(ints: _Ints) -> _Ints:
    """``ints`` itself, no longer tracked by the cyclic GC. It must be an ``array``, or a list that
    only ever holds ints and arrays (neither can be part of a cycle)."""
    if _untrack is not None:
        _untrack(ints)
    return ints
