"""Retries with exponential backoff and full jitter, bounded by the caller's deadline, and the
capped backoff schedule of streams that re-open after their node went away."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .errors import DeadlineExceededError, ResourceExhaustedError, UnavailableError

__all__ = ["RESUBSCRIBE_MAX_BACKOFF", "RetryPolicy", "backoff_bounds", "call_with_retries", "deadline_after"]

RESUBSCRIBE_MAX_BACKOFF = 1.0
"""Longest wait, seconds, between attempts to re-open an alert stream. A restarting node is usually
back within seconds, and a subscriber wants its alerts as soon as it is: at most a second late."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How the client core retries retryable failures (UNAVAILABLE, RESOURCE_EXHAUSTED)."""

    initial_backoff: float = 0.02
    """First delay, seconds."""
    max_backoff: float = 1.0
    """Largest delay, seconds."""
    multiplier: float = 2.0
    """Growth of the delay per attempt."""
    default_timeout: float = 30.0
    """Deadline of a call that gives none."""
    answer_margin: float = 0.25
    """Seconds before the deadline after which no new try starts: the last failure is raised
    instead, with time left for it to reach a caller (a gRPC client's own deadline, which the
    server sees rounded, fires at about the same moment as the server's)."""


def backoff_bounds(initial: float, maximum: float, multiplier: float = 2.0) -> Iterator[float]:
    """The upper bounds of successive retry delays: ``initial``, growing by ``multiplier`` per
    attempt up to ``maximum``, then ``maximum`` for ever. Start a new iterator once an attempt
    succeeds."""
    bound = min(initial, maximum)
    while True:
        yield bound
        bound = min(maximum, bound * multiplier)


def deadline_after(timeout: float | None, policy: RetryPolicy) -> float:
    """The monotonic deadline of a call with ``timeout`` seconds (policy default when None)."""
    return time.monotonic() + (policy.default_timeout if timeout is None else timeout)


async def call_with_retries(
    attempt: Callable[[float], Awaitable[T]],
    deadline: float,
    policy: RetryPolicy,
    *,
    on_retry: Callable[[Exception], Awaitable[bool]] | None = None,
) -> T:
    """Run ``attempt(seconds_left)`` until it succeeds, fails for good, or the deadline passes.

    Between tries it waits a jittered, growing backoff, at least the error's own retry delay,
    unless ``on_retry`` (called with the failure) answers True: the next try goes somewhere else
    (a partition's new owner), so only the jittered backoff is waited, not the delay the node that
    no longer serves it asked for. When the deadline leaves no room for another try, the last
    failure is raised as it is (an UNAVAILABLE with its reason and owner hint, not a bare
    DEADLINE_EXCEEDED), so the caller learns why.
    """
    backoff = policy.initial_backoff
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("deadline exceeded before the call could complete")
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the caller's
            # cancellation when the attempt finishes in the same loop turn (a shutdown then hangs).
            async with asyncio.timeout(left):
                return await attempt(left)
        except TimeoutError:
            raise DeadlineExceededError("deadline exceeded") from None
        except (UnavailableError, ResourceExhaustedError) as exc:
            jitter = random.uniform(0, backoff)
            rerouted = False
            if on_retry is not None:
                try:
                    # Bounded like a try: a slow map refresh must not outlive the caller.
                    async with asyncio.timeout(deadline - policy.answer_margin - time.monotonic()):
                        rerouted = await on_retry(exc)
                except TimeoutError:
                    raise exc from None
            delay = jitter if rerouted else max(exc.retry_after_seconds or 0.0, jitter)
            if time.monotonic() + delay >= deadline - policy.answer_margin:
                raise
            await asyncio.sleep(delay)
            backoff = min(policy.max_backoff, backoff * policy.multiplier)
