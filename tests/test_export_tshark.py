"""Export a synthetic capture over NetFlow v5, v9 and IPFIX/UDP to a recorder
on 127.0.0.1 and decode the datagrams with tshark: every packet is NetFlow/
IPFIX (cflow), nothing is malformed, and tshark's expert info (including its
IPFIX sequence-number check) has no warning or error."""
import subprocess
import sys

import pytest

import synth
from export_pcap import UdpRecorder, write_pcap
from flowprobe.exporters.exporter import build_exporters
from flowprobe.probe.flowtable.table import FlowTable


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    d = tmp_path_factory.mktemp("cap")
    path = str(d / "synth.pcap")
    truth = synth.generate(path, flows=1500, packets=15000, seed=5)
    return path, truth


def tshark(pcap, port, *args):
    return subprocess.run(["tshark", "-n", "-r", str(pcap), "-d", f"udp.port=={port},cflow", *args],
                          capture_output=True, text=True, timeout=120)


def check_tshark(pcap, port, n_datagrams):
    protos = tshark(pcap, port, "-T", "fields", "-e", "frame.protocols").stdout.split()
    assert len(protos) == n_datagrams
    assert all(p.endswith(":cflow") for p in protos), set(protos)
    expert = tshark(pcap, port, "-q", "-z", "expert").stdout
    assert "Warns" not in expert and "Errors" not in expert, expert
    malformed = tshark(pcap, port, "-Y", "_ws.malformed || _ws.expert.severity >= warning").stdout
    assert malformed.strip() == "", malformed[:2000]


def record_count(pcap, port, field):
    out = tshark(pcap, port, "-T", "fields", "-e", field).stdout
    return sum(len(line.split(",")) for line in out.splitlines() if line.strip())


@pytest.mark.parametrize("scheme", ["ipfix", "netflow9", "netflow5"])
def test_replay_export_decodes_cleanly_in_tshark(scheme, capture, tmp_path):
    """A full replay's export is clean cflow for tshark, record for record."""
    cap, _ = capture
    rec = UdpRecorder()
    try:
        proc = subprocess.run([sys.executable, "-m", "flowprobe", "replay", cap, "--export",
                               f"{scheme}://127.0.0.1:{rec.port}"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        datagrams = rec.stop()
    pcap = tmp_path / f"{scheme}.pcap"
    write_pcap(pcap, datagrams, rec.port)
    check_tshark(pcap, rec.port, len(datagrams))


# (tshark field, values per options message) at rate 4: the RFC report
# (258) and the sampling rate template for nfdump/nfacctd (260)
SAMPLING_FIELDS = {
    ("ipfix", "deterministic"): [("cflow.selector_algorithm", ["1"]),
                                 ("cflow.sampling_packet_interval", ["1", "1"]),
                                 ("cflow.sampling_packet_space", ["3", "3"])],
    ("ipfix", "random"): [("cflow.selector_algorithm", ["3"]),
                          ("cflow.sampling_size", ["1"]),
                          ("cflow.sampling_population", ["4"]),
                          ("cflow.sampling_interval", ["4"])],
    ("netflow9", "deterministic"): [("cflow.sampling_interval", ["4", "4"]),
                                    ("cflow.sampling_algorithm", ["1"])],
    ("netflow9", "random"): [("cflow.sampling_interval", ["4", "4"]),
                             ("cflow.sampling_algorithm", ["2"])],
}


def field_values(pcap, port, field):
    out = tshark(pcap, port, "-T", "fields", "-e", field).stdout
    return [v for line in out.splitlines() for v in line.split(",") if v.strip()]


@pytest.mark.parametrize("mode", ["deterministic", "random"])
@pytest.mark.parametrize("scheme", ["ipfix", "netflow9"])
def test_options_between_data_are_decoded_and_counted(scheme, mode, capture, tmp_path):
    """Options data (sampling 1:4 in either mode, statistics) sent between flow
    data messages is decoded by tshark with the configured sampling values,
    and IPFIX sequence numbers count it as data records."""
    cap, truth = capture
    rec = UdpRecorder()
    try:
        exps = build_exporters([{"url": f"{scheme}://127.0.0.1:{rec.port}",
                                 "options_interval_s": 1e-9,
                                 "template_refresh_messages": 5}],
                               sampling_interval=4, sampling_mode=mode)
        from flowprobe.probe.replay import replay_files
        from flowprobe.config.schema import FlowConfig
        table = FlowTable(FlowConfig(), exps.sink)
        exps.attach(table)
        replay_files([cap], table, 1024)
        table.flush()
        exps.close()
        stats = exps.stats()
    finally:
        datagrams = rec.stop()
    (st,) = stats.values()
    assert st["options_sends"] > 10 and st["template_sends"] > 10
    pcap = tmp_path / f"{scheme}-options.pcap"
    write_pcap(pcap, datagrams, rec.port)
    check_tshark(pcap, rec.port, len(datagrams))
    for field, values in SAMPLING_FIELDS[scheme, mode]:
        assert field_values(pcap, rec.port, field) == values * st["options_sends"], field


@pytest.mark.parametrize("name", ["ipfix", "netflow9", "netflow5"])
def test_golden_messages_decode_cleanly_in_tshark(name, tmp_path):
    """The golden fixtures are valid for an independent decoder (tshark),
    which sees every record in them."""
    path = __import__("pathlib").Path(__file__).parent / "golden" / f"{name}.hex"
    msgs = [bytes.fromhex(h) for h in path.read_text().split()]
    pcap = tmp_path / f"golden-{name}.pcap"
    write_pcap(pcap, [(1685577600 + i, m, ("127.0.0.1", 40000)) for i, m in enumerate(msgs)], 4739)
    check_tshark(pcap, 4739, len(msgs))
    flows = record_count(pcap, 4739, "cflow.packets")
    assert flows == (3 if name == "netflow5" else 4)
