"""The synthetic capture generator, checked against an independent decoder
(tshark): clean decode, valid checksums, and the same per-flow truth."""
import hashlib
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import packets
import synth

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark missing")

REPO = Path(__file__).resolve().parent.parent
FIELDS = ("frame.protocols ieee8021ad.id vlan.id ip.src ip.dst ipv6.src ipv6.dst ip.proto ipv6.nxt "
          "ipv6.hopopts.nxt ipv6.dstopts.nxt ipv6.routing.nxt ipv6.fraghdr.nxt ip.dsfield "
          "ipv6.tclass ip.len ipv6.plen ip.ttl ipv6.hlim frame.time_epoch tcp.flags "
          "tcp.srcport tcp.dstport udp.srcport udp.dstport sctp.srcport sctp.dstport "
          "icmp.type icmp.code icmpv6.type icmpv6.code").split()
NO_DEFRAG = ["-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"]


def tshark(path, *args):
    return subprocess.run(["tshark", "-n", "-r", str(path), *args], check=True,
                          capture_output=True, text=True).stdout


def ns_of(epoch):
    sec, frac = epoch.split(".")
    return int(sec) * 10**9 + int(frac.ljust(9, "0")[:9])


def tshark_flows(path):
    """Per-flow aggregates under the engine's rules, from tshark's fields."""
    args = [a for f in FIELDS for a in ("-e", f)]
    out = tshark(path, *NO_DEFRAG, "-T", "fields", "-E", "occurrence=a", *args)
    flows = {}
    for line in out.splitlines():
        v = dict(zip(FIELDS, [x.split(",") for x in line.split("\t")]))
        g = lambda f: v[f][0]  # noqa: E731  (first occurrence: the outer header)
        layers = g("frame.protocols").split(":")
        vl = [int(x) for x in v["ieee8021ad.id"] + v["vlan.id"] if x]   # outer first
        if g("ip.src"):
            ver, src, dst, proto, tos = 4, g("ip.src"), g("ip.dst"), int(g("ip.proto")), \
                int(g("ip.dsfield"), 16)
            octets, ttl = int(g("ip.len")), int(g("ip.ttl"))
        else:
            ver, src, dst, tos = 6, g("ipv6.src"), g("ipv6.dst"), int(g("ipv6.tclass"), 16)
            octets, ttl = 40 + int(g("ipv6.plen")), int(g("ipv6.hlim"))
            proto = int(next(g(f) for f in ("ipv6.fraghdr.nxt", "ipv6.routing.nxt",
                                            "ipv6.dstopts.nxt", "ipv6.hopopts.nxt",
                                            "ipv6.nxt") if g(f)))
        l4 = layers[layers.index("ipv6" if ver == 6 else "ip") + 1:]
        l4 = [x for x in l4 if not x.startswith("ipv6.")][:1]
        sport = dport = 0
        if l4 == ["tcp"] or l4 == ["udp"] or l4 == ["sctp"]:
            sport, dport = int(g(l4[0] + ".srcport")), int(g(l4[0] + ".dstport"))
        elif l4 in (["icmp"], ["icmpv6"]):
            dport = int(g(l4[0] + ".type")) << 8 | int(g(l4[0] + ".code"))
        key = synth.flow_key(vl[0] if vl else 0, ver, src, dst, sport, dport, proto, tos)
        ts, flags = ns_of(g("frame.time_epoch")), int(g("tcp.flags") or "0", 16) & 0xFF
        f = flows.setdefault(key, {"packets": 0, "octets": 0, "first_ns": ts, "last_ns": ts,
                                   "tcp_flags": 0, "inner_vlan": vl[1] if len(vl) > 1 else 0,
                                   "ttl_min": ttl, "ttl_max": ttl})
        f["packets"] += 1
        f["octets"] += octets
        f["last_ns"] = ts
        f["tcp_flags"] |= flags
        f["ttl_min"], f["ttl_max"] = min(f["ttl_min"], ttl), max(f["ttl_max"], ttl)
    return flows


