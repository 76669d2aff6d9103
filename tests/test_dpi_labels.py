"""Application labels against ndpiReader 4.2 on seeded conversations.

- The seeded DNS/TLS/HTTP conversations of tests/test_dpi.py (whose exact
  labels the engine must give) get those same labels from ndpiReader: the
  expected labels are nDPI 4.2's, not guesses.
- Conversations that are awkward for a flow table (the server answering
  with another DSCP, so that its direction is another flow key since ToS is
  part of it; a VLAN tag; IPv6), made here with real TCP sequence numbers,
  get ndpiReader's label in every record of both directions.

ndpiReader (Debian libndpi-bin) checks skip without it; engine checks skip
when this build's engine has no DPI stage."""
from __future__ import annotations

import importlib.util
import random
import shutil
import struct
import sys

import pytest

from packets import (TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, addr_bytes, ether, ipv4, ipv6,
                     tcp, udp, with_l4_checksum, write_pcap)
from repo import REPO

_spec = importlib.util.spec_from_file_location("dpi_accuracy", REPO / "bench" / "dpi_accuracy.py")
acc = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("dpi_accuracy", acc)
_spec.loader.exec_module(acc)

START_NS = 1685577600 * 10**9
CLIENT4, CLIENT6 = "198.18.0.10", "2001:db8::10"


# ----------------------------------------------------------------- payloads

def dns_query(qid: int, name: str) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def dns_answer(qid: int, name: str, addr: str) -> bytes:
    q = dns_query(qid, name)[12:]
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + addr_bytes(addr)
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + q + rr


