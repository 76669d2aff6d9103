"""Supervisor building blocks without a live interface: shared-memory slots
across a real fork, counters, reader layout, reload classification, the
control pipe, systemd notify over a real socket, CLI errors."""
import os
import socket
import subprocess
import sys

import pytest

from flowprobe.config import Config, ConfigError, load_config_text
from flowprobe.config.schema import parse_cpulist, parse_interfaces
from flowprobe.probe import heartbeat, stats
from flowprobe.probe.readerproc import Control, ReaderProcess, ReaderSpec
from flowprobe.probe.reader import export_items
from flowprobe.probe.sdnotify import Notifier
from flowprobe.probe.supervisor import Supervisor, needs_new_rings


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "flowprobe", *args],
                          capture_output=True, text=True, timeout=60)


def test_slot_written_by_a_forked_child_is_read_by_the_parent():
    """A child's heartbeat, state and stats snapshot reach the parent through
    the shared mapping made before the fork."""
    table = heartbeat.SlotTable(4)
    pid = os.fork()
    if pid == 0:
        slot = table[2]
        slot.reset(os.getpid(), 7)
        slot.publish({"table": {"packets_accepted": 42}})
        slot.set_state(heartbeat.RUNNING)
        os._exit(0)
    os.waitpid(pid, 0)
    slot = table[2]
    h = slot.header()
    assert (h["pid"], h["state"], h["generation"]) == (pid, heartbeat.RUNNING, 7)
    assert slot.snapshot() == {"table": {"packets_accepted": 42}}
    assert slot.beat_age_s() < 60
    assert table[1].snapshot() is None
    slot.clear()
    assert slot.header()["pid"] == 0


def test_oversized_snapshot_is_replaced_not_overflowed():
    """A snapshot larger than the slot becomes {"truncated": true}."""
    table = heartbeat.SlotTable(2)
    table[0].publish({"x": "y" * heartbeat.SLOT_BYTES})
    assert table[0].snapshot() == {"truncated": True}
    assert table[1].snapshot() is None


def snap(accepted, emitted, active, exported=0):
    return {"ring": {"kernel_packets": accepted, "kernel_drops": 1, "freeze_q_cnt": 0},
            "table": {"packets_accepted": accepted, "packets_emitted": emitted,
                      "octets_accepted": accepted * 100, "octets_emitted": emitted * 100,
                      "flows_active": active, "skipped": {"non_ip": 2},
                      "flows_expired": {"idle_timeout": 3}},
            "exporters": {"ipfix+udp://x": {"records_exported": exported, "records_not_sent": 1}},
            "exporters_retired": {"ipfix+udp://x": {"records_exported": 5}}}


def test_counters_normalize_sum_and_measure_what_a_reader_holds():
    """Counters sum per key across readers; held = accepted - emitted."""
    a, b = stats.counters(snap(10, 4, 3, exported=2)), stats.counters(snap(20, 20, 0, 6))
    assert a["exporters"]["ipfix+udp://x"]["records_exported"] == 7   # current + retired
    assert stats.held(a) == {"flows": 3, "packets": 6, "octets": 600}
    tot = stats.total([a, b])
    assert tot["ring"] == {"packets": 30, "drops": 2, "freezes": 0}
    assert tot["table"]["skipped"] == {"non_ip": 4}
    assert tot["table"]["flows_expired"] == {"idle_timeout": 6}
    assert stats.records_exported(tot) == 2 + 5 + 6 + 5
    assert stats.retired(a)["table"]["flows_active"] == 0


def test_cpulist_and_interface_lists():
    """cpus takes Linux cpulist syntax; interfaces are comma-separated."""
    assert parse_cpulist("0-2,5, 7") == [0, 1, 2, 5, 7]
    assert parse_interfaces("a, b,a") == ["a", "b"]
    with pytest.raises(ConfigError) as info:
        load_config_text("supervisor:\n  cpus: 3-1\n  workers: 0\n", "t")
    assert [m.split(" (")[0] for m in info.value.messages] == ["supervisor.cpus",
                                                             "supervisor.workers"]


