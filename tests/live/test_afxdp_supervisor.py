"""AF_XDP under the supervisor: one reader per RX queue, one XDP program
owned by the supervisor for its lifetime."""
import json
import os
import signal
import subprocess
import sys
import time

import synth
from repo import SENDER
from test_afxdp import PPS, seeded, veth2q  # noqa: F401  (fixtures)

LIVE_DIR = os.path.dirname(os.path.abspath(__file__))


def stats(ns: str, sock: str) -> dict:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "flowprobe",
                          "stats", "--socket", sock, "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(pred, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def xdp_on(ns: str, iface: str) -> bool:
    out = subprocess.run(["ip", "-n", ns, "-d", "link", "show", iface],
                         capture_output=True, text=True, timeout=30).stdout
    return "prog/xdp" in out


def test_one_reader_per_queue_and_reader_death_keeps_the_program(veth2q, seeded, tmp_path):  # noqa: F811
    """Without --workers, a 2-queue NIC gets 2 readers; killing one with -9
    restarts it and leaves the supervisor's program attached, so the whole
    capture still arrives exactly; exit detaches the program."""
    cap, snd = veth2q
    path, truth = seeded
    sock = str(tmp_path / "fp.sock")
    cfg = tmp_path / "probe.yaml"
    cfg.write_text("flow:\n  idle_timeout_s: 600\n  active_timeout_s: 600\n"
                   f"capture:\n  backend: afxdp\nsupervisor:\n  stats_socket: {sock}\n")
    proc = subprocess.Popen(["ip", "netns", "exec", cap, sys.executable, "-m", "flowprobe",
                             "run", "-i", cap, "-c", str(cfg), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        doc = wait_for(lambda: os.path.exists(sock) and (
            d := stats(cap, sock)) and sum(r["state"] == "running" for r in d["readers"]) == 2 and d)
        assert len(doc["readers"]) == 2
        victim = doc["readers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: (r := stats(cap, sock)["readers"][0])["pid"] != victim
                 and r["state"] == "running")
        assert xdp_on(cap, cap)
        subprocess.run(["ip", "netns", "exec", snd, sys.executable,
                        str(SENDER), snd, str(path), "--pps", str(PPS)],
                       check=True, capture_output=True, timeout=60)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    records = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert synth.counts(records) == truth.counts()
    assert not xdp_on(cap, cap)
