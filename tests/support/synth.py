"""Seeded synthetic captures with exact ground truth (pure stdlib).

generate() writes a classic pcap (or pcapng) of interleaved flows and returns
a Truth holding, per flow key, what the engine must report under the rules in
probe/flowtable/flowtable.h:

  key = (outer vlan or 0, ip version, src, dst, sport, dport, proto, tos)
  ICMP/ICMPv6: sport 0, dport = type << 8 | code
  non-first fragments: ports 0 (own key); first fragments carry the ports
  octets = IP total length (IPv4 field; IPv6 40 + payload length), never L2
  bytes, MPLS labels, VLAN tags or Ethernet padding.

API: generate(path, flows=, packets=, seed=, fmt="pcap"|"pcapng", nsec=,
mix=, start_ns=, gap_us=, malformed=, truth=) -> Truth (.flows, .packets,
.octets, .frames, .skipped, .l4_partial, .fragments, .expected(), .to_json());
key_of_record() / sum_records() map engine JSON records onto the same keys.
Frames are built, and files written, by packets.py, which tests also use for
captures made by hand.

Speed: every flow gets a few prebuilt frames (first / middle / last packet);
per packet only the record header is packed, and output goes out in big
chunks, window by window, so memory stays bounded.  Only 198.18.0.0/15 and
2001:db8::/32 addresses and locally administered MACs (02:...) are used.
"""
import ipaddress
import json
import random
import struct
from array import array
from itertools import accumulate, cycle, islice, repeat, starmap
from operator import and_, itemgetter, rshift

from packets import (TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, addr_text, eth_arp,
                     eth_ipv4_tcp, eth_ipv4_udp, eth_ipv6_udp, ether, icmp, ipv4, ipv6,
                     pcap_header, pcapng_header, sctp, tcp, udp, v6_chain, v6_fragment,
                     v6_opts, with_l4_checksum)

DEFAULT_START_NS = 1685577600 * 10**9          # 2023-06-01T00:00:00Z
SKIP_REASONS = ("linktype", "l2_truncated", "non_ip", "vlan_depth", "mpls",
                "ip_truncated", "ip_version", "ip_header", "ip_length")
DEFAULT_MIX = {
    "ipv6": 0.35,                       # share of IPv6 flows
    "vlan": 0.15, "qinq": 0.07,         # 802.1Q / QinQ (exclusive)
    "mpls": 0.08,                       # 1-3 label stack (after any tags)
    "tcp": 0.45, "udp": 0.30, "sctp": 0.05, "icmp": 0.12, "other": 0.08,
    "ip_options": 0.06, "ipv6_ext": 0.2, "fragmented": 0.04,
    "small": 0.25, "fin": 0.5, "ttl_vary": 0.1,
}
_TOS = (0, 0, 0, 0x10, 0x28, 0xB8, 0x02, 0x01, 0x48)
_TTL = (64, 64, 64, 128, 255, 57, 32)
# destination ports tshark shows as plain data (its dissectors misread
# zero payloads on e.g. 5001 and 7000, so those are avoided)
_DPORTS = tuple(p for p in range(30000, 65000, 997) if p != 61904) + (
    5201, 8000, 9999, 12345, 23456, 33333, 40000, 47810, 55555)
_ICMP4 = ((8, 0), (8, 0), (8, 0), (0, 0), (3, 3), (11, 0), (3, 1))
_ICMP6 = ((128, 0), (128, 0), (129, 0), (1, 4), (3, 0))
_OTHER_PROTO = (253, 254)

# ------------------------------------------------------------- keys, truth


def flow_key(vlan, version, src, dst, sport, dport, proto, tos):
    """The truth key tuple; addresses as canonical strings."""
    src = addr_text(src) if isinstance(src, bytes) else str(ipaddress.ip_address(src))
    dst = addr_text(dst) if isinstance(dst, bytes) else str(ipaddress.ip_address(dst))
    return (vlan, version, src, dst, sport, dport, proto, tos)


