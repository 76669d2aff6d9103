"""Application identification (nDPI in the flow engine) on seeded synthetic
conversations whose application is known: exact labels and ids, both
directions alike, the packet limit, the bounded pool, DPI off."""
import dataclasses

import apps
import packets
from flowprobe.config import default_config
from flowprobe.probe.flowtable.table import FlowTable, iter_records
from flowprobe.probe.replay import replay_files

C4, S4 = "198.18.0.10", "198.18.1.20"
C6, S6 = "2001:db8::10", "2001:db8:1::20"
S = 10**9


def flow_cfg(**kw):
    return dataclasses.replace(default_config().flow, **kw)


def run(path, **kw):
    out = []
    table = FlowTable(flow_cfg(**kw), lambda recs, n: out.extend(iter_records(recs, n)))
    replay_files([str(path)], table, 512)
    table.flush()
    return out, table.stats()


def key(r):
    src = r.get("sourceIPv4Address") or r.get("sourceIPv6Address")
    dst = r.get("destinationIPv4Address") or r.get("destinationIPv6Address")
    return (src, dst, r["sourceTransportPort"], r["destinationTransportPort"],
            r["protocolIdentifier"])


def labels(records):
    """{5-tuple: (applicationName, master, app)} of every record."""
    out = {}
    for r in records:
        got = (r.get("applicationName"), r.get("ndpiMasterProtocol"), r.get("ndpiAppProtocol"))
        assert out.setdefault(key(r), got) == got, f"{key(r)}: records disagree"
    return out


def known_conversations():
    return [
        apps.dns(C4, S4, 40000, "www.example.com"),
        apps.tls(C4, S4, 40001, "www.google.com"),
        apps.http(C4, S4, 40002, "www.example.com"),
        apps.dns(C6, S6, 40003, "www.example.org", txid=0x4321),
        apps.tls(C6, S6, 40004, "www.netflix.com", label="TLS.NetFlix", master=91, app=133),
        apps.http(C6, S6, 40005, "www.example.net"),
        apps.tls(C4, S4, 40006, "www.youtube.com", label="TLS.YouTube", master=91, app=124),
    ]


def test_known_applications_get_exact_labels_both_ways(tmp_path):
    """DNS, TLS with SNI and HTTP conversations (IPv4 and IPv6) get nDPI's
    exact "Master.App" label and ids, the same in both directions' records."""
    path = tmp_path / "apps.pcap"
    convs = known_conversations()
    apps.write(path, convs)
    records, stats = run(path)
    got = labels(records)
    want = {k: (c.label, c.master, c.app) for c in convs for k in c.keys()}
    assert got == want
    assert stats["dpi"]["inspected"] == len(convs)
    assert stats["dpi"]["detected"] == len(convs)
    assert stats["dpi"]["no_state"] == 0
    assert stats["dpi"]["pool_in_use"] == 0


def test_directions_with_different_tos_share_one_state(tmp_path):
    """A server answering with another DSCP (two flows apart from the ToS
    in their keys) still shares the client's nDPI state: one conversation
    inspected, both directions labelled alike."""
    path = tmp_path / "tos.pcap"
    convs = [apps.dns(C4, S4, 44000, server_tos=0x20), apps.dns(C6, S6, 44001, server_tos=0xB8)]
    apps.write(path, convs)
    records, stats = run(path)
    assert set(labels(records).values()) == {("DNS", 0, 5)}
    assert len(records) == 4
    assert stats["dpi"]["inspected"] == 2


def test_snaplen_cut_packets_are_still_inspected(tmp_path):
    """Frames cut to 256 bytes (live capture's default snap length): an HTTP
    GET whose Host lies in the captured part is still named (HTTP.Google);
    a 600-byte ClientHello is not complete, so nDPI 4.2 names only TLS (its
    SNI needs the whole record: a snap length of a full frame)."""
    path = tmp_path / "cut.pcap"
    get = apps.http_get("www.google.com").replace(
        b"Accept: */*\r\n", b"Accept: */*\r\nX-Pad: " + b"a" * 400 + b"\r\n")
    web = apps.Conversation(C4, S4, 47501, 80, 6)
    web.frames = apps._tcp_conv(C4, S4, 47501, 80, [(0, get), (1, apps.HTTP_OK)])
    tls = apps.tls(C4, S4, 47500, hello=apps.client_hello("www.google.com", pad=500))
    frames = [(apps.START_NS + off, fr[:256], len(fr))
              for c in (web, tls) for off, fr in c.frames]
    assert max(fl for _, _, fl in frames) > 600
    packets.write_pcap(path, sorted(frames, key=lambda x: x[0]), nsec=True)
    records, stats = run(path)
    got = labels(records)
    assert {got[k] for k in web.keys()} == {("HTTP.Google", 7, 126)}
    assert {got[k] for k in tls.keys()} == {("TLS", 0, 91)}