def test_one_slot_per_interface_and_worker_with_cpus_and_fanout_groups():
    """Slots = interfaces x workers; CPUs round robin; one fanout group per
    interface, distinct across interfaces."""
    cfg = load_config_text("capture:\n  interface: a,b\n"
                           "supervisor:\n  workers: 3\n  cpus: '0'\n", "t")
    sup = Supervisor(cfg)
    specs = sup.specs(cfg)
    assert [(s.index, s.iface, s.worker) for s in specs] == [
        (0, "a", 0), (1, "a", 1), (2, "a", 2), (3, "b", 0), (4, "b", 1), (5, "b", 2)]
    assert {s.cpu for s in specs} == {0}
    ga = {s.fanout_group for s in specs if s.iface == "a"}
    gb = {s.fanout_group for s in specs if s.iface == "b"}
    assert len(ga) == len(gb) == 1 and ga != gb and 0 not in ga | gb
    assert sup.specs(cfg) == specs          # stable across reloads


def test_each_reader_gets_its_own_observation_domain():
    """Export items carry base + reader index as the observation domain."""
    cfg = load_config_text("export:\n  - url: ipfix://127.0.0.1:4739\n"
                           "    observation_domain: 40\n", "t")
    assert [i.observation_domain for i in export_items(cfg, ["netflow9://h"], 3)] == [43, 4]


def test_reload_classification():
    """Filter, timeouts and exporters reload in place; ring geometry,
    interfaces, workers and CPUs need new readers."""
    base = Config()
    inplace = load_config_text("capture:\n  filter: udp\nflow:\n  idle_timeout_s: 3\n"
                               "export: [ipfix://127.0.0.1:1]\n", "t")
    assert not needs_new_rings(base, inplace)
    for text in ("capture:\n  block_count: 8\n", "capture:\n  interface: x\n",
                 "supervisor:\n  workers: 3\n", "supervisor:\n  cpus: '1'\n",
                 "flow:\n  max_flows: 10\n"):
        assert needs_new_rings(base, load_config_text(text, "t")), text


def test_control_pipe_carries_configs_in_order():
    """Configs written by the supervisor arrive whole and in order, even split."""
    r = ReaderProcess(ReaderSpec(0, "x", 0, None, 0))
    rfd, r.control_fd = os.pipe()
    ctl = Control(rfd)
    assert ctl.poll() == []
    cfg = load_config_text("flow:\n  idle_timeout_s: 3\n", "t")
    assert r.send_config(2, cfg) and r.send_config(3, Config())
    assert ctl.poll() == [(2, cfg), (3, Config())]
    r.close_control()
    assert ctl.poll() == [] and ctl.closed
    os.close(rfd)