def tls_client_hello(sni: str, rng: random.Random) -> bytes:
    host = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(host) + 5, len(host) + 3, 0, len(host)) + host
    groups = struct.pack("!HHH", 10, 4, 2) + struct.pack("!H", 29)
    exts = sni_ext + groups
    suites = struct.pack("!H", 4) + struct.pack("!HH", 0xC02F, 0x1301)
    body = (struct.pack("!H", 0x0303) + bytes(rng.getrandbits(8) for _ in range(32)) + b"\0"
            + suites + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def tls_server_hello(rng: random.Random) -> bytes:
    body = (struct.pack("!H", 0x0303) + bytes(rng.getrandbits(8) for _ in range(32)) + b"\0"
            + struct.pack("!H", 0xC02F) + b"\x00" + struct.pack("!H", 0))
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs


def http_get(host: str) -> bytes:
    return (f"GET /index.html HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0\r\n"
            "Accept: */*\r\n\r\n").encode()


HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello"


# -------------------------------------------------------------- conversations

class Capture:
    """Frames of several conversations, in time order, with what each must be
    labelled: {(proto, client, cport, server, sport): label}."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.frames: list[tuple[int, bytes]] = []
        self.expected: dict[tuple, str] = {}
        self.t = START_NS

    def _frame(self, src, dst, proto, seg, *, tos=0, vlans=()):
        self.t += 1_000_000
        seg = with_l4_checksum(addr_bytes(src), addr_bytes(dst), proto, seg)
        if ":" in src:
            frame = ether(ipv6(src, dst, proto, seg, tc=tos), 0x86DD, vlans=vlans)
        else:
            frame = ether(ipv4(src, dst, proto, seg, tos=tos), 0x0800, vlans=vlans)
        self.frames.append((self.t, frame))

    def udp_exchange(self, client, server, dport, request, answer, label, *, vlans=(),
                     server_tos=0):
        cport = self.rng.randrange(32768, 61000)
        self._frame(client, server, 17, udp(cport, dport, request), vlans=vlans)
        self._frame(server, client, 17, udp(dport, cport, answer), tos=server_tos, vlans=vlans)
        self.expected[(17, client, cport, server, dport)] = label

    def tcp_exchange(self, client, server, dport, request, answer, label, *,
                     vlans=(), server_tos=0, client_late_tos=0):
        """Handshake, request, answer, FIN both ways: sequence numbers as on a
        wire. The client's packets after its request carry client_late_tos."""
        cport = self.rng.randrange(32768, 61000)
        c, s = self.rng.randrange(1 << 31), self.rng.randrange(1 << 31)

        def out(flags, payload=b"", *, seq, ack, tos=0):
            self._frame(client, server, 6, tcp(cport, dport, flags, payload, seq=seq, ack=ack),
                        tos=tos, vlans=vlans)

        def back(flags, payload=b"", *, seq, ack):
            self._frame(server, client, 6, tcp(dport, cport, flags, payload, seq=seq, ack=ack),
                        tos=server_tos, vlans=vlans)

        out(TCP_SYN, seq=c, ack=0)
        back(TCP_SYN | TCP_ACK, seq=s, ack=c + 1)
        out(TCP_ACK, seq=c + 1, ack=s + 1)
        out(TCP_PSH | TCP_ACK, request, seq=c + 1, ack=s + 1)
        c2 = c + 1 + len(request)
        back(TCP_ACK, seq=s + 1, ack=c2)
        back(TCP_PSH | TCP_ACK, answer, seq=s + 1, ack=c2)
        s2 = s + 1 + len(answer)
        late = client_late_tos
        out(TCP_ACK, seq=c2, ack=s2, tos=late)
        out(TCP_FIN | TCP_ACK, seq=c2, ack=s2, tos=late)
        back(TCP_FIN | TCP_ACK, seq=s2, ack=c2 + 1)
        out(TCP_ACK, seq=c2 + 1, ack=s2 + 1, tos=late)
        self.expected[(6, client, cport, server, dport)] = label


def seeded_capture(path, seed=15) -> dict[tuple, str]:
    """Conversations that are awkward for a flow table: the server answers
    with another DSCP (so its direction is another flow key, ToS included),
    the client changes DSCP mid-conversation, a VLAN tag, IPv6; returns the
    expected label per conversation."""
    cap = Capture(seed)
    rng = cap.rng
    cap.tcp_exchange(CLIENT4, "198.18.4.2", 80, http_get("www.netflix.com"), HTTP_OK,
                     "HTTP.NetFlix", server_tos=0x20)
    cap.tcp_exchange(CLIENT4, "198.18.3.1", 443, tls_client_hello("www.google.com", rng),
                     tls_server_hello(rng), "TLS.Google", server_tos=0x28)
    cap.tcp_exchange(CLIENT6, "2001:db8::443", 443, tls_client_hello("www.netflix.com", rng),
                     tls_server_hello(rng), "TLS.NetFlix", server_tos=0xB8)
    cap.tcp_exchange(CLIENT4, "198.18.3.2", 443, tls_client_hello("www.netflix.com", rng),
                     tls_server_hello(rng), "TLS.NetFlix", vlans=(7,))
    # the client's last packets change DSCP while nDPI still waits for the
    # certificate: a third flow of the conversation, as in netflix.pcap
    cap.tcp_exchange(CLIENT4, "198.18.3.3", 443, tls_client_hello("www.netflix.com", rng),
                     tls_server_hello(rng), "TLS.NetFlix", server_tos=0x20,
                     client_late_tos=0x20)
    cap.udp_exchange(CLIENT4, "198.18.1.1", 53, dns_query(0x4321, "www.google.com"),
                     dns_answer(0x4321, "www.google.com", "198.18.2.2"), "DNS.Google",
                     vlans=(7,))
    write_pcap(path, cap.frames)
    return cap.expected


def _labels(expected: dict, flows) -> dict:
    """What each expected conversation got: {key: label}, through
    bench-dpi's keying (both directions, IPv6 spelt as ndpiReader does)."""
    got = {}
    for (proto, client, cport, server, sport), _ in expected.items():
        key = acc.conversation_key(proto, *_spell(client, cport, server, sport))
        got[(proto, client, cport, server, sport)] = flows.get(key)
    return got


def _spell(client, cport, server, sport):
    if ":" in client:
        return acc.ndpi_ipv6_text(client), cport, acc.ndpi_ipv6_text(server), sport
    return client, cport, server, sport


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("dpi") / "labels.pcap"
    return path, seeded_capture(path)


def _needs_ndpireader():
    if shutil.which(acc.NDPIREADER) is None:
        pytest.skip("ndpiReader is not installed: apt-get install libndpi-bin (make deps)")


def test_ndpireader_gives_test_dpi_its_labels(tmp_path):
    """ndpiReader labels test_dpi.py's known conversations exactly as that
    test expects the engine to."""
    _needs_ndpireader()
    import apps
    from test_dpi import known_conversations
    convs = known_conversations()
    path = tmp_path / "apps.pcap"
    apps.write(path, convs)
    flows = {f.key: f.label for f in acc.run_reference(path)}
    expected = {(c.proto, c.client, c.sport, c.server, c.dport): c.label for c in convs}
    assert _labels(expected, flows) == expected


def test_ndpireader_gives_the_expected_labels(capture):
    """The reference labels the awkward conversations as expected."""
    _needs_ndpireader()
    path, expected = capture
    flows = {f.key: f.label for f in acc.run_reference(path)}
    assert _labels(expected, flows) == expected




@pytest.mark.parametrize("long_timers", [True, False], ids=["one-record", "default-timers"])
def test_engine_gives_the_expected_labels(capture, long_timers):
    """Every record of each awkward conversation (both directions, whatever
    their ToS) carries exactly the expected label, with the default timers
    too (the FIN ends each TCP conversation)."""
    if not acc.engine_has_dpi():
        pytest.skip("this build's flow engine has no DPI stage")
    path, expected = capture
    records, _ = acc.run_flowprobe_in_process(path, long_timers)
    per_key: dict = {}
    for r in records:
        per_key.setdefault(acc.record_key(r), set()).add(acc.record_label(r))
    flows = {k: (v.pop() if len(v) == 1 else sorted(map(str, v))) for k, v in per_key.items()}
    assert _labels(expected, flows) == expected
