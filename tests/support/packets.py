"""Hand-made frames and the capture files that hold them (pure stdlib).

Builders: ether() (VLAN tags, MPLS labels, padding), ipv4() / ipv6() (and
the IPv6 extension headers), udp() / tcp() / sctp() / icmp(), checksums
(with_l4_checksum), and whole frames eth_ipv4_udp() ... eth_arp().
Writers: write_pcap() writes [(ts_ns, frame[, wirelen])] as a classic pcap
(us or ns) or a pcapng file.

synth.py builds its seeded captures from these; tests use them directly for
captures made by hand (timeouts, VLANs, truncation, ...). Addresses are
given as text or bytes; only 198.18.0.0/15, 2001:db8::/32 and locally
administered MACs (02:...) are used by the defaults.
"""
import socket
import struct

PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

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


def addr_bytes(a):
    if isinstance(a, bytes):
        return a
    return socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)


def addr_text(b):
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
                    tos, tl, ident, frag, ttl, proto, 0, addr_bytes(src), addr_bytes(dst)) + options
    return h[:10] + struct.pack("!H", inet_checksum(h)) + h[12:] + payload


def ipv6(src, dst, nh, payload, *, tc=0, hlim=64, flow=0):
    """IPv6 packet; payload includes any extension headers, nh is the first."""
    return struct.pack("!IHBB16s16s", 6 << 28 | tc << 20 | flow, len(payload), nh,
                       hlim, addr_bytes(src), addr_bytes(dst)) + payload


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
    return with_l4_checksum(addr_bytes(src), addr_bytes(dst), proto, seg)


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
                       addr_bytes(sender), b"\0" * 6, addr_bytes(target))
    return ether(body, 0x0806, dst_mac=b"\xff" * 6)

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