def test_sd_notify_sends_datagrams(tmp_path, monkeypatch):
    """With NOTIFY_SOCKET set, READY/STATUS arrive as one datagram; the
    watchdog interval is half of WATCHDOG_USEC."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "4000000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        n = Notifier()
        assert n.notify("READY=1", "STATUS=2/2 readers running")
        assert srv.recv(4096) == b"READY=1\nSTATUS=2/2 readers running"
        assert n.watchdog_interval_s() == 2.0
        n.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier().notify("READY=1")


def test_run_config_error_exits_2_with_every_message(tmp_path):
    """A bad config: exit 2, each problem with its path and line, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("supervisor:\n  workers: many\nexport:\n  - udpp://x\n")
    proc = run_cli("run", "-i", "lo", "-c", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "supervisor.workers (line 2)" in proc.stderr
    assert "export[0].url (line 4)" in proc.stderr


def test_run_without_interface_exits_2():
    """No interface anywhere: exit 2 naming capture.interface."""
    proc = run_cli("run", "--stats-socket", "")
    assert proc.returncode == 2
    assert "capture.interface" in proc.stderr


def test_stats_without_a_running_probe_is_one_line(tmp_path):
    """`flowprobe stats` on a socket nobody serves: one error line, exit 1."""
    proc = run_cli("stats", "--socket", str(tmp_path / "none.sock"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot reach a running flowprobe" in proc.stderr


def test_stats_render_has_reader_and_total_lines():
    """The human table has one line per reader and a total."""
    c = stats.counters(snap(10, 4, 3, exported=2))
    doc = {"pid": 1, "generation": 1, "uptime_s": 1, "running": 1, "restarts": 0,
           "lost": {"flows": 0, "packets": 0},
           "readers": [{"index": 0, "iface": "x", "cpu": 0, "pid": 9, "state": "running",
                        "counters": c}], "total": stats.total([c])}
    lines = stats.render(doc).splitlines()
    assert lines[2].startswith("0 x cpu0 pid9 running") and lines[3].startswith("total ")
    assert lines[3].split()[-2] == "7"


def test_set_timeouts_reslots_live_flows_without_ending_them(tmp_path):
    """ft_set_timeouts (SIGHUP reload): flows held under a 600 s idle timer
    expire as idle at the next clock advance once the timer is 1 s; none is
    lost or ended early by the change itself."""
    import dataclasses
    sys.path.insert(0, os.path.dirname(__file__))
    import synth
    from flowprobe.config import default_config
    from flowprobe.probe.flowtable.table import FlowTable, iter_records
    from flowprobe.probe.replay import replay_files
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


def test_a_claimed_slot_is_never_taken_for_a_decades_old_heartbeat():
    """A slot cleared after a reader died, then claimed by its successor,
    never reads as stale: the claim writes the beat before the pid, and a
    zero beat counts as not yet started (regression: a healthy reader was
    killed with heartbeat_age_s == seconds since boot)."""
    cfg = load_config_text("capture:\n  interface: a\nsupervisor:\n  workers: 1\n"
                           "  heartbeat_timeout_s: 1\n", "t")
    sup = Supervisor(cfg)
    child = subprocess.Popen(["sleep", "30"])
    try:
        import time
        r = ReaderProcess(sup.specs(cfg)[0], pid=child.pid, started_at=time.monotonic())
        sup.readers = [r]
        slot = sup.slots[0]
        slot.clear()
        # The window the old claim left open: pid written, beat still zero.
        import struct
        struct.pack_into("<qII", slot._buf, slot._off, child.pid, heartbeat.STARTING, 1)
        sup.check_heartbeats()
        with pytest.raises(subprocess.TimeoutExpired):   # a SIGKILL lands within this
            child.wait(timeout=0.5)
        slot.clear()
        slot.reset(child.pid, 1)
        assert slot.beat_age_s() < 1
        sup.check_heartbeats()
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)
    finally:
        child.kill()
        child.wait()


def test_each_reader_writes_its_own_export_file():
    """File destinations get the reader index before the extension (readers
    sharing one file would rename over each other's); others are shared."""
    from flowprobe.probe.reader import per_reader_url
    assert per_reader_url("ipfix+file:///var/lib/f/flows.ipfix", 3) == \
        "ipfix+file:///var/lib/f/flows.r3.ipfix"
    assert per_reader_url("ipfix+file:///tmp/x", 0) == "ipfix+file:///tmp/x.r0"
    assert per_reader_url("ipfix+file:///a.b/c", 1) == "ipfix+file:///a.b/c.r1"
    assert per_reader_url("ipfix://127.0.0.1:4739", 1) == "ipfix://127.0.0.1:4739"
    cfg = load_config_text("export:\n  - url: ipfix+file:///tmp/f.ipfix\n", "t")
    urls = {export_items(cfg, [], i)[0].url for i in range(2)}
    assert urls == {"ipfix+file:///tmp/f.r0.ipfix", "ipfix+file:///tmp/f.r1.ipfix"}
