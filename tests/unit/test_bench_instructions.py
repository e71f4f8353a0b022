"""``python -m bench.instructions``'s reading of callgrind's files (the runs need valgrind and
minutes, so the tool itself is run by hand: docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from bench.instructions import function_counts, main, thread_totals

CALLGRIND_OUT = """\
# callgrind format
version: 1
creator: callgrind-3.19.0
events: Ir
summary: 6798860980
totals: 6798860980
"""

ANNOTATED = """\
--------------------------------------------------------------------------------
Ir                     file:function
--------------------------------------------------------------------------------
6,798,860,980 (100.0%)  PROGRAM TOTALS
1,826,396,192 (26.86%)  ???:unimeter_native::py_part_ingest::PyPartIngest::__call__ [/x/unimeter_native.so]
   933,832,366 (13.74%)  ???:unimeter_native::guarded [/x/unimeter_native.so]
   676,132,780 ( 9.94%)  /b/Python/ceval.c:_PyEval_EvalFrameDefault'2 [/x/libpython3.11.so.1.0]
    12,000 ( 0.00%)  ???:unimeter_native::guarded [/x/unimeter_native.so]
"""


def test_a_threads_total_is_its_summary() -> None:
    assert thread_totals(CALLGRIND_OUT)["Ir"] == 6_798_860_980
    assert thread_totals("events: Ir\ntotals: 12\n")["Ir"] == 12
    with pytest.raises(ValueError, match="not a callgrind output file"):
        thread_totals("events: Ir\n")


def test_with_the_cache_simulation_every_event_is_counted_by_its_name() -> None:
    simulated = "events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\nsummary: 900 300 200 9 40 20 1 7 5\n"
    assert thread_totals(simulated) == {
        "Ir": 900, "Dr": 300, "Dw": 200, "I1mr": 9, "D1mr": 40, "D1mw": 20, "ILmr": 1, "DLmr": 7, "DLmw": 5,
    }  # fmt: skip
    assert thread_totals(CALLGRIND_OUT) == {"Ir": 6_798_860_980}


def test_functions_keep_their_largest_count_and_cycles_their_own_name() -> None:
    assert function_counts(ANNOTATED) == {
        "???:unimeter_native::py_part_ingest::PyPartIngest::__call__": 1_826_396_192,
        "???:unimeter_native::guarded": 933_832_366,
        "/b/Python/ceval.c:_PyEval_EvalFrameDefault'2": 676_132_780,
    }


def test_request_counts_must_fill_whole_waves() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--requests", "41"])
    assert exc.value.code == 2
