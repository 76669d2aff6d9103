"""Live AF_XDP capture on a veth pair between two test namespaces: same flows
as TPACKET_V3, the capture namespace's stack sees nothing, the XDP program
goes away on exit and after kill -9."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import packets
import synth
from repo import SENDER

LIVE_DIR = Path(__file__).resolve().parent

pytestmark = pytest.mark.live

FLOWS, PACKETS, PPS = 300, 4000, 20000
TIME_KEYS = {"flowStartMilliseconds", "flowEndMilliseconds",
             "flowStartNanoseconds", "flowEndNanoseconds",
             "flowStartSeconds", "flowEndSeconds"}
CAP_IP, SEND_IP, UDP_PORT = "198.18.0.2", "198.18.0.1", 9999


class Worker:
    """xsk_worker.py in the capture namespace (READY once its ring is open)."""

    def __init__(self, pair, *args: str):
        self.proc = subprocess.Popen(
            pair.argv(pair.cap_ns, sys.executable, str(LIVE_DIR / "xsk_worker.py"),
                      pair.cap_if, *args),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.kill()
            raise RuntimeError(f"worker failed: {line}{self.proc.stderr.read()}")
        self.info = json.loads(line[6:])

    def finish(self, timeout: float = 60) -> dict:
        try:
            self.proc.stdin.write("DONE\n")
            self.proc.stdin.flush()
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self.kill()
        assert self.proc.returncode == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def workers(veth):
    started: list[Worker] = []

    def start(*args: str) -> Worker:
        w = Worker(veth, *args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    path = tmp_path_factory.mktemp("afxdp") / "seeded.pcap"
    truth = synth.generate(path, flows=FLOWS, packets=PACKETS, seed=7,
                           mix={"fragmented": 0.0})
    return path, truth


def xdp_attached(veth) -> str:
    """The xdp part of `ip -d link show` of the capture end ('' if none)."""
    out = veth.run(veth.cap_ns, "ip", "-d", "link", "show", veth.cap_if).stdout
    return " ".join(w for w in out.split() if "xdp" in w)


def comparable(records: list[dict]) -> list[str]:
    """Every record with its times removed, as sorted JSON strings."""
    return sorted(json.dumps({k: v for k, v in r.items() if k not in TIME_KEYS},
                             sort_keys=True) for r in records)


def capture_flows(veth, workers, path, frames, *args: str) -> dict:
    w = workers(*args, "--expect", str(frames))
    sent = veth.send(path, pps=PPS)
    assert sent["sent"] == frames and sent["errors"] == 0
    res = w.finish()
    res["info"] = w.info
    return res


@pytest.mark.parametrize("mode", ["skb", "native"])
def test_same_flows_as_afpacket(veth, workers, seeded, mode):
    """The seeded capture (VLAN/QinQ/MPLS, v4/v6, no fragments) gives the same
    flow records through AF_XDP in `mode` as through TPACKET_V3, 0 drops."""
    path, truth = seeded
    ref = capture_flows(veth, workers, path, truth.frames, "--backend", "afpacket")
    got = capture_flows(veth, workers, path, truth.frames, "--backend", "afxdp",
                        "--xdp-mode", mode)
    assert got["info"]["xdp_mode"] == mode and got["info"]["zerocopy"] is False
    assert ref["walked"] == got["walked"] == truth.frames
    assert got["table"]["packets_accepted"] == truth.packets
    assert comparable(got["records"]) == comparable(ref["records"])
    assert len(got["records"]) >= FLOWS
    assert any("vlanId" in r for r in got["records"])           # tags in-band
    assert any("dot1qCustomerVlanId" in r for r in got["records"])
    st = got["ring"]
    assert st["delivered"] == truth.frames and st["kernel_drops"] == 0
    assert st["rx_ring_full"] == st["rx_fill_ring_empty_descs"] == 0
    assert st["xdp_mode"] == mode
    assert xdp_attached(veth) == ""


def udp_listener(veth, seconds: float) -> subprocess.Popen:
    code = ("import socket,sys,time\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"s.bind(('{CAP_IP}',{UDP_PORT})); s.settimeout(0.2)\n"
            "print('LISTENING',flush=True); n=0; end=time.monotonic()+float(sys.argv[1])\n"
            "while time.monotonic()<end:\n"
            "    try: s.recv(2048); n+=1\n"
            "    except socket.timeout: pass\n"
            "print(n,flush=True)\n")
    p = subprocess.Popen(veth.argv(veth.cap_ns, sys.executable, "-c", code, str(seconds)),
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "LISTENING"
    return p


def ip_in_receives(veth) -> int:
    lines = veth.run(veth.cap_ns, "cat", "/proc/net/snmp").stdout.splitlines()
    head, vals = [ln.split() for ln in lines if ln.startswith("Ip:")][:2]
    return int(vals[head.index("InReceives")])


def test_stack_sees_nothing_while_ring_runs(veth, workers, tmp_path):
    """Datagrams addressed to the capture namespace's own address and UDP
    socket reach it without the ring, and nothing reaches it (socket or
    IpInReceives) while the AF_XDP ring runs; the ring gets them all."""
    veth.run(veth.cap_ns, "ip", "addr", "add", f"{CAP_IP}/24", "dev", veth.cap_if)
    mac = bytes.fromhex(veth.run(veth.cap_ns, "cat", f"/sys/class/net/{veth.cap_if}/address")
                        .stdout.strip().replace(":", ""))
    path = tmp_path / "to_host.pcap"
    packets.write_pcap(path, [(synth.DEFAULT_START_NS + i, packets.ether(
        packets.ipv4(SEND_IP, CAP_IP, 17, packets.udp(40000 + i, UDP_PORT, b"hello" * 10)),
        0x0800, dst_mac=mac)) for i in range(50)])

    listener = udp_listener(veth, 1.5)         # control: the stack delivers
    veth.send(path, pps=1000)
    assert int(listener.communicate(timeout=10)[0]) == 50

    w = workers("--backend", "afxdp", "--expect", "50")
    before = ip_in_receives(veth)
    listener = udp_listener(veth, 1.5)
    veth.send(path, pps=1000)
    assert int(listener.communicate(timeout=10)[0]) == 0
    assert ip_in_receives(veth) == before
    assert w.finish()["walked"] == 50


def test_exit_detaches_and_restart_after_kill9(veth, workers, seeded):
    """The program is attached while a ring runs (and `nic check` names it);
    kill -9 leaves no program
    (bpf_link), a new ring opens right away (EBUSY retried) and captures
    everything, and a normal exit leaves no xdp on the interface."""
    path, truth = seeded
    first = workers("--backend", "afxdp")
    assert "xdp" in xdp_attached(veth)
    nic = veth.python(veth.cap_ns, "-m", "flowprobe", "nic", "check", veth.cap_if,
                      check=False).stdout
    assert f"xdp id {first.info['prog_id']} name flowprobe_xsk mode native (flowprobe)" in nic
    first.proc.kill()
    first.proc.wait()
    deadline = time.monotonic() + 5      # the kernel drops the link with the fd
    while xdp_attached(veth) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert xdp_attached(veth) == ""
    t0 = time.monotonic()
    got = capture_flows(veth, workers, path, truth.frames, "--backend", "afxdp")
    assert time.monotonic() - t0 < 30
    assert got["walked"] == truth.frames and got["ring"]["kernel_drops"] == 0
    print("busy_retries after kill -9:", got["ring"]["busy_retries"])
    assert xdp_attached(veth) == ""


LEFTOVER_C = """
#include <linux/bpf.h>
#define SEC(n) __attribute__((section(n), used))
SEC("xdp") int flowprobe_xsk(struct xdp_md *ctx) { (void)ctx; return XDP_PASS; }
SEC("xdp") int other_prog(struct xdp_md *ctx) { (void)ctx; return XDP_PASS; }
char _license[] SEC("license") = "GPL";
"""


def attach_by_netlink(veth, tmp_path, name: str) -> None:
    """`ip link set ... xdpgeneric obj` of a program called ``name``: what an
    older, netlink-attached flowprobe (or a user) leaves behind."""
    src, obj = tmp_path / "leftover.c", tmp_path / "leftover.o"
    if not obj.exists():
        src.write_text(LEFTOVER_C)
        subprocess.run(["clang", "-O2", "-target", "bpf",
                        "-I/usr/include/x86_64-linux-gnu", "-c", str(src), "-o", str(obj)],
                       check=True, capture_output=True, timeout=60)
    veth.run(veth.cap_ns, "ip", "link", "set", "dev", veth.cap_if, "xdpgeneric", "off")
    veth.run(veth.cap_ns, "ip", "link", "set", "dev", veth.cap_if, "xdpgeneric",
             "obj", str(obj), "sec", "xdp", "program", name)
    assert f"name {name}" in veth.run(veth.cap_ns, "ip", "-d", "link", "show",
                                      veth.cap_if).stdout


def test_stale_program_removed_foreign_program_kept(veth, workers, tmp_path):
    """A netlink-attached program named flowprobe_xsk is removed at start and
    the ring captures; a program of any other name makes start fail with a
    message naming it, and stays attached."""
    attach_by_netlink(veth, tmp_path, "flowprobe_xsk")
    w = workers("--backend", "afxdp")
    assert w.info["stale_removed"] == 1
    w.finish()
    assert xdp_attached(veth) == ""
    attach_by_netlink(veth, tmp_path, "other_prog")
    with pytest.raises(RuntimeError, match="program 'other_prog' id .* not put there "
                                           "by flowprobe"):
        workers("--backend", "afxdp")
    assert "name other_prog" in veth.run(veth.cap_ns, "ip", "-d", "link", "show",
                                         veth.cap_if).stdout


BUSY_QUEUE = """
import sys, threading, time
from flowprobe.driver.afxdp import XdpProgram, XskRing
iface = sys.argv[1]
prog = XdpProgram.attach(iface, mode="skb")
held = XskRing(iface, 0, program=prog)
threading.Timer(0.4, held.close).start()
t0 = time.monotonic()
ring = XskRing(iface, 0, program=prog, busy_retry_ms=5000)
print("BUSY", ring.stats()["busy_retries"], round(time.monotonic() - t0, 3))
ring.close()
prog.close()
"""


def test_busy_queue_is_retried(veth):
    """Binding a queue another socket still holds fails with EBUSY, which the
    open retries with backoff until the queue is free."""
    out = veth.python(veth.cap_ns, "-c", BUSY_QUEUE, veth.cap_if).stdout
    _, retries, seconds = next(ln for ln in out.splitlines() if ln.startswith("BUSY")).split()
    retries, seconds = int(retries), float(seconds)
    assert retries >= 1 and 0.3 < seconds < 5
    assert xdp_attached(veth) == ""


def test_mtu_checked_and_oversize_frames_counted(veth, workers, tmp_path):
    """Start refuses an MTU whose frames cannot fit a UMEM chunk, naming both;
    frames that outgrow the chunk later (MTU raised under a running ring) are
    counted in rx_dropped, never silently lost."""
    for ns, ifc in ((veth.cap_ns, veth.cap_if), (veth.send_ns, veth.send_if)):
        veth.run(ns, "ip", "link", "set", "dev", ifc, "mtu", "3000")
    with pytest.raises(RuntimeError, match="MTU 3000 does not fit an AF_XDP frame "
                                           "of 2048 bytes"):
        workers("--backend", "afxdp", "--xdp-mode", "skb")
    assert xdp_attached(veth) == ""
    for ns, ifc in ((veth.cap_ns, veth.cap_if), (veth.send_ns, veth.send_if)):
        veth.run(ns, "ip", "link", "set", "dev", ifc, "mtu", "1500")
    w = workers("--backend", "afxdp", "--xdp-mode", "skb")
    for ns, ifc in ((veth.cap_ns, veth.cap_if), (veth.send_ns, veth.send_if)):
        veth.run(ns, "ip", "link", "set", "dev", ifc, "mtu", "3000")
    frames = [packets.eth_ipv4_udp(SEND_IP, CAP_IP, 1000 + i, 2000,
                                 b"x" * (2500 if i % 2 else 100)) for i in range(40)]
    path = tmp_path / "big.pcap"
    packets.write_pcap(path, [(synth.DEFAULT_START_NS + i, f) for i, f in enumerate(frames)])
    assert veth.send(path, pps=1000)["sent"] == 40
    res = w.finish()
    assert res["walked"] == 20
    assert res["ring"]["rx_dropped"] == 20 == res["ring"]["kernel_drops"]


def test_tiny_umem_overrun_is_counted(veth, workers, tmp_path):
    """A 64-frame UMEM that is not read during a burst loses frames, and
    every one is counted: delivered + kernel_drops == sent."""
    frames = [packets.eth_ipv4_udp(SEND_IP, CAP_IP, 1000 + i % 100, 2000, b"z" * 18)
              for i in range(30000)]
    path = tmp_path / "burst.pcap"
    packets.write_pcap(path, [(synth.DEFAULT_START_NS + i, f) for i, f in enumerate(frames)])
    w = workers("--backend", "afxdp", "--xdp-mode", "native", "--wait", "poll",
                "--umem-frames", "64", "--hold")
    sent = veth.send(path, pps=0)["sent"]
    res = w.finish()
    st = res["ring"]
    assert sent == 30000
    assert 0 < st["delivered"] <= 64 * 2
    assert st["kernel_drops"] > 0
    assert st["delivered"] + st["kernel_drops"] == sent
    assert st["delivered"] == res["walked"] == res["table"]["packets_seen"]


def test_flowprobe_run_backend_afxdp_exports_the_truth(veth, seeded, tmp_path):
    """`flowprobe run --backend afxdp --json` exports exactly the truth's
    flows (packets, bytes); its reader stats carry the XDP mode and 0 drops;
    SIGTERM exits 0 and detaches the program."""
    import signal
    path, truth = seeded
    cfg = tmp_path / "probe.yaml"
    cfg.write_text("flow:\n  idle_timeout_s: 600\n  active_timeout_s: 600\n"
                   f"supervisor:\n  stats_socket: {tmp_path}/fp.sock\n")
    proc = subprocess.Popen(
        veth.argv(veth.cap_ns, sys.executable, "-m", "flowprobe", "run", "-i",
                  veth.cap_if, "-c", str(cfg), "--backend", "afxdp", "--workers", "1",
                  "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "reader_started" not in proc.stderr.readline():
            pass
        assert "xdp" in xdp_attached(veth)
        assert veth.send(path, pps=PPS)["sent"] == truth.frames
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    records = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert synth.counts(records) == truth.counts()
    stopped = [json.loads(ln) for ln in err.splitlines() if '"reader_stopped"' in ln][-1]
    assert stopped["ring"]["xdp_mode"] == "native"
    assert stopped["ring"]["delivered"] == truth.frames
    assert stopped["ring"]["kernel_drops"] == 0
    assert xdp_attached(veth) == ""


MULTI_QUEUE = """
import json, sys, time, cffi
from flowprobe.driver.afxdp import XdpProgram, XskRing, rx_queues
iface, secs = sys.argv[1], float(sys.argv[2])
ffi = cffi.FFI()
ffi.cdef("struct ft_pkt { const uint8_t *data; uint32_t caplen; uint32_t wirelen;"
         " uint64_t ts_ns; uint32_t ifindex; uint16_t vlan_tci; uint8_t vlan_valid;"
         " uint8_t pad; };")
