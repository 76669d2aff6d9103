"""The application of a flow (nDPI's label and ids) in every export format:
IPFIX and NetFlow v9 templates carry applicationName (IE 96) and ntop's
L7_PROTO (35632/118, v9 57590) only when the engine runs DPI (flow.dpi);
tshark shows them and nfcapd/nfdump decode the stream with no warning; the
project's collector prints them; JSON lines carry applicationName,
ndpiMasterProtocol and ndpiAppProtocol; NetFlow v5 has no room for them."""
from __future__ import annotations

import collections
import glob
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys

import pytest

from collectors import nfacctd, nfcapd
from export_pcap import UdpRecorder, write_pcap
from flowprobe.collector.cli import _application
from flowprobe.collector.decode import MessageDecoder
from flowprobe.config import load_config_text
from flowprobe.exporters import templates
from flowprobe.exporters._encode import ffi, lib
from flowprobe.exporters.base import EncoderConfig
from flowprobe.exporters.exporter import build_exporters, exporters_for
from flowprobe.exporters.ipfix import IpfixEncoder
from flowprobe.exporters.netflow5 import Netflow5Encoder
from flowprobe.exporters.netflow9 import Netflow9Encoder
from records import FIXED, FIXED_APP, T0_NS, address, make_records
from test_export_tshark import check_tshark, field_values

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent

ENCODERS = {"ipfix": IpfixEncoder, "netflow9": Netflow9Encoder}
# nDPI 4.2 labels and ids (ndpi_protocol_ids.h), the longest a record holds last
LABELS = [(91, 126, "TLS.Google"), (0, 5, "DNS"), (0, 7, "HTTP"), (188, 126, "QUIC.Google"),
          (91, 178, "TLS.Amazon"), (0, 0, "Unknown"), (0, 92, "SSH"),
          (7, 140, "HTTP.Direct_Download_Link"), (0, 37, "BitTorrent"),
          (5, 124, "DNS." + "x" * 42)]


def labelled_specs(n: int, seed: int) -> list[dict]:
    """n records over IPv4 and IPv6 with every kind of application source."""
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        v6 = i % 3 == 0
        src = f"2001:db8::{i + 1:x}" if v6 else f"198.18.{i // 250}.{i % 250 + 1}"
        dst = f"2001:db8:1::{i + 1:x}" if v6 else f"198.19.{i // 250}.{i % 250 + 1}"
        first = T0_NS + rng.randrange(10**10)
        spec = dict(src=src, dst=dst, protocol=rng.choice((6, 17)), src_port=40000 + i % 1000,
                    dst_port=rng.choice((53, 80, 443)), packets=rng.randrange(1, 100),
                    octets=rng.randrange(40, 100000), first_ns=first,
                    last_ns=first + rng.randrange(10**9), end_reason=1)
        source = rng.choice((1, 1, 1, 2, 3, 4))
        if source in (1, 2):
            master, app, name = rng.choice(LABELS)
            spec.update(app_master=master, app_id=app, app_source=source, app_name=name)
        elif source == 4:
            spec.update(app_source=4, app_name="Unknown")
        else:
            spec.update(app_source=3)
        specs.append(spec)
    return specs


def label(spec: dict) -> str:
    return spec.get("app_name", "")


def encode(name: str, specs: list[dict], application: bool = True) -> list[bytes]:
    enc = ENCODERS[name](EncoderConfig(domain_id=7, application=application))
    arr = make_records(specs)
    return [enc.template_message()] + [m for m, _ in enc.encode(address(arr), len(specs))]


# -- templates ----------------------------------------------------------------

def test_flow_dpi_decides_whether_templates_carry_the_application(tmp_path):
    """With flow.dpi (the default) the IPFIX and v9 flow templates end with
    applicationName and L7_PROTO; with `flow.dpi: false` they are the
    templates of before DPI, field for field."""
    for text, want in (("", True), ("flow:\n  dpi: false\n", False)):
        cfg = load_config_text(text, "t")
        for scheme, plain in (("ipfix", templates.ipfix_flow_templates()),
                              ("netflow9", templates.v9_flow_templates())):
            (exp,) = exporters_for(cfg, [f"{scheme}://127.0.0.1:9"], open_now=False)
            got = exp.encoder.templates
            if want:
                assert [t.fields[:-2] for t in got] == [t.fields for t in plain]
                assert [f.name for f in got[0].fields[-2:]] == ["applicationName", "L7_PROTO"]
            else:
                assert got == plain


