"""Live `flowprobe run --workers 2 --export zmq://`: two readers, each on a
port of its own (PORT, PORT + 1) with its own source id, feed one
subscriber connected to both (as ntopng -i tcp://H:P,tcp://H:P+1 is);
every flow sent arrives with exact packets and IP bytes."""
import json
import signal
import subprocess
import sys

import synth
from test_ntopng_export import tlv_key
from test_run import FLOWS, PACKETS, PPS, final_stats, start_probe, stop_probe

SINK = __import__("pathlib").Path(__file__).resolve().parent / "zmq_sink.py"
PORT = 5570


def test_two_readers_feed_one_subscriber(veth, tmp_path):
    path = tmp_path / "live.pcap"
    truth = synth.generate(path, flows=FLOWS, packets=PACKETS, seed=43,
                           mix={"fragmented": 0.0})
    veth.run(veth.cap_ns, "ip", "link", "set", "lo", "up")
    sink = subprocess.Popen(
        veth.argv(veth.cap_ns, sys.executable, str(SINK), f"tcp://127.0.0.1:{PORT}",
                  f"tcp://127.0.0.1:{PORT + 1}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        proc = start_probe(veth, tmp_path, "--workers", "2",
                           "--export", f"zmq://127.0.0.1:{PORT}")
        try:
            sent = veth.send(path, pps=PPS)
            assert sent["sent"] == truth.frames and sent["errors"] == 0
        finally:
            out, err = stop_probe(proc)
    finally:
        sink.send_signal(signal.SIGTERM)
        got, sink_err = sink.communicate(timeout=30)
    result = json.loads(got)
    stats = final_stats(err)
    assert stats["ring"]["kernel_drops"] == 0
    assert sorted(result["ids"]) == ["0", "1"]          # one source id per reader
    for ids in result["ids"].values():
        assert ids == list(range(1, len(ids) + 1))      # no message lost
    counts: dict = {}
    for r in result["records"]:
        p, o = counts.get(tlv_key(r), (0, 0))
        counts[tlv_key(r)] = (p + r["2"], o + r["1"])
    assert counts == truth.counts()


def test_ntopng_down_never_stalls_capture(veth, tmp_path):
    """Nobody subscribed: both readers capture every packet (0 ring drops)
    and count every record not sent as no_subscriber."""
    path = tmp_path / "live.pcap"
    truth = synth.generate(path, flows=FLOWS, packets=PACKETS, seed=44,
                           mix={"fragmented": 0.0})
    veth.run(veth.cap_ns, "ip", "link", "set", "lo", "up")
    proc = start_probe(veth, tmp_path, "--workers", "2",
                       "--export", f"zmq://127.0.0.1:{PORT}")
    try:
        sent = veth.send(path, pps=PPS)
        assert sent["sent"] == truth.frames and sent["errors"] == 0
    finally:
        out, err = stop_probe(proc)
    readers = [json.loads(x) for x in err.splitlines() if '"reader_stopped"' in x]
    assert len(readers) == 2
    assert sum(r["ring"]["kernel_drops"] for r in readers) == 0
    assert sum(r["table"]["packets_accepted"] for r in readers) == truth.packets
    for r in readers:
        (st,) = r["exporters"].values()
        assert st["records_exported"] == 0
        assert st["records_not_sent_by"] == {"no_subscriber": r["table"]["records_emitted"]}