@pytest.fixture(scope="module", params=[("pcap", False), ("pcapng", True)],
                ids=["pcap-us", "pcapng-ns"])
def capture(request, tmp_path_factory):
    fmt, nsec = request.param
    path = tmp_path_factory.mktemp("synth") / f"c.{fmt}"
    truth = synth.generate(path, flows=1200, packets=12000, seed=21, fmt=fmt, nsec=nsec)
    return path, truth


def test_capture_has_no_malformed_packets(capture):
    """tshark decodes every frame without a malformed-packet exception."""
    path, _ = capture
    assert tshark(path, "-Y", "_ws.malformed") == ""


def test_checksums_are_valid(capture):
    """IPv4 header, TCP, UDP, ICMP, ICMPv6 and SCTP (CRC32c) checksums verify."""
    path, _ = capture
    bad = tshark(path, "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
                 "-o", "udp.check_checksum:TRUE", "-o", "sctp.checksum:CRC 32c", "-Y",
                 " || ".join(f"{p}.checksum.status == 0"
                             for p in ("ip", "tcp", "udp", "icmp", "icmpv6", "sctp")))
    assert bad == ""


def test_tshark_lengths_and_counts_equal_truth(capture):
    """The sum of tshark's IP lengths and the packet count equal the truth."""
    path, truth = capture
    out = tshark(path, "-T", "fields", "-e", "ip.len", "-e", "ipv6.plen")
    lines = out.splitlines()
    octets = sum(int(a.split(",")[0]) if a else 40 + int(b.split(",")[0])
                 for a, b in (ln.split("\t") for ln in lines))
    assert (len(lines), octets) == (truth.packets, truth.octets) == (truth.frames, truth.octets)


def test_tshark_flows_equal_truth(capture):
    """Keys, packets, octets, first/last ns, flags, inner VLAN, TTLs per flow."""
    path, truth = capture
    assert tshark_flows(path) == truth.flows


def test_mix_covers_every_feature(capture):
    """The default mix yields each encapsulation, protocol and IP feature."""
    path, truth = capture
    protos = Counter()
    for line in tshark(path, *NO_DEFRAG, "-T", "fields", "-e", "frame.protocols",
                       "-e", "ip.hdr_len", "-e", "frame.len", "-e", "ip.flags.mf",
                       "-e", "ip.frag_offset", "-e", "ipv6.fraghdr.offset").splitlines():
        layers, ihl, flen, mf, off, off6 = line.split("\t")
        protos.update(set(layers.split(":")))
        protos["ip_options"] += ihl.split(",")[0] not in ("", "20")
        protos["padded"] += flen == "60"
        protos["v4_frag_first"] += mf.startswith("1") and off.startswith("0")
        protos["v4_frag_later"] += off.split(",")[0] not in ("", "0")
        protos["v6_frag_later"] += off6 not in ("", "0")
    for feature in ("vlan", "ieee8021ad", "mpls", "ip", "ipv6", "tcp", "udp", "sctp", "icmp",
                    "icmpv6", "ipv6.hopopts", "ipv6.dstopts", "ipv6.routing", "ipv6.fraghdr",
                    "ip_options", "padded", "v4_frag_first", "v4_frag_later", "v6_frag_later"):
        assert protos[feature] > 0, feature
    assert {k[6] for k in truth.flows} >= {1, 6, 17, 58, 132, 253}
    assert truth.fragments > 0 and len({k[7] for k in truth.flows}) > 3


def test_same_seed_same_bytes(tmp_path):
    """Equal arguments give identical files; another seed gives another file."""
    digests = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synth.generate(tmp_path / name, flows=300, packets=3000, seed=seed, malformed=True)
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1] != digests[2]


def test_windows_keep_truth_exact(tmp_path):
    """Small streaming windows change interleaving only, never the truth totals."""
    a = synth.generate(tmp_path / "a", flows=400, packets=4000, seed=9, window_packets=500)
    assert tshark_flows(tmp_path / "a") == a.flows
    assert a.packets == 4000 and len(a.flows) > 400


