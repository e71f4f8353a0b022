"""Turns at storing for batches stored in slices: one batch at a time, in arrival order.

A batch over many partitions is stored a slice of parts at a time, with the event loop free in
between for the flusher, alert streams and queries (``Node._ingest_in_slices``). When several
such batches were in flight they used to share the loop slice by slice. Sharing finishes them all
at about the same time: four callers with one 1000-event batch each got their answers together,
then sent their next batches together, and the loop sat idle while those travelled and were
decoded. Taking turns in arrival order finishes them one after the other, so a caller's next batch
arrives while the others are still being stored (docs/design.md, "Durability and group
commit").

A turn covers up to ``turn_events`` events, so a batch far larger than the usual does not hold
the batches behind it for all of its CPU: at that mark it goes to the back of the line.
"""

from __future__ import annotations

import asyncio
from collections import deque


class IngestTurns:
    """Whose turn it is to store; at most one holder, the rest waiting in arrival order."""

    def __init__(self, turn_events: int) -> None:
        self.turn_events = turn_events
        """Events a turn covers before a holder with batches behind it steps back (:meth:`step_back`)."""
        self._held = False
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def others_waiting(self) -> bool:
        """Whether a batch is waiting for the turn."""
        return bool(self._waiting)

    async def take(self) -> None:
        """Wait for the turn; at once, without yielding to the loop, when nobody holds it. A
        cancellation while waiting leaves nothing held and nobody skipped."""
        if not self._held and not self._waiting:
            self._held = True
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if not turn.cancelled():
                self.give_up()  # handed the turn just as the caller went away: pass it on
            elif turn in self._waiting:  # (:meth:`give_up` may have skipped it already)
                self._waiting.remove(turn)
            raise

    def give_up(self) -> None:
        """End the holder's turn: the longest waiting batch has it next."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # a waiter cancelled in the same loop turn is skipped
                turn.set_result(None)
                return
        self._held = False

    async def step_back(self) -> bool:
        """Hand the turn to the next batch and wait for it to come round again, for a holder
        whose batch must be finished whatever happens: a cancellation meanwhile is held, and
        returned as True, instead of raised."""
        self.give_up()
        if not self._held:  # every waiter had gone meanwhile: the turn is free, and stays ours
            self._held = True
            return False
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        cancelled = False
        while not turn.done():
            try:
                await asyncio.shield(turn)
            except asyncio.CancelledError:
                cancelled = True
        return cancelled