def test_template_records_name_ie_96_and_ntops_l7_proto():
    """IPFIX: IE 96 variable-length (65535), then enterprise element 118 of
    PEN 35632 in 2 bytes; NetFlow v9: field type 96 in 46 bytes and 57590
    (ntop's v9 id) in 2."""
    ipfix_tmpl = IpfixEncoder(EncoderConfig(application=True)).template_message()
    assert (struct.pack("!HH", 96, 65535) + struct.pack("!HHI", 0x8000 | 118, 2, 35632)
            in ipfix_tmpl)
    v9_tmpl = Netflow9Encoder(EncoderConfig(application=True)).template_message()
    assert struct.pack("!HHHH", 96, 46, 57590, 2) in v9_tmpl


def test_without_dpi_messages_are_unchanged():
    """application=False: every message equals the one of an encoder that
    never heard of DPI, labelled records or not (the golden tests pin those)."""
    for name in ENCODERS:
        assert encode(name, FIXED_APP, application=False) == encode(name, FIXED,
                                                                    application=False)


def test_netflow5_has_no_application():
    """v5's fixed 48-byte record is the same with or without a label."""
    enc = lambda specs: [m for m, _ in Netflow5Encoder(EncoderConfig()).encode(  # noqa: E731
        address(make_records(specs)), len(specs))]
    assert enc(FIXED_APP) == enc(FIXED)


def test_labels_are_whole_varlen_in_ipfix_and_padded_in_v9():
    """IPFIX: a length byte and the label (46 bytes at most, none for a
    flow not inspected), so records differ in length; v9: a 46-byte label
    fills the field exactly, a short one is NUL-padded."""
    specs = [dict(FIXED_APP[0], app_name="A" * 46), dict(FIXED_APP[0], app_name="DNS"),
             dict(FIXED_APP[0], app_source=3, app_master=0, app_id=0, app_name="")]
    fixed = templates.ipfix_flow_templates()[0].record_length
    msg = encode("ipfix", specs)[1]
    assert b"\x2e" + b"A" * 46 + b"\x00\x7e" in msg and b"\x03DNS\x00\x7e" in msg
    assert struct.unpack_from("!HH", msg, 16) == (256, 4 + 3 * (fixed + 1 + 2) + 46 + 3)
    msg = encode("netflow9", specs)[1]
    assert b"A" * 46 + b"\x00\x7e" in msg and b"DNS" + b"\0" * 43 + b"\x00\x7e" in msg


# -- the project's collector --------------------------------------------------

@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_collector_decodes_the_application(name):
    """The built-in collector gives each flow its label (applicationName,
    padding removed) and nDPI app id (ndpiAppProtocol, from 35632/118 in
    IPFIX and type 57590 in v9), and its table shows them."""
    specs = labelled_specs(300, seed=3)
    dec = MessageDecoder()
    flows = [r for m in encode(name, specs) for r in dec.decode(m, ("127.0.0.1", 40000))]
    assert dec.counters["malformed_messages"] == 0 and len(flows) == len(specs)
    by_src = {r.get("sourceIPv4Address") or r.get("sourceIPv6Address"): r for r in flows}
    for s in specs:
        r = by_src[s["src"]]
        assert r["applicationName"] == label(s)
        assert r["ndpiAppProtocol"] == s.get("app_id", 0)
    row = _application({"applicationName": "TLS.Google", "ndpiAppProtocol": 126})
    assert row == "TLS.Google/126" and _application({}) == "-"


def test_collect_cli_prints_the_application(tmp_path):
    """`flowprobe collect --file` of an IPFIX file written by the exporter:
    JSON lines carry applicationName and ndpiAppProtocol, the table shows
    "label/id" in its application column."""
    path = tmp_path / "app.ipfix"
    exps = build_exporters([f"ipfix+file://{path}"], application=True)
    arr = make_records(FIXED_APP)
    exps.sink(address(arr), len(FIXED_APP))
    exps.close()
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "flowprobe", "collect", "--file", str(path), *a],
        capture_output=True, text=True, timeout=60)
    flows = [json.loads(ln) for ln in run().stdout.splitlines()]
    flows = [f for f in flows if not f.get("_options")]
    got = {(f.get("sourceIPv4Address") or f.get("sourceIPv6Address")):
           (f["applicationName"], f["ndpiAppProtocol"]) for f in flows}
    assert got == {"198.18.0.1": ("TLS.Google", 126), "2001:db8::1": ("Unknown", 0),
                   "198.18.0.3": ("DNS", 5), "198.18.0.5": ("", 0)}
    rows = run("--format", "table").stdout.splitlines()
    assert rows[0].split()[-1] == "application"
    assert sorted(r.split()[-1] for r in rows[1:] if not r.startswith("#")) == [
        "-/0", "DNS/5", "TLS.Google/126", "Unknown/0"]


