"""Application labels against the reference, ndpiReader 4.2 (bench/dpi_accuracy.py,
`make bench-dpi`).

The parsing and keying of both sides always run, on canned ndpiReader
lines and hand-made records. The comparison itself runs on a few captures
of $FLOWPROBE_CORPUS/ndpi-sample: it skips visibly without the corpus, without
ndpiReader (Debian libndpi-bin) or when this build has no DPI stage. It
reads the engine's records through its Python binding (bench-dpi
--in-process): what is checked is the engine, not the JSON lines formatter."""
from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest

import corpus
from repo import REPO

_spec = importlib.util.spec_from_file_location("dpi_accuracy", REPO / "bench" / "dpi_accuracy.py")
acc = importlib.util.module_from_spec(_spec)
sys.modules["dpi_accuracy"] = acc
_spec.loader.exec_module(acc)

# ndpiReader -v 2 lines in 4.2's format (addresses from 198.18.0.0/15 and 2001:db8::/32).
REFERENCE = """\
Detected protocols:
\tDNS                  packets: 2             bytes: 180           flows: 1

\t1\tUDP 198.18.0.1:53124 <-> 198.18.0.2:53 [proto: 5/DNS][ClearText][Confidence: DPI][cat: Network/14][1 pkts/90 bytes <-> 1 pkts/90 bytes][Goodput ratio: 53/53][< 1 sec]
\t2\tTCP 198.18.0.1:40000 <-> 198.18.0.3:443 [VLAN: 7][proto: 91.126/TLS.Google][Encrypted][Confidence: DPI][cat: Web/5][6 pkts/900 bytes <-> 5 pkts/4000 bytes][Goodput ratio: 60/90][0.05 sec]
\t3\tUDP [2001:db8::1::2]:5353 -> [ff02::fb]:5353 [proto: 8/MDNS][ClearText][Confidence: DPI][cat: Network/14][1 pkts/120 bytes -> 0 pkts/0 bytes][Goodput ratio: 40/0][< 1 sec]
\t4\tICMP 198.18.0.1:0 -> 198.18.0.4:0 [proto: 81/ICMP][ClearText][Confidence: DPI][cat: Network/14][2 pkts/196 bytes -> 0 pkts/0 bytes][Goodput ratio: 57/0][1.00 sec]
\t5\tTCP 198.18.0.1:40002 <-> 198.18.0.5:8080 [proto: 7/HTTP_Proxy][ClearText][Confidence: Match by port][cat: Web/5][3 pkts/180 bytes <-> 2 pkts/120 bytes][Goodput ratio: 0/0][0.01 sec]

Undetected flows:
\t1\t240 198.18.0.1:0 -> 198.18.0.6:0 [proto: 0/Unknown][ClearText][Confidence: Unknown][1 pkts/60 bytes -> 0 pkts/0 bytes][Goodput ratio: 0/0][< 1 sec]
\t1\t 198.18.0.1               \t 2      
"""


def record(src, sport, dst, dport, proto=17, label=None, **extra):
    """A replay --json record as the engine writes it."""
    v6 = ":" in src
    rec = {("sourceIPv6Address" if v6 else "sourceIPv4Address"): src,
           ("destinationIPv6Address" if v6 else "destinationIPv4Address"): dst,
           "sourceTransportPort": sport, "destinationTransportPort": dport,
           "protocolIdentifier": proto, "flowStartMilliseconds": 0, "flowEndReason": 4}
    if label is not None:
        rec["applicationName"] = label
    rec.update(extra)
    return rec


def test_reference_lines_are_parsed():
    """Every flow line of ndpiReader's output is read, whatever its section,
    with its protocol, endpoints, VLAN, label, ids and confidence; host
    lines are not flows."""
    flows = acc.parse_reference(REFERENCE)
    assert [f.label for f in flows] == ["DNS", "TLS.Google", "MDNS", "ICMP", "HTTP_Proxy", "Unknown"]
    tls = flows[1]
    assert (tls.proto, tls.src, tls.sport, tls.dst, tls.dport, tls.vlan, tls.ids, tls.packets) == (
        6, "198.18.0.1", 40000, "198.18.0.3", 443, 7, "91.126", 11)
    assert flows[2].src == "2001:db8::1::2" and flows[2].dst == "ff02::fb"
    assert flows[4].confidence == "Match by port"
    assert flows[5].proto == 240 and not flows[5].classified


@pytest.mark.parametrize("addr, text", [
    ("2001:db8::1", "2001:db8::1"),
    ("2001:db8:0:1:0:0:0:2", "2001:db8::1::2"),      # ":0:" patched, as ndpiReader prints it
    ("2001:db8:0:0:1:0:1:2", "2001:db8::1::1:2"),
    ("::ffff:198.18.0.1", "::ffff:198.18.0.1"),
    ("::198.18.0.1", "::198.18.0.1"),
    ("::1", "::1"),
    ("fe80::1:0:0:2", "fe80::1::0:2"),
])
def test_ipv6_spelled_as_ndpireader_does(addr, text):
    """flowprobe's IPv6 addresses are written as ndpiReader 4.2 writes them
    (inet_ntop, then every ':0:' turned into '::')."""
    assert acc.ndpi_ipv6_text(addr) == text


