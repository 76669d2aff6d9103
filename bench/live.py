"""The seed paper's live experiment on this machine (`make bench-live`).

A sender at its maximum rate (trafgen, then tcpreplay --topspeed) pushes
synthetic frames (198.18.0.0/15, 2001:db8::/32) over a veth pair between two
fresh network namespaces; one capture tool at a time listens on the capture
end (prepared by `flowprobe nic prepare`).  For each tool: % of the sent
packets it captured and the capture process's CPU seconds per million
packets, median of --reps runs, side by side as in the paper's tables.

    python bench/live.py [--quick] [--reps N] [--packets N] [--replay-packets N]

On veth the kernel's receive work runs on the sender's CPU, so the sender and
the capture process are pinned to different CPUs and CPU/Mpkt is the number
to compare.  Every namespace is named fp<tag>{c,s} and deleted on exit, on
error and on Ctrl-C.  Results: bench/out/live.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "support"))

import live_tools  # noqa: E402
from live_tools import NetnsPair, run, which  # noqa: E402

OUT = HERE / "out"
SEND_CPU, CAP_CPU = 0, 1
LOAD_LIMIT = 1.5

# Three templates, round robin: IPv4/UDP 64 B, IPv4/TCP 96 B, IPv6/UDP 128 B.
# Each template's source-address byte (256 values) and source port (251
# values) step together: lcm = 64256 flows per template, ~193k in all, which
# fits flowprobe's default table (262144) and softflowd's -m below.
TRAFGEN_CFG = """\
{ eth(da=02:00:00:00:00:02, sa=02:00:00:00:00:01), ipv4(sa=198.18.0.0, sa[3]=dinc(0,255), da=198.19.0.1, ttl=64), udp(sp=dinc(1024,1274), dp=53), fill(0, 22) }
{ eth(da=02:00:00:00:00:02, sa=02:00:00:00:00:01), ipv4(sa=198.18.1.0, sa[3]=dinc(0,255), da=198.19.0.2, ttl=64), tcp(sp=dinc(1024,1274), dp=80, ack, seq=1, win=1024), fill(0, 42) }
{ eth(type=0x86dd, da=02:00:00:00:00:02, sa=02:00:00:00:00:01), ipv6(sa=2001:db8::1:0, sa[15]=dinc(0,255), da=2001:db8::2, hoplimit=64), udp(sp=dinc(2000,2250), dp=443), fill(0, 66) }
"""
TRAFGEN_FLOWS = 3 * 256 * 251


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def busy_cpus(seconds: float = 1.0) -> float:
    """CPUs' worth of busy time on the host over `seconds` (taken while this
    benchmark is idle, so it is other helpers' load)."""
    def sample():
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = f[3] + f[4]
        return sum(f[:8]) - idle, sum(f[:8])
    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (os.cpu_count() or 1) * (b1 - b0) / max(1, t1 - t0)


class Quiet:
    """Before each measurement: wait (at most 20 s, 60 s in all) until other
    processes use less than BUSY_LIMIT CPUs; report what was seen."""

    BUSY_LIMIT, PER_RUN_S = 0.3, 20.0

    def __init__(self, budget_s: float):
        self.budget = budget_s

    def wait(self) -> float:
        t0 = time.monotonic()
        busy = busy_cpus(0.5)
        while busy > self.BUSY_LIMIT and self.budget > 0 \
                and time.monotonic() - t0 < self.PER_RUN_S:
            busy = busy_cpus(1.0)
            self.budget -= 1.0
        return round(busy, 2)


def wait_for_quiet(max_wait: float) -> dict:
    start = loadavg()
    t0 = time.monotonic()
    while loadavg() > LOAD_LIMIT and time.monotonic() - t0 < max_wait:
        time.sleep(5)
    return {"at_start": start, "at_measure": loadavg(),
            "waited_s": round(time.monotonic() - t0, 1)}


# -- senders ---------------------------------------------------------------

class Load:
    """A bounded sender; send(pair) -> (seconds, sender's own report)."""

    name = ""

    def __init__(self, workdir: Path, packets: int):
        self.workdir, self.packets = workdir, packets

    def available(self) -> str | None:
        raise NotImplementedError

    def send(self, pair: NetnsPair) -> tuple[float, str]:
        raise NotImplementedError


