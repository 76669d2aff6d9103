"""Encoders (NetFlow v5, v9, IPFIX): golden messages, round trips through the
`ipfix` package reader, framing limits, sequence numbers and packet times."""
import datetime
import io
import os
import struct
import time
from pathlib import Path

import ipfix.reader
import pytest

from flowprobe.exporters import templates
from flowprobe.exporters._encode import ffi, lib
from flowprobe.exporters.base import EncoderConfig
from flowprobe.exporters.exporter import ExportConfigError, build_exporter
from flowprobe.exporters.ipfix import IpfixEncoder
from flowprobe.exporters.netflow5 import Netflow5Encoder
from flowprobe.exporters.netflow9 import Netflow9Encoder
from records import FIXED, T0_NS, address, make_records

GOLDEN = Path(__file__).parent / "golden"
ENCODERS = {"ipfix": IpfixEncoder, "netflow9": Netflow9Encoder, "netflow5": Netflow5Encoder}
STATS = {"messages": 3, "bytes": 999, "records_exported": 4, "ignored_packets": 2,
         "records_not_sent": 1}


def encode_all(enc, arr, n):
    return [m for m, _ in enc.encode(address(arr), n)]


def golden_messages(name):
    enc = ENCODERS[name](EncoderConfig(mtu=1400, domain_id=7, exporting_process_id=9))
    arr = make_records(FIXED)
    msgs = [enc.template_message()]
    msgs += encode_all(enc, arr, len(FIXED))
    msgs.append(enc.options_message(STATS))
    return [m for m in msgs if m is not None]


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_golden_messages(name):
    """Fixed records at fixed times encode to the stored bytes exactly."""
    got = [m.hex() for m in golden_messages(name)]
    path = GOLDEN / f"{name}.hex"
    if os.environ.get("FLOWPROBE_REGEN_GOLDEN"):
        path.write_text("\n".join(got) + "\n")
    assert got == path.read_text().split()


def _naive_ms(ms):
    return datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=ms)