# -- tshark -------------------------------------------------------------------

@pytest.mark.parametrize("scheme", sorted(ENCODERS))
def test_tshark_shows_the_application_with_no_warning(scheme, tmp_path):
    """Labelled records exported over UDP: every datagram is clean cflow
    (no malformed packet, no expert warning), and tshark's applicationName
    and ntop L7_PROTO values are the records' labels and app ids."""
    specs = FIXED_APP + labelled_specs(1000, seed=7)
    rec = UdpRecorder()
    try:
        exps = build_exporters([{"url": f"{scheme}://127.0.0.1:{rec.port}", "rate_msgs_s": 0}],
                               application=True)
        arr = make_records(specs)
        exps.sink(address(arr), len(specs))
        exps.close()
    finally:
        datagrams = rec.stop()
    pcap = tmp_path / f"{scheme}-app.pcap"
    write_pcap(pcap, datagrams, rec.port)
    check_tshark(pcap, rec.port, len(datagrams))
    names = collections.Counter(field_values(pcap, rec.port, "cflow.appl_name"))
    assert names == collections.Counter(label(s) for s in specs if label(s))
    ids = collections.Counter(int(v) for v in field_values(pcap, rec.port,
                                                           "cflow.pie.ntop.l7_proto"))
    assert ids == collections.Counter(s.get("app_id", 0) for s in specs)


# -- nfcapd / nfdump ----------------------------------------------------------

NFCAPD_NOISE = re.compile(r"(?i)warn|error|fail|skip|unknown|malformed|corrupt")


@pytest.mark.parametrize("scheme", sorted(ENCODERS))
def test_nfcapd_decodes_labelled_records_with_no_warning(scheme, tmp_path):
    """nfcapd takes every labelled record (it skips the application fields
    it does not store) with exact counters, logs no warning, and nfdump
    reads the file with no sequence failure and nothing on stderr."""
    specs = FIXED_APP + labelled_specs(1000, seed=11)
    nfdir = tmp_path / "nf"
    with nfcapd(nfdir) as port:
        exps = build_exporters([{"url": f"{scheme}://127.0.0.1:{port}", "rate_msgs_s": 2000}],
                               application=True)
        arr = make_records(specs)
        exps.sink(address(arr), len(specs))
        exps.close()
    (log,) = glob.glob(str(tmp_path / "nfcapd-*.log"))
    text = open(log).read()
    noisy = [ln for ln in text.splitlines()
             if NFCAPD_NOISE.search(ln) and "Sequence Errors: 0, Bad Packets: 0" not in ln]
    assert not noisy, text
    out = subprocess.run(["nfdump", "-R", str(nfdir), "-q", "-N", "-6", "-o",
                          "fmt:%sa|%da|%sp|%pkt|%byt"], capture_output=True, text=True,
                         env={**os.environ, "TZ": "UTC"})
    assert out.returncode == 0 and out.stderr == "", out.stderr
    got = sorted(tuple(x.strip() for x in ln.split("|")) for ln in out.stdout.splitlines()
                 if ln.strip())
    want = sorted((s["src"], s["dst"], str(s.get("src_port", 0)), str(s["packets"]),
                   str(s["octets"])) for s in specs)
    assert got == want
    info = subprocess.run(["nfdump", "-I", "-R", str(nfdir)], capture_output=True,
                          text=True, check=True).stdout
    assert "Sequence failures: 0" in info, info