class Trafgen(Load):
    name = "trafgen"

    def available(self):
        return None if which("trafgen") else "trafgen not installed"

    def describe(self):
        return (f"trafgen, {self.packets:,} frames of 64/96/128 B, "
                f"{TRAFGEN_FLOWS:,} flows (IPv4 UDP+TCP, IPv6 UDP)")

    def send(self, pair):
        cfg = self.workdir / "trafgen.cfg"
        cfg.write_text(TRAFGEN_CFG)
        # -P 1: one sender process; -Q: leave IRQ affinity alone (its socket
        # memory tuning stays in the sender's namespace: net.core.[rw]mem_* are
        # per namespace here); qdisc bypass is trafgen's default.
        argv = pair.argv(pair.send_ns, "taskset", "-c", str(SEND_CPU), "trafgen",
                         "--dev", pair.send_if, "--conf", str(cfg), "-n", str(self.packets),
                         "-P", "1", "-Q")
        t0 = time.monotonic()
        cp = run(argv, timeout=30 + self.packets / 100_000, check=True)
        return time.monotonic() - t0, cp.stdout + cp.stderr


class Tcpreplay(Load):
    name = "tcpreplay"

    def __init__(self, workdir, packets, flows):
        super().__init__(workdir, packets)
        self.flows = flows
        self.pcap = OUT / f"live-replay-p{packets}-f{flows}-s1.pcap"

    def available(self):
        return None if which("tcpreplay") else "tcpreplay not installed"

    def describe(self):
        return (f"tcpreplay --topspeed, {self.packets:,} frames of tests/support/synth.py "
                f"(~{self.flows:,} flows, no fragments)")

    def prepare(self):
        if not self.pcap.exists():
            import synth
            OUT.mkdir(exist_ok=True)
            tmp = self.pcap.with_suffix(".tmp")
            synth.generate(tmp, flows=self.flows, packets=self.packets, seed=1,
                           mix={"fragmented": 0.0}, truth=False)
            tmp.rename(self.pcap)

    def send(self, pair):
        argv = pair.argv(pair.send_ns, "taskset", "-c", str(SEND_CPU), "tcpreplay",
                         "-i", pair.send_if, "--topspeed", "-K", "-q",
                         f"--limit={self.packets}", str(self.pcap))
        t0 = time.monotonic()
        cp = run(argv, timeout=30 + self.packets / 50_000, check=True)
        return time.monotonic() - t0, cp.stdout + cp.stderr


# -- one measurement -----------------------------------------------------------

def measure(tool, load: Load, workdir: Path, settle: float, quiet: Quiet) -> dict:
    """Fresh pair, start tool, send, stop tool; counts and CPU."""
    background = quiet.wait()
    with NetnsPair(f"fp{uuid.uuid4().hex[:8]}") as pair:
        pair.prepare_capture_end()
        cap = tool.start(pair, workdir, CAP_CPU)
        try:
            before_if = pair.counters()
            cpu0 = live_tools.tree_cpu_s(cap.pid)
            wall, report = load.send(pair)
            time.sleep(settle)
            cpu1 = live_tools.tree_cpu_s(cap.pid)
            after_if = pair.counters()
            extra = tool.before_stop(cap)
            res = tool.stop(cap)
        finally:
            cap.kill()
    sent = after_if["tx_packets"] - before_if["tx_packets"]
    arrived = after_if["rx_packets"] - before_if["rx_packets"]
    got = res.get("captured")
    if got is None and extra:
        got = extra.get("captured")
    window_cpu = cpu1 - cpu0
    return {
        "sent": sent, "arrived": arrived, "captured": got,
        "captured_pct": 100.0 * got / sent if (got is not None and sent) else None,
        "sender_s": round(wall, 3), "sender_pps": round(sent / wall) if wall else None,
        "cpu_window_s": round(window_cpu, 3),
        "cpu_s_per_mpkt": round(window_cpu / (sent / 1e6), 4) if sent else None,
        "cpu_total_s": res.get("cpu_total_s"),
        "tool_detail": {**(extra or {}), **res.get("detail", {})},
        "load": loadavg(), "background_busy_cpus": background,
    }


