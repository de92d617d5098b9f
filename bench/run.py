"""Run the benchmarks (as root, inside the test VM) and write build/reports/bench.json.

    python -m bench.run [--n 1000] [--scale 10000] [--out build/reports/bench.json] [--profile DIR]

``--n`` interfaces are created and deleted through the API; ``--scale``
managed interfaces (each with one owner, address and route) are the state for
start-up, memory, latency and the event storm. Environment BENCH_N and
BENCH_SCALE give the defaults (``make bench BENCH_N=20 BENCH_SCALE=20``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xfrmid.client import Client

from . import cases, hub
from .kernel_reads import child_times
from .harness import TOP, daemon_pid, ip_batch, netns_add, netns_del, start_bus, start_daemon


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="xfrmid performance benchmarks.")
    parser.add_argument("--n", type=int, default=int(os.environ.get("BENCH_N", 1000)),
                        help="interfaces to create and delete through the API (default 1000, env BENCH_N)")
    parser.add_argument("--scale", type=int, default=int(os.environ.get("BENCH_SCALE", 10000)),
                        help="managed interfaces for startup/latency/event_storm/memory (default 10000, env BENCH_SCALE)")
    parser.add_argument("--samples", type=int, default=1000,
                        help="calls timed for the latency medians, Get and Attach alternating (default 1000; at most --scale)")
    parser.add_argument("--out", default=str(TOP / "build" / "reports" / "bench.json"), help="where the JSON goes")
    parser.add_argument("--profile", metavar="DIR", help="run each daemon under py-spy, collapsed stacks in DIR")
    parser.add_argument("--storm-wait", type=float, default=60.0,
                        help="seconds to wait for the drift repair after the storm (at least 5x the burst)")
    parser.add_argument("--single-calls", action="store_true",
                        help="create and delete with one call per interface (--window in flight), "
                             "not one CreateInterfaces/DeleteInterfaces call")
    parser.add_argument("--deadline", type=float, default=0.0,
                        help="with --single-calls: seconds after which create, and then delete, stop sending "
                             "calls (0: none); a row cut short has xfrmid null and says how many calls completed")
    parser.add_argument("--window", type=int, default=cases.WINDOW,
                        help=f"calls in flight for create/delete (default {cases.WINDOW}; the system bus "
                             "allows 128 pending replies per connection)")
    parser.add_argument("--startup-only", action="store_true",
                        help="measure only the startup and memory rows (no latency, storm, create/delete)")
    parser.add_argument("--only", metavar="ROWS",
                        help="comma-separated phases to run: scale (startup, memory, latency, event_storm), "
                             "create (create and delete) and/or hub (hub, startup_hub, hub_detach); default all")
    parser.add_argument("--hub", type=int, default=int(os.environ.get("BENCH_HUB", 10000)),
                        help="connections sharing one interface in the hub rows (default 10000, env BENCH_HUB)")
    parser.add_argument("--memory-target", choices=("auto", "rss", "per-interface"), default="auto",
                        help="what the memory row is judged on: rss (at most 100 MB), per-interface (at most "
                             "5 KB per interface above the daemon started with none) or auto (rss up to 10,000 "
                             "interfaces, per-interface above)")
    parser.add_argument("--ipv6", choices=("on", "off"), default="on",
                        help="IPv6 in the bench's namespaces, for xfrmid and the baselines alike (default on; "
                             "make bench-scale: off, see bench/README.md)")
    parser.add_argument("--ready-timeout", type=float, default=3600.0, help="seconds the start-up may take")
    return parser


def log(message: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')}: {message}", flush=True)


def _profile(args, name: str) -> str | None:
    if not args.profile:
        return None
    Path(args.profile).mkdir(parents=True, exist_ok=True)
    return str(Path(args.profile) / f"{name}.txt")


async def _with_client(address: str, work):
    client = await Client.connect(address)
    try:
        return await work(client)
    finally:
        client.close()


ORDER = ["create", "delete", "startup", "latency", "event_storm", "memory", "hub", "startup_hub", "hub_detach"]


def save(rows: list[dict], out: Path) -> None:
    """Write what is measured so far: a long run cut short still leaves its rows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(sorted(rows, key=lambda r: ORDER.index(r["name"])), indent=1) + "\n")
    os.replace(tmp, out)


