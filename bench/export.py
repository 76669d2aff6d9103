"""End-to-end export: `flowprobe replay --export` beside `softflowd -r`, both
sending the same format to a fresh local nfcapd (issue 3, Benchmark).

For each of NetFlow v5, v9 and IPFIX and each tool, on the same capture:

  1. start `nfcapd -w DIR -p PORT -b 127.0.0.1 [-B N]` on a free port and
     wait until its UDP socket is bound;
  2. time the whole sender process (/usr/bin/time):
       flowprobe replay FILE --max-flows 2097152 --idle-timeout 3600
                 --active-timeout 3600 --export SCHEME://127.0.0.1:PORT
                 (UDP paced at the default rate_msgs_s = 5000 messages/s)
       softflowd -d -c none -r FILE -n 127.0.0.1:PORT -v 5|9|10
                 with -m 4000000 (every flow held) and with its default -m
  3. wait until nfcapd's socket queue is empty (/proc/net/udp rx_queue), read
     the kernel's drop counter for that socket, stop nfcapd with SIGTERM (it
     flushes its file) and read back with
       nfdump -R DIR -q -N -o 'fmt:%pkt,%byt'   (flows, packets, bytes)
       nfdump -I -R DIR                         (Sequence failures)

Completeness is records read back / records the tool says it exported
(flowprobe: replay_done `records_exported`; softflowd: "Flows exported: N
(R records)"), and packets read back / packets the tool says it counted
(flowprobe: packets_accepted, for v5 only the IPv4 flows' packets, taken from
the IPFIX run's read-back with nfdump filter `ipv4`; softflowd: "Packets
processed"). Every child runs under a timeout; nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

FORMATS = (("netflow5", "5", "NetFlow v5"), ("netflow9", "9", "NetFlow v9"),
           ("ipfix", "10", "IPFIX"))
RUN_ORDER = ("ipfix", "netflow9", "netflow5")     # v5's IPv4 packet total comes from IPFIX
TOOLS = ("flowprobe", "softflowd -m 4M", "softflowd (default -m)")
DEFAULT_RATE_MSGS_S = 5000
MAX_FLOWS = 2097152


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def udp_socket_state(port: int) -> dict | None:
    """rx_queue bytes and kernel drops of the UDP socket bound to
    127.0.0.1:port, from /proc/net/udp; None when no such socket."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            p = line.split()
            if p[1] == local:
                return {"rx_queue": int(p[4].split(":")[1], 16), "drops": int(p[-1])}
    return None