def key_of_record(d):
    """Key tuple of one engine JSON flow dict (IANA IE names)."""
    v6 = "sourceIPv6Address" in d
    ver = d.get("ipVersion", 6 if v6 else 4)
    src = d["sourceIPv6Address"] if v6 else d["sourceIPv4Address"]
    dst = d["destinationIPv6Address"] if v6 else d["destinationIPv4Address"]
    return flow_key(d.get("vlanId", 0), ver, src, dst, d.get("sourceTransportPort", 0),
                    d.get("destinationTransportPort", 0), d["protocolIdentifier"],
                    d.get("ipClassOfService", 0))


def sum_records(dicts):
    """{key: {packets, octets, first_ms, last_ms, tcp_flags}} over JSON flow
    dicts (deltas of one flow summed, first/last as min/max)."""
    out = {}
    for d in dicts:
        k = key_of_record(d)
        s = out.get(k)
        p, o = d["packetDeltaCount"], d["octetDeltaCount"]
        f, l_ = d["flowStartMilliseconds"], d["flowEndMilliseconds"]
        fl = d.get("tcpControlBits", 0)
        if s is None:
            out[k] = {"packets": p, "octets": o, "first_ms": f, "last_ms": l_, "tcp_flags": fl}
        else:
            s["packets"] += p
            s["octets"] += o
            s["first_ms"] = min(s["first_ms"], f)
            s["last_ms"] = max(s["last_ms"], l_)
            s["tcp_flags"] |= fl
    return out


def counts(dicts):
    """{key: (packets, octets)} over JSON flow dicts: what live tests compare
    with Truth.counts() (capture times differ from the file's)."""
    return {k: (v["packets"], v["octets"]) for k, v in sum_records(dicts).items()}


_FIELDS = ("packets", "octets", "first_ns", "last_ns", "tcp_flags", "inner_vlan",
           "ttl_min", "ttl_max")


class Truth:
    """Ground truth of one capture.

    flows: {key: {packets, octets, first_ns, last_ns, tcp_flags, inner_vlan,
    ttl_min, ttl_max}}; packets/octets: accepted totals; frames: every frame
    written; skipped: {ft_skip name: count}; l4_partial, fragments: as the
    ft_stats counters of the same names."""

    def __init__(self, flows=None, packets=0, octets=0, frames=0, skipped=None,
                 l4_partial=0, fragments=0):
        self.flows = flows if flows is not None else {}
        self.packets, self.octets, self.frames = packets, octets, frames
        self.skipped = skipped if skipped is not None else {r: 0 for r in SKIP_REASONS}
        self.l4_partial, self.fragments = l4_partial, fragments

    def expected(self):
        """The truth in sum_records() shape (times as epoch milliseconds)."""
        return {k: {"packets": v["packets"], "octets": v["octets"],
                    "first_ms": v["first_ns"] // 10**6, "last_ms": v["last_ns"] // 10**6,
                    "tcp_flags": v["tcp_flags"]} for k, v in self.flows.items()}

    def counts(self):
        """{key: (packets, octets)}, as counts() gives for exported flows."""
        return {k: (v["packets"], v["octets"]) for k, v in self.flows.items()}

    def to_dict(self):
        return {"packets": self.packets, "octets": self.octets, "frames": self.frames,
                "skipped": self.skipped, "l4_partial": self.l4_partial,
                "fragments": self.fragments,
                "flows": [{"key": list(k), **v} for k, v in self.flows.items()]}

    def to_json(self, path):
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh)

    @classmethod
    def from_json(cls, path):
        with open(path) as fh:
            d = json.load(fh)
        flows = {tuple(f.pop("key")): f for f in d.pop("flows")}
        return cls(flows=flows, **d)

