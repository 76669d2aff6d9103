"""Probe counters: normalized, summed, rendered; `flowprobe stats` without a probe."""
import subprocess
import sys

from flowprobe.probe import stats


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "flowprobe", *args],
                          capture_output=True, text=True, timeout=60)


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
