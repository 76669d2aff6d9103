"""The supervisor without a live interface: reader layout and heartbeat checks."""
import struct
import subprocess
import time

import pytest

from flowprobe.config import load_config_text
from flowprobe.errors import ExitCode
from flowprobe.probe import heartbeat
from flowprobe.probe.readerproc import ReaderProcess
from flowprobe.probe.supervisor import Supervisor


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
        r = ReaderProcess(sup.specs(cfg)[0], pid=child.pid, started_at=time.monotonic())
        sup.readers = [r]
        slot = sup.slots[0]
        slot.clear()
        # The window the old claim left open: pid written, beat still zero.
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


def _gone_supervisor(policy):
    cfg = load_config_text("capture:\n  interface: fpnothere9\nsupervisor:\n  workers: 1\n"
                           f"  on_interface_gone: {policy}\n  interface_wait_max_s: 1\n", "t")
    sup = Supervisor(cfg)
    r = ReaderProcess(sup.specs(cfg)[0], pid=4242, started_at=time.monotonic())
    sup.readers = [r]
    return sup, r


def test_interface_gone_with_wait_looks_again_at_doubling_intervals_and_loses_nothing():
    """A reader exiting INTERFACE_GONE (7) is not a failure: nothing lost, no
    restart counted, the slot waits; looks for the interface double their
    interval up to interface_wait_max_s."""
    sup, r = _gone_supervisor("wait")
    sup.slots[0].reset(4242, 1)
    sup.slots[0].beat((5, 50, 5000))       # what it held before exporting
    sup.reader_exited(r, ExitCode.INTERFACE_GONE)
    assert sup.halt_code is None and not r.alive
    assert r.lost == {"flows": 0, "packets": 0, "octets": 0} and r.restarts == 0
    assert r.restart_at is None and r.iface_check_at is not None
    waits = []
    for _ in range(5):
        sup.look_for_interface(r, time.monotonic())
        waits.append(r.iface_wait_s)
    assert waits == [0.4, 0.8, 1.0, 1.0, 1.0]
    from flowprobe.probe.stats import document
    doc = document(sup.readers, sup.slots, pid=1, generation=1, uptime_s=1)
    assert doc["running"] == 0 and doc["readers"][0]["state"] == "waiting_interface"


def test_a_killed_reader_loses_what_it_held_at_its_last_beat():
    """kill -9: lost is the held counters of the last beat, not a counter
    snapshot that may predate flows it exported since."""
    sup, r = _gone_supervisor("wait")
    sup.slots[0].reset(4242, 1)
    sup.slots[0].publish({"table": {"flows_active": 900, "packets_accepted": 9000,
                                    "packets_emitted": 0, "octets_accepted": 1,
                                    "octets_emitted": 0}})
    sup.slots[0].beat((12, 34, 5600))
    sup.reader_exited(r, -9)
    assert r.lost == {"flows": 12, "packets": 34, "octets": 5600}


def test_interface_gone_with_halt_stops_with_interface_gone():
    """on_interface_gone: halt -> the probe stops with INTERFACE_GONE (7)."""
    sup, r = _gone_supervisor("halt")
    sup.reader_exited(r, ExitCode.INTERFACE_GONE)
    assert sup.halt_code == ExitCode.INTERFACE_GONE
