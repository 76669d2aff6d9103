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
key_of_record() / sum_records() map engine JSON records onto the same keys;
write_pcap() and the eth_* / ether / ipv4 / ipv6 / tcp / udp / sctp / icmp
builders make hand-made captures for timeout tests.

Speed: every flow gets a few prebuilt frames (first / middle / last packet);
per packet only the record header is packed, and output goes out in big
chunks, window by window, so memory stays bounded.  Only 198.18.0.0/15 and
2001:db8::/32 addresses and locally administered MACs (02:...) are used.
"""
import ipaddress
import json
import random
import socket
import struct
from array import array
from itertools import accumulate, cycle, islice, repeat, starmap
from operator import and_, itemgetter, rshift

DEFAULT_START_NS = 1685577600 * 10**9          # 2023-06-01T00:00:00Z
PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
SKIP_REASONS = ("linktype", "l2_truncated", "non_ip", "vlan_depth", "mpls",
                "ip_truncated", "ip_version", "ip_header", "ip_length")
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
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

# ---------------------------------------------------------------- checksums


def inet_checksum(data, init=0):
    """RFC 1071 checksum; `init` is an extra sum (e.g. a pseudo header)."""
    if len(data) & 1:
        data += b"\0"
    x = int.from_bytes(data, "big") + init     # 2**16 == 1 (mod 0xffff)
    s = x % 0xFFFF
    if s == 0 and x:
        s = 0xFFFF
    return ~s & 0xFFFF


def _crc32c_table():
    tab = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        tab.append(c)
    return tab


_CRC32C = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    tab = _CRC32C
    for b in data:
        c = tab[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def with_l4_checksum(src, dst, proto, seg):
    """Return seg (a whole L4 datagram) with its checksum filled in."""
    if proto == 132:
        seg = seg[:8] + b"\0\0\0\0" + seg[12:]
        return seg[:8] + crc32c(seg).to_bytes(4, "little") + seg[12:]
    off = {6: 16, 17: 6, 1: 2, 58: 2}.get(proto)
    if off is None or len(seg) < off + 2:
        return seg
    seg = seg[:off] + b"\0\0" + seg[off + 2:]
    if proto == 1:
        cs = inet_checksum(seg)
    else:
        pseudo = src + dst + (struct.pack("!BBH", 0, proto, len(seg)) if len(src) == 4
                              else struct.pack("!IxxxB", len(seg), proto))
        cs = inet_checksum(pseudo + seg)
        if proto == 17 and cs == 0:
            cs = 0xFFFF
    return seg[:off] + struct.pack("!H", cs) + seg[off + 2:]

# ------------------------------------------------------------ frame builders


def _ab(a):
    if isinstance(a, bytes):
        return a
    return socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)


def _as(b):
    return socket.inet_ntop(socket.AF_INET6 if len(b) == 16 else socket.AF_INET, b)


def ether(l3, ethertype, *, vlans=(), mpls=(), src_mac=b"\x02\0\0\0\0\x01",
          dst_mac=b"\x02\0\0\0\0\x02", pad=True):
    """Ethernet frame: tags (TCIs, outer first: 1 -> 0x8100, 2 -> 0x88a8+0x8100,
    3+ -> 0x88a8 then 0x8100s), optional MPLS labels (label ints or
    (label, tc, ttl) tuples), then l3; padded to 60 bytes."""
    parts = [dst_mac, src_mac]
    for j, tci in enumerate(vlans):
        tpid = 0x88A8 if (j == 0 and len(vlans) > 1) else 0x8100
        parts.append(struct.pack("!HH", tpid, tci))
    if mpls:
        parts.append(struct.pack("!H", 0x8847))
        for j, lab in enumerate(mpls):
            lab, tc, ttl = (lab, 0, 64) if isinstance(lab, int) else lab
            bos = 1 if j == len(mpls) - 1 else 0
            parts.append(struct.pack("!I", lab << 12 | tc << 9 | bos << 8 | ttl))
    else:
        parts.append(struct.pack("!H", ethertype))
    parts.append(l3)
    f = b"".join(parts)
    if pad and len(f) < 60:
        f += b"\0" * (60 - len(f))
    return f


def ipv4(src, dst, proto, payload, *, tos=0, ttl=64, ident=0, frag=0,
         options=b"", total_length=None, ihl=None, version=4):
    """IPv4 packet; frag = flags << 13 | offset/8 (MF = 0x2000)."""
    options += b"\0" * (-len(options) % 4)
    hl = 20 + len(options)
    tl = hl + len(payload) if total_length is None else total_length
    h = struct.pack("!BBHHHBBH4s4s", version << 4 | (hl // 4 if ihl is None else ihl),
                    tos, tl, ident, frag, ttl, proto, 0, _ab(src), _ab(dst)) + options
    return h[:10] + struct.pack("!H", inet_checksum(h)) + h[12:] + payload


def ipv6(src, dst, nh, payload, *, tc=0, hlim=64, flow=0):
    """IPv6 packet; payload includes any extension headers, nh is the first."""
    return struct.pack("!IHBB16s16s", 6 << 28 | tc << 20 | flow, len(payload), nh,
                       hlim, _ab(src), _ab(dst)) + payload


def v6_opts(nh):
    """Hop-by-hop or destination options header (one PadN, 8 bytes)."""
    return struct.pack("!BBBB4x", nh, 0, 1, 4)


def v6_routing(nh, addr):
    """Routing header type 2 (one address, segments left 1), 24 bytes."""
    return struct.pack("!BBBB4x16s", nh, 2, 2, 1, addr)


def v6_fragment(nh, offset8, more, ident):
    return struct.pack("!BBHI", nh, 0, offset8 << 3 | (1 if more else 0), ident)


def v6_chain(kinds, final_nh, dst):
    """kinds: sequence of 0 (hop-by-hop), 60 (dst opts), 43 (routing, its
    address is dst so the pseudo header stays valid).
    Returns (first next-header value, header bytes)."""
    out, nh = b"", final_nh
    for k in reversed(kinds):
        out = (v6_routing(nh, dst) if k == 43 else v6_opts(nh)) + out
        nh = k
    return nh, out


def udp(sport, dport, payload=b""):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport, dport, flags, payload=b"", *, seq=1, ack=0, options=b""):
    options += b"\x01" * (-len(options) % 4)
    off = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags,
                       65535, 0, 0) + options + payload


def sctp(sport, dport, payload=b"\0\0\0\0", vtag=1):
    """SCTP common header + one DATA chunk (padded to 4)."""
    chunk = struct.pack("!BBHIHHI", 0, 3, 16 + len(payload), 1, 0, 0, 0) + payload
    chunk += b"\0" * (-len(chunk) % 4)
    return struct.pack("!HHII", sport, dport, vtag, 0) + chunk


def icmp(typ, code, payload=b"", ident=1, seq=1):
    """ICMP / ICMPv6 message; echo types get id/seq, others 4 unused bytes."""
    rest = struct.pack("!HH", ident, seq) if typ in (0, 8, 128, 129) else b"\0" * 4
    return struct.pack("!BBH", typ, code, 0) + rest + payload


def _l4(src, dst, proto, seg):
    return with_l4_checksum(_ab(src), _ab(dst), proto, seg)


def eth_ipv4_udp(src, dst, sport, dport, payload=b"", *, tos=0, ttl=64, vlans=(), mpls=()):
    seg = _l4(src, dst, 17, udp(sport, dport, payload))
    return ether(ipv4(src, dst, 17, seg, tos=tos, ttl=ttl), 0x0800, vlans=vlans, mpls=mpls)


def eth_ipv4_tcp(src, dst, sport, dport, flags, payload=b"", *, tos=0, ttl=64, vlans=(), mpls=()):
    seg = _l4(src, dst, 6, tcp(sport, dport, flags, payload))
    return ether(ipv4(src, dst, 6, seg, tos=tos, ttl=ttl), 0x0800, vlans=vlans, mpls=mpls)


def eth_ipv6_udp(src, dst, sport, dport, payload=b"", *, tc=0, hlim=64, vlans=(), mpls=()):
    seg = _l4(src, dst, 17, udp(sport, dport, payload))
    return ether(ipv6(src, dst, 17, seg, tc=tc, hlim=hlim), 0x86DD, vlans=vlans, mpls=mpls)


def eth_ipv6_tcp(src, dst, sport, dport, flags, payload=b"", *, tc=0, hlim=64, vlans=(), mpls=()):
    seg = _l4(src, dst, 6, tcp(sport, dport, flags, payload))
    return ether(ipv6(src, dst, 6, seg, tc=tc, hlim=hlim), 0x86DD, vlans=vlans, mpls=mpls)


def eth_ipv4_icmp(src, dst, typ=8, code=0, payload=b"\0" * 8, *, tos=0, ttl=64, vlans=()):
    seg = _l4(src, dst, 1, icmp(typ, code, payload))
    return ether(ipv4(src, dst, 1, seg, tos=tos, ttl=ttl), 0x0800, vlans=vlans)


def eth_ipv6_icmp(src, dst, typ=128, code=0, payload=b"\0" * 8, *, tc=0, hlim=64, vlans=()):
    seg = _l4(src, dst, 58, icmp(typ, code, payload))
    return ether(ipv6(src, dst, 58, seg, tc=tc, hlim=hlim), 0x86DD, vlans=vlans)


def eth_arp(sender="198.18.0.1", target="198.18.0.2"):
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, b"\x02\0\0\0\0\x01",
                       _ab(sender), b"\0" * 6, _ab(target))
    return ether(body, 0x0806, dst_mac=b"\xff" * 6)

# ------------------------------------------------------------- keys, truth


def flow_key(vlan, version, src, dst, sport, dport, proto, tos):
    """The truth key tuple; addresses as canonical strings."""
    src = _as(src) if isinstance(src, bytes) else str(ipaddress.ip_address(src))
    dst = _as(dst) if isinstance(dst, bytes) else str(ipaddress.ip_address(dst))
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

# ------------------------------------------------------------------ writers


def pcap_header(nsec=False, snaplen=SNAPLEN, linktype=LINKTYPE_ETHERNET):
    return struct.pack("<IHHiIII", PCAP_MAGIC_NS if nsec else PCAP_MAGIC_US, 2, 4, 0, 0,
                       snaplen, linktype)


def pcapng_header(nsec=False, snaplen=SNAPLEN, linktype=LINKTYPE_ETHERNET):
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    opts = struct.pack("<HHB3x", 9, 1, 9 if nsec else 6) + struct.pack("<HH", 0, 0)
    blen = 20 + len(opts)
    idb = struct.pack("<IIHHI", 1, blen, linktype, 0, snaplen) + opts + struct.pack("<I", blen)
    return shb + idb


def write_pcap(path, frames, *, nsec=False, fmt="pcap"):
    """Write [(ts_ns, frame) or (ts_ns, frame, wirelen)] as given, in order."""
    ng = fmt == "pcapng"
    out = [(pcapng_header if ng else pcap_header)(nsec)]
    for item in frames:
        ts, data = item[0], item[1]
        wl = item[2] if len(item) > 2 else len(data)
        t = ts if nsec else ts // 1000
        if ng:
            pad = b"\0" * (-len(data) % 4)
            blen = 32 + len(data) + len(pad)
            out += [struct.pack("<IIIIIII", 6, blen, 0, t >> 32, t & 0xFFFFFFFF, len(data), wl),
                    data, pad, struct.pack("<I", blen)]
        else:
            sec, frac = divmod(t, 10**9 if nsec else 10**6)
            out += [struct.pack("<IIII", sec, frac, len(data), wl), data]
    with open(path, "wb") as fh:
        fh.write(b"".join(out))

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
        src_s, dst_s = _as(src), _as(dst)
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
        key = (0, 4, _as(s), _as(d), 0, 0, 6, tos)
        yield (f[:34], 34, len(f), (key, 0, 60, 0), len(f) - 14), None, 1
    f = eth_ipv6_udp(s6, d6, 4444, 53, bytes(30), hlim=61)
    key = (0, 6, _as(s6), _as(d6), 0, 0, 17, 0)
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
