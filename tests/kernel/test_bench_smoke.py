"""Smoke run of the benchmarks (bench/) with tiny N: the harness works and bench.json has its shape.

The targets are not checked here (make bench measures them with N = 1,000 /
10,000); this only proves that every benchmark runs against the real kernel
and daemon and reports every row's fields. Everything happens in
namespaces the bench creates and deletes, on its own bus and daemons.
"""

from __future__ import annotations

import json
import subprocess

from bench import call_costs
from bench import run as bench

NAMES = ["create", "delete", "startup", "latency", "event_storm", "memory", "hub", "startup_hub", "hub_detach"]
HUB = 120  # connections on the hub: one of them adds an address


def test_bench_smoke_writes_every_row(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # in this process: one Python start less in the slow VM
    rc = bench.main(["--n", "12", "--scale", "12", "--samples", "12", "--storm-wait", "10", "--hub", str(HUB),
                     "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed[-3000:]
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == NAMES
    for r in rows:
        assert {"name", "xfrmid", "baseline", "ratio", "n"} <= set(r), r
        assert r["n"] == (HUB if r["name"] in ("hub", "startup_hub", "hub_detach") else 12)
        if r["name"] == "memory":
            assert 5 < r["rss_mb"] < 1000 and 5 < r["empty_rss_mb"] < 1000 and r["baseline"] == r["empty_rss_mb"]
        elif r["name"] == "event_storm":
            assert r["baseline"] > 0 and r["max_get_s"] is not None
        else:
            assert r["xfrmid"] > 0 and r["baseline"] > 0
            # both rounded (the ratio to 3 decimals: a tiny one, such as the last hub connections
            # of a smoke run answered in one group, is off by up to 0.0005)
            assert abs(r["ratio"] - r["xfrmid"] / r["baseline"]) <= max(0.01 * r["ratio"], 0.0005)
    by = {r["name"]: r for r in rows}
    # each row explains itself: start-up phases from the daemon's log, the kernel's floors,
    # the storm whose events reach the daemon
    assert all(v is not None for v in by["startup"]["phases"].values()), by["startup"]
    assert by["startup"]["iproute2_reads_s"] == by["startup"]["baseline"] and by["startup"]["ip_link_show_s"] > 0
    # the hub: per connection, the last tenth against the first and against a Get; the restart on its state
    for name in ("hub", "hub_detach"):
        assert by[name]["compared"] == HUB // 10 and by[name]["get_s"] > 0 and by[name]["get_ratio"] > 0
        assert by[name]["first_per_connection_s"] == by[name]["baseline"]
        assert set(by[name]["cpu_busy"]) == {"daemon", "bus", "client"}, by[name]
        assert by[name]["cpu_busy"]["daemon"] > 0
    assert by["hub"]["calls"] == 2 * HUB + 1 and by["hub"]["get_all_s"] > 0
    assert by["startup_hub"]["kernel_reads_messages"]["xfrmid's routes"] == HUB
    assert by["startup_hub"]["kernel_reads_messages"]["xfrm links"] == 1
    # the kernel's share: the bare reader saw the 12 links, addresses and routes
    assert by["startup"]["kernel_reads_s"] > 0 and by["startup"]["kernel_reads_sys_s"] is not None
    assert by["startup"]["kernel_reads_messages"]["xfrm links"] == 12
    assert by["startup"]["kernel_reads_messages"]["xfrmid's routes"] == 12
    assert by["startup"]["daemon_user_s"] > 0
    assert by["create"]["kernel_floor_s"] > 0 and by["delete"]["kernel_bulk_s"] > 0
    assert by["create"]["daemon_resyncs"] == 0 and by["delete"]["daemon_resyncs"] == 0  # 12 links: no overrun
    assert by["create"]["completed"] == by["delete"]["completed"] == 12
    # memory: per interface above the same daemon started with none; 12 interfaces are judged on the RSS
    mem = by["memory"]
    assert abs(mem["kb_per_interface"] - (mem["rss_mb"] - mem["empty_rss_mb"]) * 1024 / 12) < 0.1 * 1024 / 12
    assert mem["judged_on"] == "rss_mb" and mem["target"] == mem["rss_target_mb"] == 100
    assert mem["kb_per_interface_target"] == 5 and mem["ok"] == (mem["rss_mb"] <= 100)
    assert by["event_storm"]["repaired"] and by["event_storm"]["foreign_xfrm"]["repaired"], by["event_storm"]
    meta = json.loads((tmp_path / "bench-meta.json").read_text())
    assert meta["args"]["n"] == 12 and meta["kernel"]
    assert "benchmark" in printed and "event_storm" in printed  # the table
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "xfrmid-bench-" not in left


def test_bench_scale_rows_without_ipv6(tmp_path, capsys):
    """make bench-scale's namespaces have no IPv6: its rows run, and no device there has an IPv6 address."""
    out = tmp_path / "bench.json"
    rc = bench.main(["--only", "scale", "--scale", "12", "--samples", "12", "--storm-wait", "10",
                     "--ipv6", "off", "--memory-target", "per-interface", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed[-3000:]
    by = {r["name"]: r for r in json.loads(out.read_text())}
    assert set(by) == {"startup", "memory", "latency", "event_storm"}
    assert by["event_storm"]["repaired"] and by["memory"]["judged_on"] == "kb_per_interface"
    # each link's address and lo's 127.0.0.1: no link-local IPv6 address, nor lo's ::1
    assert by["startup"]["kernel_reads_messages"]["addresses"] == 13, by["startup"]
    meta = json.loads((tmp_path / "bench-meta.json").read_text())
    assert meta["args"]["ipv6"] == "off"


def test_call_costs_measure_each_kind_of_call(tmp_path, capsys):
    out = tmp_path / "costs.json"
    assert call_costs.main(["--n", "20", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [c["call"] for c in result["calls"]] == ["Get", "Attach", "AddRoute", "RemoveRoute", "Detach"]
    assert result["lone_get_ms"] > 0 and all(c["wall"] > 0 for c in result["calls"])
    assert "a lone Get's round trip" in capsys.readouterr().out
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "xfrmid-call-costs-" not in left