def test_ipfix_round_trip_through_ipfix_package():
    """The `ipfix` package decodes our template and data records to the values
    of the input records (IANA names, ms times, ICMP type/code)."""
    enc = IpfixEncoder(EncoderConfig(domain_id=7))
    arr = make_records(FIXED)
    stream = enc.template_message() + b"".join(encode_all(enc, arr, len(FIXED)))
    recs = list(ipfix.reader.from_stream(io.BytesIO(stream)).namedict_iterator())
    assert len(recs) == len(FIXED)
    by_src = {str(r.get("sourceIPv4Address") or r.get("sourceIPv6Address")): r for r in recs}
    tcp = by_src["198.18.0.1"]
    assert tcp["packetDeltaCount"] == 10 and tcp["octetDeltaCount"] == 5200
    assert tcp["sourceTransportPort"] == 40000 and tcp["destinationTransportPort"] == 443
    assert tcp["flowStartMilliseconds"] == _naive_ms(T0_NS // 10**6)
    assert tcp["flowEndMilliseconds"] == _naive_ms((T0_NS + 1_500_000_000) // 10**6)
    assert tcp["vlanId"] == 100 and tcp["flowEndReason"] == 3 and tcp["tcpControlBits"] == 0x1B
    assert tcp["minimumTTL"] == 60 and tcp["maximumTTL"] == 64 and tcp["ipVersion"] == 4
    assert tcp["icmpTypeCodeIPv4"] == 0
    icmp6 = by_src["2001:db8::1"]
    assert icmp6["icmpTypeCodeIPv6"] == 128 << 8 and icmp6["destinationTransportPort"] == 128 << 8
    qinq = by_src["198.18.0.3"]
    assert qinq["vlanId"] == 200 and qinq["dot1qCustomerVlanId"] == 300
    big = by_src["198.18.0.5"]
    assert big["packetDeltaCount"] == 5_000_000_000 and big["octetDeltaCount"] == (1 << 32) + 5
    assert big["ingressInterface"] == 70000


@pytest.mark.parametrize("application", [False, True])
def test_template_and_data_layout_agree(application):
    """The record length announced by each template (with and without the
    application fields; a variable-length field as its length byte) equals
    what C counts."""
    for t in (templates.ipfix_flow_templates(application)
              + templates.v9_flow_templates(application)):
        arr = t.fields_cdata(ffi, lib)
        assert lib.enc_record_length(arr, len(arr)) == t.record_length
        rec = t.ipfix_record()
        n = struct.unpack_from("!H", rec, 2)[0]
        assert n == len(t.fields)
        off, total = 4, 0
        for _ in range(n):      # field specifiers, 8 bytes with an enterprise number
            num, length = struct.unpack_from("!HH", rec, off)
            off += 8 if num & 0x8000 else 4
            total += 1 if length == templates.VARLEN else length
        assert off == len(rec) and total == t.record_length


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("mtu", [512, 576, 1400, 9000])
def test_messages_never_exceed_mtu(name, mtu):
    """Every message fits the MTU and every exportable record is encoded once."""
    specs = [dict(FIXED[i % len(FIXED)]) for i in range(997)]
    enc = ENCODERS[name](EncoderConfig(mtu=mtu))
    arr = make_records(specs)
    out = list(enc.encode(address(arr), len(specs)))
    assert all(len(m) <= mtu for m, _ in out)
    exportable = sum(1 for s in specs if ":" not in s["src"]) if name == "netflow5" else len(specs)
    assert sum(k for _, k in out) == exportable == enc.records_encoded
    assert enc.records_not_exportable == len(specs) - exportable
    for m in (enc.template_message(), enc.options_message(STATS)):
        assert m is None or len(m) <= mtu


def data_records(name, enc, msgs):
    """The data records in msgs, per set id (NetFlow v5: one list), in order,
    and the data sets of each message; set padding is left out."""
    hl = {"ipfix": 16, "netflow9": 20, "netflow5": 24}[name]
    if name == "netflow5":
        return {0: [m[hl + i:hl + i + 48] for m in msgs for i in range(0, len(m) - hl, 48)]}, \
            [1] * len(msgs)
    lay = enc._lay
    rlen = {lay.set_id4: lib.enc_record_length(lay.fields4, lay.nfields4),
            lay.set_id6: lib.enc_record_length(lay.fields6, lay.nfields6)}
    out, sets = {}, []
    for m in msgs:
        off, nsets = hl, 0
        while off < len(m):
            sid, slen = struct.unpack_from("!HH", m, off)
            body, rl = m[off + 4:off + slen], rlen[sid]
            out.setdefault(sid, []).extend(body[i:i + rl] for i in range(0, len(body) - rl + 1, rl))
            off, nsets = off + slen, nsets + 1
        sets.append(nsets)
    return out, sets


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_blocks_hold_whole_messages_in_sequence(name):
    """encode_blocks() (the C writes every header) carries the same records
    as one block at a time would, each IP version's in input order, in
    messages of one version each (IPv4 first in a block): each block within
    its limit, the messages back to back in it, and the sequence numbers
    running on across blocks and across a template message sent between
    two blocks."""
    specs = [dict(FIXED[i % len(FIXED)]) for i in range(2000)]
    arr = make_records(specs)
    one = ENCODERS[name](EncoderConfig(mtu=576))
    want = [m for m, _ in one.encode(address(arr), len(specs))]
    enc = ENCODERS[name](EncoderConfig(mtu=576))
    limits, asked = iter([1, 3, 64, 2] * 100), []

    def limit():
        asked.append(next(limits))
        return asked[-1]

    got, nrecs, templates_between = [], [], 0
    for block in enc.encode_blocks(address(arr), len(specs), limit):
        assert 1 <= len(block.lens) <= asked[-1] and sum(block.lens) == len(block.data)
        assert block.records == sum(block.nrecs)
        got += [m for m, _ in block.messages()]
        nrecs += block.nrecs
        if enc.template_message() is not None:   # advances v9's sequence
            templates_between += 1
    assert len(got) > 10
    got_recs, got_sets = data_records(name, enc, got)
    want_recs, want_sets = data_records(name, one, want)
    assert got_recs == want_recs and len(got_recs) == (1 if name == "netflow5" else 2)
    assert sum(len(v) for v in got_recs.values()) == sum(nrecs) == enc.records_encoded
    assert set(got_sets) == set(want_sets) == {1}   # one version per message
    seq_at = {"ipfix": 8, "netflow9": 12, "netflow5": 16}[name]
    seqs = [struct.unpack_from("!I", m, seq_at)[0] for m in got]
    if name == "netflow9":
        # a template after every block, the last one after the last message
        assert seqs[-1] - seqs[0] == len(got) - 1 + templates_between - 1
    else:   # data records sent before each message
        assert seqs == [sum(nrecs[:i]) for i in range(len(got))]


@pytest.mark.parametrize("every", [7, 64, 100])
def test_templates_follow_every_nth_data_message_with_blocks(every):
    """On the wire a template message follows exactly every
    `template_refresh_messages` data messages: written by the encoder inside
    a block, or (64: the block is full when it is due) sent by the exporter
    in front of the next block."""
    from export_pcap import UdpRecorder
    from flowprobe.exporters.exporter import build_exporters

    rec = UdpRecorder()
    try:
        exps = build_exporters([{"url": f"ipfix://127.0.0.1:{rec.port}", "rate_msgs_s": 0,
                                 "template_refresh_messages": every}])
        specs = [dict(FIXED[i % len(FIXED)]) for i in range(12000)]
        arr = make_records(specs)
        exps.sink(address(arr), len(specs))
        exps.close()
    finally:
        datagrams = rec.stop()
    kinds = ["T" if struct.unpack_from("!H", d, 16)[0] == 2 else "D"
             for _, d, _ in datagrams if struct.unpack_from("!H", d, 16)[0] in (2, 256, 257)]
    runs = "".join(kinds).split("T")
    assert runs[0] == "" and len(runs) > 5
    assert all(len(r) == every for r in runs[1:-1]) and 1 <= len(runs[-1]) <= every, runs


@pytest.mark.parametrize("scheme", ["ipfix", "netflow9", "netflow5"])
def test_udp_segmentation_offload_puts_the_same_datagrams_on_the_wire(scheme):
    """With udp_gso (the default) runs of equal-sized messages go to the
    kernel as one send each; a real socket receives exactly the datagrams
    that one send per datagram delivers, in the same order."""
    from export_pcap import UdpRecorder
    from flowprobe.exporters.exporter import build_exporters

    specs = [dict(FIXED[i % len(FIXED)], src_port=1000 + i) for i in range(5000)]
    arr = make_records(specs)
    wire, stats = {}, {}
    for gso in (True, False):
        rec = UdpRecorder()
        try:
            exps = build_exporters([{"url": f"{scheme}://127.0.0.1:{rec.port}",
                                     "rate_msgs_s": 0, "udp_gso": gso}])
            exps.sink(address(arr), len(specs))
            exps.close()
        finally:
            wire[gso] = [d for _, d, _ in rec.stop()]
        stats[gso] = next(iter(exps.stats().values()))
    on, off = stats[True]["transport"], stats[False]["transport"]
    assert on["gso"] is True and off["gso"] is False and off["gso_sends"] == 0
    # every message but a run's last and the templates went in a run
    assert on["gso_sends"] > 0 and on["send_calls"] == off["send_calls"]
    assert on["messages"] == off["messages"] == len(wire[False]) > 40
    strip = {"ipfix": [(4, 8)], "netflow9": [(4, 12)], "netflow5": [(4, 16)]}[scheme]

    def no_clock(d):   # export times differ between the two runs
        for a, b in strip:
            d = d[:a] + bytes(b - a) + d[b:]
        return d
    assert [no_clock(d) for d in wire[True]] == [no_clock(d) for d in wire[False]]
    assert stats[True]["records_exported"] == stats[False]["records_exported"] \
        == (len(specs) if scheme != "netflow5" else sum(":" not in x["src"] for x in specs))


def test_options_follow_their_interval_between_template_refreshes():
    """Periodic options records (sampling, reliability counters) go out
    every options_interval_s although templates are refreshed more often:
    a refresh on UDP is not a new stream and does not restart their timer."""
    from export_pcap import UdpRecorder
    from flowprobe.exporters.exporter import build_exporters

    rec = UdpRecorder()
    try:
        exps = build_exporters([{"url": f"ipfix://127.0.0.1:{rec.port}", "rate_msgs_s": 0,
                                 "template_refresh_messages": 2, "template_refresh_s": 0.05,
                                 "options_interval_s": 0.25}])
        for b in range(30):    # ~1.5 s of export, a template refresh in every batch
            arr = make_records([dict(FIXED[0], src_port=b, dst_port=i) for i in range(100)])
            exps.sink(address(arr), 100)
            exps.tick(time.time_ns())
            time.sleep(0.05)
        exps.close()
    finally:
        datagrams = rec.stop()
    st = next(iter(exps.stats().values()))
    assert st["template_sends"] >= 30
    # one per 0.25 s over ~1.5 s, and the one at close
    assert 5 <= st["options_sends"] <= 9, st["options_sends"]
    # and on the wire: messages of options data (neither templates nor flows)
    first_sets = [struct.unpack_from("!H", d, 16)[0] for _, d, _ in datagrams]
    assert sum(1 for sid in first_sets if sid not in (2, 3, templates.TID_FLOW4,
                                                     templates.TID_FLOW6)) == st["options_sends"]


def test_netflow5_limits_clamps_and_counts():
    """v5: at most 30 records per packet, IPv6 counted as not exportable,
    counters over 32 bits saturate and are counted."""
    enc = Netflow5Encoder(EncoderConfig(mtu=9000))
    specs = [dict(FIXED[3])] * 31 + [dict(FIXED[1])] * 3
    out = list(enc.encode(address(make_records(specs)), len(specs)))
    assert [k for _, k in out] == [30, 1]
    assert enc.records_not_exportable == 3 and enc.records_clamped == 31
    msg = out[0][0]
    d_pkts, d_octets = struct.unpack_from("!II", msg, 24 + 16)
    assert d_pkts == d_octets == 0xFFFFFFFF
    assert struct.unpack_from("!H", msg, 24 + 12)[0] == 0xFFFF     # ifindex 70000
    assert struct.unpack_from("!I", out[1][0], 16)[0] == 30       # flow_sequence


def test_sequence_numbers_follow_each_rfc():
    """IPFIX counts data records (options data too), v9 counts packets, v5
    counts flows."""
    arr = make_records([dict(FIXED[0])] * 40)
    ip = IpfixEncoder(EncoderConfig(mtu=600))
    msgs = [ip.template_message()] + encode_all(ip, arr, 40) + [ip.options_message(STATS)] \
        + encode_all(ip, arr, 5)
    seqs = [struct.unpack_from("!I", m, 8)[0] for m in msgs]
    per_msg = (600 - 16 - 4) // templates.ipfix_flow_templates()[0].record_length
    assert seqs[:3] == [0, 0, per_msg]
    assert seqs[-1] == 40 + 2
    v9 = Netflow9Encoder(EncoderConfig(mtu=600))
    msgs = [v9.template_message()] + encode_all(v9, arr, 40)
    assert [struct.unpack_from("!I", m, 12)[0] for m in msgs] == list(range(len(msgs)))


def test_netflow_times_follow_the_packet_clock():
    """v9/v5 headers: unix time is the latest packet time; header time minus
    sysUptime plus First/Last gives the packet times to the millisecond."""
    arr = make_records(FIXED)
    v9 = Netflow9Encoder(EncoderConfig())
    m = encode_all(v9, arr, len(FIXED))[0]
    _, count, uptime, secs, _, _ = struct.unpack_from("!HHIIII", m)
    latest_ms = max(s.get("last_ns", s["first_ns"]) for s in FIXED) // 10**6
    assert secs == latest_ms // 1000
    boot = secs * 1000 - uptime
    rec_len = templates.v9_flow_templates()[0].record_length
    t = templates.v9_flow_templates()[0]
    off = 20 + 4 + sum(f.length for f in t.fields[: [f.name for f in t.fields].index("flowStartSysUpTime")])
    first, last = struct.unpack_from("!II", m, off)
    assert boot + first == T0_NS // 10**6
    assert boot + last == (T0_NS + 1_500_000_000) // 10**6
    assert rec_len > 0
    v5 = Netflow5Encoder(EncoderConfig())
    m = encode_all(v5, arr, len(FIXED))[0]
    _, _, uptime, secs, nsecs = struct.unpack_from("!HHIII", m)
    boot = secs * 1000 + nsecs // 10**6 - uptime
    first, last = struct.unpack_from("!II", m, 24 + 24)
    assert boot + first == T0_NS // 10**6 and boot + last == (T0_NS + 1_500_000_000) // 10**6


def test_older_record_rebases_boot_time():
    """A record older than the virtual boot time moves boot earlier; its
    uptime stays positive and exact."""
    enc = Netflow9Encoder(EncoderConfig(boot_margin_ms=10))
    enc_arr = make_records([dict(FIXED[0], first_ns=T0_NS + 10**12, last_ns=T0_NS + 10**12)])
    encode_all(enc, enc_arr, 1)
    old = make_records([dict(FIXED[0])])
    m = encode_all(enc, old, 1)[0]
    _, _, uptime, secs, _, _ = struct.unpack_from("!HHIIII", m)
    t = templates.v9_flow_templates()[0]
    off = 20 + 4 + sum(f.length for f in t.fields[: [f.name for f in t.fields].index("flowStartSysUpTime")])
    assert secs * 1000 - uptime + struct.unpack_from("!I", m, off)[0] == T0_NS // 10**6


def test_bad_field_is_rejected_by_c():
    """The C encoder refuses an unknown field id or a bad length."""
    bad = ffi.new("struct enc_field[]", [(999, 4)])
    lay = ffi.new("struct enc_layout *")
    lay.fields4, lay.nfields4, lay.set_id4, lay.set_align = bad, 1, 256, 1
    res = ffi.new("struct enc_result *")
    buf = ffi.new("uint8_t[]", 64)
    arr = make_records([FIXED[0]])
    assert lib.enc_encode(lay, address(arr), 1, buf, 64, res) < 0


def test_unknown_scheme_lists_valid_ones():
    """An unknown URL scheme is an error naming every valid scheme."""
    with pytest.raises(ExportConfigError) as e:
        build_exporter("sflow://127.0.0.1:6343")
    for s in ("ipfix, ", "ipfix+udp", "ipfix+tcp", "ipfix+file", "netflow9", "netflow5"):
        assert s in str(e.value)
    with pytest.raises(ExportConfigError) as e:
        build_exporter({"url": "ipfix://127.0.0.1:1", "transport": "udpp"})
    assert "unknown key 'transport'" in str(e.value)


def test_file_export_rotates_and_reads_back(tmp_path):
    """IPFIX files (RFC 5655) rotate by size; each file opens with templates
    and the `ipfix` package reads every record back."""
    path = tmp_path / "out.ipfix"
    exp = build_exporter({"url": f"ipfix+file://{path}", "rotate_bytes": 4000,
                           "mtu": 1400})
    exp.open()
    arr = make_records([dict(FIXED[i % 4], src_port=i) for i in range(300)])
    exp.sink(address(arr), 300)
    exp.close()
    files = exp.transport.files
    assert len(files) > 3 and all(os.path.getsize(f) <= 4000 for f in files)
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            for rec in ipfix.reader.from_stream(fh).namedict_iterator():
                n += "packetDeltaCount" in rec
    assert n == 300
    assert exp.stats()["records_exported"] == 300


def test_collector_down_never_stops_the_export():
    """UDP to a port nobody listens on, TCP to a refused port: sink() returns
    at once, failures are counters, nothing raises."""
    from collectors import free_port
    import socket
    udp = build_exporter({"url": f"ipfix://127.0.0.1:{free_port()}", "rate_msgs_s": 0})
    tcp = build_exporter({"url": f"ipfix+tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                          "max_buffer_bytes": 65_536, "close_timeout_s": 0})
    arr = make_records([dict(FIXED[i % 4], src_port=i) for i in range(2000)])
    for exp in (udp, tcp):
        exp.open()
        for _ in range(3):
            exp.sink(address(arr), 2000)
        exp.close()
    assert udp.stats()["send_errors"] > 0
    st = tcp.stats()
    assert st["send_errors"] > 0 and st["records_exported"] == 0
    assert st["records_not_sent"] == 6000


def test_records_that_cannot_be_sent_are_counted_not_dropped():
    """An exporter that is closed, or whose encoder fails mid-batch, counts
    the records it could not send as records_not_sent."""
    from flowprobe.exporters.exporter import build_exporter
    recs, n = make_records([{"src_port": 1000 + i} for i in range(5)]), 5
    exp = build_exporter("ipfix://127.0.0.1:9")

    def broken(address, count):
        raise RuntimeError("encoder bug")
        yield  # pragma: no cover
    exp.encoder.encode = broken
    exp.sink(recs, n)
    assert exp.stats()["records_not_sent"] == n
    exp.close()
    exp.sink(recs, n)
    assert exp.stats()["records_not_sent"] == 2 * n
