"""The flow engine (parser + table) against ground truth, through the same
Python path replay uses: file reader -> ft_ingest -> ft_expire -> records."""
import dataclasses

import pytest

import packets
import synth
from flowprobe.config import default_config
from flowprobe.probe.flowtable.table import FlowTable, iter_records
from flowprobe.probe.replay import replay_files

START = synth.DEFAULT_START_NS
S = 10**9
A, B, C = "198.18.0.1", "198.18.0.2", "198.18.1.3"


def flow_cfg(**kw):
    return dataclasses.replace(default_config().flow, **kw)


def run(paths, batch=512, **kw):
    """Replay files; return (records as dicts, table stats)."""
    out = []
    table = FlowTable(flow_cfg(**kw), lambda recs, n: out.extend(iter_records(recs, n)))
    replay_files([str(p) for p in paths], table, batch)
    table.flush()
    return out, table.stats()


def assert_conserved(records, stats):
    assert sum(r["packetDeltaCount"] for r in records) == stats["packets_accepted"]
    assert sum(r["octetDeltaCount"] for r in records) == stats["octets_accepted"]
    assert stats["packets_seen"] == stats["packets_accepted"] + sum(stats["skipped"].values())
    assert stats["flows_active"] == 0


@pytest.mark.parametrize("fmt,nsec", [("pcap", False), ("pcap", True), ("pcapng", False)])
def test_synthetic_capture_matches_truth_exactly(tmp_path, fmt, nsec):
    """Every flow's packets, bytes, first/last ms and TCP flags equal the truth."""
    path = tmp_path / f"synth.{fmt}"
    truth = synth.generate(path, flows=3000, packets=30000, seed=7, fmt=fmt, nsec=nsec)
    records, stats = run([path])
    assert synth.sum_records(records) == truth.expected()
    assert stats["packets_accepted"] == truth.packets
    assert stats["octets_accepted"] == truth.octets
    assert stats["fragments"] == truth.fragments
    assert_conserved(records, stats)


def test_malformed_frames_are_counted_by_reason(tmp_path):
    """Truncated, bad-IHL and non-IP frames land in their named skip counters."""
    path = tmp_path / "bad.pcap"
    truth = synth.generate(path, flows=200, packets=2000, seed=3, malformed=True)
    records, stats = run([path])
    assert synth.sum_records(records) == truth.expected()
    expected_skips = {f"unsupported_{r}" if r == "linktype" else r: n
                      for r, n in truth.skipped.items()}
    assert stats["skipped"] == expected_skips
    assert stats["l4_partial"] == truth.l4_partial
    assert_conserved(records, stats)


def udp_frame(size=100, **kw):
    return packets.eth_ipv4_udp(A, B, 1000, 2000, b"x" * size, **kw)


def test_idle_timeout_splits_a_flow_and_deltas_add_up(tmp_path):
    """A gap longer than the idle timeout ends the flow (reason 1)."""
    path = tmp_path / "idle.pcap"
    times = [0, 1, 2, 20, 21, 50]
    packets.write_pcap(path, [(START + t * S, udp_frame()) for t in times])
    records, stats = run([path], idle_timeout_s=10, active_timeout_s=1000)
    assert [r["packetDeltaCount"] for r in records] == [3, 2, 1]
    assert [r["flowEndReason"] for r in records] == [1, 1, 4]
    assert records[1]["flowStartMilliseconds"] == (START + 20 * S) // 10**6
    assert stats["flows_expired"]["idle_timeout"] == 2
    assert_conserved(records, stats)


def test_active_timeout_exports_a_long_flow_as_deltas(tmp_path):
    """A flow active longer than the active timeout is exported in pieces."""
    path = tmp_path / "active.pcap"
    packets.write_pcap(path, [(START + t * S, udp_frame()) for t in range(25)])
    records, stats = run([path], idle_timeout_s=5, active_timeout_s=10)
    assert [r["packetDeltaCount"] for r in records] == [10, 10, 5]
    assert [r["flowEndReason"] for r in records] == [2, 2, 4]
    assert sum(r["octetDeltaCount"] for r in records) == 25 * (20 + 8 + 100)
    assert_conserved(records, stats)


