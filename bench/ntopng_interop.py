"""Interop with a real community ntopng (`make interop-ntopng NTOPNG=DIR`).

DIR is an ntopng 5.2.1 source folder holding an already-built ``ntopng``
binary (README "Feeding ntopng" says how to get one; this project does not
build ntopng). Everything runs inside a private capture namespace fp<tag>c
(its own loopback), joined by a veth pair to a sender namespace fp<tag>s;
both are deleted on exit, on error and on Ctrl-C:

1. a private redis (``redis-server --port 6391 --bind 127.0.0.1 --save ''``)
   and ntopng (``./ntopng -i tcp://127.0.0.1:PORT -w 127.0.0.1:3300 -d DATA
   -r 127.0.0.1:6391 -l 1 -s -n 0 -G PIDFILE``, run from DIR);
2. **replay**: a seeded synthetic capture (2023 timestamps) replayed with
   ``--export zmq://127.0.0.1:PORT`` (ntopng connects), then again with
   ``zmq+connect://127.0.0.1:5558`` into ntopng's second interface ``-i
   tcp://127.0.0.1:5558c`` (ntopng binds); each time ntopng's REST interface totals
   (``/lua/rest/v2/get/interface/data.lua?ifid=N``) must equal the
   capture's truth in packets and IP bytes, with zmq_msg_drops 0 and
   dropped_flows 0, and its probes list (``.../interface/nprobes/data.lua``,
   from the event messages) must show flowprobe;
3. **live**: ``flowprobe run --workers 2`` (readers bind PORT and PORT + 1,
   both in ntopng's first interface) on the capture end of the veth feeding the
   same ntopng while a few known flows are sent; ntopng's active flows
   (``/lua/rest/v2/get/flow/active.lua?ifid=N``) must show their addresses,
   ports and protocol;
4. **labels**: TLS (SNI www.google.com), DNS and HTTP conversations replayed
   with time stamps of now: ntopng's active flows must show flowprobe's
   nDPI label (``TLS.Google``, where a port guess would say ``TLS``).

Prints the figures; exit 0 when every check holds, 1 otherwise, 2 when DIR
has no ntopng binary. Not part of `make test` (it needs a built ntopng).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "support"))

from live_tools import NetnsPair, run  # noqa: E402

import apps  # noqa: E402
import packets  # noqa: E402
import synth  # noqa: E402

SENDER = HERE.parent / "tools" / "sender.py"
ZMQ_PORT, HTTP_PORT, REDIS_PORT = 5556, 3300, 6391
COLLECTOR_PORT = 5558       # ntopng binds it (-i "tcp://*:5558c"): zmq+connect://
# flows of the live part: (version, src, dst, protocol, sport, dport)
LIVE_FLOWS = [
    (4, "198.18.200.1", "198.19.200.2", 17, 40001, 53),
    (4, "198.18.200.3", "198.19.200.4", 6, 40002, 443),
    (6, "2001:db8::c8:1", "2001:db8:1::c8:2", 17, 40003, 5353),
]


def live_capture(path: Path, per_flow: int = 20) -> None:
    frames = []
    t = synth.DEFAULT_START_NS
    for i in range(per_flow):
        for ver, src, dst, proto, sport, dport in LIVE_FLOWS:
            t += 1000
            if proto == 6:
                frame = packets.eth_ipv4_tcp(src, dst, sport, dport, packets.TCP_ACK,
                                             b"x" * 100)
            elif ver == 6:
                frame = packets.eth_ipv6_udp(src, dst, sport, dport, b"y" * 80)
            else:
                frame = packets.eth_ipv4_udp(src, dst, sport, dport, b"z" * 60)
            frames.append((t, frame))
    packets.write_pcap(path, frames)


class Ntopng:
    """redis + ntopng inside the capture namespace, stopped on exit."""

    def __init__(self, pair: NetnsPair, ntopng_dir: Path, work: Path):
        self.pair, self.dir, self.work = pair, ntopng_dir, work
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Ntopng":
        ns = self.pair.cap_ns
        self.redis = self._start([shutil.which("redis-server") or "redis-server", "--port",
                                  str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                                  "--dir", str(self.work)], "redis.log")
        wait(lambda: run(self.pair.argv(ns, "redis-cli", "-p", REDIS_PORT, "ping"),
                         check=False).stdout.strip() == "PONG", 20, "redis did not start")
        data = self.work / "ntopng-data"
        data.mkdir()
        # the first interface subscribes to PORT and PORT + 1: what `run
        # --workers 2 --export zmq://127.0.0.1:PORT` binds (README)
        self.ntopng = self._start(["./ntopng", "-i", f"tcp://127.0.0.1:{ZMQ_PORT},"
                                   f"tcp://127.0.0.1:{ZMQ_PORT + 1}",
                                   "-i", f"tcp://127.0.0.1:{COLLECTOR_PORT}c",
                                   "-w", f"127.0.0.1:{HTTP_PORT}", "-d", str(data),
                                   "-r", f"127.0.0.1:{REDIS_PORT}", "-l", "1", "-s",
                                   "-n", "0", "-G", str(self.work / "ntopng.pid")],
                                  "ntopng.log", cwd=self.dir)
        wait(lambda: self.interface(0) is not None, 120, "ntopng's REST API did not answer")
        names = self.rest("/lua/rest/v2/get/ntopng/interfaces.lua") or []
        self.ifids = {n["ifname"]: n["ifid"] for n in names if isinstance(n, dict)}
        return self

    def _start(self, argv: list[str], log: str, cwd: Path | None = None) -> subprocess.Popen:
        fh = open(self.work / log, "w")
        p = subprocess.Popen(self.pair.argv(self.pair.cap_ns, *argv), stdout=fh,
                             stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        self.procs.append(p)
        return p

    def rest(self, path: str):
        cp = run(self.pair.argv(self.pair.cap_ns, "curl", "-s", "-m", "10",
                                f"http://127.0.0.1:{HTTP_PORT}{path}"), check=False)
        try:
            return json.loads(cp.stdout).get("rsp")
        except ValueError:
            return None

    def ifid(self, endpoint: str) -> int:
        return next(i for name, i in self.ifids.items() if endpoint in name)

    def interface(self, ifid: int) -> dict | None:
        return self.rest(f"/lua/rest/v2/get/interface/data.lua?ifid={ifid}")

    def settled(self, ifid: int, timeout: float = 90) -> dict:
        """Interface data once its packet count stopped moving for 5 s."""
        last, since, end = None, time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < end:
            data = self.interface(ifid) or {}
            key = (data.get("packets"), data.get("bytes"))
            if key != last:
                last, since = key, time.monotonic()
            elif time.monotonic() - since >= 5:
                return data
            time.sleep(1)
        return self.interface(ifid) or {}

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def wait(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.5)
    raise RuntimeError(what)


def flowprobe(pair: NetnsPair, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    return run(pair.argv(pair.cap_ns, sys.executable, "-m", "flowprobe", *args),
               timeout=timeout, check=False)


def replay_part(pair: NetnsPair, nt: Ntopng, work: Path, truth, url: str, ifid: int) -> bool:
    cap = work / "replay.pcap"
    cfg = work / "replay.yaml"
    cfg.write_text(f"export:\n  - url: {url}\n    subscriber_wait_s: 15\n")
    started = time.monotonic()
    cp = flowprobe(pair, "replay", cap, "-c", cfg)
    seconds = time.monotonic() - started
    summary = [x for x in cp.stderr.splitlines() if x.startswith("export ")]
    data = nt.settled(ifid)
    zmq = data.get("zmqRecvStats") or {}
    print(f"replay to {url} (ntopng ifid {ifid}): {truth.packets:,} packets / {truth.octets:,} IP bytes / "
          f"{len(truth.flows):,} flows in {seconds:.1f} s, exit {cp.returncode}; "
          + "; ".join(summary))
    print(f"ntopng interface: packets {data.get('packets')}, bytes {data.get('bytes')}, "
          f"num_flows {data.get('num_flows')}, zmq flows {zmq.get('flows')}, "
          f"zmq_msg_rcvd {zmq.get('zmq_msg_rcvd')}, zmq_msg_drops {zmq.get('zmq_msg_drops')}, "
          f"dropped_flows {zmq.get('dropped_flows')}")
    probes = nt.rest(f"/lua/rest/v2/get/interface/nprobes/data.lua?ifid={ifid}") or []
    listed = [p.get("column_nprobe_version") for p in probes if isinstance(p, dict)]
    print(f"ntopng's probes page (event messages): {listed}")
    ok = (cp.returncode == 0 and data.get("packets") == truth.packets
          and any("flowprobe" in str(v) for v in listed)
          and data.get("bytes") == truth.octets and zmq.get("zmq_msg_drops") == 0
          and zmq.get("dropped_flows") == 0)
    print("replay:", "OK (totals equal the truth)" if ok else "FAILED")
    return ok


def flow_fields(flow: dict) -> tuple:
    """(client ip, server ip, client port, server port, L4 name) of one
    active.lua entry."""
    cli, srv = flow.get("client", {}), flow.get("server", {})
    proto = flow.get("protocol", {})
    return (cli.get("ip"), srv.get("ip"), cli.get("port"), srv.get("port"),
            str(proto.get("l4", "")).upper())


def live_part(pair: NetnsPair, nt: Ntopng, work: Path, ifid: int) -> bool:
    cap = work / "live.pcap"
    live_capture(cap)
    pair.prepare_capture_end()
    probe = subprocess.Popen(
        pair.argv(pair.cap_ns, sys.executable, "-m", "flowprobe", "run", "-i", pair.cap_if,
                  "--workers", "2", "--idle-timeout", "2", "--active-timeout", "5",
                  "--stats-socket", "", "--export", f"zmq://127.0.0.1:{ZMQ_PORT}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    want = {(src, dst, sport, dport, {6: "TCP", 17: "UDP"}[proto])
            for _, src, dst, proto, sport, dport in LIVE_FLOWS}
    seen: set = set()
    try:
        time.sleep(3)
        sent = json.loads(run(pair.argv(pair.send_ns, sys.executable, SENDER, pair.send_if,
                                        cap, "--pps", "200", "--max-seconds", "30")).stdout)
        end = time.monotonic() + 60
        while time.monotonic() < end and not want <= seen:
            rsp = nt.rest(f"/lua/rest/v2/get/flow/active.lua?ifid={ifid}&perPage=1000") or {}
            rows = rsp.get("data", rsp) if isinstance(rsp, dict) else rsp
            seen = {flow_fields(f) for f in rows or [] if isinstance(f, dict)}
            time.sleep(2)
    finally:
        probe.terminate()
        try:
            _, err = probe.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            probe.kill()
            _, err = probe.communicate()
    print(f"live (run --workers 2): sent {sent.get('sent')} frames of {len(LIVE_FLOWS)} flows; "
          "probe exit "
          f"{probe.returncode}")
    for f in sorted(want, key=str):
        print(f"  {'found  ' if f in seen else 'MISSING'} {f[0]}:{f[2]} -> {f[1]}:{f[3]} {f[4]}")
    ok = want <= seen
    if not ok:
        print("  ntopng's active flows:", sorted(seen, key=str)[:20])
        print("  probe stderr tail:", err[-1500:])
    print("live:", "OK" if ok else "FAILED")
    return ok


def labels_part(pair: NetnsPair, nt: Ntopng, work: Path, ifid: int) -> bool:
    """Conversations whose application nDPI names beyond what a port says
    (TLS with SNI www.google.com on 443: TLS.Google, where a port guess
    gives TLS), replayed with time stamps of now; ntopng's active flows must
    carry flowprobe's label (L7_PROTO "master.app"), not a port guess."""
    convs = [apps.tls("198.18.210.1", "198.19.210.2", 41001),
             apps.dns("198.18.210.3", "198.19.210.4", 41002),
             apps.http("198.18.210.5", "198.19.210.6", 41003)]
    cap = work / "labels.pcap"
    apps.write(cap, convs, start_ns=time.time_ns())
    cfg = work / "labels.yaml"
    cfg.write_text(f"export:\n  - url: zmq://127.0.0.1:{ZMQ_PORT}\n    subscriber_wait_s: 15\n")
    cp = flowprobe(pair, "replay", cap, "-c", cfg)
    want = {(c.client, c.server, c.sport, c.dport): c.label for c in convs}
    got: dict = {}
    end = time.monotonic() + 60
    while time.monotonic() < end:
        rsp = nt.rest(f"/lua/rest/v2/get/flow/active.lua?ifid={ifid}&perPage=1000") or {}
        rows = rsp.get("data", rsp) if isinstance(rsp, dict) else rsp
        for f in rows or []:
            if isinstance(f, dict):
                cli, srv, cport, sport, _ = flow_fields(f)
                key = next((k for k in want if {k[0], k[1]} == {cli, srv}
                            and {k[2], k[3]} == {cport, sport}), None)
                if key:
                    got[key] = (f.get("protocol") or {}).get("l7")
        if set(want) <= set(got):
            break
        time.sleep(2)
    print(f"labels (replay of {len(convs)} conversations, exit {cp.returncode}):")
    for k, label in want.items():
        print(f"  {k[0]}:{k[2]} -> {k[1]}:{k[3]}  flowprobe {label!r}  ntopng {got.get(k)!r}")
    ok = cp.returncode == 0 and all(got.get(k) == v for k, v in want.items())
    print("labels:", "OK (ntopng shows flowprobe's labels)" if ok else "FAILED")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ntopng", required=True, metavar="DIR",
                    help="ntopng 5.2.1 source folder holding the built ntopng binary")
    ap.add_argument("--flows", type=int, default=30000)
    ap.add_argument("--packets", type=int, default=300000)
    args = ap.parse_args()
    ntopng_dir = Path(args.ntopng).resolve()
    if not (ntopng_dir / "ntopng").is_file():
        print(f"interop-ntopng: no ntopng binary in {ntopng_dir} (build ntopng 5.2.1 "
              "there first: README, Feeding ntopng)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fp-ntopng-") as tmp, \
            NetnsPair("fp" + uuid.uuid4().hex[:8]) as pair:
        work = Path(tmp)
        run(pair.argv(pair.cap_ns, "ip", "link", "set", "lo", "up"))
        truth = synth.generate(work / "replay.pcap", flows=args.flows,
                               packets=min(args.packets, 2_000_000), seed=1400)
        with Ntopng(pair, ntopng_dir, work) as nt:
            print("ntopng interfaces:", nt.ifids)
            bind_if = nt.ifid(f"127.0.0.1:{ZMQ_PORT}")
            ok = replay_part(pair, nt, work, truth, f"zmq://127.0.0.1:{ZMQ_PORT}", bind_if)
            ok = replay_part(pair, nt, work, truth, f"zmq+connect://127.0.0.1:{COLLECTOR_PORT}",
                             nt.ifid(f"{COLLECTOR_PORT}c")) and ok
            ok = live_part(pair, nt, work, bind_if) and ok
            ok = labels_part(pair, nt, work, bind_if) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
