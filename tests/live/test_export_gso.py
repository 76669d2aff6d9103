"""UDP segmentation offload where the kernel refuses it: the exporter's
route is a veth with an MTU below the export's message size, so a
UDP_SEGMENT send fails with EINVAL (segments must fit the MTU) while a
single datagram is fragmented. The transport turns the offload off and
sends every datagram on its own: the collector in the other namespace
receives every message, nothing is counted lost."""
import json
import socket

RECEIVER = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
s.settimeout(3.0)
got = []
try:
    while True:
        got.append(s.recv(65535).hex())
        s.settimeout(1.0)
except socket.timeout:
    pass
print(json.dumps(got))
"""

SENDER = r"""
import json, sys
sys.path[:0] = sys.argv[4:]
from records import FIXED, address, make_records
from flowprobe.exporters.exporter import build_exporters
specs = [dict(FIXED[i % 3], src_port=1000 + i) for i in range(3000)]   # IPv4 only
arr = make_records(specs)
exps = build_exporters([{"url": f"ipfix://{sys.argv[1]}:{sys.argv[2]}", "rate_msgs_s": 2000,
                         "udp_gso": sys.argv[3] == "1"}])
exps.sink(address(arr), len(specs))
exps.close()
print(json.dumps(next(iter(exps.stats().values()))))
"""


def _exchange(veth, gso: bool, port: int) -> tuple[dict, list[bytes]]:
    import subprocess
    rx = subprocess.Popen(veth.argv(veth.cap_ns, __import__("sys").executable, "-c", RECEIVER,
                                    "198.18.77.2", str(port)),
                          stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout.readline().strip() == "ready"
        from repo import REPO
        out = veth.python(veth.send_ns, "-c", SENDER, "198.18.77.2", str(port), "1" if gso else "0",
                          str(REPO / "tests" / "support")).stdout
        stats = json.loads(out.splitlines()[-1])
        got = [bytes.fromhex(h) for h in json.loads(rx.communicate(timeout=30)[0])]
    finally:
        rx.kill()
    return stats, got


def test_offload_refused_by_the_route_falls_back_to_one_send_per_datagram(veth):
    for ns, dev in ((veth.send_ns, veth.send_if), (veth.cap_ns, veth.cap_if)):
        veth.run(ns, "ip", "link", "set", dev, "mtu", "1000")   # messages: up to 1400 B
    veth.run(veth.send_ns, "ip", "addr", "add", "198.18.77.1/30", "dev", veth.send_if)
    veth.run(veth.cap_ns, "ip", "addr", "add", "198.18.77.2/30", "dev", veth.cap_if)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    on, wire_on = _exchange(veth, True, port)
    off, wire_off = _exchange(veth, False, port)
    # asked for, refused by the route (EINVAL: segments above the MTU), turned off
    assert on["transport"]["gso"] is False and on["transport"]["gso_sends"] == 0
    for st in (on, off):
        assert st["records_exported"] == st["records_handed"] == 3000
        assert st["records_not_sent"] == 0 and st["transport"]["send_errors"] == 0
    assert len(wire_on) == on["messages"] == off["messages"] == len(wire_off) > 10

    def no_clock(d):       # IPFIX export time differs between the runs
        return d[:4] + bytes(4) + d[8:]
    assert [no_clock(d) for d in wire_on] == [no_clock(d) for d in wire_off]
