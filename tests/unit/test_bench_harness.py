"""The benchmark harness (``python -m bench``) end to end at tiny sizes: every section, sane JSON.

Only structure and bookkeeping are asserted (sections, counts, that numbers are numbers, that the
load really reached the server). Timing never decides a test: the targets' pass/miss is reported
by the harness, not asserted here.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import SECTIONS, RunOutput, preset, run_bench
from bench.processes import ServerProcess
from bench.report import Progress, render_table
from bench.stats import bucket_percentile, latency_summary, percentile

TARGET_IDS = {
    "async_vs_ceiling",
    "sync_single_p50",
    "sync_batch_vs_async",
    "query_realtime_p50",
    "query_month_p50",
    "alert_p99",
    "rss_per_series",
    "bytes_per_dedup_key",
    "restart_ready",
    "cluster_sync_single_p50",
    "cluster_failover_max",
}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _latency(section: dict[str, Any]) -> None:
    assert section["n"] > 0
    for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms"):
        assert _number(section[key]), key
    assert section["p50_ms"] <= section["p99_ms"] <= section["max_ms"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunOutput, dict[str, Any]]:
    root = tmp_path_factory.mktemp("bench")
    out = run_bench(
        preset("tiny"),
        out_dir=root / "results",
        data_root=root,
        stream=io.StringIO(),
        progress=False,
    )
    return out, json.loads(out.json_path.read_text())


def test_run_writes_json_with_every_section(tiny_run: tuple[RunOutput, dict[str, Any]]) -> None:
    out, data = tiny_run
    assert out.json_path.parent.name == "results"
    assert out.json_path.name == f"{data['meta']['timestamp']}.json"
    for section in ("meta", *SECTIONS, "targets", "table", "summary", "files"):
        assert section in data, section
    meta = data["meta"]
    assert meta["mode"] == "tiny"
    assert meta["machine"]["cpus"] >= 1
    assert meta["config"]["sections"] == list(SECTIONS)


def test_fsync_probe_reports_percentiles(tiny_run: tuple[RunOutput, dict[str, Any]]) -> None:
    fsync = tiny_run[1]["fsync"]
    assert fsync["iterations"] == preset("tiny").fsync_iterations
    _latency(fsync)


def test_async_matrix_has_every_shape_on_both_servers(tiny_run: tuple[RunOutput, dict[str, Any]]) -> None:
    config = preset("tiny")
    rows = tiny_run[1]["async"]
    assert [(r["batch"], r["callers"]) for r in rows] == [
        (b, c) for b in config.batch_sizes for c in config.callers
    ]
    for row in rows:
        for server in ("unimeter", "ceiling"):
            result = row[server]
            assert result["events"] > 0 and result["events"] % row["batch"] == 0
            assert result["calls"] * row["batch"] == result["events"]
            assert result["errors"] == 0
            assert _number(result["events_per_s"]) and result["events_per_s"] > 0
            _latency(result["call_latency"])
        # Every call carried fresh event ids: nothing may be taken for a duplicate.
        assert row["unimeter"]["duplicates"] == 0
        assert _number(row["ratio"])


def test_the_target_row_is_the_median_of_alternating_pairs(
    tiny_run: tuple[RunOutput, dict[str, Any]],
) -> None:
    config = preset("tiny")
    rows = {(r["batch"], r["callers"]): r for r in tiny_run[1]["async"]}
    target = rows.pop((config.target_batch, config.target_callers))
    pairs = target["pairs"]
    assert len(pairs) == config.target_pairs == 3
    # Alternating order: the first pair starts with the ceiling, the second with unimeter.
    ceiling_first = ["ceiling", "unimeter"]
    assert [list(p)[:2] for p in pairs] == [ceiling_first, ceiling_first[::-1], ceiling_first]
    for pair in pairs:
        assert pair["ratio"] == pair["unimeter"]["events_per_s"] / pair["ceiling"]["events_per_s"]
    assert target["ratio"] == sorted(p["ratio"] for p in pairs)[1]
    median = next(p for p in pairs if p["ratio"] == target["ratio"])
    assert (target["unimeter"], target["ceiling"]) == (median["unimeter"], median["ceiling"])
    assert all("pairs" not in row for row in rows.values())


def test_sync_sections(tiny_run: tuple[RunOutput, dict[str, Any]]) -> None:
    sync = tiny_run[1]["sync"]
    for server in ("unimeter", "ceiling"):
        _latency(sync["single"][server])
        assert sync["batch"][server]["events"] > 0
        assert sync["batch"][server]["errors"] == 0
    assert _number(sync["batch"]["async_events_per_s"])
    assert _number(sync["batch"]["ratio_to_async"])


def test_query_latencies_are_measured_on_the_filled_account(
    tiny_run: tuple[RunOutput, dict[str, Any]],
) -> None:
    query = tiny_run[1]["query"]
    total = preset("tiny").query_account_events
    assert query["account_events"] == total
    assert query["fill"]["events"] == total
    for key in ("realtime", "month"):
        for server in ("unimeter", "ceiling"):
            _latency(query[key][server])
    # The month-long range starts just after the first of the evenly spread events.
    assert query["month"]["unimeter"]["answer"]["count"] == total - 1


def test_alert_run_joins_acks_and_alerts(tiny_run: tuple[RunOutput, dict[str, Any]]) -> None:
    alerts = tiny_run[1]["alerts"]
    assert alerts["target_events_per_s"] == pytest.approx(alerts["max_async_events_per_s"] / 2)
    assert alerts["max_alerts_per_message"] == preset("tiny").alert_max_per_message > 1
    runs = [alerts["unimeter"], alerts["ceiling"], alerts["one_per_message"]["unimeter"]]
    for result in runs:
        assert result["alerts_expected"] > 0
        assert result["alerts_matched"] <= min(result["alerts_expected"], result["alerts_received"])
        assert result["errors"] == 0
    assert alerts["ceiling"]["alerts_matched"] > 0 and alerts["unimeter"]["alerts_matched"] > 0
    assert alerts["one_per_message"]["unimeter"]["alerts_matched"] > 0  # the single-alert messages too
    # From the send, each alert waited its batch's call on top: every quantile is at least the ack's.
    for result in runs:
        assert result["from_send"]["n"] == result["alerts_matched"]
        assert result["from_send"]["p50_ms"] >= result["p50_ms"]
        assert result["from_send"]["p99_ms"] >= result["p99_ms"]
    # The server's own view of the run: every alert of the run published (its histogram's count),
    # and the event logs synced; the ceiling has no such view.
    seen = alerts["unimeter"]["server_side"]
    assert seen["publish_delay"]["n"] == alerts["unimeter"]["alerts_expected"]
    assert seen["log_syncs"]["n"] > 0
    assert 0 <= seen["publish_delay"]["p50_ms"] <= seen["publish_delay"]["p99_ms"]
    assert "server_side" not in alerts["ceiling"]


def test_memory_section_compares_two_runs(tiny_run: tuple[RunOutput, dict[str, Any]]) -> None:
    config = preset("tiny")
    memory = tiny_run[1]["memory"]
    assert memory["series"]["series"] == config.series
    assert _number(memory["series"]["bytes_per_series"])
    assert memory["dedup"]["keys"] == config.dedup_keys
    assert _number(memory["dedup"]["bytes_per_key"]) and memory["dedup"]["bytes_per_key"] > 16
    assert _number(memory["dedup"]["rss_bytes_per_key"])
    # The servers differ only in the last phase's ids: exactly that many more keys in the index.
    runs = memory["runs"]
    assert runs["with_ids"]["dedup_keys"] - runs["without_ids"]["dedup_keys"] == config.dedup_keys
    for run in memory["runs"].values():
        assert run["rss_start"] > 0
        assert run["fill_series"]["events"] == config.series
        assert run["fill_events"]["events"] == config.dedup_keys
        assert run["fill_events"]["duplicates"] == 0


def test_restart_section(tiny_run: tuple[RunOutput, dict[str, Any]]) -> None:
    restart = tiny_run[1]["restart"]
    assert restart["events"] >= preset("tiny").restart_events
    assert restart["fill"]["events"] == restart["events"]
    assert restart["fill"]["duplicates"] == 0
    assert restart["log_bytes"] > 0
    assert 0 < restart["ready_seconds"] <= restart["first_query_seconds"]
    assert _number(restart["ceiling"]["seconds"])
    assert _number(restart["ratio"])
    # The same directory recovered by the python engine answers as the main server did.
    python = restart["python_engine"]
    assert python["same_answer"] is True
    assert 0 < python["ready_seconds"] <= python["first_query_seconds"]


def test_engines_section_measures_the_python_engine(tiny_run: tuple[RunOutput, dict[str, Any]]) -> None:
    _, data = tiny_run
    engines = data["engines"]
    config = preset("tiny")
    assert engines["engine"] == "python"
    assert (engines["async"]["batch"], engines["async"]["callers"]) == (
        config.target_batch,
        config.target_callers,
    )
    batch = engines["sync_batch"]
    for run in (engines["async"]["python"], batch["python"], batch["async_reference"]):
        assert run["errors"] == 0 and run["events"] > 0, run
    assert _number(batch["ratio_to_async"])
    _latency(engines["sync_single"])
    names = [row["name"] for row in data["table"]]
    assert sum("python engine" in name for name in names) == 5, names


def test_cluster_section(tiny_run: tuple[RunOutput, dict[str, Any]]) -> None:
    config = preset("tiny")
    cluster = tiny_run[1]["cluster"]
    assert (cluster["servers"], cluster["nodes"]) == (config.cluster_servers, config.cluster_nodes)
    sync = cluster["sync"]
    for key in ("bare_publish", "bare_publish_fenced", "cluster", "embedded"):
        _latency(sync[key])
    assert sync["owner_node"] != sync["other_node"]
    if config.cluster_nodes > 1:
        _latency(sync["cluster_forwarded"])
    assert sync["bare_publish"]["payload_bytes"] > 0
    assert _number(sync["ratio_p50"])
    shape = cluster["async"]
    assert (shape["batch"], shape["callers"]) == (config.target_batch, config.target_callers)
    for key in ("cluster", "embedded"):
        assert shape[key]["events"] > 0 and shape[key]["errors"] == 0, shape[key]
        assert shape[key]["events"] % config.target_batch == 0
    failover = cluster["failover"]
    assert failover["lease_ttl_seconds"] == config.cluster_lease_ttl_seconds
    if config.cluster_nodes > 1:
        assert failover["kills"] == config.failover_kills == len(failover["seconds"])
        assert 0 < failover["p50_s"] <= failover["max_s"]
    else:
        assert failover["not_measured"]


def test_targets_and_table(tiny_run: tuple[RunOutput, dict[str, Any]]) -> None:
    out, data = tiny_run
    targets = data["targets"]
    assert {t["id"] for t in targets} == TARGET_IDS
    for target in targets:
        assert target["met"] in (True, False, None)
        assert target["rule"]
    summary = data["summary"]
    assert summary["targets_met"] + summary["targets_missed"] <= len(TARGET_IDS)
    rows = data["table"]
    assert rows and all({"name", "unit", "value", "ceiling", "ratio", "met"} <= set(r) for r in rows)
    assert sum(1 for r in rows if r["target"] is not None) == len(TARGET_IDS)
    assert "ASYNC batch 20 x 2 callers" in out.table


def test_chart_is_a_png(tiny_run: tuple[RunOutput, dict[str, Any]]) -> None:
    out, data = tiny_run
    assert out.chart_path is not None
    assert data["files"]["chart"] == str(out.chart_path)
    assert Path(out.chart_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    summary = latency_summary([1_000_000, 3_000_000])
    assert summary["n"] == 2 and summary["p50_ms"] == pytest.approx(2.0)


def test_bucket_percentile_interpolates_inside_the_bucket_as_prometheus_does() -> None:
    inf = float("inf")
    assert bucket_percentile([], 50) is None
    assert bucket_percentile([(0.01, 0), (inf, 0)], 50) is None
    # 100 observations between 1 and 10 ms: the median is halfway through that bucket.
    assert bucket_percentile([(0.001, 0), (0.01, 100), (inf, 100)], 50) == pytest.approx(0.0055)
    # The first bucket starts at 0; a percentile in the unbounded one is its lower bound.
    assert bucket_percentile([(0.002, 4), (inf, 4)], 50) == pytest.approx(0.001)
    assert bucket_percentile([(1.0, 1), (2.0, 2), (inf, 3)], 99) == 2.0


def test_a_server_s_http_address_is_none_when_its_endpoint_is_off() -> None:
    def server(ready_line: dict[str, object]) -> ServerProcess:
        return ServerProcess("s", None, 1, 0.0, 0.0, Path("s.log"), ready_line)  # type: ignore[arg-type]

    assert server({"http_addr": "off"}).http_addr is None  # `unimeter serve` without --http-addr
    assert server({}).http_addr is None  # the ceiling's ready line has none
    assert server({"http_addr": "127.0.0.1:9464"}).http_addr == "127.0.0.1:9464"


def test_table_marks_pass_and_miss() -> None:
    rows = [
        {"name": "a", "unit": "ms", "value": 1.0, "ceiling": 0.5, "ratio": 2.0, "target": "≤ 2 ms",
         "limit": 2.0, "met": True, "note": ""},
        {"name": "b", "unit": "events/s", "value": 10.0, "ceiling": None, "ratio": None, "target": None,
         "limit": None, "met": None, "note": "small"},
    ]  # fmt: skip
    text = render_table(rows)
    assert "PASS" in text and "MISS" not in text
    assert "* b: small" in text


def test_progress_without_terminal_prints_one_line_per_step() -> None:
    stream = io.StringIO()
    bar = Progress(10.0, stream=stream)
    bar.begin("first", 5.0)
    bar.update(0.5)
    bar.end()
    bar.begin("second", 5.0)
    bar.end()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("first") and lines[1].endswith("second")