def test_tcp_fin_both_ways_ends_both_flows_after_grace(tmp_path):
    """FIN seen in both directions ends both flows with endOfFlowDetected."""
    f = packets.eth_ipv4_tcp
    frames = [
        (START, f(A, B, 4000, 80, packets.TCP_SYN)),
        (START + 1000, f(B, A, 80, 4000, packets.TCP_SYN | packets.TCP_ACK)),
        (START + 2000, f(A, B, 4000, 80, packets.TCP_FIN | packets.TCP_ACK)),
        (START + 3000, f(B, A, 80, 4000, packets.TCP_FIN | packets.TCP_ACK)),
        (START + 4000, f(A, B, 4000, 80, packets.TCP_ACK)),
        # Keeps the clock moving past the grace period.
        (START + 5 * S, udp_frame()),
    ]
    path = tmp_path / "fin.pcap"
    packets.write_pcap(path, frames)
    records, stats = run([path], tcp_end_grace_s=1, idle_timeout_s=60)
    tcp = [r for r in records if r["protocolIdentifier"] == 6]
    assert sorted(r["packetDeltaCount"] for r in tcp) == [2, 3]
    assert {r["flowEndReason"] for r in tcp} == {3}
    assert stats["flows_expired"]["end_of_flow"] == 2
    assert_conserved(records, stats)


def test_tcp_fin_both_ways_seen_when_the_directions_differ_in_tos(tmp_path):
    """A server answering with another DSCP (its direction is another flow
    key, ToS included) still ends the conversation on FIN both ways."""
    f = packets.eth_ipv4_tcp
    frames = [
        (START, f(A, B, 4002, 80, packets.TCP_SYN)),
        (START + 1000, f(B, A, 80, 4002, packets.TCP_SYN | packets.TCP_ACK, tos=0x20)),
        (START + 2000, f(A, B, 4002, 80, packets.TCP_FIN | packets.TCP_ACK)),
        (START + 3000, f(B, A, 80, 4002, packets.TCP_FIN | packets.TCP_ACK, tos=0x20)),
        (START + 5 * S, udp_frame()),
    ]
    path = tmp_path / "fin-tos.pcap"
    packets.write_pcap(path, frames)
    records, stats = run([path], tcp_end_grace_s=1, idle_timeout_s=60)
    tcp = [r for r in records if r["protocolIdentifier"] == 6]
    assert sorted(r["ipClassOfService"] for r in tcp) == [0, 0x20]
    assert {r["flowEndReason"] for r in tcp} == {3}
    assert_conserved(records, stats)


def test_tcp_rst_ends_the_flow(tmp_path):
    """A RST ends the flow (and its reverse) after the grace period."""
    f = packets.eth_ipv4_tcp
    frames = [(START, f(A, B, 4001, 80, packets.TCP_SYN)),
              (START + 10, f(B, A, 80, 4001, packets.TCP_RST | packets.TCP_ACK)),
              (START + 3 * S, udp_frame())]
    path = tmp_path / "rst.pcap"
    packets.write_pcap(path, frames)
    records, _ = run([path], tcp_end_grace_s=1)
    assert {r["flowEndReason"] for r in records if r["protocolIdentifier"] == 6} == {3}


def test_table_full_evicts_oldest_and_conserves(tmp_path):
    """A full table evicts (lackOfResources, counted) and loses no packet."""
    path = tmp_path / "many.pcap"
    truth = synth.generate(path, flows=5000, packets=20000, seed=11)
    records, stats = run([path], max_flows=256)
    assert stats["flows_expired"]["lack_of_resources"] > 0
    assert stats["flows_peak"] <= 256
    sums = synth.sum_records(records)
    assert {k: (v["packets"], v["octets"]) for k, v in sums.items()} == \
        {k: (v["packets"], v["octets"]) for k, v in truth.expected().items()}
    assert_conserved(records, stats)


def test_results_do_not_depend_on_batch_size(tmp_path):
    """Chunking the input differently gives the same flows."""
    path = tmp_path / "s.pcap"
    synth.generate(path, flows=500, packets=5000, seed=5)
    a, _ = run([path], batch=1)
    b, _ = run([path], batch=4096)
    key = lambda r: (synth.key_of_record(r), r["flowStartMilliseconds"])  # noqa: E731
    assert sorted(a, key=key) == sorted(b, key=key)


