"""``IngestTurns``: one holder at a time, the rest served in arrival order, cancellations leaving
nobody stuck and nobody skipped."""

from __future__ import annotations

import asyncio

import pytest

from node.ingest_turns import IngestTurns


async def holder(turns: IngestTurns, name: str, order: list[str], hold: asyncio.Event | None = None) -> None:
    await turns.take()
    order.append(name)
    try:
        if hold is not None:
            await hold.wait()
    finally:
        turns.give_up()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def held_by_first(turns: IngestTurns, order: list[str]) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A task named "first" holding the turn, and the event that makes it give the turn up."""
    release = asyncio.Event()
    first = asyncio.create_task(holder(turns, "first", order, release))
    await settle()
    return first, release


async def test_a_free_turn_is_taken_without_yielding_to_the_loop() -> None:
    turns = IngestTurns(1024)
    ran: list[str] = []
    other = asyncio.get_running_loop().call_soon(ran.append, "other")
    await turns.take()
    assert ran == []  # nothing else ran in between
    assert not turns.others_waiting
    turns.give_up()
    other.cancel()


async def test_waiters_get_the_turn_in_arrival_order() -> None:
    turns = IngestTurns(1024)
    order: list[str] = []
    async with asyncio.timeout(5):
        first, release = await held_by_first(turns, order)
        rest = [asyncio.create_task(holder(turns, name, order)) for name in ("b", "c", "d")]
        await settle()
        assert order == ["first"] and turns.others_waiting
        release.set()
        await asyncio.gather(first, *rest)
    assert order == ["first", "b", "c", "d"]
    assert not turns.others_waiting
    await turns.take()  # free again
    turns.give_up()


async def test_a_waiter_cancelled_leaves_the_line_and_the_next_one_is_served() -> None:
    turns = IngestTurns(1024)
    order: list[str] = []
    async with asyncio.timeout(5):
        first, release = await held_by_first(turns, order)
        gone = asyncio.create_task(holder(turns, "gone", order))
        kept = asyncio.create_task(holder(turns, "kept", order))
        await settle()
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        release.set()
        await asyncio.gather(first, kept)
    assert order == ["first", "kept"]
    assert not turns.others_waiting


async def test_a_waiter_cancelled_just_as_it_is_handed_the_turn_passes_it_on() -> None:
    turns = IngestTurns(1024)
    order: list[str] = []
    async with asyncio.timeout(5):
        await turns.take()
        gone = asyncio.create_task(holder(turns, "gone", order))
        kept = asyncio.create_task(holder(turns, "kept", order))
        await settle()
        turns.give_up()  # "gone" has the turn, but has not run yet...
        gone.cancel()  # ...and never will
        with pytest.raises(asyncio.CancelledError):
            await gone
        await kept
    assert order == ["kept"]
    await turns.take()  # nothing left held
    turns.give_up()


async def test_a_holder_stepping_back_lets_the_waiters_in_first_then_resumes() -> None:
    turns = IngestTurns(1024)
    order: list[str] = []
    async with asyncio.timeout(5):
        await turns.take()
        order.append("big, first turn")
        waiters = [asyncio.create_task(holder(turns, name, order)) for name in ("b", "c")]
        await settle()
        assert await turns.step_back() is False
        order.append("big, second turn")
        later = asyncio.create_task(holder(turns, "later", order))
        await settle()
        assert order[-1] == "big, second turn"  # the holder has the turn back; "later" waits
        turns.give_up()
        await asyncio.gather(*waiters, later)
    assert order == ["big, first turn", "b", "c", "big, second turn", "later"]


async def test_stepping_back_with_nobody_waiting_keeps_the_turn() -> None:
    turns = IngestTurns(1024)
    order: list[str] = []
    async with asyncio.timeout(5):
        await turns.take()
        assert await turns.step_back() is False
        waiter = asyncio.create_task(holder(turns, "waiter", order))
        await settle()
        assert order == []  # still held
        turns.give_up()
        await waiter
    assert order == ["waiter"]


async def test_a_cancellation_while_stepped_back_is_held_until_the_turn_comes_round() -> None:
    turns = IngestTurns(1024)
    order: list[str] = []
    release, other_waits = asyncio.Event(), asyncio.Event()

    async def big() -> bool:
        await turns.take()
        order.append("big, first turn")
        await other_waits.wait()
        cancelled = await turns.step_back()
        order.append("big, second turn")
        turns.give_up()
        return cancelled

    async with asyncio.timeout(5):
        task = asyncio.create_task(big())
        await asyncio.sleep(0)
        other = asyncio.create_task(holder(turns, "other", order, release))
        await settle()
        assert turns.others_waiting
        other_waits.set()
        await settle()
        assert order == ["big, first turn", "other"]
        task.cancel()  # while "other" holds the turn
        await settle()
        assert not task.done()
        release.set()
        assert await task is True  # finished its turn, then reported the cancellation
        await other
    assert order == ["big, first turn", "other", "big, second turn"]