def median_of(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


# -- report --------------------------------------------------------------------

def fmt_pct(v):
    # floor, so that a single lost packet never prints as 100.000 %
    return "n/a" if v is None else f"{math.floor(v * 1000) / 1000:.3f} %"


def fmt_cpu(v):
    return "n/a" if v is None else f"{v:.3f}"


def print_table(title: str, loads: list[Load], rows: dict) -> None:
    print(title)
    first = "Traffic Capture Application"
    w0 = max(len(first), *(len(n) for n in rows)) + 1
    cell = 36
    print(f"{'':<{w0}}" + "".join(f"| {ld.name + ' at its maximum':^{cell}} " for ld in loads))
    print(f"{first:<{w0}}" + "".join(
        f"| {'captured':>11} {'CPU s/Mpkt':>10} {'sender kpps':>12} " for _ in loads))
    print("-" * (w0 + len(loads) * (cell + 3)))
    for name, per in rows.items():
        line = f"{name:<{w0}}"
        for ld in loads:
            r = per.get(ld.name, {})
            if "missing" in r:
                line += f"| {r['missing'][:cell]:<{cell}} "
            else:
                pps = r.get("sender_pps")
                line += (f"| {fmt_pct(r.get('captured_pct')):>11} "
                         f"{fmt_cpu(r.get('cpu_s_per_mpkt')):>10} "
                         f"{'' if not pps else f'{pps / 1e3:,.0f}':>12} ")
        print(line)


def _interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny counts, 1 run each (a smoke check, < 60 s)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--packets", type=int, default=4_000_000, help="trafgen frames")
    ap.add_argument("--replay-packets", type=int, default=1_000_000,
                    help="tcpreplay frames")
    ap.add_argument("--tools", default="", help="comma-separated subset of tool keys")
    ap.add_argument("--max-wait-load", type=float, default=120,
                    help="seconds to wait for the load average to drop below 1.5 at "
                         "start, and in all for other processes to go quiet before runs")
    ap.add_argument("--out", default=str(OUT / "live.json"))
    ap.add_argument("--report", metavar="JSON",
                    help="only print the table and verdict of a saved result file")
    a = ap.parse_args(argv)
    if a.report:
        return report_from(Path(a.report))
    if os.geteuid() != 0:
        print("bench/live.py needs root (network namespaces, AF_PACKET)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("note: fewer than 2 CPUs, sender and capture share one", file=sys.stderr)
    if a.quick:
        a.reps, a.packets, a.replay_packets, a.max_wait_load = 1, 20_000, 5_000, 0
    settle = 1.5   # > tcpdump's 1 s ring block timeout
    # Ctrl-C / SIGTERM -> KeyboardInterrupt, so every `with NetnsPair` cleans up.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    tools = live_tools.all_tools()
    if a.tools:
        keep = set(a.tools.split(","))
        tools = [t for t in tools if t.key in keep]
    load_info = wait_for_quiet(a.max_wait_load)
    print(f"load average {load_info['at_start']:.2f} at start, "
          f"{load_info['at_measure']:.2f} when measuring "
          f"(waited {load_info['waited_s']} s); sender on CPU {SEND_CPU}, "
          f"capture on CPU {CAP_CPU}; median of {a.reps}", flush=True)

    t_start = time.monotonic()
    quiet = Quiet(0 if a.quick else min(60.0, a.max_wait_load))
    results: dict = {"load": load_info, "reps": a.reps, "quick": a.quick,
                     "send_cpu": SEND_CPU, "capture_cpu": CAP_CPU, "loads": {}, "tools": {}}
    with tempfile.TemporaryDirectory(prefix="fpbench-") as tmp:
        workdir = Path(tmp)
        loads: list[Load] = [Trafgen(workdir, a.packets),
                             Tcpreplay(workdir, a.replay_packets,
                                       max(100, a.replay_packets // 10))]
        loads = [ld for ld in loads if not ld.available()
                 or print(f"skip {ld.name}: {ld.available()}")]
        for ld in loads:
            if isinstance(ld, Tcpreplay):
                ld.prepare()
            results["loads"][ld.name] = ld.describe()
        rows: dict = {}
        for tool in tools:
            per = rows.setdefault(tool.label, {})
            results["tools"][tool.label] = per
            why = tool.available()
            for ld in loads:
                if why:
                    per[ld.name] = {"missing": why}
                    continue
                runs = []
                for i in range(a.reps):
                    try:
                        r = measure(tool, ld, workdir, settle, quiet)
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:  # a broken peer is a row, not a crash
                        r = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                    runs.append(r)
                    print(f"  {tool.label:<28} {ld.name:<9} run {i + 1}: "
                          + (r["error"] if "error" in r else
                             f"sent {r['sent']:,} captured {r['captured']} "
                             f"({fmt_pct(r['captured_pct'])}) cpu {r['cpu_window_s']} s "
                             f"sender {r['sender_pps']:,} pps load {r['load']:.2f} "
                             f"other CPU use before {r['background_busy_cpus']}"),
                          flush=True)
                ok = [r for r in runs if "error" not in r]
                if not ok:
                    per[ld.name] = {"missing": "failed: " + runs[0]["error"], "runs": runs}
                    continue
                per[ld.name] = {k: median_of(ok, k) for k in
                                ("captured_pct", "cpu_s_per_mpkt", "sender_pps", "sent",
                                 "captured")}
                per[ld.name]["runs"] = runs

    print()
    for ld in loads:
        print(f"{ld.name}: {ld.describe()}")
    print_table("Table 1. - Percentage of captured packets and capture-process CPU "
                "seconds per million packets (veth, sender at its maximum rate)",
                loads, rows)
    if live_tools.PREPARE_FAILED:
        print("WARNING: `flowprobe nic prepare` failed, capture end only set up+promisc: "
              + live_tools.PREPARE_FAILED[0])
        results["nic_prepare_failed"] = live_tools.PREPARE_FAILED[0]
    bg = [r["background_busy_cpus"] for per in rows.values() for ld in per.values()
          for r in ld.get("runs", []) if "background_busy_cpus" in r]
    if bg:
        print(f"other processes used {min(bg):.2f}-{max(bg):.2f} CPUs just before the runs "
              f"(median {statistics.median(bg):.2f}); load average {load_info['at_start']:.2f} "
              f"at start, {loadavg():.2f} at end")
        results["background_busy_cpus"] = {"min": min(bg), "max": max(bg),
                                           "median": statistics.median(bg)}
    results["verdict"] = verdict(rows, loads)
    for line in results["verdict"]["lines"]:
        print(line)
    if a.quick:
        print("--quick: tiny counts; CPU/Mpkt is dominated by fixed costs, not a result")
    results["elapsed_s"] = round(time.monotonic() - t_start, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {a.out} ({results['elapsed_s']} s)")
    return 0


def report_from(path: Path) -> int:
    """Re-print a saved run (bench/out/live.json) without measuring."""
    saved = json.loads(path.read_text())
    loads = []
    for name, text in saved["loads"].items():
        ld = Load(Path("."), 0)
        ld.name = name
        loads.append(ld)
        print(f"{name}: {text}")
    print_table("Table 1. - Percentage of captured packets and capture-process CPU "
                "seconds per million packets (veth, sender at its maximum rate)",
                loads, saved["tools"])
    bg, ld0 = saved.get("background_busy_cpus"), saved["load"]
    if bg:
        print(f"other processes used {bg['min']:.2f}-{bg['max']:.2f} CPUs just before the "
              f"runs (median {bg['median']:.2f}); load average {ld0['at_start']:.2f} at start")
    for line in verdict(saved["tools"], loads)["lines"]:
        print(line)
    return 0


def verdict(rows: dict, loads: list[Load]) -> dict:
    """Ratios to softflowd and the two targets, per load, for each flowprobe row."""
    lines, out = [], {}
    sf = rows.get(live_tools.SOFTFLOWD_LABEL, {})
    for label, per in rows.items():
        if not label.startswith("flowprobe"):
            continue
        for ld in loads:
            r, s = per.get(ld.name, {}), sf.get(ld.name, {})
            if r.get("cpu_s_per_mpkt") is None:
                continue
            ratio = (r["cpu_s_per_mpkt"] / s["cpu_s_per_mpkt"]
                     if s.get("cpu_s_per_mpkt") else None)
            runs = [x for x in r.get("runs", []) if "error" not in x]
            lost = [x["sent"] - x["captured"] for x in runs
                    if x.get("captured") is not None and x["captured"] != x["sent"]]
            full = r.get("captured_pct") is not None and not lost
            cheap = ratio is not None and ratio <= 0.2
            out[f"{label}/{ld.name}"] = {"cpu_ratio_to_softflowd": ratio,
                                         "target_100pct": full, "target_cpu_1_5": cheap,
                                         "lost_per_run": lost}
            lines.append(
                f"{label} / {ld.name}: CPU per Mpkt = "
                + ("n/a" if ratio is None else f"{ratio:.3f} x softflowd's "
                   f"(1/{1 / ratio:.1f})" if ratio else "0")
                + f"; target 100.000% captured: {'MET' if full else 'NOT MET'}"
                + ("" if full or not runs else
                   f" ({len(lost)} of {len(runs)} runs lost {', '.join(map(str, lost))} pkts)")
                + f"; target <= 1/5 softflowd CPU: {'MET' if cheap else 'NOT MET'}")
    return {"lines": lines, "targets": out}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; namespaces removed", file=sys.stderr)
        sys.exit(130)
