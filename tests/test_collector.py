"""Built-in collector: known-answer decoding of hand-built v5/v9/IPFIX
messages, real softflowd exports (of seeded synthetic captures, and of
real-world ones when FLOWPROBE_CORPUS is set) checked against nfcapd/nfdump,
IPFIX over TCP, and IPFIX files written by the `ipfix` package."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from datetime import datetime
from ipaddress import ip_address
from pathlib import Path

import pytest

import ipfix.ie
import ipfix.message
import ipfix.reader
import ipfix.template
import ipfix.writer

import corpus
import synth
from flowprobe.collector.server import Collector
from flowprobe.collector.decode import MessageDecoder

EXPORTER = ("udp", "127.0.0.1", 9995)

ipfix.ie.use_iana_default()


# -- byte-exact builders (RFC 7011, RFC 3954, Cisco v5) ------------------------
def ipfix_set(set_id: int, body: bytes, pad_to: int = 1) -> bytes:
    body += b"\0" * (-(len(body) + 4) % pad_to)
    return struct.pack("!HH", set_id, len(body) + 4) + body


def ipfix_msg(seq: int, odid: int, *sets: bytes, export_s: int = 1_700_000_000) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export_s, seq, odid) + body


def ipfix_template(tid: int, fields, scope: int | None = None) -> bytes:
    """fields: (ie, length) or (ie, length, pen)."""
    head = struct.pack("!HH", tid, len(fields)) if scope is None else \
        struct.pack("!HHH", tid, len(fields), scope)
    spec = b""
    for f in fields:
        if len(f) == 3:
            spec += struct.pack("!HHI", f[0] | 0x8000, f[1], f[2])
        else:
            spec += struct.pack("!HH", *f)
    return head + spec


def v9_packet(seq: int, source: int, *flowsets: bytes, uptime: int = 200_000,
              secs: int = 1_700_000_000, count: int = 1) -> bytes:
    return struct.pack("!HHIIII", 9, count, uptime, secs, seq, source) + b"".join(flowsets)


def v5_record(src, dst, pkts, octets, first, last, sport, dport, flags, proto, tos=0):
    return (ip_address(src).packed + ip_address(dst).packed + bytes(4)
            + struct.pack("!HHIIII", 1, 2, pkts, octets, first, last)
            + struct.pack("!HHBBBB", sport, dport, 0, flags, proto, tos)
            + struct.pack("!HHBBH", 0, 0, 24, 16, 0))


def v5_packet(seq: int, records: list[bytes], uptime=100_000,
              secs=1_700_000_000, nsecs=500_000_000) -> bytes:
    return struct.pack("!HHIIIIBBH", 5, len(records), uptime, secs, nsecs, seq,
                       1, 2, 0) + b"".join(records)


# -- known answers -------------------------------------------------------------
def test_v5_records_map_to_iana_names_with_epoch_ms_times_and_flow_sequence():
    """v5 fields become IANA names; first/last + sysUptime + unix time become
    epoch ms (also across a sysUptime wrap); a flow_sequence jump is a gap."""
    dec = MessageDecoder()
    recs = dec.decode(v5_packet(1000, [
        v5_record("198.18.0.1", "198.18.0.2", 10, 1500, 90_000, 99_000, 1234, 80, 0x1B, 6, 0x10),
        v5_record("198.18.0.3", "198.18.0.4", 1, 84, 0xFFFF_F000, 100_300, 0, 0x0800, 0, 1),
    ]), EXPORTER)
    boot = 1_700_000_000_500 - 100_000
    assert recs[0] == {
        "sourceIPv4Address": "198.18.0.1", "destinationIPv4Address": "198.18.0.2",
        "ipNextHopIPv4Address": "0.0.0.0", "ingressInterface": 1, "egressInterface": 2,
        "packetDeltaCount": 10, "octetDeltaCount": 1500,
        "sourceTransportPort": 1234, "destinationTransportPort": 80,
        "tcpControlBits": 0x1B, "protocolIdentifier": 6, "ipClassOfService": 0x10,
        "bgpSourceAsNumber": 0, "bgpDestinationAsNumber": 0,
        "sourceIPv4PrefixLength": 24, "destinationIPv4PrefixLength": 16,
        "flowStartMilliseconds": boot + 90_000, "flowEndMilliseconds": boot + 99_000,
        "ipVersion": 4}
    # first was stamped 4096 ms before the 32-bit uptime counter wrapped;
    # last lies 300 ms after the header's clock (not 49.7 days before it)
    assert recs[1]["flowStartMilliseconds"] == boot - 4096
    assert recs[1]["flowEndMilliseconds"] == boot + 100_300
    assert recs[1]["icmpTypeCodeIPv4"] == 0x0800
    dec.decode(v5_packet(1002, [v5_record("198.18.0.1", "198.18.0.2", 1, 40, 1, 2, 1, 2, 0, 17)]),
               EXPORTER)
    assert dec.counters["sequence_gaps"] == 0
    dec.decode(v5_packet(1008, [v5_record("198.18.0.1", "198.18.0.2", 1, 40, 1, 2, 1, 2, 0, 17)]),
               EXPORTER)
    assert (dec.counters["sequence_gaps"], dec.counters["sequence_missing"]) == (1, 5)


V9_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4), (22, 4), (21, 4), (58, 2)]


def _v9_flow(seq):
    rec = (ip_address("198.18.1.1").packed + ip_address("198.18.1.2").packed
           + struct.pack("!HHBIIIIH", 5353, 53, 17, 300, 3, 150_000, 199_000, 100))
    return ipfix_set(300, rec, pad_to=4)


def test_v9_template_data_options_unknown_template_and_packet_sequence():
    """v9: a data flowset before its template is counted and dropped; with the
    template it decodes to IANA names and epoch ms; options records carry
    `_options`; the sequence counts export packets."""
    dec = MessageDecoder()
    assert dec.decode(v9_packet(7, 42, _v9_flow(7)), EXPORTER) == []
    assert dec.counters["data_sets_unknown_template"] == 1

    tmpl = ipfix_set(0, struct.pack("!HH", 300, len(V9_FIELDS))
                     + b"".join(struct.pack("!HH", *f) for f in V9_FIELDS))
    opt_tmpl = ipfix_set(1, struct.pack("!HHHHHHHHH", 301, 4, 8, 1, 4, 34, 4, 35, 4), pad_to=4)
    opt_data = ipfix_set(301, struct.pack("!III", 7, 100, 1), pad_to=4)
    recs = dec.decode(v9_packet(8, 42, tmpl, opt_tmpl, _v9_flow(8), opt_data, count=4),
                      EXPORTER)
    assert recs == [
        {"sourceIPv4Address": "198.18.1.1", "destinationIPv4Address": "198.18.1.2",
         "sourceTransportPort": 5353, "destinationTransportPort": 53,
         "protocolIdentifier": 17, "octetDeltaCount": 300, "packetDeltaCount": 3,
         "flowStartMilliseconds": 1_700_000_000_000 - 50_000,
         "flowEndMilliseconds": 1_700_000_000_000 - 1_000, "vlanId": 100, "ipVersion": 4},
        {"v9ScopeSystem": 7, "samplingInterval": 100, "samplingAlgorithm": 1,
         "_options": True, "_scope": ["v9ScopeSystem"]}]
    assert dec.counters["sequence_gaps"] == 0
    dec.decode(v9_packet(10, 42, _v9_flow(10)), EXPORTER)
    assert (dec.counters["sequence_gaps"], dec.counters["sequence_missing"]) == (1, 1)
    # another source id is another sequence space and another template scope
    assert dec.decode(v9_packet(0, 43, _v9_flow(0)), EXPORTER) == []
    assert dec.counters["data_sets_unknown_template"] == 2


IPV6_TMPL = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (2, 4), (1, 8),
             (152, 8), (153, 8), (139, 2), (136, 1)]


def _v6_record(pkts, start_ms):
    return (ip_address("2001:db8::1").packed + ip_address("2001:db8::2").packed
            + struct.pack("!HHBIQQQHB", 0, 0, 58, pkts, pkts * 104, start_ms,
                          start_ms + 250, 0x8000, 2))


def test_ipfix_templates_withdrawal_varlen_options_and_record_sequence():
    """IPFIX: unknown-template data is counted, templates decode fixed, reduced
    length, variable length and enterprise IEs; a withdrawal makes the
    template unknown again; sequence numbers count data records per domain;
    options records are decoded with `_options`."""
    dec = MessageDecoder()
    t0 = 1_700_000_000_123
    assert dec.decode(ipfix_msg(0, 5, ipfix_set(400, _v6_record(1, t0))), EXPORTER) == []
    assert dec.counters["data_sets_unknown_template"] == 1

    recs = dec.decode(ipfix_msg(10, 5, ipfix_set(2, ipfix_template(400, IPV6_TMPL)),
                                ipfix_set(400, _v6_record(2, t0) + _v6_record(3, t0 + 1))),
                      EXPORTER)
    assert recs[0] == {
        "sourceIPv6Address": "2001:db8::1", "destinationIPv6Address": "2001:db8::2",
        "sourceTransportPort": 0, "destinationTransportPort": 0,
        "protocolIdentifier": 58, "packetDeltaCount": 2, "octetDeltaCount": 208,
        "flowStartMilliseconds": t0, "flowEndMilliseconds": t0 + 250,
        "icmpTypeCodeIPv6": 0x8000, "flowEndReason": 2, "ipVersion": 6}
    assert recs[1]["flowStartMilliseconds"] == t0 + 1

    # varlen first (hand path), 3-octet counter, enterprise IE, in seq 12 = 10 + 2
    var_tmpl = ipfix_template(401, [(82, 65535), (2, 3), (1, 2, 9999)])
    rec = bytes([4]) + b"eth0" + (7).to_bytes(3, "big") + b"\xbe\xef"
    recs = dec.decode(ipfix_msg(12, 5, ipfix_set(2, var_tmpl), ipfix_set(401, rec, pad_to=4)),
                      EXPORTER)
    assert recs == [{"interfaceName": "eth0", "packetDeltaCount": 7,
                     "_ipfix_9999_1": "beef"}]
    assert dec.counters["sequence_gaps"] == 0

    dec.decode(ipfix_msg(16, 5, ipfix_set(401, rec)), EXPORTER)  # expected 13
    assert (dec.counters["sequence_gaps"], dec.counters["sequence_missing"]) == (1, 3)

    withdraw = ipfix_set(2, struct.pack("!HH", 400, 0))
    assert dec.decode(ipfix_msg(17, 5, withdraw, ipfix_set(400, _v6_record(1, t0))),
                      EXPORTER) == []
    assert dec.counters["templates_withdrawn"] == 1
    assert dec.counters["data_sets_unknown_template"] == 2

    opt = ipfix_template(402, [(149, 4), (41, 8), (42, 8), (164, 8), (166, 8),
                               (305, 4), (304, 2)], scope=1)
    opt_rec = struct.pack("!IQQQQIH", 5, 1000, 25000, 3, 0, 100, 1)
    recs = dec.decode(ipfix_msg(17, 5, ipfix_set(3, opt, pad_to=4), ipfix_set(402, opt_rec)),
                      EXPORTER)
    assert recs == [{"observationDomainId": 5, "exportedMessageTotalCount": 1000,
                     "exportedFlowRecordTotalCount": 25000, "ignoredPacketTotalCount": 3,
                     "notSentFlowTotalCount": 0, "samplingPacketInterval": 100,
                     "selectorAlgorithm": 1, "_options": True,
                     "_scope": ["observationDomainId"]}]
    # templates are scoped per domain: 401 is unknown in domain 6
    assert dec.decode(ipfix_msg(0, 6, ipfix_set(401, rec)), EXPORTER) == []
    assert dec.counters["data_sets_unknown_template"] == 3


def test_ipfix_bad_sets_and_messages_are_counted_not_raised():
    """A set id 4..255, a set length past the message, and a message length
    past the datagram are counted (unknown_sets, malformed_sets,
    malformed_messages) and decoding goes on."""
    dec = MessageDecoder()
    assert dec.decode(ipfix_msg(0, 1, ipfix_set(4, b"abcd")), EXPORTER) == []
    bad_len = struct.pack("!HH", 256, 400) + b"\0" * 8
    assert dec.decode(ipfix_msg(0, 1, bad_len), EXPORTER) == []
    assert dec.decode(ipfix_msg(0, 1, ipfix_set(4, b"abcd"))[:-2], EXPORTER) == []
    assert dec.decode(b"\x00\x07junk", EXPORTER) == []
    assert (dec.counters["unknown_sets"], dec.counters["malformed_sets"],
            dec.counters["malformed_messages"], dec.counters["unknown_version"]) == (1, 1, 1, 1)


def test_mutilated_messages_are_counted_never_raised():
    """Every truncation and every single-byte corruption of valid v5, v9 and
    IPFIX messages decodes without an exception."""
    tmpl = ipfix_set(0, struct.pack("!HH", 300, len(V9_FIELDS))
                     + b"".join(struct.pack("!HH", *f) for f in V9_FIELDS))
    var_tmpl = ipfix_template(401, [(82, 65535), (2, 3), (1, 2, 9999)])
    samples = [
        v5_packet(1, [v5_record("198.18.0.1", "198.18.0.2", 1, 40, 1, 2, 1, 2, 0, 17)]),
        v9_packet(1, 1, tmpl, _v9_flow(1), count=2),
        ipfix_msg(1, 1, ipfix_set(2, ipfix_template(400, IPV6_TMPL)),
                  ipfix_set(400, _v6_record(1, 0)), ipfix_set(2, var_tmpl),
                  ipfix_set(401, bytes([4]) + b"eth0" + bytes(5))),
    ]
    dec = MessageDecoder()
    for msg in samples:
        for cut in range(len(msg)):
            dec.decode(msg[:cut], EXPORTER)
        for pos in range(len(msg)):
            for val in (0x00, 0xFF, 0x01):
                dec.decode(msg[:pos] + bytes([val]) + msg[pos + 1:], EXPORTER)
    assert dec.counters["malformed_messages"] > 0


# -- softflowd exports, checked against nfcapd/nfdump ----------------------------
def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _softflowd(pcap: Path, version: str, dests: list[int], tmp: Path) -> None:
    subprocess.run(["softflowd", "-r", str(pcap), "-v", version, "-d", "-6",
                    "-n", ",".join("127.0.0.1:%d" % p for p in dests),
                    # -c none: with a control socket path in a subdirectory
                    # softflowd 1.1.0 blocks in accept() instead of exiting
                    "-p", str(tmp / "sf.pid"), "-c", "none"],
                   check=True, capture_output=True, timeout=120)


@pytest.fixture
def nfcapd(tmp_path):
    """A real nfcapd on 127.0.0.1; yields (port, read_back())."""
    for tool in ("nfcapd", "nfdump", "softflowd"):
        if shutil.which(tool) is None:
            pytest.fail("%s is not installed (apt-get install nfdump softflowd)" % tool)
    out = tmp_path / "nfcapd"
    out.mkdir()
    port = _free_udp_port()
    proc = subprocess.Popen(["nfcapd", "-w", str(out), "-p", str(port), "-b", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # let it bind before the exporter sends

    def read_back() -> list[tuple[int, int]]:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        res = subprocess.run(["nfdump", "-R", str(out), "-q", "-N", "-o", "fmt:%pkt,%byt"],
                             check=True, capture_output=True, text=True, timeout=60)
        return [tuple(int(x) for x in line.split(",")) for line in res.stdout.split("\n")
                if line.strip()]
    try:
        yield port, read_back
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


SYNTHETIC = {"v4": {"ipv6": 0.0}, "v6": {"ipv6": 1.0}}
CORPUS_FILES = ("synscan.pcap", "quickplay.pcap", "custom_rules_ipv6.pcapng")


def softflowd_input(name: str, tmp: Path) -> Path:
    """A seeded synthetic capture ('v4', 'v6') or a named corpus capture."""
    if name in SYNTHETIC:
        path = tmp / f"{name}.pcap"
        synth.generate(path, flows=400, packets=4000, seed=3, mix=SYNTHETIC[name])
        return path
    path = corpus.named(name)
    if path is None:
        pytest.skip(corpus.SKIP_REASON if corpus.root() is None
                    else f"{name} is not in {corpus.ENV}={corpus.root()}")
    return path


@pytest.mark.parametrize("version,pcap", [
    ("5", "v4"), ("9", "v4"), ("10", "v4"), ("9", "v6"), ("10", "v6"),
    *[(v, f) for f in CORPUS_FILES for v in ("5", "9", "10") if not ("ipv6" in f and v == "5")]])
def test_softflowd_export_matches_nfdump(nfcapd, tmp_path, version, pcap):
    """softflowd's export of a capture, sent to both nfcapd and us over
    UDP: same flow count and packet/byte totals as nfdump; v5/v9 sequences
    are clean, softflowd's broken IPFIX sequence numbers are reported."""
    capture = softflowd_input(pcap, tmp_path)
    port, read_back = nfcapd
    recs: list[dict] = []
    with Collector(["udp://127.0.0.1:0"], on_record=recs.append) as col:
        _softflowd(capture, version, [col.addresses[0][2], port], tmp_path)
        col.serve(idle_timeout_s=1.0, timeout_s=60)
    summary = col.summary()
    flows = [r for r in recs if not r.get("_options")]
    nf = read_back()
    assert flows and len(flows) == len(nf)
    assert sum(r["packetDeltaCount"] for r in flows) == sum(p for p, _ in nf)
    assert sum(r["octetDeltaCount"] for r in flows) == sum(b for _, b in nf)
    assert summary.get("data_sets_unknown_template", 0) == 0
    assert summary.get("malformed_messages", 0) == 0
    assert summary["transport_udp_kernel_drops"] == 0
    assert all(r["flowStartMilliseconds"] <= r["flowEndMilliseconds"] for r in flows)
    if "6" in pcap:
        assert all(r["ipVersion"] == 6 and ":" in r["sourceIPv6Address"] for r in flows)
    bad_seq = summary.get("sequence_gaps", 0) + summary.get("sequence_out_of_order", 0)
    if version == "10":
        assert any(r.get("_options") for r in recs)
        if summary["ipfix_messages"] >= 2:  # one message has nothing to compare
            assert bad_seq > 0, "softflowd's IPFIX sequence errors went unreported"
    else:
        assert bad_seq == 0


