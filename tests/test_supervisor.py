"""The supervisor without a live interface: reader layout and heartbeat checks."""
import struct
import subprocess
import time

import pytest

from flowprobe.config import load_config_text
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