class Nfcapd:
    """A fresh nfcapd on 127.0.0.1:PORT writing into DIR."""

    def __init__(self, directory: str, bufsize: int | None, timeout_s: float = 10.0):
        self.dir, self.timeout = directory, timeout_s
        self.port = free_port()
        os.makedirs(directory)
        self.log = open(directory + ".log", "w")
        cmd = ["nfcapd", "-w", directory, "-p", str(self.port), "-b", "127.0.0.1"]
        if bufsize:
            cmd += ["-B", str(bufsize)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        end = time.monotonic() + timeout_s
        while udp_socket_state(self.port) is None:
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"nfcapd did not start on port {self.port}")
            time.sleep(0.05)

    def drain_and_stop(self) -> dict:
        """Wait (bounded) until the socket queue stays empty, note the kernel
        drops, then SIGTERM so nfcapd flushes its file."""
        end = time.monotonic() + self.timeout
        empty_since = None
        st = udp_socket_state(self.port) or {"rx_queue": 0, "drops": None}
        while time.monotonic() < end:
            st = udp_socket_state(self.port) or st
            if st["rx_queue"] == 0:
                empty_since = empty_since or time.monotonic()
                if time.monotonic() - empty_since >= 0.3:
                    break
            else:
                empty_since = None
            time.sleep(0.02)
        self.stop()
        return {"socket_drops": st["drops"], "rx_queue_left": st["rx_queue"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def nfdump_readback(directory: str, nf_filter: str | None = None) -> dict:
    env = {**os.environ, "TZ": "UTC"}
    cmd = ["nfdump", "-R", directory, "-q", "-N", "-o", "fmt:%pkt,%byt"]
    if nf_filter:
        cmd.append(nf_filter)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300,
                         env=env).stdout
    flows = pkts = byts = 0
    for line in out.splitlines():
        if line.strip():
            p, b = line.split(",")
            flows, pkts, byts = flows + 1, pkts + int(p), byts + int(b)
    return {"flows": flows, "packets": pkts, "bytes": byts}


def nfdump_sequence_failures(directory: str) -> int | None:
    out = subprocess.run(["nfdump", "-I", "-R", directory], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    m = re.search(r"^Sequence failures:\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else None


def flowprobe_claims(stderr: str) -> dict:
    for line in stderr.splitlines():
        if '"replay_done"' in line:
            d = json.loads(line[line.index("{"):])
            e = d["exporters"][0]
            return {"records_exported": e["records_exported"],
                    "records_not_sent": e["records_not_sent"],
                    "records_not_exportable": e["records_not_exportable"],
                    "send_errors": e["send_errors"], "messages": e["messages"],
                    "pace_sleeps": e["transport"].get("pace_sleeps"),
                    "packets_accepted": d["packets_accepted"], "flows": d["flows"],
                    "replay_loop_s": d["seconds"]}
    raise RuntimeError("flowprobe: no replay_done line\n" + stderr[-2000:])


def softflowd_claims(stdout: str) -> dict:
    m = re.search(r"Flows exported: (\d+) \((\d+) records\) in (\d+) packets \((\d+) failures\)",
                  stdout)
    pk = re.search(r"Packets processed: (\d+)", stdout)
    if not m:
        raise RuntimeError("softflowd: no 'Flows exported' line\n" + stdout[-2000:])
    return {"flows_exported": int(m[1]), "records_exported": int(m[2]), "messages": int(m[3]),
            "send_failures": int(m[4]), "packets_accepted": int(pk[1]) if pk else None}


def one_run(tool: str, scheme: str, version: str, path: str, tmp: str, run_timed,
            bufsize: int | None, timeout: float, exes: dict) -> dict:
    nfdir = tempfile.mkdtemp(prefix=f"{scheme}-", dir=tmp)
    os.rmdir(nfdir)
    nf = Nfcapd(nfdir, bufsize)
    try:
        if tool == "flowprobe":
            cmd = [exes["flowprobe"], "replay", path, "--max-flows", str(MAX_FLOWS),
                   "--idle-timeout", "3600", "--active-timeout", "3600",
                   "--export", f"{scheme}://127.0.0.1:{nf.port}"]
        else:
            cmd = ["softflowd", "-d", "-c", "none", "-r", path, "-n", f"127.0.0.1:{nf.port}",
                   "-v", version, "-p", os.path.join(tmp, "sf.pid")]
            if "4M" in tool:
                cmd += ["-m", "4000000"]
        r = run_timed(cmd, timeout)
    finally:
        sock = nf.drain_and_stop()
    claims = flowprobe_claims(r["stderr"]) if tool == "flowprobe" else softflowd_claims(r["stdout"])
    got = nfdump_readback(nfdir)
    res = {"wall_s": r["wall_s"], "rss_mb": r["rss_mb"], "load": r["load"], **sock,
           "received": got, "sequence_failures": nfdump_sequence_failures(nfdir),
           "claims": claims, "port": nf.port}
    if tool == "flowprobe" and scheme == "ipfix":
        res["received_ipv4"] = nfdump_readback(nfdir, "ipv4")
    shutil.rmtree(nfdir, ignore_errors=True)
    return res


def measure_export(path, packets: int, runs: int, exes: dict, run_timed, warm,
                   bufsize: int | None = None) -> dict:
    """Every (format, tool) pair `runs` times; the fastest run is kept, with
    the worst completeness seen over all runs beside it."""
    to = 60 + packets / 20_000
    res: dict = {"file": str(path), "packets": packets, "runs": runs,
                 "nfcapd_bufsize": bufsize, "rate_msgs_s": DEFAULT_RATE_MSGS_S, "formats": {}}
    ipv4_packets = None
    with tempfile.TemporaryDirectory(prefix="fpbench-export-") as tmp:
        for scheme in RUN_ORDER:
            version = next(v for s, v, _ in FORMATS if s == scheme)
            res["formats"][scheme] = {}
            for tool in TOOLS:
                warm(path)
                rs = [one_run(tool, scheme, version, str(path), tmp, run_timed, bufsize, to, exes)
                      for _ in range(runs)]
                for r in rs:
                    c = r["claims"]
                    want_pk = c["packets_accepted"]
                    if tool == "flowprobe" and scheme == "netflow5":
                        want_pk = ipv4_packets
                    r["packets_expected"] = want_pk
                    r["record_completeness"] = (r["received"]["flows"] / c["records_exported"]
                                                if c["records_exported"] else None)
                    r["packet_completeness"] = (r["received"]["packets"] / want_pk
                                                if want_pk else None)
                    r["packets_vs_capture"] = r["received"]["packets"] / packets
                if tool == "flowprobe" and scheme == "ipfix":
                    ipv4_packets = max(r["received_ipv4"]["packets"] for r in rs)
                b = dict(min(rs, key=lambda x: x["wall_s"]))
                b["all_wall_s"] = [round(x["wall_s"], 3) for x in rs]
                b["worst_record_completeness"] = min(x["record_completeness"] or 0 for x in rs)
                b["max_sequence_failures"] = max(x["sequence_failures"] or 0 for x in rs)
                b["max_socket_drops"] = max(x["socket_drops"] or 0 for x in rs)
                b["load_max"] = max(x["load"] for x in rs)
                res["formats"][scheme][tool] = b
                print(f"  export {scheme:<9} {tool:<23} {b['wall_s']:6.2f} s  "
                      f"flows {b['received']['flows']:>7,}  pkts {b['received']['packets']:>9,}  "
                      f"seqfail {b['sequence_failures']}  drops {b['socket_drops']}  "
                      f"(runs {b['all_wall_s']}, load<= {b['load_max']:.1f})", flush=True)
            fp = res["formats"][scheme]["flowprobe"]
            c = fp["claims"]
            fp["pacing_floor_s"] = c["messages"] / DEFAULT_RATE_MSGS_S
            for tool in TOOLS[1:]:
                res["formats"][scheme][tool]["fp_over_peer_wall"] = (
                    fp["wall_s"] / res["formats"][scheme][tool]["wall_s"])
    return res


def export_table(res: dict) -> str:
    rows = [f"export to nfcapd, {res['packets'] / 1e6:g}M pkts, nfcapd -B "
            f"{res['nfcapd_bufsize'] or 'default'}, flowprobe paced {res['rate_msgs_s']} msgs/s",
            f"{'fmt':<5} {'tool':<16} {'wall s':>6} {'fp/sf':>6} {'flows rcvd':>10} "
            f"{'rec rcvd/sent':>13} {'pkts rcvd':>9} {'pkt rcvd/claimed':>16} "
            f"{'seqfail':>7} {'drops':>5}"]
    short = {"flowprobe": "flowprobe", "softflowd -m 4M": "softflowd -m 4M",
             "softflowd (default -m)": "softflowd def -m"}
    for scheme, _, label in FORMATS:
        fm = res["formats"].get(scheme)
        if not fm:
            continue
        lab = {"netflow5": "v5", "netflow9": "v9", "ipfix": "IPFIX"}[scheme]
        for tool in TOOLS:
            r = fm[tool]
            ratio = "" if tool == "flowprobe" else f"{r['fp_over_peer_wall']:.2f}"
            rc = r["record_completeness"]
            pc = r["packet_completeness"]
            rows.append(f"{lab:<5} {short[tool]:<16} {r['wall_s']:6.2f} {ratio:>6} "
                        f"{r['received']['flows']:>10,} "
                        f"{(f'{100 * rc:.2f}%' if rc is not None else '-'):>13} "
                        f"{r['received']['packets']:>9,} "
                        f"{(f'{100 * pc:.2f}%' if pc is not None else '-'):>16} "
                        f"{r['sequence_failures']!s:>7} {r['socket_drops']!s:>5}")
        fp = fm["flowprobe"]
        rows[-3] += (f"  [{fp['claims']['messages']:,} msgs: pacing floor "
                     f"{fp['pacing_floor_s']:.2f} s, loop {fp['claims']['replay_loop_s']:.2f} s]")
    return "\n".join(rows)