# -- TCP and files ----------------------------------------------------------------
def _package_messages(n_records: int, odid: int = 9) -> tuple[bytes, list[dict]]:
    """IPFIX messages written by the ipfix package's own stream writer."""
    stream = io.BytesIO()
    w = ipfix.writer.to_stream(stream, mtu=512)
    w.set_domain(odid)
    w.add_template(ipfix.template.from_ielist(256, ipfix.ie.spec_list([
        "sourceIPv4Address", "destinationIPv4Address", "sourceTransportPort",
        "destinationTransportPort", "protocolIdentifier", "packetDeltaCount",
        "octetDeltaCount", "flowStartMilliseconds", "flowEndMilliseconds"])))
    w.set_export_template(256)
    want = []
    for i in range(n_records):
        start = datetime(2023, 5, 1, 12, 0, 0, (i % 1000) * 1000)
        w.export_namedict({
            "sourceIPv4Address": ip_address("198.18.0.%d" % (1 + i % 250)),
            "destinationIPv4Address": ip_address("198.19.0.1"),
            "sourceTransportPort": 1024 + i, "destinationTransportPort": 443,
            "protocolIdentifier": 6, "packetDeltaCount": i + 1,
            "octetDeltaCount": 60 * (i + 1), "flowStartMilliseconds": start,
            "flowEndMilliseconds": start})
        ms = 1_682_942_400_000 + i % 1000
        want.append({"sourceIPv4Address": "198.18.0.%d" % (1 + i % 250),
                     "destinationIPv4Address": "198.19.0.1",
                     "sourceTransportPort": 1024 + i, "destinationTransportPort": 443,
                     "protocolIdentifier": 6, "packetDeltaCount": i + 1,
                     "octetDeltaCount": 60 * (i + 1), "flowStartMilliseconds": ms,
                     "flowEndMilliseconds": ms, "ipVersion": 4})
    w.flush()
    return stream.getvalue(), want


