"""Live `flowprobe run --workers 2` when its capture interface is deleted
(the test's own veth, in the test's own namespace), and what a reader killed
mid-stream is counted as losing (issue 13, items 4 and 6)."""
import os
import signal
import time

from test_supervisor import (Probe, collector, make_capture, nfdump_flows, ns,  # noqa: F401
                             probes, start, truth_flows, wait_until, PPS)
from conftest import _disable_ipv6

from flowprobe.errors import ExitCode
from flowprobe.probe import stats as fpstats

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of ``pid`` in seconds (/proc/PID/stat fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_over(pids, seconds=1.0):
    before = {p: cpu_seconds(p) for p in pids}
    time.sleep(seconds)
    return {p: (cpu_seconds(p) - before[p]) / seconds for p in pids}


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(x) for x in fh.read().split()]


def delete_capture_veth(pair):
    """Delete the test's veth pair (its capture end, inside its own namespace)."""
    pair.run(pair.cap_ns, "ip", "link", "del", pair.cap_if)


def recreate_capture_veth(pair):
    """The pair again, under the same names, as the veth fixture makes it."""
    pair.run(pair.cap_ns, "ip", "link", "add", pair.cap_if, "type", "veth", "peer", "name",
             pair.send_if, "netns", pair.send_ns)
    _disable_ipv6(pair.cap_ns, pair.cap_if)
    _disable_ipv6(pair.send_ns, pair.send_if)
    pair.run(pair.send_ns, "ethtool", "-K", pair.send_if, "tso", "off", "gso", "off", "tx", "off")
    pair.run(pair.cap_ns, "ethtool", "-K", pair.cap_if, "gro", "off")
    pair.run(pair.send_ns, "ip", "link", "set", pair.send_if, "up")
    pair.run(pair.cap_ns, "ip", "link", "set", pair.cap_if, "up")


def policy(name):
    # continues BASE_CFG's supervisor section
    return (f"  on_interface_gone: {name}\n  interface_wait_max_s: 0.5\n"
            "export: [ipfix://127.0.0.1:4739]\nflow:\n  idle_timeout_s: 600\n")


def test_interface_deleted_readers_export_and_wait_then_resume(ns, tmp_path, probes):
    """on_interface_gone: wait. Deleting the capture veth ends both readers at
    once (interface_gone, exit 7, every flow exported: no spin, nothing
    lost); stats shows them waiting; when the veth is back both readers
    restart and capture again; the collector gets exactly both captures."""
    path_a, truth_a = make_capture(tmp_path, "a", seed=61)
    path_b, truth_b = make_capture(tmp_path, "b", seed=62, flows=200, packets=2000)
    nf = tmp_path / "nf"
    with collector(ns, nf, 4739):
        p = start(probes, ns, tmp_path, policy("wait"))
        ns.send(path_a, pps=PPS)
        p.wait_accepted(truth_a.packets)
        readers = [r["pid"] for r in p.stats()["readers"]]
        t0 = time.monotonic()
        delete_capture_veth(ns)
        wait_until(lambda: len(p.events("waiting_for_interface")) == 2, 5, "both readers out")
        assert time.monotonic() - t0 < 2.0
        gone = p.events("interface_gone")
        assert sorted(e["pid"] for e in gone) == sorted(readers)
        assert {e["exit_code"] for e in p.events("reader_exited")} == {ExitCode.INTERFACE_GONE}
        # nothing spins: no reader process left, the supervisor near idle
        assert not [c for c in children(p.proc.pid) if c in readers]
        load = cpu_over([p.proc.pid], 2.0)[p.proc.pid]
        assert load < 0.10, f"supervisor uses {load:.0%} of a CPU while waiting"
        doc = p.stats()
        assert doc["running"] == 0
        assert [r["state"] for r in doc["readers"]] == ["waiting_interface"] * 2
        assert doc["lost"] == {"flows": 0, "packets": 0, "octets": 0}
        t = doc["total"]["table"]
        assert t["packets_accepted"] == t["packets_emitted"] == truth_a.packets
        assert t["flows_active"] == 0
        assert fpstats.records_exported(doc["total"]) == t["records_emitted"]

        recreate_capture_veth(ns)
        wait_until(lambda: p.stats()["running"] == 2, 10, "readers running again")
        assert len(p.events("interface_back")) == 2
        ns.send(path_b, pps=PPS)
        p.wait_accepted(truth_a.packets + truth_b.packets)
        final = p.stop()
    got, records = nfdump_flows(nf)
    want = truth_flows(truth_a, truth_b)
    assert got == want
    assert records == fpstats.records_exported(final)
    assert final["lost"] == {"flows": 0, "packets": 0, "octets": 0}