# ---------------------------------------------------------------- generator
def packet_counts(rng, flows, packets, m):
    """Packets per flow: fragmented flows get exactly k (2-3) packets, the
    rest a skewed (Zipf-like, shuffled) share of the remainder, at least 1."""
    if flows < 1 or packets < flows:
        raise ValueError("need flows >= 1 and packets >= flows")
    frag_k = array("B", bytes(flows))
    fixed = 0
    for i in range(1, flows):            # flow 0 is never fragmented
        if rng.random() < m["fragmented"]:
            frag_k[i] = rng.randint(2, 3)
            fixed += frag_k[i]
    i = flows - 1
    nvar = flows - sum(1 for k in frag_k if k)
    while packets - fixed < nvar:        # not enough packets: unfragment some
        if frag_k[i]:
            fixed -= frag_k[i]
            frag_k[i] = 0
            nvar += 1
        i -= 1
    var = [i for i in range(flows) if not frag_k[i]]
    rng.shuffle(var)
    extra = packets - fixed - nvar
    w = [(r + 8) ** -1.1 for r in range(len(var))]
    scale = extra / sum(w)
    counts = array("I", frag_k)
    given = 0
    for r, i in enumerate(var):
        c = int(w[r] * scale)
        counts[i] = 1 + c
        given += c
    for r in range(extra - given):
        counts[var[r % len(var)]] += 1
    return counts, frag_k


_PROTOS = ("tcp", "udp", "sctp", "icmp", "other")


def _pick(r, m, names=_PROTOS):
    x = r() * sum(m[n] for n in names)
    for n in names:
        x -= m[n]
        if x < 0:
            return n
    return names[-1]