def test_tcp_listener_decodes_a_stream_split_at_arbitrary_points():
    """IPFIX over TCP: messages framed by their length field are decoded even
    when the stream arrives in odd-sized pieces."""
    data, want = _package_messages(200)
    recs: list[dict] = []
    with Collector(["tcp://127.0.0.1:0"], on_record=recs.append) as col:
        port = col.addresses[0][2]
        with socket.create_connection(("127.0.0.1", port)) as s:
            for off in range(0, len(data), 37):
                s.sendall(data[off:off + 37])
        col.serve(idle_timeout_s=1.0, timeout_s=30)
    assert recs == want
    summary = col.summary()
    assert summary["transport_tcp_connections"] == 1
    assert summary.get("sequence_gaps", 0) == 0 and summary["ipfix_messages"] > 1


def test_ipfix_file_written_by_package_round_trips(tmp_path):
    """An RFC 5655 file from the ipfix package's writer reads back through
    `read_file` with the same records as the package's own reader."""
    data, want = _package_messages(50)
    path = tmp_path / "flows.ipfix"
    path.write_bytes(data)
    recs: list[dict] = []
    col = Collector([], on_record=recs.append)
    col.read_file(str(path))
    assert recs == want
    with open(path, "rb") as f:
        pkg = list(ipfix.reader.from_stream(f).namedict_iterator())
    assert [r["packetDeltaCount"] for r in pkg] == [r["packetDeltaCount"] for r in recs]


