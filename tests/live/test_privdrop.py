"""`flowprobe run --user NAME`: the readers run as NAME with exactly
CAP_NET_RAW and CAP_NET_ADMIN, and still capture and export exactly.

NAME may not read the checkout (a clone under a mode-700 home, as root's
is): the tests deny it with a POSIX ACL, so once privileges are dropped
nothing may be loaded from the package's files, not even by a reader that
the supervisor restarts."""
import json
import os
import pwd
import signal
import subprocess
import sys
import time
import uuid

import pytest

import synth
from repo import REPO
from test_run import FLOWS, PACKETS, PPS, final_stats, stop_probe

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
WANT = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)


@pytest.fixture
def test_user():
    """A system user created for this test, removed at teardown, who may
    not enter the checkout (an ACL entry on it, removed at teardown)."""
    name = f"fp-test-{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                    "--shell", "/usr/sbin/nologin", name], check=True, timeout=30)
    try:
        subprocess.run(["setfacl", "-m", f"u:{name}:---", str(REPO)], check=True, timeout=30)
        try:
            yield pwd.getpwnam(name)
        finally:
            subprocess.run(["setfacl", "-x", f"u:{name}", str(REPO)], check=False, timeout=30)
    finally:
        subprocess.run(["userdel", name], check=False, timeout=30)


def test_user_cannot_read_the_checkout(test_user):
    """The fixture's premise: the dropped user cannot read the package."""
    probe = subprocess.run(["setpriv", f"--reuid={test_user.pw_uid}", f"--regid={test_user.pw_gid}",
                            "--clear-groups", "cat", str(REPO / "__init__.py")],
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr


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


def read_until(proc, lines: list[str], event: str, count: int, timeout: float) -> int:
    """Read the probe's stderr into `lines` until `event` has been seen
    `count` times in all of them, or `timeout` passes; the count seen."""
    deadline = time.monotonic() + timeout
    seen = sum(f'"{event}"' in x for x in lines)
    while seen < count and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        seen += f'"{event}"' in line
    return seen


def test_reader_restarted_after_the_drop(veth, tmp_path, test_user):
    """A reader killed after the drop is restarted as the user, from what
    the supervisor has loaded: the checkout is unreadable to it."""
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(f"supervisor:\n  workers: 2\n  stats_socket: {tmp_path}/fp.sock\n")
    tmp_path.chmod(0o755)
    proc = subprocess.Popen(
        veth.argv(veth.cap_ns, sys.executable, "-m", "flowprobe", "run", "-i", veth.cap_if,
                  "-c", str(cfg), "--user", test_user.pw_name),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert read_until(proc, lines, "reader_started", 2, 20) == 2, "".join(lines)
        sup = next(p for p in [proc.pid, *children(proc.pid)]
                   if "flowprobe" in open(f"/proc/{p}/cmdline").read())
        victim = children(sup)[0]
        os.kill(victim, signal.SIGKILL)
        assert read_until(proc, lines, "reader_started", 3, 20) == 3, "".join(lines)
        readers = children(sup)
        assert len(readers) == 2 and victim not in readers
        for pid in readers:
            st = proc_status(pid)
            assert {int(x) for x in st["Uid"].split()} == {test_user.pw_uid}
            assert int(st["CapEff"], 16) == WANT, (pid, st["CapEff"])
        assert not any('"reader_setup_failed"' in x for x in lines), "".join(lines)
    finally:
        if proc.poll() is None:
            stop_probe(proc)


def test_run_user_unknown_is_config_error(veth):
    r = subprocess.run(veth.argv(veth.cap_ns, sys.executable, "-m", "flowprobe", "run",
                                 "-i", veth.cap_if, "--user", "fp-no-such-user-x"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "no such user" in r.stderr