owner = XdpProgram.attach(iface, mode="native")      # as the supervisor would
shared = XdpProgram.find(iface)                       # as a reader would
rings = [XskRing(iface, q, program=shared, umem_frames=4096) for q in rx_queues(iface)]
arr = ffi.new("struct ft_pkt[]", 2048)
addr = int(ffi.cast("uintptr_t", arr))
print("READY", flush=True)
got = [0] * len(rings)
end = time.monotonic() + secs
while time.monotonic() < end:
    for i, r in enumerate(rings):
        got[i] += r.next_block(addr, 2048, 1)
        r.release_block()
drops = [r.stats()["kernel_drops"] for r in rings]
for r in rings:
    r.close()
shared.close()
still = XdpProgram.find(iface) is not None           # a reader's close never detaches
owner.close()
print("RESULT " + json.dumps({"got": got, "drops": drops, "still": still,
                              "owner": owner.owner, "shared": shared.owner}))
"""


@pytest.fixture
def veth2q():
    """A veth pair with 2 RX/TX queues per end, in fp namespaces."""
    import uuid
    tag = "fp" + uuid.uuid4().hex[:8]
    cap, snd = tag + "c", tag + "s"
    try:
        subprocess.run(["ip", "netns", "add", cap], check=True)
        subprocess.run(["ip", "netns", "add", snd], check=True)
        subprocess.run(["ip", "link", "add", cap, "netns", cap, "numrxqueues", "2",
                        "numtxqueues", "2", "type", "veth", "peer", "name", snd, "netns",
                        snd, "numrxqueues", "2", "numtxqueues", "2"], check=True)
        for ns in (cap, snd):
            subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                            f"echo 1 > /proc/sys/net/ipv6/conf/{ns}/disable_ipv6"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", ns, "up"], check=True)
        yield cap, snd
    finally:
        subprocess.run(["ip", "netns", "del", cap], check=False)
        subprocess.run(["ip", "netns", "del", snd], check=False)


def test_one_socket_per_queue(veth2q, seeded):
    """With a 2-queue NIC, one program (attached once, shared by handle)
    feeds one XSK per queue: both queues get frames, together every frame,
    none dropped; closing a shared handle never detaches, the owner does."""
    cap, snd = veth2q
    path, truth = seeded
    p = subprocess.Popen(["ip", "netns", "exec", cap, sys.executable, "-c", MULTI_QUEUE,
                          cap, "3"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True)
    try:
        while "READY" not in (line := p.stdout.readline()):
            assert line, "multi-queue script failed"
        subprocess.run(["ip", "netns", "exec", snd, sys.executable,
                        str(SENDER), snd, str(path), "--pps", str(PPS)],
                       check=True, capture_output=True, timeout=60)
        out = p.communicate(timeout=30)[0]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    res = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
    assert sum(res["got"]) == truth.frames and min(res["got"]) > 0
    assert res["drops"] == [0, 0]
    assert res["still"] is True and res["owner"] is True and res["shared"] is False
    out = subprocess.run(["ip", "-n", cap, "-d", "link", "show", cap],
                         capture_output=True, text=True, check=True).stdout
    assert "xdp" not in out.replace("xdp_", "")
