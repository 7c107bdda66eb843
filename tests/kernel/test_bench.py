"""flowscope bench against the real kernel, in its --quick form: the JSON lines a user (and
make bench) gets, and the check that refuses to report a frame that missed its flow."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from flowscope import packets
from flowscope.bench import suite as bench
from flowscope.bench import xdp
from flowscope.cli import main
from flowscope.kernel.libbpf import num_possible_cpus

KEYS = ["name", "value", "unit", "baseline_name", "baseline", "ratio"]


def _lines(args: list[str]) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["bench", "--json", "--quick", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_hot_flow_json_line() -> None:
    (obj,) = _lines(["--only", "xdp_hot_ipv4_tcp"])
    assert list(obj) == KEYS
    assert obj["name"] == "xdp_hot_ipv4_tcp" and obj["unit"] == "ns/packet"
    assert obj["baseline_name"] == "bare_xdp_pass"
    value, baseline, ratio = float(obj["value"]), float(obj["baseline"]), float(obj["ratio"])
    # the flow program parses, looks up and updates: it cannot be as cheap as returning
    assert value > baseline > 0
    assert ratio == pytest.approx(value / baseline, abs=1e-3)


def test_every_benchmark_runs_and_reports_once() -> None:
    objs = _lines([])
    # collector_tick reports six lines per map size (quick: 10,000 flows), and the history
    # query its database size (quick: 100,000 records)
    # and the console two lines (CPU per tick, key to repaint) for 10,000 flows
    quick = {
        "collector_tick": ["map_read_10k", "collector_tick_10k", "collector_tick_active_10k",
                           "collector_tick_ending_10k", "ticks_ending_10k", "pending_blob_10k"],
        "history_top20_10m": ["history_top20_100k"],
        "console": ["console_tick_10k", "console_key_10k"],
        "owner_churn": ["owner_churn_coverage", "owner_churn_rate"],
        "record_syn_flood": ["record_syn_flood_longest_tick"],
        "hot_ipv4_tcp_processes": ["xdp_hot_ipv4_tcp_processes", "tc_hot_ipv4_tcp_processes"],
        "xdp_block": [
            "xdp_block_no_rules",
            "xdp_block_1000_rules",
            "xdp_block_2000_rules",
            "xdp_block_3000_rules_its_16",
        ],
        "map_memory": [f"flow_maps_memory_{num_possible_cpus()}cpus", "flow_maps_memory_64cpus",
                       "flow_maps_memory_128cpus"],
        "no_prealloc": ["xdp_hot_no_prealloc", "xdp_insert_no_prealloc",
                        "no_prealloc_inserts_refused", "flow_maps_memory_no_prealloc_10k",
                        "flow_maps_memory_no_prealloc_empty"],
        "packed_value": ["xdp_hash_floor_value32"],
        "drain_model": ["drain_10k_as_16cpus", "drain_10k_as_64cpus", "drain_10k_as_128cpus"],
        "ringbuf_events": ["ringbuf_read", "ringbuf_events"],
        "console_start": ["console_first_draw", "console_first_flows"],
        "store_insert": ["store_insert", "store_insert_followed"],
        "replay_frames": ["replay_frames", "replay_frames_one_process"],
    }  # fmt: skip
    expected = [line for n in bench.NAMES for line in quick.get(n, [n])]
    assert [o["name"] for o in objs] == expected
    by_name = {o["name"]: o for o in objs}
    assert by_name["collector_tick_10k"]["unit"] == "ms/tick"
    assert by_name["collector_tick_10k"]["baseline_name"] == "map_read_10k"
    assert by_name["collector_tick_active_10k"]["baseline_name"] == "map_read_10k"
    assert by_name["pending_blob_10k"]["baseline_name"] == "collector_tick_10k"
    assert by_name["map_read_10k"]["baseline_name"] == "map_read_one_thread_10k"
    assert by_name["xdp_insert_100k"]["unit"] == "ns/flow"
    assert by_name["xdp_hot_ipv4_tcp_precise_clock"]["baseline_name"] == "xdp_hot_ipv4_tcp"
    assert by_name["xdp_map_full"]["baseline_name"] == "xdp_hot_ipv4_tcp"
    assert by_name["xdp_block_1000_rules"]["baseline_name"] == "xdp_hot_ipv4_tcp"
    assert by_name["tc_hot_ipv4_tcp"]["unit"] == "ns/packet"
    assert by_name["tc_hot_ipv4_tcp"]["baseline_name"] == "bare_tc_unspec"
    assert by_name["store_insert"]["unit"] == "records/s"
    assert by_name["store_insert"]["baseline_name"] == "sqlite_executemany"
    assert by_name["store_insert_followed"]["baseline_name"] == "sqlite_executemany_followed"
    assert by_name["history_top20_100k"]["unit"] == "ms"
    assert by_name["history_top20_100k"]["baseline_name"] == "history_exact_100k"
    assert by_name["console_tick_10k"]["baseline_name"] == "console_tick_1k"
    assert by_name["console_key_10k"]["baseline_name"] == "console_draw_10k"
    assert by_name["ringbuf_events"]["unit"] == "events/s"
    assert by_name["ringbuf_events"]["baseline_name"] == "ringbuf_read"
    assert by_name["ringbuf_read"]["baseline_name"] == "ringbuf_bcc_callback"
    assert by_name["compile_flow_program"]["baseline_name"] == "compile_with_kernel_headers"
    assert by_name["console_first_flows"]["baseline_name"] == "compile_flow_program"
    assert by_name["detect_flood"]["unit"] == "events/s"
    assert by_name["detect_flood"]["baseline_name"] == "dict_insert_floor"
    assert by_name["replay_frames"]["unit"] == "frames/s"
    assert by_name["replay_frames"]["baseline_name"] == "bare_test_run_calls"
    # every flow of 1,000 connections a second carries its process
    assert by_name["owner_churn_coverage"]["ratio"] == 1.0
    for o in objs:
        assert list(o) == KEYS
        assert float(o["baseline"]) > 0
        # a count of inserts refused may be 0; every time, rate and size is more
        assert float(o["value"]) > 0 or o["name"] == "no_prealloc_inserts_refused"


def test_a_frame_that_misses_its_flow_is_an_error_not_a_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arp = packets.ethernet(0x0806, bytes(28))
    monkeypatch.setattr(xdp, "hot_ipv4_tcp_frame", lambda: arp)
    result = CliRunner().invoke(main, ["bench", "--json", "--quick", "--only", "xdp_hot_ipv4_tcp"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "did not all land in flows" in result.stderr and "non_ip" in result.stderr
    assert "Traceback" not in result.output