def test_padding_is_not_counted_and_snaplen_cut_counts_full_length(tmp_path):
    """Octets are IP total lengths: padding never, a cut packet in full."""
    small = udp_frame(size=2)           # 30-byte IP datagram, padded to 60
    assert len(small) == 60
    big = udp_frame(size=1000)          # 1028-byte datagram, cut to 64 bytes
    path = tmp_path / "len.pcap"
    packets.write_pcap(path, [(START, small), (START + 1, big[:64], len(big))])
    records, stats = run([path])
    assert records[0]["octetDeltaCount"] == 30 + 1028
    assert stats["l4_partial"] == 0


def test_vlan_qinq_mpls_and_fragments_keying(tmp_path):
    """Outer VLAN keys the flow, the inner is exported, MPLS is skipped to IP,
    a non-first fragment is accounted without ports."""
    frames = [
        (START, udp_frame(vlans=(100,))),
        (START + 1, udp_frame(vlans=(200, 300))),
        (START + 2, udp_frame(mpls=(16, 17))),
        (START + 3, packets.ether(packets.ipv4(A, B, 17, b"y" * 40, frag=0x0005), 0x0800)),
    ]
    path = tmp_path / "keys.pcap"
    packets.write_pcap(path, frames)
    records, stats = run([path])
    by = {(r.get("vlanId", 0), r["sourceTransportPort"]): r for r in records}
    assert (100, 1000) in by and "dot1qCustomerVlanId" not in by[(100, 1000)]
    assert by[(200, 1000)]["dot1qCustomerVlanId"] == 300
    assert by[(0, 1000)]["packetDeltaCount"] == 1            # the MPLS one
    assert by[(0, 0)]["destinationTransportPort"] == 0       # the fragment
    assert by[(0, 0)]["octetDeltaCount"] == 60
    assert stats["fragments"] == 1


def test_icmp_type_code_in_record(tmp_path):
    """ICMP and ICMPv6 carry type/code (as v5 does in the destination port)."""
    path = tmp_path / "icmp.pcap"
    packets.write_pcap(path, [(START, packets.eth_ipv4_icmp(A, C, 3, 1)),
                            (START + 1, packets.eth_ipv6_icmp("2001:db8::1", "2001:db8::2", 128, 0))])
    records, _ = run([path])
    by = {r["protocolIdentifier"]: r for r in records}
    assert by[1]["icmpTypeCodeIPv4"] == 3 << 8 | 1
    assert by[58]["icmpTypeCodeIPv6"] == 128 << 8


def test_unsupported_linktype_is_counted_not_guessed(tmp_path):
    """Packets of a link type the parser lacks are skipped under that reason."""
    path = tmp_path / "lt.pcap"
    hdr = packets.pcap_header(linktype=147)
    import struct
    rec = struct.pack("<IIII", 1, 0, 20, 20) + b"\x45" + b"\0" * 19
    path.write_bytes(hdr + rec * 3)
    records, stats = run([path])
    assert records == []
    assert stats["skipped"]["unsupported_linktype"] == 3
    assert stats["last_linktype_unsupported"] == 147


def test_flow_entry_fits_budget():
    """A flow entry plus its share of hash buckets stays within 128 bytes
    (DPI off: its pool and label array are a budget of their own, see
    test_dpi.py)."""
    table = FlowTable(flow_cfg(max_flows=1 << 20, dpi=False))
    assert FlowTable.entry_size() <= 120
    assert table.memory_bytes / (1 << 20) <= 128


def test_set_timeouts_reslots_live_flows_without_ending_them(tmp_path):
    """ft_set_timeouts (SIGHUP reload): flows held under a 600 s idle timer
    expire as idle at the next clock advance once the timer is 1 s; none is
    lost or ended early by the change itself."""
    path = tmp_path / "t.pcap"
    truth = synth.generate(path, flows=50, packets=400, seed=3, mix={"fin": 0.0})
    out = []
    cfg = dataclasses.replace(default_config().flow, idle_timeout_s=600.0)
    table = FlowTable(cfg, lambda recs, n: out.extend(iter_records(recs, n)))
    replay_files([str(path)], table, 64)
    now = table.stats()["now_ns"]
    table.expire(now + 5 * 10**9)
    assert out == [] and table.stats()["flows_active"] == len(truth.flows)
    table.set_timeouts(dataclasses.replace(cfg, idle_timeout_s=1.0))
    assert out == [] and table.stats()["flows_active"] == len(truth.flows)
    table.expire(now + 6 * 10**9)
    st = table.stats()
    assert st["flows_active"] == 0 and st["flows_expired"]["idle_timeout"] == len(out)
    assert sum(r["packetDeltaCount"] for r in out) == truth.packets