def _tail_on_error(daemon) -> None:
    print(f"--- end of the daemon's log ({daemon.log}) ---\n{daemon.tail(6000)}", flush=True)


def _stop(daemon, what: str) -> None:
    rc = daemon.stop()
    if rc != 0:
        raise RuntimeError(f"xfrmid ({what}) stopped with {rc}:\n{daemon.tail()}")


def _scale_phase(args, bus, netns: str, state_dir: Path, rows: list[dict], out: Path) -> None:
    """startup, memory, latency and event_storm on --scale managed interfaces."""
    empty_rss = _empty_rss(args, bus, netns, state_dir.with_name(state_dir.name + "-empty"))
    per_interface = args.memory_target == "per-interface" or (args.memory_target == "auto" and args.scale > 10_000)

    def memory_row(daemon) -> dict:
        return cases.memory_row(daemon, args.scale, empty_rss, per_interface)

    log(f"preparing {args.scale} managed interfaces (ip -batch and a state file)")
    took = cases.prepare_scale(netns, state_dir, args.scale, progress=log)
    log(f"prepared in {took:.1f}s; baselines")
    listing, reads = _baselines(netns)
    daemon = start_daemon(bus, netns, state_dir, timeout=args.ready_timeout, profile=_profile(args, "scale"))
    try:
        rows.append(cases.startup_row(daemon, listing, args.scale, reads))
        log(f"ready after {rows[-1]['xfrmid']:.1f}s (iproute2: {rows[-1]['baseline']:.1f}s), "
            f"phases {rows[-1]['phases']}; latency")
        rows.append(memory_row(daemon))
        save(rows, out)
        if args.startup_only:
            return

        async def rest(client):
            rows.append(await cases.latency(client, args.scale, args.samples))
            rows[:] = [r for r in rows if r["name"] != "memory"] + [memory_row(daemon)]
            save(rows, out)
            log(f"memory: {rows[-1]['rss_mb']} MB, {rows[-1]['kb_per_interface']} KB per interface above "
                f"the empty daemon's {rows[-1]['empty_rss_mb']} MB; event storm")
            rows.append(await cases.event_storm(client, netns, args.scale, args.scale, args.storm_wait, progress=log))
            save(rows, out)

        asyncio.run(_with_client(bus.address, rest))
    except Exception:
        _tail_on_error(daemon)
        raise
    finally:
        _stop(daemon, "scale")


def _empty_rss(args, bus, netns: str, state_dir: Path) -> float:
    """RSS (MiB) of the daemon started with no interfaces, in the still empty namespace: the memory row's floor."""
    log("the daemon with no interfaces (the memory row's floor)")
    daemon = start_daemon(bus, netns, state_dir, timeout=args.ready_timeout)
    try:
        # after what the daemon does once ready (it logs the libraries' versions), as the measured one has
        deadline = time.monotonic() + 60
        while daemon.output is not None and daemon.output.when(" ready: ") is None and time.monotonic() < deadline:
            time.sleep(0.2)
        return daemon.rss_mb()[0]
    finally:
        _stop(daemon, "with no interfaces")


def _baselines(netns: str) -> tuple[tuple[float, float, float], dict]:
    """``ip -d link show``, and iproute2 and bare dumps reading what the start-up reads."""
    listing = child_times(["ip", "-n", netns, "-d", "link", "show"])
    reads = cases.kernel_reads(netns)
    log(f"ip -d link show: {listing[0]:.1f}s (user {listing[1]:.2f}s, sys {listing[2]:.2f}s); iproute2 reading "
        f"links, addresses, routes and rules: {reads['iproute2']}; bare netlink dumps: {reads['raw']}")
    return listing, reads


def _pids(bus, daemon) -> hub.Pids:
    return {"daemon": lambda: daemon_pid(daemon), "bus": lambda: bus.process.pid}


