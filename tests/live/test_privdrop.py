"""`flowprobe run --user NAME`: the readers run as NAME with exactly
CAP_NET_RAW and CAP_NET_ADMIN, and still capture and export exactly."""
import json
import pwd
import subprocess
import sys
import time
import uuid

import pytest

import synth
from test_run import FLOWS, PACKETS, PPS, final_stats, stop_probe

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
WANT = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)


@pytest.fixture
def test_user():
    """A system user created for this test, removed at teardown."""
    name = f"fp-test-{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                    "--shell", "/usr/sbin/nologin", name], check=True, timeout=30)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, timeout=30)


def proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def children(pid: int) -> list[int]:
    out = []
    for task in open(f"/proc/{pid}/task/{pid}/children").read().split():
        out.append(int(task))
    return out


def test_run_user_drops_privileges_and_captures(veth, tmp_path, test_user):
    truth_path = tmp_path / "live.pcap"
    truth = synth.generate(truth_path, flows=FLOWS, packets=PACKETS, seed=7,
                           mix={"fragmented": 0.0})
    cfg = tmp_path / "probe.yaml"
    cfg.write_text("flow:\n  idle_timeout_s: 600\n  active_timeout_s: 600\n"
                   "capture:\n  block_timeout_ms: 5\n"
                   f"supervisor:\n  workers: 2\n  stats_socket: {tmp_path}/fp.sock\n")
    tmp_path.chmod(0o755)
    proc = subprocess.Popen(
        veth.argv(veth.cap_ns, sys.executable, "-m", "flowprobe", "run", "-i", veth.cap_if,
                  "-c", str(cfg), "--json", "--user", test_user.pw_name),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, started = [], 0
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and started < 2:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            started += "reader_started" in line
        assert started == 2, "flowprobe run did not start:\n" + "".join(lines)
        dropped = [json.loads(x) for x in lines if '"privileges_dropped"' in x]
        assert dropped and dropped[0]["user"] == test_user.pw_name
        # the supervisor: the process itself, or its child if ip netns exec forked
        sup = next(p for p in [proc.pid, *children(proc.pid)]
                   if "flowprobe" in open(f"/proc/{p}/cmdline").read())
        readers = children(sup)
        assert len(readers) == 2
        for pid in [sup, *readers]:
            st = proc_status(pid)
            uid = {int(x) for x in st["Uid"].split()}
            gid = {int(x) for x in st["Gid"].split()}
            assert uid == {test_user.pw_uid}, (pid, st["Uid"])
            assert gid == {test_user.pw_gid}, (pid, st["Gid"])
            assert st["Groups"].split() == [str(test_user.pw_gid)]
            assert int(st["CapEff"], 16) == WANT, (pid, st["CapEff"])
            assert int(st["CapPrm"], 16) == WANT, (pid, st["CapPrm"])
            assert int(st["CapBnd"], 16) == WANT, (pid, st["CapBnd"])
            assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
            assert st["NoNewPrivs"] == "1", pid
        sent = veth.send(truth_path, pps=PPS)
        assert sent["sent"] == truth.frames and sent["errors"] == 0
        time.sleep(0.5)
    finally:
        if proc.poll() is None:
            out, err = stop_probe(proc)
        else:
            out, err = proc.communicate()
            pytest.fail("probe exited early:\n" + "".join(lines) + err[-3000:])
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert synth.counts(records) == truth.counts()
    stats = final_stats(err)
    assert stats["ring"]["kernel_drops"] == 0
    assert stats["table"]["packets_accepted"] == truth.packets


def test_run_user_unknown_is_config_error(veth):
    r = subprocess.run(veth.argv(veth.cap_ns, sys.executable, "-m", "flowprobe", "run",
                                 "-i", veth.cap_if, "--user", "fp-no-such-user-x"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "no such user" in r.stderr