def test_both_directions_share_one_key():
    """A conversation's two unidirectional records have ndpiReader's flow
    key; non-TCP/UDP flows are keyed with ports 0 (ICMP type/code dropped)."""
    ref = acc.parse_reference(REFERENCE)
    assert acc.record_key(record("198.18.0.2", 53, "198.18.0.1", 53124)) == ref[0].key
    assert acc.record_key(record("198.18.0.1", 53124, "198.18.0.2", 53)) == ref[0].key
    assert acc.record_key(record("198.18.0.1", 0, "198.18.0.4", 0x0800, proto=1)) == ref[3].key
    assert acc.record_key(record("2001:db8:0:0:0:1:0:2", 5353, "ff02::fb", 5353)) == ref[2].key


def _compare(records):
    return acc.compare_file(acc.Path("canned.pcap"), reference=acc.parse_reference(REFERENCE),
                            records=records)


def test_same_when_every_record_carries_the_label():
    """A flow agrees when each of its records carries ndpiReader's label;
    Unknown flows of ndpiReader are not compared."""
    res = _compare([
        record("198.18.0.1", 53124, "198.18.0.2", 53, label="DNS"),
        record("198.18.0.2", 53, "198.18.0.1", 53124, label="DNS"),
        record("198.18.0.1", 40000, "198.18.0.3", 443, proto=6, label="TLS.Google", vlanId=7),
        record("2001:db8::1:0:2", 5353, "ff02::fb", 5353, label="MDNS"),
        record("198.18.0.1", 0, "198.18.0.4", 0x0800, proto=1, label="ICMP"),
        record("198.18.0.1", 40002, "198.18.0.5", 8080, proto=6, label="HTTP_Proxy"),
    ])
    assert (res.flows, res.compared, res.same, res.different) == (6, 5, 5, 0)


def test_differences_get_their_reason():
    """Each kind of difference is told apart: no record, no label, the two
    directions disagreeing, one direction split, ndpiReader's own guess."""
    res = _compare([
        record("198.18.0.1", 53124, "198.18.0.2", 53, label="DNS"),
        record("198.18.0.2", 53, "198.18.0.1", 53124, label="Unknown"),
        record("198.18.0.1", 40000, "198.18.0.3", 443, proto=6, label="TLS.Google"),
        record("198.18.0.1", 40000, "198.18.0.3", 443, proto=6, label="TLS", flowEndReason=3),
        record("2001:db8::1:0:2", 5353, "ff02::fb", 5353),
        record("198.18.0.1", 40002, "198.18.0.5", 8080, proto=6, label="HTTP"),
    ])
    reasons = {d.reference: d.reason for d in res.differences}
    assert reasons == {"DNS": "direction", "TLS.Google": "split", "MDNS": "no-label",
                       "ICMP": "no-record", "HTTP_Proxy": "guess"}


# ---------------------------------------------------------- on the corpus

#: Captures with a mix of what matters: DNS, TLS with SNI, QUIC, HTTP, plain
#: TCP services, VLAN tags, many flows.
CAPTURES = ["dns_doh.pcap", "ajp.pcap", "smtp-starttls.pcap", "quic-24.pcap",
            "telnet.pcap", "ocsp.pcapng", "whatsapp_login_call.pcap", "1kxun.pcap"]




def _corpus_capture(name):
    base = corpus.root() / acc.CORPUS_SUB
    path = base / name if base.is_dir() else corpus.named(name)
    if path is None or not path.exists():
        pytest.skip(f"{name} is not in {corpus.ENV}={corpus.root()}")
    return path


@pytest.fixture(scope="module")
def agreement():
    """ndpiReader and flowprobe on CAPTURES, compared."""
    if corpus.root() is None:
        pytest.skip(corpus.SKIP_REASON)
    if shutil.which(acc.NDPIREADER) is None:
        pytest.skip("ndpiReader is not installed: apt-get install libndpi-bin (make deps)")
    if not acc.engine_has_dpi():
        pytest.skip("this build's flow engine has no DPI stage")
    limit = acc.engine_packet_limit()
    return [acc.compare_file(_corpus_capture(name), limit, in_process=True) for name in CAPTURES]


def test_labels_agree_with_ndpireader(agreement):
    """flowprobe gives ndpiReader's label to >= 99% of the flows that
    ndpiReader classifies on these captures."""
    compared = sum(r.compared for r in agreement)
    same = sum(r.same for r in agreement)
    diffs = [f"{d.file}: {d.flow}: {d.reference} vs {d.flowprobe} [{d.reason}] {d.detail}"
             for r in agreement for d in r.differences]
    assert compared > 0
    assert same >= acc.GOAL * compared, "\n".join(diffs)


def test_every_difference_is_explained(agreement):
    """No difference on these captures falls outside the known reasons."""
    unexplained = [f"{d.file}: {d.flow}: {d.reference} vs {d.flowprobe}: {d.detail}"
                   for r in agreement for d in r.differences if d.reason == "unexplained"]
    assert not unexplained, "\n".join(unexplained)


def test_tos_difference_is_its_own_reason():
    """Directions that disagree and differ in ToS are told apart from other
    direction trouble: flowprobe keys flows by ToS."""
    res = _compare([
        record("198.18.0.1", 53124, "198.18.0.2", 53, label="DNS", ipClassOfService=0),
        record("198.18.0.2", 53, "198.18.0.1", 53124, label="Unknown", ipClassOfService=32),
    ])
    assert {d.reference: d.reason for d in res.differences}["DNS"] == "tos"
