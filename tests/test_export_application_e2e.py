"""End to end with the DPI engine: conversations whose nDPI 4.2 label is
known (tests/support/apps.py: DNS, TLS with SNI, HTTP, over IPv4 and IPv6)
replayed by `flowprobe replay` with the default config (flow.dpi on). Both
records of each conversation carry its label and ids in every format:
IPFIX and NetFlow v9 over UDP (clean for tshark, decoded by the project's
collector), an IPFIX file read by `flowprobe collect`, JSON lines, and the
ntopng feed's L7_PROTO "master.app"."""
from __future__ import annotations

import collections
import json
import subprocess
import sys

import pytest

import apps
from collectors import free_port
from export_pcap import UdpRecorder, write_pcap
from flowprobe.collector.decode import MessageDecoder
from flowprobe.exporters import ntopng, templates
from test_export_tshark import check_tshark, field_values
from test_ntopng_export import Subscriber

C4, S4 = "198.18.3.1", "198.19.3.1"
C6, S6 = "2001:db8:3::1", "2001:db8:4::1"


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    convs = [apps.dns(C4, S4, 45000, "www.example.com"),
             apps.tls(C4, S4, 45001, "www.google.com"),
             apps.http(C4, S4, 45002, "www.example.com"),
             apps.dns(C6, S6, 45003, "www.example.org", txid=0x4321),
             apps.tls(C6, S6, 45004, "www.netflix.com", label="TLS.NetFlix", master=91,
                      app=133),
             apps.http(C6, S6, 45005, "www.example.net")]
    path = tmp_path_factory.mktemp("apps") / "apps.pcap"
    apps.write(path, convs)
    want = {k: (c.label, c.master, c.app) for c in convs for k in c.keys()}
    return path, want


def replay(path, *args):
    proc = subprocess.run([sys.executable, "-m", "flowprobe", "replay", str(path), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def key(r):
    src = r.get("sourceIPv4Address") or r.get("sourceIPv6Address")
    dst = r.get("destinationIPv4Address") or r.get("destinationIPv6Address")
    return (src, dst, r["sourceTransportPort"], r["destinationTransportPort"],
            r["protocolIdentifier"])


@pytest.mark.parametrize("scheme", ["ipfix", "netflow9"])
def test_replay_export_carries_each_conversations_label(scheme, capture, tmp_path):
    """IPFIX/v9 over UDP: tshark decodes the export with no warning and
    shows every record's label and app id; the project's collector gives
    each 5-tuple its conversation's label and id."""
    path, want = capture
    rec = UdpRecorder()
    try:
        replay(path, "--export", f"{scheme}://127.0.0.1:{rec.port}")
    finally:
        datagrams = rec.stop()
    pcap = tmp_path / "export.pcap"
    write_pcap(pcap, datagrams, rec.port)
    check_tshark(pcap, rec.port, len(datagrams))
    assert (collections.Counter(field_values(pcap, rec.port, "cflow.appl_name"))
            == collections.Counter(label for label, _, _ in want.values()))
    assert (collections.Counter(map(int, field_values(pcap, rec.port,
                                                      "cflow.pie.ntop.l7_proto")))
            == collections.Counter(app for _, _, app in want.values()))
    dec = MessageDecoder()
    flows = [r for _, m, src in datagrams for r in dec.decode(m, src)
             if not r.get("_options")]
    assert {key(r): (r["applicationName"], r["ndpiAppProtocol"]) for r in flows} == {
        k: (label, app) for k, (label, _, app) in want.items()}


def test_collect_reads_labels_from_an_exported_file(capture, tmp_path):
    """`replay --export ipfix+file://` then `flowprobe collect --file`:
    every flow line has its conversation's applicationName and id."""
    path, want = capture
    out = tmp_path / "flows.ipfix"
    replay(path, "--export", f"ipfix+file://{out}")
    proc = subprocess.run([sys.executable, "-m", "flowprobe", "collect", "--file", str(out)],
                          capture_output=True, text=True, timeout=60)
    flows = [json.loads(ln) for ln in proc.stdout.splitlines()]
    got = {key(f): (f["applicationName"], f["ndpiAppProtocol"])
           for f in flows if not f.get("_options")}
    assert got == {k: (label, app) for k, (label, _, app) in want.items()}


def test_json_lines_carry_label_and_both_ids(capture):
    """`replay --json`: applicationName, ndpiMasterProtocol and
    ndpiAppProtocol of each record are its conversation's."""
    path, want = capture
    proc = replay(path, "--json")
    recs = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert {key(r): (r["applicationName"], r["ndpiMasterProtocol"], r["ndpiAppProtocol"])
            for r in recs} == want


def test_ntopng_feed_carries_master_dot_app(capture):
    """`replay --export zmq://`: every TLV record's L7_PROTO (57590) is its
    conversation's "master.app", what ntopng parses into its protocol."""
    path, want = capture
    port = free_port()
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    try:
        replay(path, "--export", f"zmq://127.0.0.1:{port}")
    finally:
        sub.stop()
    records = [r for _, p in sub.topic("flow") for r in ntopng.tlv_to_objects(p)]

    def tlv_key(r):
        return (r.get("8") or r.get("27"), r.get("12") or r.get("28"), r["7"], r["11"], r["4"])
    assert {tlv_key(r): r["57590"] for r in records} == {
        k: f"{master}.{app}" for k, (_, master, app) in want.items()}


@pytest.mark.parametrize("scheme", ["ipfix", "netflow9"])
def test_no_dpi_exports_the_templates_of_before(scheme, capture, tmp_path):
    """`replay --no-dpi`: the flow templates are those without application
    fields (byte for byte the pre-DPI ones), and no record has a label."""
    path, _ = capture
    rec = UdpRecorder()
    try:
        replay(path, "--no-dpi", "--export", f"{scheme}://127.0.0.1:{rec.port}")
    finally:
        datagrams = rec.stop()
    plain = (templates.ipfix_flow_templates() if scheme == "ipfix"
             else templates.v9_flow_templates())
    first = datagrams[0][1]
    for t in plain:
        assert (t.ipfix_record() if scheme == "ipfix" else t.v9_record()) in first
    pcap = tmp_path / "export.pcap"
    write_pcap(pcap, datagrams, rec.port)
    check_tshark(pcap, rec.port, len(datagrams))
    assert field_values(pcap, rec.port, "cflow.appl_name") == []
    assert field_values(pcap, rec.port, "cflow.pie.ntop.l7_proto") == []
