"""Live sampling and hardware-timestamp requests with `flowprobe run`.

Sampling 1:4 in the ring: the rate and mode reach the IPFIX sampling options
records (seen by the built-in collector, `flowprobe collect`, in the capture
namespace), and every packet walked is either delivered or sampled out.
hw_timestamps on veth: the NIC refuses SIOCSHWTSTAMP, one warning is logged,
software timestamps stay and the flows are exact.
"""
import json
import math
import signal
import subprocess
import sys
import time

import pytest

import synth
from test_run import start_probe, stop_probe

FLOWS, PACKETS, PPS = 300, 4000, 20000
RATE = 4


@pytest.fixture
def ns(veth):
    """The veth pair with lo up in the capture namespace (collector there)."""
    veth.run(veth.cap_ns, "ip", "link", "set", "lo", "up")
    return veth


@pytest.fixture
def capture_file(tmp_path):
    path = tmp_path / "sampling.pcap"
    truth = synth.generate(path, flows=FLOWS, packets=PACKETS, seed=7,
                           mix={"fragmented": 0.0})
    return path, truth


def reader_stopped(err: str) -> dict:
    stopped = [json.loads(line) for line in err.splitlines() if '"reader_stopped"' in line]
    assert len(stopped) == 1, err[-2000:]
    return stopped[0]


def run_sampled(pair, tmp_path, capture_file, mode):
    """Send the capture through a 1:RATE sampling probe exporting IPFIX to
    `flowprobe collect`; returns (collected records, reader stats, truth)."""
    path, truth = capture_file
    port = 47390
    # stdout to a file: a pipe nobody reads while the probe runs would fill
    # and block the collector
    coll_out = open(tmp_path / "collected.jsonl", "w+")
    coll = subprocess.Popen(
        pair.argv(pair.cap_ns, sys.executable, "-m", "flowprobe", "collect",
                  "--listen", f"udp://127.0.0.1:{port}"),
        stdout=coll_out, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert coll.poll() is None, coll.stderr.read()
        proc = start_probe(pair, tmp_path, "--workers", "1",
                           "--export", f"ipfix://127.0.0.1:{port}",
                           capture_yaml=f"  sampling_rate: {RATE}\n  sampling_mode: {mode}\n")
        try:
            sent = pair.send(path, pps=PPS)
            assert sent["sent"] == truth.frames and sent["errors"] == 0
            time.sleep(0.5)
        finally:
            _, err = stop_probe(proc)
        time.sleep(0.5)
    finally:
        coll.send_signal(signal.SIGTERM)
        _, cerr = coll.communicate(timeout=30)
        coll_out.seek(0)
        out = coll_out.read()
        coll_out.close()
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert records, cerr[-2000:]
    return records, reader_stopped(err), truth


def test_deterministic_sampling_reaches_options_and_is_counted(ns, tmp_path, capture_file):
    """1:4 deterministic: options records say systematic count-based with
    interval 1 / space 3; walked packets are delivered or sampled out, and
    exactly floor or ceil of sent/4 are delivered and exported."""
    records, st, truth = run_sampled(ns, tmp_path, capture_file, "deterministic")
    sampling = [r for r in records if r.get("_options") and "selectorAlgorithm" in r]
    assert sampling, records[-3:]
    for r in sampling:
        assert (r["selectorAlgorithm"], r["samplingPacketInterval"],
                r["samplingPacketSpace"]) == (1, 1, RATE - 1)
    ring, table = st["ring"], st["table"]
    assert ring["kernel_drops"] == 0
    assert ring["walked"] == truth.frames
    assert ring["sampled_out"] + ring["delivered"] == truth.frames
    assert ring["delivered"] in (truth.frames // RATE, math.ceil(truth.frames / RATE))
    assert table["packets_seen"] == ring["delivered"]
    flows = [r for r in records if not r.get("_options")]
    assert sum(r["packetDeltaCount"] for r in flows) == table["packets_accepted"]


def test_random_sampling_options_say_n_out_of_n(ns, tmp_path, capture_file):
    """1:4 random: options records say random n-out-of-N, size 1,
    population 4; walked packets are delivered or sampled out."""
    records, st, truth = run_sampled(ns, tmp_path, capture_file, "random")
    sampling = [r for r in records if r.get("_options") and "selectorAlgorithm" in r]
    assert sampling, records[-3:]
    for r in sampling:
        assert (r["selectorAlgorithm"], r["samplingSize"],
                r["samplingPopulation"]) == (3, 1, RATE)
    ring = st["ring"]
    assert ring["sampled_out"] + ring["delivered"] == truth.frames
    assert 0 < ring["delivered"] < truth.frames


def test_hw_timestamps_refused_on_veth_keeps_software(ns, tmp_path, capture_file):
    """hw_timestamps: true on veth: one clear warning with the reason, no
    hardware-stamped packet, and the flows are exact."""
    path, truth = capture_file
    proc = start_probe(ns, tmp_path, "--workers", "1", "--json",
                       capture_yaml="  hw_timestamps: true\n")
    head = proc.head
    try:
        sent = ns.send(path, pps=PPS)
        assert sent["sent"] == truth.frames and sent["errors"] == 0
        time.sleep(0.5)
    finally:
        out, err = stop_probe(proc)
    err = "".join(head) + err
    warnings = [json.loads(line) for line in err.splitlines()
                if '"hw_timestamps_unavailable"' in line]
    assert len(warnings) == 1, err[-2000:]
    assert "SIOCSHWTSTAMP" in warnings[0]["reason"]
    assert warnings[0]["iface"] == ns.cap_if
    st = reader_stopped(err)
    assert st["ring"]["hw_timestamped"] == 0
    assert st["ring"]["kernel_drops"] == 0
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert synth.counts(records) == truth.counts()