def test_collect_cli_reads_a_file_and_prints_json_lines_and_a_summary(tmp_path):
    """`flowprobe collect --file F`: one JSON line per flow on stdout and a
    collector_summary line with the counters on stderr."""
    data, want = _package_messages(5)
    path = tmp_path / "flows.ipfix"
    path.write_bytes(data)
    res = subprocess.run([sys.executable, "-m", "flowprobe", "collect", "--file", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert [json.loads(line) for line in res.stdout.splitlines()] == want
    summary = [json.loads(line) for line in res.stderr.splitlines()
               if "collector_summary" in line][-1]
    assert summary["flows"] == 5 and summary["transport_files"] == 1


def test_collect_cli_listens_on_udp_and_stops_after_count():
    """`flowprobe collect --listen udp://... --count 1 --format table` prints
    the flow of a v9 datagram as a table row and exits 0."""
    port = _free_udp_port()
    proc = subprocess.Popen([sys.executable, "-m", "flowprobe", "collect", "--listen",
                             "udp://127.0.0.1:%d" % port, "--count", "1",
                             "--timeout", "30", "--format", "table"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tmpl = ipfix_set(0, struct.pack("!HH", 300, len(V9_FIELDS))
                     + b"".join(struct.pack("!HH", *f) for f in V9_FIELDS))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(100):  # until the collector has bound and counted one flow
            s.sendto(v9_packet(i, 1, tmpl, _v9_flow(i), count=2), ("127.0.0.1", port))
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["start", "end", "proto"]
    assert lines[1].split()[4:] == ["17", "198.18.1.1:5353", "198.18.1.2:53", "3", "300", "-"]
