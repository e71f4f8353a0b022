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
    on_retry: Callable[[Exception], Awaitable[None]] | None = None,
) -> T:
    """Run ``attempt(seconds_left)`` until it succeeds, fails for good, or the deadline passes."""
    backoff = policy.initial_backoff
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("deadline exceeded before the call could complete")
        try:
            return await asyncio.wait_for(attempt(left), left)
        except TimeoutError:
            raise DeadlineExceededError("deadline exceeded") from None
        except (UnavailableError, ResourceExhaustedError) as exc:
            hint = exc.retry_after_seconds or 0.0
            delay = max(hint, random.uniform(0, backoff))
            if time.monotonic() + delay >= deadline:
                raise
            if on_retry is not None:
                await on_retry(exc)
            await asyncio.sleep(delay)
            backoff = min(policy.max_backoff, backoff * policy.multiplier)
