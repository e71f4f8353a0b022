"""A few cycles of the crash loop (``tests.reliability.crash_loop``) in ``make test``, per target.

Three cycles, one of each kind of kill (a random moment of the load, inside a snapshot write,
during recovery), on a fresh data directory: about 10 s on an idle 2-core machine, bounded by the
timeout below. ``make soak`` runs 100. The seed is random unless ``UNIMETER_CRASH_SEED`` is set, and
is in the failure message, so a failing workload can be replayed.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.engines import Target, over_targets
from tests.reliability.crash_loop import KINDS, run_crash_loop

pytestmark = pytest.mark.crash

CYCLES = len(KINDS)


@over_targets
@pytest.mark.timeout(100)
async def test_a_few_crash_loop_cycles_lose_double_and_misaggregate_nothing(
    target: Target, tmp_path: Path
) -> None:
    seed = int(os.environ.get("UNIMETER_CRASH_SEED", random.randrange(2**32)))
    summary = await run_crash_loop(target, tmp_path / "data", CYCLES, seed)
    assert summary.mismatches == [], f"{summary.line()}\n" + "\n".join(summary.mismatches[:20])
    assert summary.cycles == CYCLES
    assert summary.kills >= CYCLES + 1  # the recovery cycle kills twice
    assert summary.events_stored == summary.events_sent > 0
    assert summary.queries_compared > 0