@pytest.mark.parametrize("scheme", sorted(ENCODERS))
def test_nfacctd_takes_labelled_records_silently(scheme, tmp_path):
    """pmacct's nfacctd learns the flow templates with the application
    fields, logs nothing, and totals every labelled record exactly."""
    specs = labelled_specs(1000, seed=13)
    with nfacctd(tmp_path / "nfacctd") as coll:
        exps = build_exporters([{"url": f"{scheme}://127.0.0.1:{coll.port}",
                                 "rate_msgs_s": 2000}], application=True)
        arr = make_records(specs)
        exps.sink(address(arr), len(specs))
        exps.close()
        coll.drain()
        logged = coll.log_since_start()
    assert logged == "", logged[:2000]
    learned = {tid for tid, kind in coll.learned_templates() if kind == 0}
    assert learned == {templates.TID_FLOW4, templates.TID_FLOW6}
    want = collections.Counter()
    for s in specs:
        key = (s["src"], s["dst"], s["src_port"], s["dst_port"], s["protocol"], 0)
        want[key] += s["packets"]
    assert {k: p for k, (p, _b) in coll.flows().items()} == dict(want)


# -- JSON lines ---------------------------------------------------------------

def jsonl(specs: list[dict]) -> list[str]:
    arr = make_records(specs)
    buf = ffi.new("char[]", lib.JSONL_LINE_MAX)
    out = []
    for i in range(len(specs)):
        n = lib.jsonl_format(address(arr) + i * ffi.sizeof("struct ft_record"), buf)
        out.append(ffi.buffer(buf, n)[:].decode("ascii"))
    return out


def test_jsonl_carries_the_application_when_inspected():
    """applicationName, ndpiMasterProtocol, ndpiAppProtocol close the line
    of every record with an application source; records without one
    (DPI off) are the lines of before."""
    lines = jsonl(FIXED_APP)
    objs = [json.loads(line) for line in lines]
    got = [(o.get("applicationName"), o.get("ndpiMasterProtocol"), o.get("ndpiAppProtocol"))
           for o in objs]
    assert got == [("TLS.Google", 91, 126), ("Unknown", 0, 0), ("DNS", 0, 5), ("", 0, 0)]
    assert list(objs[0])[-3:] == ["applicationName", "ndpiMasterProtocol", "ndpiAppProtocol"]
    assert jsonl(FIXED) == [re.sub(r',"applicationName".*}', "}", line) for line in lines]
    assert all("applicationName" not in line for line in jsonl(FIXED))


def test_jsonl_escapes_the_label():
    """A label with quotes, backslashes, control and non-ASCII bytes still
    makes one valid JSON line, written as json.dumps writes its latin-1 text."""
    raw = b'a"b\\c\nd\te\x01f\xe9g\x7f'
    (line,) = jsonl([dict(FIXED_APP[0], app_name=raw)])
    assert json.loads(line)["applicationName"] == raw.decode("latin-1")
    assert '"applicationName":' + json.dumps(raw.decode("latin-1")) + "," in line


def test_jsonl_longest_line_fits():
    """Two full IPv6 addresses, every optional key and a 46-byte label of
    bytes escaped as \\u00XX stay under JSONL_LINE_MAX."""
    worst = dict(src="2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                 dst="2001:db8:ffff:ffff:ffff:ffff:ffff:fffe", protocol=58,
                 src_port=65535, dst_port=65535, tos=255, tcp_flags=255,
                 packets=2**64 - 1, octets=2**64 - 1, first_ns=2**64 - 1, last_ns=2**64 - 1,
                 ifindex=2**32 - 1, vlan=4095, inner_vlan=4095, ttl_min=255, ttl_max=255,
                 end_reason=255, src_mac="ff:ff:ff:ff:ff:ff", dst_mac="ff:ff:ff:ff:ff:ff",
                 app_master=65535, app_id=65535, app_source=1, app_name=b"\x01" * 46)
    (line,) = jsonl([worst])
    assert len(line) < lib.JSONL_LINE_MAX
    assert json.loads(line)["applicationName"] == "\x01" * 46


def test_c_encoders_under_sanitizers(tmp_path):
    """encode.c, jsonl.c and tlv.c built with ASan+UBSan on records whose
    labels hold any bytes, with or without a NUL: no memory error, and every
    IPFIX (variable-length) and v9 data set walks back to exactly the
    records the encoder wrote, at every buffer size (tests/c/enc_app_san.c)."""
    cc = shutil.which("clang") or shutil.which("cc")
    exe = tmp_path / "enc_app_san"
    subprocess.run([cc, "-O1", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                    "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", f"-I{REPO / 'include'}",
                    f"-I{REPO / 'exporters'}", "-o", str(exe),
                    str(REPO / "tests" / "c" / "enc_app_san.c"),
                    *(str(REPO / "exporters" / f) for f in ("encode.c", "jsonl.c", "tlv.c"))],
                   check=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok "), proc.stdout
