"""``unimeter_native.UintList``: the read-only sequence of ints the native engine hands a
request's offsets and request indexes along in, instead of lists of int objects.

Python code that held those lists (the client core, a node's batch memory, the wire encoders,
users' ``IngestResult.offsets``) must not be able to tell the difference where it reads: against
a list of the same ints, under hypothesis, the same length, items at every index (negative ones
too), slices, iteration and equality, both ways round. What a list would refuse, it refuses alike:
an index out of range, a non-int index, hashing. Collected only where the extension is built
(tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unimeter_native import UintList

UINTS = st.lists(st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1)), max_size=50)
BOUNDS = st.one_of(st.none(), st.integers(-60, 60))


@settings(max_examples=200, deadline=None)
@given(UINTS, BOUNDS, BOUNDS, st.one_of(st.none(), st.integers(-5, 5).filter(bool)))
def test_it_reads_as_the_list_of_the_same_ints(
    items: list[int], start: int | None, stop: int | None, step: int | None
) -> None:
    uints = UintList(items)
    assert len(uints) == len(items)
    assert list(uints) == items
    every = range(-len(items), len(items))
    assert [uints[i] for i in every] == [items[i] for i in every]
    assert uints[start:stop:step] == items[start:stop:step]
    assert uints == items and items == uints and uints == tuple(items) and uints == UintList(items)
    assert (uints != items) is False
    assert isinstance(uints, Sequence)
    assert repr(uints) == f"UintList({items!r})"


@settings(max_examples=100, deadline=None)
@given(UINTS, UINTS)
def test_it_equals_only_the_same_ints_in_the_same_order(a: list[int], b: list[int]) -> None:
    assert (UintList(a) == b) == (a == b)
    assert (UintList(a) != UintList(b)) == (a != b)


def test_it_refuses_what_a_list_refuses() -> None:
    uints = UintList([7, 8])
    with pytest.raises(IndexError, match="UintList index out of range"):
        uints[2]
    with pytest.raises(IndexError):
        uints[-3]
    with pytest.raises(TypeError, match="indices must be integers or slices"):
        uints["0"]  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="unhashable"):
        hash(uints)
    assert uints != [7, 8.5] and uints != "78" and uints != {7: 8} and uints != None  # noqa: E711
    assert UintList() == [] and not UintList()


def test_it_holds_only_unsigned_64_bit_ints() -> None:
    with pytest.raises(OverflowError):
        UintList([-1])
    with pytest.raises(OverflowError):
        UintList([2**64])
    with pytest.raises(TypeError):
        UintList(["1"])
    assert UintList(range(3)) == [0, 1, 2]