def _hub_phase(args, bus, netns: str, state_dir: Path, rows: list[dict], out: Path) -> None:
    """--hub connections on one interface; the daemon restarted with them (startup_hub); each detached."""
    log(f"hub: {args.hub} connections on {hub.HUB}")
    daemon = start_daemon(bus, netns, state_dir, timeout=args.ready_timeout, profile=_profile(args, "hub"))
    try:
        rows.append(asyncio.run(_with_client(bus.address, lambda c: hub.connect(c, netns, args.hub, _pids(bus, daemon)))))
        save(rows, out)
        log(f"hub: {rows[-1]['last_per_connection_s'] * 1000:.2f} ms per connection for the last "
            f"{rows[-1]['compared']}, {rows[-1]['first_per_connection_s'] * 1000:.2f} ms for the first; restarting")
    except Exception:
        _tail_on_error(daemon)
        raise
    finally:
        _stop(daemon, "hub")
    listing, reads = _baselines(netns)
    daemon = start_daemon(bus, netns, state_dir, timeout=args.ready_timeout, profile=_profile(args, "hub-restart"))
    try:
        rows.append(cases.startup_row(daemon, listing, args.hub, reads, name="startup_hub"))
        save(rows, out)
        log(f"hub: ready after {rows[-1]['xfrmid']:.1f}s (iproute2: {rows[-1]['baseline']:.1f}s); detaching")
        rows.append(asyncio.run(_with_client(bus.address, lambda c: hub.disconnect(c, netns, args.hub, _pids(bus, daemon)))))
        save(rows, out)
    except Exception:
        _tail_on_error(daemon)
        raise
    finally:
        _stop(daemon, "hub restarted")


def _create_delete_phase(args, bus, api_ns: str, base_ns: str, state_dir: Path, rows: list[dict], out: Path) -> None:
    log(f"create/delete: {args.n} interfaces")
    daemon = start_daemon(bus, api_ns, state_dir, timeout=args.ready_timeout, profile=_profile(args, "create-delete"))
    try:
        # the daemon's monitor overran (a full reconcile followed): worth knowing per row
        rows.extend(asyncio.run(_with_client(
            bus.address, lambda c: cases.create_delete(c, api_ns, base_ns, args.n, args.deadline, args.window,
                                                       args.single_calls, lambda: daemon.count("resynchronising"),
                                                       progress=log))))
        save(rows, out)
    except Exception:
        _tail_on_error(daemon)
        raise
    finally:
        _stop(daemon, "create/delete")


def _clear(netns: str, n: int) -> None:
    """Delete the scale phase's links before their namespace, so the rows that follow do not run
    beside the kernel tearing them down (a namespace's deletion does that later, holding the RTNL)."""
    log(f"deleting the {n} interfaces (one link del group)")
    took = ip_batch(netns, ["link del group 120"], force=True)
    log(f"deleted in {took:.1f}s")


def run(args) -> list[dict]:
    """Create/delete, then scale (startup, memory, latency, storm), then the hub; bench.json after each."""
    out = Path(args.out)
    tag = str(os.getpid())
    work = Path(tempfile.mkdtemp(prefix="xfrmid-bench-"))
    namespaces = [f"xfrmid-bench-{p}-{tag}" for p in ("scale", "api", "base", "hub")]
    bus = start_bus()
    rows: list[dict] = []
    try:
        for ns in namespaces:
            netns_add(ns, ipv6=args.ipv6 == "on")
        only = set((args.only or "scale,create,hub").split(","))
        hub_follows = not args.startup_only and "hub" in only
        # create/delete first, on an empty VM: after the scale phase its links would have
        # to be deleted first (the kernel tearing them down beside the rows), which takes
        # longer than all the rows at 50,000 (29 min)
        if not args.startup_only and "create" in only:
            _create_delete_phase(args, bus, namespaces[1], namespaces[2], work / "api-state", rows, out)
        for ns in namespaces[1:3]:
            netns_del(ns)
        if "scale" in only:
            _scale_phase(args, bus, namespaces[0], work / "scale-state", rows, out)
            if hub_follows:
                _clear(namespaces[0], args.scale)
        netns_del(namespaces[0])  # without the hub after it, its links go with the VM
        if hub_follows:
            _hub_phase(args, bus, namespaces[3], work / "hub-state", rows, out)
    finally:
        bus.stop()
        for ns in namespaces:
            netns_del(ns)
        shutil.rmtree(work, ignore_errors=True)
    return sorted(rows, key=lambda r: ORDER.index(r["name"]))


