"""The flood bench (`make bench-flood`): a random-source UDP flood, every
packet a new flow, at trafgen's top speed on a private veth pair, into
`flowprobe run --workers 2` with the default config exporting IPFIX over
UDP to a local nfcapd; then the same flood into `softflowd -i` exporting to
its own nfcapd. Prints, for each: packets sent, ring drops, records
emitted, records at nfcapd, records counted as not sent (by reason).

    python bench/flood.py [--packets N] [--skip-softflowd] [--export-opt KEY=VALUE ...]

Goal: 0 ring drops, and records at nfcapd + records not sent = records
emitted, exactly. Namespaces are named fp<tag>{c,s} and deleted on exit,
on error and on Ctrl-C; the collectors listen on 127.0.0.1 inside the
capture namespace. Bounded: --packets (at most 5M) and timeouts on every
step. Results: bench/out/flood.json.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "support"))

from live_tools import NetnsPair, Running, run, which  # noqa: E402

OUT = HERE / "out"
MAX_PACKETS = 5_000_000
NFCAPD_PORT, SOFTFLOWD_PORT = 4739, 9996
# nfcapd's socket buffer (-B), with net.core.rmem_max raised to match in the
# capture namespace: the default (~208 KiB) overflows when the host is busy
# and the collector loses datagrams that no sender can see; both probes'
# collectors get the same.
NFCAPD_RCVBUF = 16 << 20

# Raw frame: Ethernet, IPv4 198.18.x.y -> 198.19.0.1 (x.y random), UDP from
# a random port to 53, 18 bytes of payload: every packet a new flow
# (2^32 keys).
TRAFGEN_CFG = """\
{
  0x02, 0xfb, 0x00, 0x00, 0x00, 0x02,  0x02, 0xfb, 0x00, 0x00, 0x00, 0x01,  0x08, 0x00,
  0x45, 0x00, 0x00, 0x2e,  0x00, 0x00, 0x40, 0x00,  0x40, 0x11,  csumip(14, 33),
  198, 18, drnd(2),  198, 19, 0, 1,
  drnd(2), 0x00, 0x35,  0x00, 0x1a, 0x00, 0x00,
  fill(0x00, 18)
}
"""


def nfcapd(pair: NetnsPair, directory: Path, port: int) -> subprocess.Popen:
    directory.mkdir(parents=True, exist_ok=True)
    pair.ns_run(pair.cap_ns, "sysctl", "-q", "-w", f"net.core.rmem_max={NFCAPD_RCVBUF}",
                check=False)
    proc = subprocess.Popen(pair.argv(pair.cap_ns, "nfcapd", "-w", directory, "-p", port,
                                      "-b", "127.0.0.1", "-B", NFCAPD_RCVBUF),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc


def stop_nfcapd(proc: subprocess.Popen, directory: Path) -> int:
    """SIGTERM (it writes its file), then count the records with nfdump."""
    time.sleep(1.0)                       # let it drain its socket
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    files = sorted(p for p in directory.iterdir() if p.name.startswith("nfcapd."))
    total = 0
    for f in files:
        out = run(["nfdump", "-r", str(f), "-I"], timeout=60, check=False).stdout
        m = re.search(r"^Flows:\s*(\d+)", out, re.M)
        total += int(m.group(1)) if m else 0
    return total


def flood(pair: NetnsPair, workdir: Path, packets: int) -> tuple[float, int]:
    cfg = workdir / "trafgen.cfg"
    cfg.write_text(TRAFGEN_CFG)
    t0 = time.monotonic()
    cp = run(pair.argv(pair.send_ns, "taskset", "-c", "0", "trafgen", "--dev", pair.send_if,
                       "--conf", str(cfg), "-n", str(packets), "-P", "1", "-Q"),
             timeout=60 + packets / 50_000, check=True)
    dt = time.monotonic() - t0
    m = re.search(r"(\d+)\s+packets outgoing", cp.stdout + cp.stderr)
    return dt, int(m.group(1)) if m else packets


EXPORT_OPTS: dict = {}     # --export-opt KEY=VALUE: override the config defaults


def run_flowprobe(pair: NetnsPair, workdir: Path, packets: int) -> dict:
    col_dir = workdir / "nfcapd-flowprobe"
    col = nfcapd(pair, col_dir, NFCAPD_PORT)
    cfg = workdir / "flowprobe.yaml"
    # the default config, exporting IPFIX over UDP to the local nfcapd
    cfg.write_text(f"logging:\n  format: json\nexport:\n  - url: ipfix://127.0.0.1:{NFCAPD_PORT}\n"
                   + "".join(f"    {k}: {v}\n" for k, v in EXPORT_OPTS.items()))
    r = Running(pair.argv(pair.cap_ns, sys.executable, "-m", "flowprobe", "run",
                          "-i", pair.cap_if, "--workers", "2", "-c", cfg), "reader_started")
    try:
        if not r.ready.wait(30):
            raise RuntimeError("flowprobe did not start: " + r.stderr[-500:])
        time.sleep(1.0)                    # both readers
        secs, sent = flood(pair, workdir, packets)
        time.sleep(1.0)
        t0 = time.monotonic()
        r.stop(signal.SIGTERM, timeout=90)
        stop_s = time.monotonic() - t0
    except BaseException:
        r.kill()
        col.kill()
        raise
    at_collector = stop_nfcapd(col, col_dir)
    stopped = [json.loads(line) for line in r.err
               if '"reader_stopped"' in line and line.lstrip().startswith("{")]
    if len(stopped) != 2:
        raise RuntimeError(f"expected 2 reader_stopped lines, got {len(stopped)}: "
                           + r.stderr[-500:])
    res = {"sent": sent, "send_s": round(secs, 2), "stop_s": round(stop_s, 2),
           "seen": 0, "ring_drops": 0, "emitted": 0, "exported": 0, "not_sent": 0,
           "not_sent_by": {}, "handed": 0, "pace_sleeps": 0, "at_collector": at_collector}
    for s in stopped:
        res["seen"] += s["table"]["packets_seen"]
        res["ring_drops"] += s["ring"].get("kernel_drops", 0)
        res["emitted"] += s["table"]["records_emitted"]
        for e in s.get("exporters", {}).values():
            res["exported"] += e["records_exported"]
            res["not_sent"] += e["records_not_sent"] + e["records_not_exportable"]
            res["handed"] += e.get("records_handed", 0)
            res["pace_sleeps"] += e["transport"].get("pace_sleeps", 0)
            for k, v in e.get("records_not_sent_by", {}).items():
                res["not_sent_by"][k] = res["not_sent_by"].get(k, 0) + v
    return res


def run_softflowd(pair: NetnsPair, workdir: Path, packets: int) -> dict:
    col_dir = workdir / "nfcapd-softflowd"
    col = nfcapd(pair, col_dir, SOFTFLOWD_PORT)
    ctl = workdir / "sf.ctl"
    r = Running(pair.argv(pair.cap_ns, "softflowd", "-i", pair.cap_if, "-d",
                          "-n", f"127.0.0.1:{SOFTFLOWD_PORT}", "-c", ctl,
                          "-p", workdir / "sf.pid"), None)
    try:
        end = time.monotonic() + 20
        while not ctl.exists():
            if r.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("softflowd did not start: " + r.stderr[-300:])
            time.sleep(0.05)
        time.sleep(0.5)
        secs, sent = flood(pair, workdir, packets)
        time.sleep(1.0)
        run([which("softflowctl"), "-c", str(ctl), "expire-all"], timeout=60, check=False)
        time.sleep(2.0)
        st = run([which("softflowctl"), "-c", str(ctl), "statistics"], timeout=30).stdout
        r.stop(signal.SIGTERM, timeout=60)
    except BaseException:
        r.kill()
        col.kill()
        raise
    at_collector = stop_nfcapd(col, col_dir)

    def num(pattern):
        m = re.search(pattern, st)
        return int(m.group(1)) if m else None
    return {"sent": sent, "send_s": round(secs, 2),
            "seen": num(r"Packets received by libpcap:\s*(\d+)"),
            "ring_drops": num(r"Packets dropped by libpcap:\s*(\d+)"),
            "emitted": num(r"Flows expired:\s*(\d+)") or num(r"Expired flow statistics:.*?(\d+)"),
            "exported": num(r"Flows exported:\s*(\d+)"),
            "not_sent": None, "at_collector": at_collector, "statistics": st}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--skip-softflowd", action="store_true")
    ap.add_argument("--export-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="an export option for flowprobe (default: the config's defaults), "
                         "e.g. rate_msgs_s=0 or queue_bytes=65536")
    args = ap.parse_args(argv)
    for kv in args.export_opt:
        k, _, v = kv.partition("=")
        EXPORT_OPTS[k] = int(v)
    packets = min(args.packets, MAX_PACKETS)
    for b in ("trafgen", "nfcapd", "nfdump") + (() if args.skip_softflowd else ("softflowd",)):
        if not which(b):
            print(f"flood: {b} not installed", file=sys.stderr)
            return 2
    OUT.mkdir(exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="fpflood-") as tmp:
        for key, fn in (("flowprobe", run_flowprobe), ("softflowd", run_softflowd)):
            if key == "softflowd" and args.skip_softflowd:
                continue
            work = Path(tmp) / key
            work.mkdir()
            with NetnsPair("fp" + uuid.uuid4().hex[:6]) as pair:
                pair.prepare_capture_end()
                pair.ns_run(pair.cap_ns, "ip", "link", "set", "lo", "up")
                results[key] = fn(pair, work, packets)
    (OUT / "flood.json").write_text(json.dumps(results, indent=2))
    print(f"random-source UDP flood, {packets:,} packets, trafgen top speed, private veth, "
          f"nfcapd -B {NFCAPD_RCVBUF >> 20} MiB "
          f"(2 CPUs shared with other work: figures are indicative)")
    rows = [("packets sent", "sent"), ("send seconds", "send_s"),
            ("ring drops (kernel)", "ring_drops"), ("records emitted", "emitted"),
            ("records exported (counted)", "exported"), ("records at nfcapd", "at_collector"),
            ("records not sent", "not_sent")]
    print(f"{'':30} {'flowprobe':>14} {'softflowd':>14}")
    for label, key in rows:
        vals = [results.get(t, {}).get(key) for t in ("flowprobe", "softflowd")]
        print(f"{label:30} " + " ".join(f"{'-' if v is None else v:>14}" for v in vals))
    fp = results["flowprobe"]
    print(f"flowprobe not sent by reason: {json.dumps(fp['not_sent_by'])}")
    print(f"flowprobe: nfcapd + not sent = {fp['at_collector'] + fp['not_sent']:,} "
          f"vs emitted {fp['emitted']:,}: "
          f"{'exact' if fp['at_collector'] + fp['not_sent'] == fp['emitted'] else 'MISMATCH'}; "
          f"exported counted {fp['exported']:,} vs at nfcapd {fp['at_collector']:,}; "
          f"ring drops {fp['ring_drops']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
