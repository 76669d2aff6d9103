"""Live `flowprobe run`: a seeded synthetic capture sent over a test veth is
captured on the prepared end, aggregated, and exported exactly."""
import json
import signal
import subprocess
import sys
import time

import pytest

import packets
import synth

# Bounded: a few thousand frames at a moderate rate (no drops expected).
FLOWS, PACKETS, PPS = 400, 6000, 20000
MTU_FRAME = 1514


def start_probe(veth, tmp_path, *extra, capture_yaml="", config=None):
    """`flowprobe run` in the capture namespace; returns once a reader has
    its ring open. ``capture_yaml``: more lines of the capture section of
    the default test config; ``config``: a whole config instead. ``proc.head``
    holds the stderr lines read until then."""
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(config if config is not None else
                   "flow:\n  idle_timeout_s: 600\n  active_timeout_s: 600\n"
                   "capture:\n  block_timeout_ms: 5\n" + capture_yaml)
    proc = subprocess.Popen(
        veth.argv(veth.cap_ns, sys.executable, "-m", "flowprobe", "run", "-i", veth.cap_if,
                  "-c", str(cfg), *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "reader_started" in line:
            proc.head = lines
            return proc
    proc.kill()
    pytest.fail("flowprobe run did not start:\n" + "".join(lines))


def stop_probe(proc, timeout=30):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def final_stats(err: str) -> dict:
    """The readers' final counters, summed (one reader_stopped line each)."""
    total = None
    for line in err.splitlines():
        if '"reader_stopped"' in line:
            total = add(total, json.loads(line)) if total else json.loads(line)
    assert total is not None, "no reader_stopped line:\n" + err[-2000:]
    return total


def add(a, b):
    if isinstance(a, dict):
        return {k: add(a[k], b[k]) if k in b else a[k] for k in a}
    return a + b if isinstance(a, int) and isinstance(b, int) else a


@pytest.fixture
def capture_file(tmp_path):
    """A synthetic capture whose frames all fit the veth MTU."""
    path = tmp_path / "live.pcap"
    truth = synth.generate(path, flows=FLOWS, packets=PACKETS, seed=42,
                           mix={"fragmented": 0.0})
    return path, truth


def test_run_exports_exactly_the_truth(veth, tmp_path, capture_file):
    """Every flow sent is exported with exact packets and bytes; 0 ring drops;
    SIGTERM ends and exports every flow and exits 0."""
    path, truth = capture_file
    assert veth.run(veth.cap_ns, sys.executable, "-m", "flowprobe", "nic", "prepare",
                    veth.cap_if).returncode == 0
    proc = start_probe(veth, tmp_path, "--json")
    try:
        sent = veth.send(path, pps=PPS)
        assert sent["sent"] == truth.frames and sent["errors"] == 0
        time.sleep(0.5)
    finally:
        out, err = stop_probe(proc)
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert synth.counts(records) == truth.counts()
    stats = final_stats(err)
    assert stats["ring"]["kernel_drops"] == 0
    assert stats["ring"]["delivered"] == truth.frames == stats["table"]["packets_seen"]
    assert stats["table"]["packets_accepted"] == truth.packets
    assert {r["flowEndReason"] for r in records} == {4}


@pytest.mark.parametrize("how", ["config", "flag"])
def test_idle_flows_expire_without_traffic(veth, tmp_path, how):
    """The timer advances the clock: an idle flow is exported while no
    packets arrive, before any signal. The 1 s idle timeout comes from the
    config file, or from `run --idle-timeout 1` over a config that says 600."""
    cfg = tmp_path / "idle.yaml"
    if how == "config":
        cfg.write_text("flow:\n  idle_timeout_s: 1\n")
        flags = []
    else:
        cfg.write_text("flow:\n  idle_timeout_s: 600\n  active_timeout_s: 600\n")
        flags = ["--idle-timeout", "1", "--active-timeout", "300", "--max-flows", "1024"]
    path = tmp_path / "one.pcap"
    packets.write_pcap(path, [(synth.DEFAULT_START_NS + i, packets.eth_ipv4_udp(
        "198.18.0.1", "198.18.0.2", 1000, 2000, b"z" * 50)) for i in range(5)])
    proc = subprocess.Popen(
        veth.argv(veth.cap_ns, sys.executable, "-m", "flowprobe", "run", "-i", veth.cap_if,
                  "-c", str(cfg), "--json", *flags),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        veth.send(path, pps=1000)
        # Read the first record before stopping: it must come from the timer.
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=10), "no flow exported within 10 s"
        first = json.loads(proc.stdout.readline())
    finally:
        stop_probe(proc)
    assert first["packetDeltaCount"] == 5
    assert first["flowEndReason"] == 1