def test_malformed_frames_are_counted(tmp_path):
    """Malformed extras land in truth.skipped / l4_partial; the rest still decode."""
    path = tmp_path / "m.pcap"
    truth = synth.generate(path, flows=100, packets=1000, seed=4, malformed=True)
    assert truth.frames == truth.packets + sum(truth.skipped.values())
    assert truth.l4_partial == 3 and truth.skipped["non_ip"] == 3
    assert set(truth.skipped) == set(synth.SKIP_REASONS)
    assert tshark(path, "-Y", "arp", "-T", "fields", "-e", "frame.number").count("\n") == 3
    partial = [k for k in truth.flows if k[2] in ("198.18.255.1", "2001:db8:ff::1")]
    assert len(partial) == 3 and all(k[4:6] == (0, 0) for k in partial)
    assert synth.generate(path, flows=100, packets=1000, seed=4).packets == 1000


def test_truth_json_round_trip_and_record_helpers(tmp_path, capture):
    """to_json/from_json keep the truth; key_of_record/sum_records read IE dicts."""
    _, truth = capture
    truth.to_json(tmp_path / "t.json")
    back = synth.Truth.from_json(tmp_path / "t.json")
    assert back.flows == truth.flows and back.skipped == truth.skipped
    records = []
    for k, v in truth.flows.items():      # split every flow into two deltas
        vlan, ver, src, dst, sp, dp, proto, tos = k
        base = {f"sourceIPv{ver}Address": src, f"destinationIPv{ver}Address": dst,
                "sourceTransportPort": sp, "destinationTransportPort": dp,
                "protocolIdentifier": proto, "ipClassOfService": tos, "ipVersion": ver,
                "tcpControlBits": v["tcp_flags"]}
        if vlan:
            base["vlanId"] = vlan
        records.append({**base, "packetDeltaCount": 1, "octetDeltaCount": 1,
                        "flowStartMilliseconds": v["first_ns"] // 10**6,
                        "flowEndMilliseconds": v["first_ns"] // 10**6})
        records.append({**base, "packetDeltaCount": v["packets"] - 1,
                        "octetDeltaCount": v["octets"] - 1,
                        "flowStartMilliseconds": v["last_ns"] // 10**6,
                        "flowEndMilliseconds": v["last_ns"] // 10**6})
    assert synth.sum_records(json.loads(json.dumps(records))) == truth.expected()


def test_write_pcap_keeps_given_frames(tmp_path):
    """write_pcap writes frames as given (times, snap-cut frames, padding)."""
    path = tmp_path / "w.pcap"
    small = packets.eth_ipv4_udp("198.18.0.1", "198.19.0.1", 1000, 2000, b"x")
    big = packets.eth_ipv6_tcp("2001:db8::1", "2001:db8::2", 40000, 33333, packets.TCP_ACK, b"y" * 200)
    start = synth.DEFAULT_START_NS
    packets.write_pcap(path, [(start, small), (start + 1500, big[:64], len(big))])
    out = tshark(path, "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len",
                 "-e", "frame.cap_len", "-e", "ip.len")
    assert out.splitlines() == ["1685577600.000000000\t60\t60\t29",
                                "1685577600.000001000\t%d\t64\t" % len(big)]


def test_gen_capture_cli(tmp_path):
    """bench/gen_capture.py writes the capture and the truth JSON."""
    cap, tj = tmp_path / "g.pcap", tmp_path / "g.json"
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gen_capture.py"), str(cap),
                          "--packets", "2000", "--flows", "200", "--seed", "3", "--truth",
                          str(tj)], check=True, capture_output=True, text=True).stdout
    summary = json.loads(out)
    truth = synth.generate(tmp_path / "again.pcap", flows=200, packets=2000, seed=3)
    assert cap.read_bytes() == (tmp_path / "again.pcap").read_bytes()
    assert summary["packets"] == 2000 and synth.Truth.from_json(tj).flows == truth.flows
