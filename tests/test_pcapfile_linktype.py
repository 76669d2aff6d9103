"""Link types as 32-bit values (issue 13, item 3): an unknown classic-pcap
link type 0xdeadbeef is reported whole (reader, flow-table stats, replay
summary and log), not as its low 16 bits (48879); a well-formed FCS
annotation in the upper bits is still dropped."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from flowprobe.config.loader import default_config
from flowprobe.driver.pcapfile import open_capture
from flowprobe.probe.flowtable.table import FlowTable

import packets

FRAME = packets.eth_ipv4_icmp("198.18.0.1", "198.19.0.2")


def classic(path, linktype, order="<"):
    hdr = struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    rec = struct.pack(order + "IIII", 1_700_000_000, 0, len(FRAME), len(FRAME)) + FRAME
    path.write_bytes(hdr + rec * 3)
    return path


def pcapng(path, linktype, reserved):
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHI", 1, 20, linktype, reserved, 65535) + struct.pack("<I", 20)
    body = struct.pack("<IIII", 0, 0, len(FRAME), len(FRAME)) + FRAME
    epb_len = 12 + len(body) + 4
    epb = struct.pack("<III", 6, epb_len, 0) + body + struct.pack("<I", epb_len)
    path.write_bytes(shb + idb + epb * 3)
    return path


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("force_libpcap", [False, True])
def test_unknown_linktype_is_reported_whole(tmp_path, order, force_libpcap):
    """Both readers, both byte orders: 0xdeadbeef, not 0xbeef."""
    path = classic(tmp_path / "dead.pcap", 0xDEADBEEF, order)
    with open_capture(path, force_libpcap=force_libpcap) as cf:
        assert cf.is_mmap == (not force_libpcap)
        assert cf.linktype == 0xDEADBEEF


@pytest.mark.parametrize("force_libpcap", [False, True])
def test_fcs_annotation_is_still_dropped(tmp_path, force_libpcap):
    """Ethernet with a 4-byte FCS annotation (0x44000001) is Ethernet."""
    path = classic(tmp_path / "fcs.pcap", 0x44000001)
    with open_capture(path, force_libpcap=force_libpcap) as cf:
        assert cf.linktype == 1


def test_pcapng_linktype_field_is_16_bits(tmp_path):
    """pcapng's IDB link type is a 16-bit field (the next 16 are reserved
    and ignored): 0xbeef is its whole value."""
    path = pcapng(tmp_path / "beef.pcapng", 0xBEEF, 0xDEAD)
    with open_capture(path) as cf:
        assert not cf.is_mmap and cf.linktype == 0xBEEF


def test_flow_table_counts_the_whole_linktype(tmp_path):
    """The engine skips the packets as unsupported_linktype and keeps the
    whole value as last_linktype_unsupported."""
    path = classic(tmp_path / "dead.pcap", 0xDEADBEEF)
    table = FlowTable(default_config().flow)
    batch = table.packet_batch(16)
    with open_capture(path) as cf:
        n = cf.read_into(batch.address, batch.cap)
        table.ingest(cf.linktype, batch, n)
    st = table.stats()
    assert st["skipped"]["unsupported_linktype"] == 3
    assert st["last_linktype_unsupported"] == 0xDEADBEEF


@pytest.mark.parametrize("stdin", [False, True])
def test_replay_summary_and_log_name_the_whole_linktype(tmp_path, stdin):
    """`replay` (a file, or standard input through libpcap) says 3735928559
    (0xdeadbeef) in its summary and in the linktype_unsupported event."""
    path = classic(tmp_path / "dead.pcap", 0xDEADBEEF)
    with open(path, "rb") as fh:
        proc = subprocess.run([sys.executable, "-m", "flowprobe", "replay",
                               "-" if stdin else str(path)],
                              stdin=fh, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "unsupported link type 3735928559 (0xdeadbeef" in proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    ev = next(e for e in events if e["event"] == "linktype_unsupported")
    assert ev["linktype"] == 0xDEADBEEF and ev["linktype_hex"] == "0xdeadbeef"
    assert "48879" not in proc.stderr