def test_interface_deleted_with_halt_policy_exports_and_exits_interface_gone(ns, tmp_path, probes):
    """on_interface_gone: halt. The readers export what they held, the probe
    halts with exit 7 (INTERFACE_GONE) within seconds, and the collector
    has exactly what was captured before the deletion."""
    path, truth = make_capture(tmp_path, "a", seed=63)
    nf = tmp_path / "nf"
    with collector(ns, nf, 4739):
        p = start(probes, ns, tmp_path, policy("halt"))
        ns.send(path, pps=PPS)
        p.wait_accepted(truth.packets)
        t0 = time.monotonic()
        delete_capture_veth(ns)
        code = p.wait(timeout=30)
        took = time.monotonic() - t0
    assert code == ExitCode.INTERFACE_GONE == 7, "".join(p.lines[-20:])
    assert took < 5.0
    assert p.events("interface_gone") and p.events("halting")
    (final,) = p.events("probe_stopped")
    assert final["exit_code"] == ExitCode.INTERFACE_GONE
    assert final["lost"] == {"flows": 0, "packets": 0, "octets": 0}
    assert final["table"]["packets_emitted"] == truth.packets
    got, records = nfdump_flows(nf)
    assert got == truth_flows(truth)
    assert records == fpstats.records_exported(final)


def test_an_idle_readers_heartbeat_age_stays_below_its_tick(ns, tmp_path, probes):
    """With no traffic at all, each reader's heartbeat age (time since its
    last loop turn) stays below the 100 ms tick plus scheduling slack."""
    p = start(probes, ns, tmp_path, "")
    ages = []
    for _ in range(20):
        ages += [r["heartbeat_age_s"] for r in p.stats()["readers"]]
        time.sleep(0.05)
    assert len(ages) == 40 and max(ages) < 0.3, ages
    p.stop()


def test_kill9_lost_plus_received_equals_the_truth(ns, tmp_path, probes):
    """kill -9 of a reader right after it exported flows (idle timeout 1 s):
    the flows and packets counted lost plus what the collector received are
    exactly the truth, so nothing already exported is counted lost."""
    path_a, truth_a = make_capture(tmp_path, "a", seed=64, flows=600, packets=6000)
    path_b, truth_b = make_capture(tmp_path, "b", seed=65, flows=200, packets=2000)
    nf = tmp_path / "nf"
    with collector(ns, nf, 4739):
        p = start(probes, ns, tmp_path, "export: [ipfix://127.0.0.1:4739]\n"
                  "flow:\n  idle_timeout_s: 1\n  active_timeout_s: 600\n")
        ns.send(path_a, pps=PPS)
        p.wait_accepted(truth_a.packets)
        # the victim exports its idle flows about 1 s after the last packet:
        # kill it as soon as it has exported some
        victim = p.stats()["readers"][0]
        exported = wait_until(
            lambda: fpstats.records_exported(p.stats()["readers"][0]["counters"]) or None,
            5, "the victim's first records")
        os.kill(victim["pid"], signal.SIGKILL)
        wait_until(lambda: p.stats()["readers"][0]["state"] == "running"
                   and p.stats()["readers"][0]["pid"] != victim["pid"], 10, "restart")
        ns.send(path_b, pps=PPS)
        p.wait_accepted(truth_a.packets + truth_b.packets)
        final = p.stop()
    got, records = nfdump_flows(nf)
    lost = final["lost"]
    received_packets = sum(v[0] for v in got.values())
    assert exported > 0
    assert received_packets + lost["packets"] == truth_a.packets + truth_b.packets
    assert records + lost["flows"] == len(truth_a.flows) + len(truth_b.flows)
    assert all(k in truth_flows(truth_a, truth_b) for k in got)