def test_dpi_off_gives_no_label_and_no_counters(tmp_path):
    """flow.dpi false: records carry no application keys, counters stay 0."""
    path = tmp_path / "apps.pcap"
    apps.write(path, known_conversations())
    records, stats = run(path, dpi=False)
    assert records and not any("applicationName" in r for r in records)
    assert set(stats["dpi"].values()) == {0}


def test_pool_of_one_leaves_the_second_conversation_without_state(tmp_path):
    """dpi_max_flows 1 and two overlapping conversations: the first is
    classified, the second is counted once as no-state and both of its
    directions carry an empty label; every state is back in the pool."""
    path = tmp_path / "two.pcap"
    first, second = apps.tls(C4, S4, 41000), apps.dns(C4, S4, 41001)
    apps.write(path, [first, second], spacing_ns=1_500_000)
    records, stats = run(path, dpi_max_flows=1)
    got = labels(records)
    assert {got[k] for k in first.keys()} == {("TLS.Google", 91, 126)}
    assert {got[k] for k in second.keys()} == {("", 0, 0)}
    assert stats["dpi"]["no_state"] == 1
    assert stats["dpi"]["inspected"] == 1
    assert stats["dpi"]["pool_peak"] == 1
    assert stats["dpi"]["pool_in_use"] == 0


def test_packet_limit_ends_detection_of_an_unknown_conversation(tmp_path):
    """A conversation nDPI cannot name stops being inspected after 24
    packets (both directions counted) and ends as Unknown, 0/0 ids."""
    path = tmp_path / "opaque.pcap"
    frames = []
    for i in range(40):
        src, dst, sp, dp = (C4, S4, 47001, 47002) if i % 2 == 0 else (S4, C4, 47002, 47001)
        payload = bytes((i * 37 + j * 11) & 0xFF for j in range(64))
        frames.append((apps.START_NS + i * 10_000_000,
                       packets.eth_ipv4_udp(src, dst, sp, dp, b"\xfe\xed" + payload)))
    packets.write_pcap(path, frames, nsec=True)
    records, stats = run(path)
    assert stats["dpi"]["packets"] == 24
    got = labels(records)
    assert set(got.values()) == {("Unknown", 0, 0)}
    assert stats["dpi"]["unknown"] == 1


def test_undetected_flow_gets_the_guess_at_expiry(tmp_path):
    """A lone SYN to TCP/443 is still undetected when it expires: nDPI's
    giveup guesses TLS from the port (app_source guessed)."""
    path = tmp_path / "syn.pcap"
    packets.write_pcap(path, [(apps.START_NS, packets.eth_ipv4_tcp(
        C4, S4, 42000, 443, packets.TCP_SYN))], nsec=True)
    records, stats = run(path)
    assert labels(records) == {(C4, S4, 42000, 443, 6): ("TLS", 0, 91)}
    assert stats["dpi"]["guessed"] == 1


def test_active_timeout_records_keep_the_label(tmp_path):
    """A TLS conversation longer than the active timeout is exported in
    pieces, every piece of both directions labelled TLS.Google, and it is
    inspected only once."""
    path = tmp_path / "long.pcap"
    conv = apps.tls(C4, S4, 43000)
    # after the handshake, 40 keep-alive exchanges 100 ms apart (4 s)
    last = conv.frames[-1][0]
    conv.frames = conv.frames[:-3]
    for i in range(40):
        t = last + (i + 1) * 100_000_000
        conv.frames.append((t, apps.tcp_ack(C4, S4, 43000, 443, i)))
        conv.frames.append((t + 1_000_000, apps.tcp_ack(S4, C4, 443, 43000, i)))
    apps.write(path, [conv])
    records, stats = run(path, active_timeout_s=1.0, idle_timeout_s=30.0)
    assert sum(r["flowEndReason"] == 2 for r in records) >= 6
    assert {(r.get("applicationName"), r.get("ndpiAppProtocol")) for r in records} == \
        {("TLS.Google", 126)}
    assert stats["dpi"]["inspected"] == 1
    assert stats["flows_active"] == 0 and stats["dpi"]["pool_in_use"] == 0


