"""The native dedup keys are node/dedup_index.py's, bit for bit: event_key over any id and scope,
derived_key over any content (every integer width and sign msgpack distinguishes, strings across
its length forms, property maps of any size and order). Collected only where the extension is
built (tests/conftest.py)."""

from __future__ import annotations

import unimeter_native
from hypothesis import example, given
from hypothesis import strategies as st

from node.dedup_index import derived_key, event_key

U64 = st.integers(0, (1 << 64) - 1)
texts = st.one_of(
    st.text(max_size=40),
    st.integers(30, 300).map(lambda n: "x" * n),  # fixstr, str8 and str16 lengths
    st.integers(60, 70).map(lambda n: "é" * n),
)
# Around every msgpack integer boundary, both signs.
edges = st.sampled_from([0, 127, 128, 255, 256, 65_535, 65_536, (1 << 32) - 1, 1 << 32, (1 << 63) - 1])
ints = st.one_of(edges, edges.map(lambda v: -v - 1), st.integers(-(1 << 63), (1 << 63) - 1))


@given(U64, texts, U64, texts)
@example(0, "", 0, "")
@example(1, "calls", 3, "é" * 200)  # past one BLAKE2b block
def test_event_keys_match(account: int, code: str, generation: int, event_id: str) -> None:
    assert unimeter_native.event_key(account, code, generation, event_id) == event_key(
        account, code, generation, event_id
    )


@given(
    U64,
    texts,
    U64,
    ints,
    U64,
    ints,
    st.one_of(st.none(), st.dictionaries(texts, texts, max_size=20)),
)
@example(42, "calls", 1, 1_772_323_200 * 10**9, 5, 1, {"b": "2", "a": "1"})
def test_derived_keys_match(
    account: int,
    code: str,
    generation: int,
    time_ns: int,
    value: int,
    operation: int,
    properties: dict[str, str] | None,
) -> None:
    native = unimeter_native.derived_key(account, code, generation, time_ns, value, operation, properties)
    assert native == derived_key(account, code, generation, time_ns, value, operation, properties)