def table(rows: list[dict]) -> str:
    def f(v, unit=""):
        return "-" if v is None else (f"{v:.3f}{unit}" if isinstance(v, float) else str(v))

    lines = [f"{'benchmark':<12} {'n':>6} {'xfrmid':>11} {'baseline':>11} {'ratio':>7} {'target':>7}  ok  notes"]
    for r in rows:
        if r["name"] == "memory":
            per_kb = r["kb_per_interface_target"]
            target = f"<={per_kb:g}KB/i" if r["judged_on"] == "kb_per_interface" else f"<={r['rss_target_mb']:g}MB"
            lines.append(f"{'memory':<12} {r['n']:>6} {f(r['rss_mb'], ' MB'):>11} {f(r['empty_rss_mb'], ' MB'):>11} "
                         f"{'-':>7} {target:>7}  {'yes' if r['ok'] else 'NO '} peak {r['hwm_mb']} MB; "
                         f"{f(r['kb_per_interface'])} KB per interface above the daemon with none (<={per_kb:g}); "
                         f"judged on {r['judged_on']}")
            continue
        notes = ""
        if r["name"] in ("create", "delete"):
            notes = f"{r['per_call_ms']} ms/call vs {r['baseline_per_link_ms']} ms/link"
            if r["cut_short"]:
                notes = (f"cut short by --deadline: {r['completed']} of {r['n']} calls in {r['elapsed_s']:.1f}s; "
                         + notes)
            if r.get("kernel_floor_s"):
                notes += f"; bare link add {r['kernel_floor_s']:.2f}s"
            if r.get("kernel_bulk_s"):
                notes += f"; group delete {r['kernel_bulk_s']:.2f}s"
        if r["name"] in ("startup", "startup_hub"):
            p = r.get("phases") or {}
            notes = ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in p.items() if v is not None)
            notes += f"; {r['ip_link_show_ratio']}x ip -d link show, bare dumps {f(r['kernel_reads_s'], 's')}"
        if r["name"] in ("hub", "hub_detach"):
            notes = (f"{r['last_per_connection_s'] * 1000:.2f} ms/connection (last {r['compared']}) vs "
                     f"{r['first_per_connection_s'] * 1000:.2f} (first); {r['get_ratio']}x a Get "
                     f"(<={r['get_target']}: {'yes' if r['get_ratio'] <= r['get_target'] else 'NO'})")
        if r["name"] == "latency":
            notes = (f"p99 {r['attach_p99']:.3f}s = {r['p99_over_median']}x median (<=2: {'yes' if r['p99_ok'] else 'NO'}); "
                     f"Get's own p99 {r['get_p99_over_median']}x its median")
        if r["name"] == "event_storm":
            notes = (f"repaired: {'yes' if r['repaired'] else 'NO'}; slowest Get {f(r['max_get_s'], 's')} "
                     f"(<=1s: {'yes' if r['get_ok'] else 'NO'})")
            x = r.get("foreign_xfrm")
            if x:
                notes += (f"; foreign xfrm storm: burst {f(x['burst_s'], 's')}, consistent "
                          f"{f(x['consistent_s'], 's')}, slowest Get {f(x['max_get_s'], 's')}")
        lines.append(f"{r['name']:<12} {r['n']:>6} {f(r['xfrmid'], 's'):>11} {f(r['baseline'], 's'):>11} "
                     f"{f(r['ratio']):>7} {'<=' + str(r['target']):>7}  {'yes' if r['ok'] else 'NO '} {notes}")
    return "\n".join(lines)


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(TOP), "-c", f"safe.directory={TOP}", "describe", "--always",
                              "--dirty"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def meta(args, started: float, load_before: tuple[float, ...]) -> dict:
    """How the run was made: written beside bench.json as bench-meta.json."""
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "commit": _commit(),
            "args": {k: v for k, v in vars(args).items() if k != "out"}, "seconds": round(time.monotonic() - started, 1),
            "guest_loadavg_before": load_before, "guest_loadavg_after": os.getloadavg(),
            "guest_cpus": os.cpu_count(), "kernel": os.uname().release,
            "python": f"{sys.version.split()[0]} {os.path.realpath(sys.executable)}"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root inside the test VM (make bench does that).", file=sys.stderr)
        return 2
    started, load_before = time.monotonic(), os.getloadavg()
    rows = run(args)
    out = Path(args.out)
    save(rows, out)
    info = meta(args, started, load_before)
    out.with_name(out.stem + "-meta.json").write_text(json.dumps(info, indent=1) + "\n")
    print(table(rows))
    log(f"wrote {args.out} ({info['seconds']:.0f}s, commit {info['commit']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
