"""Live tests of `flowprobe nic prepare|check|restore` on a test veth."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.live

SEND_RAW = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind((sys.argv[1], 0))
frame = bytes.fromhex("ffffffffffff020000000001") + b"\\x08\\x00" + bytes(46)
ok = 0
for _ in range(20):
    try:
        s.send(frame); ok += 1
    except OSError:
        pass
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
    u.sendto(b"x", ("198.18.0.2", 9))
except OSError:
    pass
print(ok)
"""


def nic(veth, action, check=True):
    return veth.python(veth.cap_ns, "-m", "flowprobe", "nic", action, veth.cap_if,
                       check=check)


def try_to_transmit(veth) -> int:
    """Raw-socket frames and a bound UDP datagram out of the capture end."""
    return int(veth.python(veth.cap_ns, "-c", SEND_RAW, veth.cap_if).stdout)


def test_check_fails_before_prepare_and_passes_after(veth):
    """check exits non-zero on a plain interface and 0 after prepare,
    listing every property as ok together with the TX counter."""
    before = nic(veth, "check", check=False)
    assert before.returncode == 1 and "NOT OK" in before.stdout
    assert nic(veth, "prepare").returncode == 0
    after = nic(veth, "check", check=False)
    assert after.returncode == 0, after.stdout
    lines = after.stdout.splitlines()
    assert not [ln for ln in lines if ln.startswith("NOT OK")]
    for prop in ("up", "promisc", "noarp", "no_ipv4_addresses", "no_ipv6_addresses",
                 "ipv6_disabled", "egress_blocked", "offload_off:tx-tcp-segmentation",
                 "offload_off:tx-generic-segmentation", "offload_off:rx-gro",
                 "offload_off:rx-checksum", "offload_off:tx-checksum-ip-generic"):
        assert any(ln.split()[:2] == ["ok", prop] for ln in lines), prop
    assert any(ln.startswith("tx_packets ") for ln in lines)


def test_prepared_interface_never_transmits(veth):
    """After prepare, attempts to send out of the capture end move neither
    its TX counter nor the peer's RX counter (before prepare they do)."""
    c0 = veth.link_stats(veth.cap_ns, veth.cap_if)
    assert try_to_transmit(veth) == 20            # control: sending works
    c1 = veth.link_stats(veth.cap_ns, veth.cap_if)
    assert c1["tx_packets"] - c0["tx_packets"] >= 20
    nic(veth, "prepare")
    c2 = veth.link_stats(veth.cap_ns, veth.cap_if)
    p2 = veth.link_stats(veth.send_ns, veth.send_if)
    try_to_transmit(veth)
    c3 = veth.link_stats(veth.cap_ns, veth.cap_if)
    p3 = veth.link_stats(veth.send_ns, veth.send_if)
    assert c3["tx_packets"] == c2["tx_packets"]
    assert p3["rx_packets"] == p2["rx_packets"]


def snapshot(veth) -> dict:
    ns, ifc = veth.cap_ns, veth.cap_if
    link = json.loads(veth.run(ns, "ip", "-j", "-d", "link", "show", ifc).stdout)[0]
    addrs = json.loads(veth.run(ns, "ip", "-j", "addr", "show", ifc).stdout)[0]
    return {
        "flags": sorted(link["flags"]),
        "promiscuity": link["promiscuity"],
        "addresses": sorted((a["family"], a["local"], a["prefixlen"])
                            for a in addrs.get("addr_info", [])),
        "disable_ipv6": veth.run(ns, "cat", f"/proc/sys/net/ipv6/conf/{ifc}/"
                                 "disable_ipv6").stdout,
        "features": veth.run(ns, "ethtool", "-k", ifc).stdout,
        "qdiscs": veth.run(ns, "tc", "qdisc", "show", "dev", ifc).stdout,
        "egress": veth.run(ns, "tc", "filter", "show", "dev", ifc, "egress").stdout,
    }


def test_restore_puts_back_exact_previous_state(veth):
    """restore returns flags, addresses, IPv6 sysctl, offloads and qdiscs to
    exactly what they were before prepare, and removes the state file."""
    ns, ifc = veth.cap_ns, veth.cap_if
    veth.run(ns, "sh", "-c", f"echo 0 > /proc/sys/net/ipv6/conf/{ifc}/disable_ipv6")
    veth.run(ns, "ip", "addr", "add", "198.18.5.1/24", "dev", ifc)
    veth.run(ns, "ip", "-6", "addr", "add", "2001:db8:5::1/64", "dev", ifc, "nodad")
    veth.run(ns, "ethtool", "-K", ifc, "tso", "on", "gso", "on", "tx", "on", "rx", "on")
    before = snapshot(veth)
    assert any(a[1] == "2001:db8:5::1" for a in before["addresses"])
    nic(veth, "prepare")
    prepared = snapshot(veth)
    assert prepared != before and prepared["addresses"] == []
    nic(veth, "restore")
    assert snapshot(veth) == before
    assert veth.run(ns, "test", "-e", f"/run/flowprobe/{ifc}.json",
                    check=False).returncode != 0


def test_prepared_interface_captures_every_frame(veth, capture, tmp_path):
    """A prepared (promiscuous, NOARP, offload-free) capture end still hands
    every frame from the peer to a ring, whatever its destination MAC."""
    import packets
    frames = [bytes([0x02, 0, 0, 0x5e, 0, i])   # a different MAC each, not ours
              + packets.eth_ipv4_udp("198.18.0.1", "198.19.0.1", 1000 + i, 2000, b"p" * i)[6:]
              for i in range(100)]
    nic(veth, "prepare")
    cap = capture("--expect", "100")
    path = tmp_path / "prepared.pcap"
    packets.write_pcap(path, [(i, f) for i, f in enumerate(frames)])
    veth.send(path)
    got = sorted(p[4] for p in cap.finish()["packets"][0])
    assert got == sorted(f.hex() for f in frames)
