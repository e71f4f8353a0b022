"""``make fuzz``: every decoder's fuzz check, looped directly (no pytest) for 10^6 inputs in all.

The inputs are split by how much each one costs: the frame codec gets most (microseconds each),
a real node-protocol server fed garbage clients, damaged data directories opened by a real Node,
and the gRPC surface (a real server, one RPC per input) get smaller shares; the split is printed.
Every check is the one the bounded tests run. The first failure stops the run with the seed and
input number that reproduce it; at the end each decoder's count and the total are printed.
``--total`` and ``--seed`` change the size and the inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from .frame_fuzz import check_frames, frame_input
from .grpc_fuzz import GrpcUnderFuzz
from .native_decoder_fuzz import check_native_decoder, native_decoder_built
from .node_server_fuzz import ServerUnderFuzz, TracebackCounter
from .storage_fuzz import build_reference, check_damage

SHARES = {
    "node-protocol frames": 0.730,
    "native Ingest decoder vs protobuf": 0.200,
    "node-protocol server (garbage clients)": 0.035,
    "storage (damaged segments and snapshots)": 0.005,
    "gRPC well-typed requests": 0.020,
    "gRPC ill-typed bodies": 0.010,
}
"""Share of ``--total`` per decoder; the slow, whole-server checks get the small shares."""


def _counts(total: int) -> dict[str, int]:
    counts = {name: int(total * share) for name, share in SHARES.items()}
    first = next(iter(counts))
    counts[first] += total - sum(counts.values())
    return counts


async def _loop(name: str, n: int, seed: int, check: Callable[[random.Random], Awaitable[object]]) -> None:
    started = time.monotonic()
    for i in range(n):
        rng = random.Random(f"{seed}:{name}:{i}")
        try:
            await check(rng)
        except BaseException:
            print(f"\nFAILED {name}: input {i} of seed {seed}", file=sys.stderr)
            raise
        if i and i % max(1, n // 10) == 0:
            print(f"  {name}: {i}/{n}", flush=True)
    print(f"{name}: {n} inputs in {time.monotonic() - started:.1f}s", flush=True)


async def _frames(rng: random.Random) -> None:
    check_frames(rng, frame_input(rng))


async def _native_decoder(rng: random.Random) -> None:
    check_native_decoder(rng)


async def run(total: int, seed: int, root: Path) -> int:
    counts = _counts(total)
    names = list(counts)
    await _loop(names[0], counts[names[0]], seed, _frames)
    if native_decoder_built():
        await _loop(names[1], counts[names[1]], seed, _native_decoder)
    else:  # a machine without cargo: the Python engine is the only decoder there is
        print(f"{names[1]}: the extension is not built here, 0 inputs")
        counts[names[1]] = 0
    for i, secret in enumerate((False, True)):
        async with ServerUnderFuzz(root / f"node-{i}", secret=secret) as node:
            share = counts[names[2]] // 2 + (counts[names[2]] % 2 if i == 0 else 0)
            await _loop(f"{names[2]}, {'with' if secret else 'no'} cluster secret", share, seed,
                        node.check_garbage_client)  # fmt: skip
    ref = await build_reference(root / "storage")
    runs = iter(range(10**12))
    await _loop(names[3], counts[names[3]], seed,
                lambda rng: check_damage(ref, rng, root / f"damaged-{next(runs)}"))  # fmt: skip
    async with GrpcUnderFuzz(root / "grpc") as server:
        for name, well_typed in ((names[4], True), (names[5], False)):

            async def one(rng: random.Random, well_typed: bool = well_typed) -> None:
                await server.check_call(rng, well_typed=well_typed)
                await server.check_still_serving()

            await _loop(name, counts[name], seed, one)
        print(f"gRPC status codes seen: {dict(sorted(server.codes.items()))}")
    return sum(counts.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=int, default=1_000_000, help="inputs in all (default 10^6)")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    counter = TracebackCounter()
    root_logger = logging.getLogger()
    root_logger.addHandler(counter)  # also keeps the expected warnings off the terminal
    root_logger.setLevel(logging.INFO)
    print("shares: " + ", ".join(f"{n} {c}" for n, c in _counts(args.total).items()), flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="unimeter-fuzz-") as tmp:
        done = asyncio.run(run(args.total, args.seed, Path(tmp)))
    print(f"total: {done} inputs in {time.monotonic() - started:.0f}s, tracebacks logged: {counter.count}")
    if counter.count:
        print(counter.first, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