def test_link_down_is_not_gone_readers_stay_idle_and_resume(ns, tmp_path, probes):
    """The capture link set down (not deleted): each reader logs
    interface_down once and keeps running without spinning; set up again,
    it captures again, and every packet is exported."""
    path_a, truth_a = make_capture(tmp_path, "a", seed=66, flows=100, packets=1000)
    path_b, truth_b = make_capture(tmp_path, "b", seed=67, flows=100, packets=1000)
    nf = tmp_path / "nf"
    with collector(ns, nf, 4739):
        p = start(probes, ns, tmp_path, policy("wait"))
        readers = [r["pid"] for r in p.stats()["readers"]]
        ns.send(path_a, pps=PPS)
        p.wait_accepted(truth_a.packets)
        ns.run(ns.cap_ns, "ip", "link", "set", ns.cap_if, "down")
        wait_until(lambda: len(p.events("interface_down")) == 2, 5, "interface_down")
        load = cpu_over(readers, 1.0)
        assert all(v < 0.10 for v in load.values()), load
        assert [r["pid"] for r in p.stats()["readers"]] == readers
        assert p.stats()["running"] == 2 and not p.events("interface_gone")
        ns.run(ns.cap_ns, "ip", "link", "set", ns.cap_if, "up")
        time.sleep(0.5)
        ns.send(path_b, pps=PPS)
        p.wait_accepted(truth_a.packets + truth_b.packets)
        assert len(p.events("interface_down")) == 2
        final = p.stop()
    got, _ = nfdump_flows(nf)
    assert got == truth_flows(truth_a, truth_b)
    assert final["lost"] == {"flows": 0, "packets": 0, "octets": 0}


class XdpProbe(Probe):
    """The probe with the AF_XDP backend (skb mode: one reader on a veth)."""

    def write_config(self, body, hb=10.0, bpf=""):
        self.cfg.write_text("capture:\n  backend: afxdp\n  xdp_mode: skb\n"
                            f"supervisor:\n  heartbeat_timeout_s: {hb}\n"
                            f"  stats_socket: {self.sock}\n" + body)


def test_afxdp_interface_deleted_and_back_reattaches_and_resumes(ns, tmp_path, probes):
    """AF_XDP, on_interface_gone: wait. The reader gets no socket error, so
    its once-a-second name lookup finds the interface gone: it exports and
    exits 6; when the veth is back the supervisor attaches its XDP program
    to the new interface and the reader captures again, exactly."""
    path_a, truth_a = make_capture(tmp_path, "a", seed=68, flows=100, packets=1000)
    path_b, truth_b = make_capture(tmp_path, "b", seed=69, flows=100, packets=1000)
    nf = tmp_path / "nf"
    with collector(ns, nf, 4739):
        p = XdpProbe(ns, tmp_path, policy("wait"))
        probes.append(p)
        ns.send(path_a, pps=PPS)
        p.wait_accepted(truth_a.packets)
        delete_capture_veth(ns)
        wait_until(lambda: p.events("waiting_for_interface"), 5, "reader out")
        assert p.stats()["lost"]["packets"] == 0
        recreate_capture_veth(ns)
        wait_until(lambda: p.stats()["running"] == 1, 15, "reader running again")
        assert len(p.events("xdp_program_attached")) == 2
        ns.send(path_b, pps=PPS)
        p.wait_accepted(truth_a.packets + truth_b.packets)
        final = p.stop()
    got, _ = nfdump_flows(nf)
    assert got == truth_flows(truth_a, truth_b)
    assert final["lost"] == {"flows": 0, "packets": 0, "octets": 0}