def test_memory_per_flow_under_detection():
    """The pool costs dpi_max_flows slots of nDPI's 688-byte flow state plus
    a little bookkeeping (conversation key, owners, index bucket), and the
    label side array 12 bytes per flow of the table."""
    assert 688 < FlowTable.dpi_slot_size() <= 768
    off = FlowTable(flow_cfg(max_flows=4096, dpi=False)).memory_bytes
    on = FlowTable(flow_cfg(max_flows=4096, dpi_max_flows=1000)).memory_bytes
    # + the index buckets and a 64 KB scratch for datagrams cut by the snap length
    assert on - off <= 1000 * FlowTable.dpi_slot_size() + 4096 * 12 + 1024 * 4 + 65536 + 4096


def test_replay_cli_flags_turn_dpi_off_and_size_the_pool(tmp_path):
    """`flowprobe replay` reports the conversations it inspected; --no-dpi
    turns identification off; --dpi-max-flows sizes the pool and is checked
    like the config key (exit 2 naming flow.dpi_max_flows)."""
    import subprocess
    import sys
    path = tmp_path / "apps.pcap"
    apps.write(path, known_conversations())

    def replay(*flags):
        return subprocess.run([sys.executable, "-m", "flowprobe", "replay", str(path), *flags],
                              capture_output=True, text=True, timeout=60)
    on = replay()
    assert on.returncode == 0, on.stderr
    assert "applications                    7  conversations inspected" in on.stderr
    assert "  detected                          7" in on.stderr
    off = replay("--no-dpi")
    assert off.returncode == 0, off.stderr
    assert "applications" not in off.stderr
    one = replay("--dpi-max-flows", "1")
    assert one.returncode == 0, one.stderr
    assert "  no_state" in one.stderr
    bad = replay("--dpi-max-flows", "0")
    assert bad.returncode == 2
    assert "flow.dpi_max_flows (command line)" in bad.stderr


def test_eviction_and_expiry_return_every_state(tmp_path):
    """A table of 8 flows under 40 overlapping TLS/HTTP/DNS conversations:
    flows are evicted while under detection, yet every nDPI state comes back
    to the pool, each ended one way, and every record has a label."""
    path = tmp_path / "many.pcap"
    convs = []
    for i in range(40):
        make = (apps.tls, apps.http, apps.dns)[i % 3]
        convs.append(make(C4, f"198.18.2.{i + 1}", 45000 + i))
    apps.write(path, convs, spacing_ns=500_000)
    records, stats = run(path, max_flows=8)
    d = stats["dpi"]
    assert stats["flows_expired"]["lack_of_resources"] > 0
    assert d["pool_in_use"] == 0
    assert d["inspected"] == d["detected"] + d["guessed"] + d["unknown"]
    assert stats["packets_emitted"] == stats["packets_accepted"]
    # every piece of a thrashed conversation is labelled (inspected anew)
    assert all(r.get("applicationName") for r in records)


def test_first_direction_to_end_decides_for_both(tmp_path):
    """A conversation nDPI cannot name, whose client goes quiet while the
    server keeps sending past the idle timeout: the client's flow ends
    first with the giveup label, and the server's record carries the same."""
    path = tmp_path / "oneway.pcap"
    frames = [(apps.START_NS, packets.eth_ipv4_udp(C4, S4, 46000, 46001, b"\x01\x02\x03"))]
    for i in range(1, 8):
        frames.append((apps.START_NS + i * 10 * S,
                       packets.eth_ipv4_udp(S4, C4, 46001, 46000, b"\x07" * 40)))
    packets.write_pcap(path, frames, nsec=True)
    records, stats = run(path, idle_timeout_s=30.0)
    assert [r["flowEndReason"] for r in records] == [1, 4]
    assert records[0]["sourceIPv4Address"] == C4
    assert len({(r["applicationName"], r["ndpiAppProtocol"]) for r in records}) == 1
    assert stats["dpi"]["inspected"] == 1 and stats["dpi"]["pool_in_use"] == 0
