"""Application conversations with a known nDPI label (pure stdlib), for the
DPI tests: DNS query/response, TLS ClientHello with SNI, HTTP GET with Host.

Each conversation is both directions, with real TCP sequence numbers (nDPI
drops out-of-order segments as retransmissions), so nDPI sees what it sees
on a wire. Frames are built by packets.py; addresses only from
198.18.0.0/15 and 2001:db8::/32.

API: dns(...), tls(...), http(...) -> Conversation; write(path, convs)
interleaves them in time and writes a pcap; Conversation.keys() gives the
two 5-tuples (src, dst, sport, dport, proto) its records carry.
"""
import random
import struct
from dataclasses import dataclass, field

from packets import (TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, _l4, ether, ipv4, ipv6, tcp,
                     udp, write_pcap)


START_NS = 1685577600 * 10**9          # 2023-06-01T00:00:00Z


@dataclass
class Conversation:
    client: str
    server: str
    sport: int
    dport: int
    proto: int
    frames: list = field(default_factory=list)   # [(offset_ns, frame)]
    label: str = ""                                # nDPI 4.2's "Master.App"
    master: int = 0
    app: int = 0

    def keys(self):
        return {(self.client, self.server, self.sport, self.dport, self.proto),
                (self.server, self.client, self.dport, self.sport, self.proto)}


def _ip(src, dst, proto, seg, tos=0):
    if ":" in src:
        return ether(ipv6(src, dst, proto, seg, tc=tos), 0x86DD)
    return ether(ipv4(src, dst, proto, seg, tos=tos), 0x0800)


def _udp_frame(src, dst, sport, dport, payload, tos=0):
    return _ip(src, dst, 17, _l4(src, dst, 17, udp(sport, dport, payload)), tos)


def _tcp_frame(src, dst, sport, dport, flags, payload, seq, ack):
    seg = tcp(sport, dport, flags, payload, seq=seq, ack=ack)
    return _ip(src, dst, 6, _l4(src, dst, 6, seg))


def _qname(name):
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def dns(client, server, sport, name="www.example.com", *, txid=0x1234, server_tos=0):
    """A DNS A query and its answer (one address from 198.18.0.0/15); the
    answer may carry another ToS / traffic class than the query."""
    q = _qname(name) + struct.pack("!HH", 1, 1)
    query = struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + q
    answer = struct.pack("!HHHHHH", txid, 0x8180, 1, 1, 0, 0) + q + \
        struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + bytes([198, 18, 9, 9])
    c = Conversation(client, server, sport, 53, 17, label="DNS", master=0, app=5)
    c.frames = [(0, _udp_frame(client, server, sport, 53, query)),
                (2_000_000, _udp_frame(server, client, 53, sport, answer, server_tos))]
    return c


def client_hello(sni, pad=0):
    """A TLS 1.2 ClientHello record with a server_name extension (and a
    padding extension of `pad` bytes after it)."""
    host = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(host) + 5, len(host) + 3, 0, len(host)) + host
    groups = struct.pack("!HHH", 10, 4, 2) + struct.pack("!H", 23)
    formats = struct.pack("!HHB", 11, 2, 1) + b"\0"
    algs = struct.pack("!HHH", 13, 6, 4) + struct.pack("!HH", 0x0403, 0x0804)
    exts = sni_ext + groups + formats + algs
    if pad:
        exts += struct.pack("!HH", 21, pad) + bytes(pad)
    suites = struct.pack("!HHHH", 0xC02F, 0xC030, 0x009C, 0x002F)
    body = struct.pack("!H", 0x0303) + bytes(range(32)) + b"\0" + \
        struct.pack("!H", len(suites)) + suites + b"\x01\x00" + \
        struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def http_get(host, path="/"):
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: flowprobe-test/1.0\r\n"
            "Accept: */*\r\n\r\n").encode()


HTTP_OK = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
           b"Server: test\r\n\r\nok")


def _tcp_conv(client, server, sport, dport, exchanges, *, gap_ns=1_000_000):
    """Handshake, then each (direction, payload) with real seq/ack, then FIN
    both ways. direction 0: client to server."""
    cseq, sseq = 1000, 5000
    out = []
    t = 0

    def add(d, flags, payload=b""):
        nonlocal cseq, sseq, t
        if d == 0:
            out.append((t, _tcp_frame(client, server, sport, dport, flags, payload, cseq, sseq)))
            cseq += len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)
        else:
            out.append((t, _tcp_frame(server, client, dport, sport, flags, payload, sseq, cseq)))
            sseq += len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)
        t += gap_ns

    add(0, TCP_SYN)
    add(1, TCP_SYN | TCP_ACK)
    add(0, TCP_ACK)
    for d, payload in exchanges:
        add(d, TCP_PSH | TCP_ACK, payload)
        add(1 - d, TCP_ACK)
    add(0, TCP_FIN | TCP_ACK)
    add(1, TCP_FIN | TCP_ACK)
    add(0, TCP_ACK)
    return out


def tls(client, server, sport, sni="www.google.com", *, label="TLS.Google", master=91,
        app=126, hello=None):
    """A TCP/443 conversation whose first payload is a ClientHello for sni
    (or the given hello bytes)."""
    c = Conversation(client, server, sport, 443, 6, label=label, master=master, app=app)
    c.frames = _tcp_conv(client, server, sport, 443, [(0, hello or client_hello(sni))])
    return c


def http(client, server, sport, host="www.example.com", *, label="HTTP", master=0, app=7):
    """A TCP/80 conversation: GET with Host, and a 200 response."""
    c = Conversation(client, server, sport, 80, 6, label=label, master=master, app=app)
    c.frames = _tcp_conv(client, server, sport, 80, [(0, http_get(host)), (1, HTTP_OK)])
    return c


def tcp_ack(src, dst, sport, dport, n):
    """A bare ACK (keep-alive), sequence numbers far past any handshake."""
    return _tcp_frame(src, dst, sport, dport, TCP_ACK, b"", 100000 + n, 200000 + n)


def write(path, convs, *, start_ns=START_NS, spacing_ns=3_000_000, seed=1,
          concurrent=True):
    """Write the conversations into one pcap, each starting spacing_ns after
    the previous (concurrent: they overlap in time; else one after another),
    packets in time order. Returns the number of frames."""
    rng = random.Random(seed)
    frames = []
    t0 = start_ns
    for c in convs:
        for off, frame in c.frames:
            frames.append((t0 + off, rng.random(), frame))
        t0 += spacing_ns if concurrent else (c.frames[-1][0] + spacing_ns)
    frames.sort(key=lambda x: (x[0], x[1]))
    write_pcap(path, [(ts, fr) for ts, _, fr in frames], nsec=True)
    return len(frames)