def build_flow(rng, i, n, k, m, acc_of, finish):
    """The n packets of flow i, in order, as finish(frame, acc) templates;
    repeated packets share one template object."""
    r = rng.random
    bits = rng.getrandbits
    v6 = r() < m["ipv6"]
    x = r()
    tci = lambda: bits(3) << 13 | 1 + int(r() * 4094)  # noqa: E731
    vl = (tci(), tci()) if x < m["qinq"] else (tci(),) if x < m["qinq"] + m["vlan"] else ()
    labels = (tuple((16 + bits(19), bits(3), 64) for _ in range(1 + int(r() * 3)))
              if r() < m["mpls"] else ())
    outer = vl[0] & 0xFFF if vl else 0
    inner = vl[1] & 0xFFF if len(vl) > 1 else 0
    if v6:
        src = struct.pack("!IHHQ", 0x20010DB8, 1, i >> 16 & 0xFFFF, bits(64))
        dst = struct.pack("!IHHQ", 0x20010DB8, 2, bits(16), bits(64))
        src_s, dst_s = addr_text(src), addr_text(dst)
    else:
        src = bytes((198, 18, i >> 8 & 0xFF, i & 0xFF))
        dst = bytes((198, 19, bits(8), 1 + int(r() * 254)))
        src_s, dst_s = "198.18.%d.%d" % (src[2], src[3]), "198.19.%d.%d" % (dst[2], dst[3])
    ver = 6 if v6 else 4
    l2 = ether(b"", 0x86DD if v6 else 0x0800, vlans=vl, mpls=labels, pad=False,
               src_mac=b"\x02" + (i & 0xFFFFFFFFFF).to_bytes(5, "big"),
               dst_mac=b"\x02\xfe" + bits(32).to_bytes(4, "big"))
    tos, ttl = _TOS[int(r() * len(_TOS))], _TTL[int(r() * len(_TTL))]
    ttl2 = ttl - 1 if r() < m["ttl_vary"] else ttl
    sport, dport = 49152 + int(r() * 11848), _DPORTS[int(r() * len(_DPORTS))]
    ident = bits(32)

    def tmpl(l3, key, flags, hop, uses, fragment=False):
        f = l2 + l3
        if len(f) < 60:
            f += bytes(60 - len(f))
        return finish(f, acc_of(key, flags, hop, inner, uses, len(l3), fragment))

    if k:                                # one UDP datagram in k fragments
        sizes = [8 * (8 + int(r() * 53)) for _ in range(k - 1)] + [1 + int(r() * 400)]
        seg = with_l4_checksum(src, dst, 17, udp(sport, dport, bytes(sum(sizes) - 8)))
        hbh = v6 and r() < 0.5
        out, off = [], 0
        for j, size in enumerate(sizes):
            piece, more = seg[off:off + size], j < k - 1
            if v6:
                ext = (v6_opts(44) if hbh else b"") + v6_fragment(17, off // 8, more, ident)
                l3 = ipv6(src, dst, 0 if hbh else 44, ext + piece, tc=tos, hlim=ttl)
            else:
                l3 = ipv4(src, dst, 17, piece, tos=tos, ttl=ttl, ident=ident & 0xFFFF,
                          frag=(0x2000 if more else 0) | off // 8)
            ports = (sport, dport) if j == 0 else (0, 0)
            out.append(tmpl(l3, (outer, ver, src_s, dst_s, *ports, 17, tos), 0, ttl, 1,
                            fragment=j > 0))
            off += size
        return out

    proto_name = _pick(r, m)
    size = int(r() * 10) if r() < m["small"] else min(int(rng.expovariate(1 / 400)), 1400)
    opts = b""
    if not v6 and r() < m["ip_options"]:
        opts = b"\x94\x04\0\0" + (b"\x01\x01\x01\x00" if r() < 0.5 else b"")
    nh, ext = 0, b""
    firsts = lasts = None                  # (l4 segment, tcp flags)
    if proto_name == "tcp":
        proto, pay = 6, bytes(size)
        firsts = (tcp(sport, dport, TCP_SYN, seq=ident, options=b"\x02\x04\x05\xb4"), TCP_SYN)
        mids = (tcp(sport, dport, TCP_ACK | TCP_PSH, pay, seq=ident + 1, ack=1), TCP_ACK | TCP_PSH)
        fin = TCP_FIN | TCP_ACK if r() < m["fin"] else TCP_ACK
        lasts = (tcp(sport, dport, fin, seq=ident + 1 + size, ack=1), fin)
        ports = (sport, dport)
    elif proto_name == "udp":
        proto, ports = 17, (sport, dport)
        mids = (udp(sport, dport, bytes(size)), 0)
    elif proto_name == "sctp":
        proto, ports = 132, (sport, dport)
        mids = (sctp(sport, dport, bytes(max(size % 256, 1)), vtag=ident), 0)
    elif proto_name == "icmp":
        proto = 58 if v6 else 1
        tab = _ICMP6 if v6 else _ICMP4
        typ, code = tab[int(r() * len(tab))]
        if typ in (0, 8, 128, 129):
            body = bytes(size)
        else:                              # an error quotes the offending packet
            q = udp(dport, sport)
            body = ipv6(dst, src, 17, q) if v6 else ipv4(dst, src, 17, q)
        mids = (icmp(typ, code, body, ident=ident & 0xFFFF), 0)
        ports = (0, typ << 8 | code)
    else:
        proto, ports = _OTHER_PROTO[i & 1], (0, 0)
        mids = (bytes(range(256)) * (size // 256) + bytes(range(size % 256)), 0)
    if v6 and r() < m["ipv6_ext"]:
        kinds = tuple(h for h, p in ((0, 0.5), (60, 0.5), (43, 0.4)) if r() < p) or (60,)
        nh, ext = v6_chain(kinds, proto, dst)
    key = (outer, ver, src_s, dst_s, *ports, proto, tos)

    def build(seg_flags, hop, uses):
        seg = with_l4_checksum(src, dst, proto, seg_flags[0])
        if v6:
            l3 = ipv6(src, dst, nh if ext else proto, ext + seg, tc=tos, hlim=hop)
        else:
            l3 = ipv4(src, dst, proto, seg, tos=tos, ttl=hop, options=opts, ident=ident & 0xFFFF)
        return tmpl(l3, key, seg_flags[1], hop, uses)

    if firsts is None and ttl2 == ttl:     # every packet alike: one template
        return [build(mids, ttl, n)] * n
    a = build(firsts or mids, ttl, 1)
    if n == 1:
        return [a]
    z = build(lasts or mids, ttl, 1)
    if n == 2:
        return [a, z]
    return [a] + [build(mids, ttl2, n - 2)] * (n - 2) + [z]


def malformed_frames(rng):
    """Frames the engine must skip (by ft_skip name) or accept as l4_partial.
    Yields ((data, caplen, wirelen, acc_args or None, octets), reason, partial)."""
    s, d = b"\xc6\x12\xff\x01", b"\xc6\x13\xff\x02"
    s6 = struct.pack("!IHHQ", 0x20010DB8, 0xFF, 0, 1)
    d6 = struct.pack("!IHHQ", 0x20010DB8, 0xFF, 0, 2)
    good = eth_ipv4_udp(s, d, 1111, 2222, bytes(64))

    def skip(f, reason, cap=None, wl=None):
        cap = len(f) if cap is None else cap
        return (f[:cap], cap, len(f) if wl is None else wl, None, 0), reason, 0

    for n in range(3):
        yield skip(eth_arp(), "non_ip")
        yield skip(good, "l2_truncated", cap=10)
        yield skip(good, "ip_truncated", cap=14 + 12)
        yield skip(ether(ipv4(s, d, 17, udp(1, 2), ihl=3), 0x0800), "ip_header")
        yield skip(ether(ipv4(s, d, 17, udp(1, 2), version=5), 0x0800), "ip_version")
        yield skip(ether(ipv4(s, d, 17, udp(1, 2, bytes(64)), total_length=1200), 0x0800),
                   "ip_length")
        yield skip(ether(ipv4(s, d, 17, udp(1, 2)), 0x0800, vlans=(10, 20, 30)), "vlan_depth")
        yield skip(ether(ipv4(s, d, 17, udp(1, 2)), 0, mpls=tuple(range(100, 109))), "mpls")
    yield skip(eth_ipv6_udp(s6, d6, 1, 2), "ip_truncated", cap=14 + 30)
    yield skip(ether(ipv4(s, d, 17, udp(1, 2), total_length=12), 0x0800), "ip_header")
    # accepted, but snaplen cut right after the network header: no ports/flags
    for n, tos in enumerate((0, 0x20)):
        f = eth_ipv4_tcp(s, d, 3333 + n, 80, TCP_ACK, bytes(100), tos=tos, ttl=60)
        key = (0, 4, addr_text(s), addr_text(d), 0, 0, 6, tos)
        yield (f[:34], 34, len(f), (key, 0, 60, 0), len(f) - 14), None, 1
    f = eth_ipv6_udp(s6, d6, 4444, 53, bytes(30), hlim=61)
    key = (0, 6, addr_text(s6), addr_text(d6), 0, 0, 17, 0)
    yield (f[:54], 54, len(f), (key, 0, 61, 0), len(f) - 14), None, 1




def generate(path, *, flows, packets, seed, fmt="pcap", nsec=False, mix=None,
             start_ns=DEFAULT_START_NS, gap_us=1, malformed=False, truth=True,
             window_packets=1 << 20):
    """Write a capture of `packets` frames over ~`flows` flows (plus a few
    malformed frames when asked) and return its Truth.  Gaps between packets
    are uniform integers in [0, 2*gap_us] microseconds; with nsec=False the
    start is floored to a microsecond.  Same arguments, same bytes.
    truth=False keeps only the totals (for huge benchmark files)."""
    if fmt not in ("pcap", "pcapng"):
        raise ValueError(f"fmt: unknown {fmt!r} (expected: pcap, pcapng)")
    m = dict(DEFAULT_MIX)
    for k, v in (mix or {}).items():
        if k not in m:
            raise ValueError(f"mix: unknown key {k!r} (expected: {', '.join(sorted(m))})")
        m[k] = v
    rng = random.Random(seed)
    counts, frag_k = packet_counts(random.Random(rng.random()), flows, packets, m)
    detail = random.Random(rng.random())
    unit = 1 if nsec else 1000                    # ns per file time unit
    clock = start_ns // unit
    gapc = cycle([detail.randint(0, 2 * gap_us) * 1000 // unit for _ in range(4093)])
    res = Truth()
    accs = {}
    total = [0, 0, None, None, 0, 0, 255, 0]      # the only acc when truth=False
    stat = {"fragments": 0, "l4_partial": 0}

    def acc_of(key, flags, ttl, inner, uses, octets, fragment=False):
        if fragment:
            stat["fragments"] += uses
        a = total
        if truth:
            a = accs.get(key)
            if a is None:
                a = accs[key] = [0, 0, None, None, 0, inner, 255, 0]
            total[0] += uses
            total[1] += uses * octets
        a[0] += uses
        a[1] += uses * octets
        a[4] |= flags
        a[6] = min(a[6], ttl)
        a[7] = max(a[7], ttl)
        return a

    ng = fmt == "pcapng"
    lens = struct.Struct("<II").pack

    def finish(data, acc, cap=None, wl=None):   # -> (blob, acc, pcapng prefix)
        cap = len(data) if cap is None else cap
        wl = cap if wl is None else wl
        if not ng:
            return (lens(cap, wl) + data, acc, None)
        pad = bytes(-cap % 4)
        blen = 32 + cap + len(pad)
        return (lens(cap, wl) + data + pad + struct.pack("<I", blen), acc,
                struct.pack("<III", 6, blen, 0))

    if ng:
        stamp = lambda ts: map(lens, map(rshift, ts, repeat(32)),  # noqa: E731
                               map(and_, ts, repeat(0xFFFFFFFF)))
    else:
        div = 10**9 if nsec else 10**6
        stamp = lambda ts: starmap(lens, map(divmod, ts, repeat(div)))  # noqa: E731
    blob, prefix = itemgetter(0), itemgetter(2)
    with open(path, "wb") as fh:
        fh.write((pcapng_header if ng else pcap_header)(nsec))
        first = 0
        while first < flows:
            # one window: consecutive flows holding ~window_packets packets
            last, budget = first, 0
            while last < flows and (budget == 0 or budget + counts[last] <= window_packets):
                budget += counts[last]
                last += 1
            seqs = [build_flow(detail, i, counts[i], frag_k[i], m, acc_of, finish)
                    for i in range(first, last)]
            if malformed and first == 0:
                for (data, cap, wl, acc_args, octs), reason, partial in malformed_frames(detail):
                    if reason:
                        res.skipped[reason] += 1
                        a = [0, 0, None, None]
                    else:
                        a = acc_of(*acc_args, 1, octs)
                    stat["l4_partial"] += partial
                    seqs.append([finish(data, a, cap, wl)])
            order = array("I")
            for f, s in enumerate(seqs):
                order.extend(repeat(f, len(s)))
            detail.shuffle(order)
            pos = [0] * len(seqs)
            for c in range(0, len(order), 1 << 15):
                chunk = order[c:c + (1 << 15)]
                times = list(accumulate(islice(gapc, len(chunk) - 1), initial=clock))
                clock = times[-1] + next(gapc)
                tl = []
                keep = tl.append
                for f, ts in zip(chunk, times):
                    p = pos[f]
                    pos[f] = p + 1
                    t = seqs[f][p]
                    a = t[1]
                    if a[2] is None:
                        a[2] = ts
                    a[3] = ts
                    keep(t)
                if ng:
                    out = [None] * (3 * len(tl))
                    out[0::3] = map(prefix, tl)
                    out[1::3] = stamp(times)
                    out[2::3] = map(blob, tl)
                else:
                    out = [None] * (2 * len(tl))
                    out[0::2] = stamp(times)
                    out[1::2] = map(blob, tl)
                fh.write(b"".join(out))
                res.frames += len(tl)
            first = last
    res.flows = {k: {"packets": v[0], "octets": v[1], "first_ns": v[2] * unit,
                     "last_ns": v[3] * unit, "tcp_flags": v[4], "inner_vlan": v[5],
                     "ttl_min": v[6], "ttl_max": v[7]} for k, v in accs.items()}
    res.packets, res.octets = total[0], total[1]
    res.fragments, res.l4_partial = stat["fragments"], stat["l4_partial"]
    return res
