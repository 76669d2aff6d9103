"""Heartbeat slots: shared memory written by a forked reader, read by the supervisor."""
import os
import time

from flowprobe.probe import heartbeat


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


def test_a_beat_is_never_read_torn_while_the_reader_beats_flat_out():
    """A reader beating as fast as it can (a busy loop) and the supervisor
    reading at the same time: every age read is small and never negative.
    struct.pack_into zeroed the word before writing it: 27,243 of 300,000
    reads here saw beat 0 (age = uptime), which the supervisor took for a
    reader not yet started and killed after the 30 s start-up grace."""
    table = heartbeat.SlotTable(2)
    slot = table[1]
    slot.reset(os.getpid(), 1)
    pid = os.fork()
    if pid == 0:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            slot.beat((3, 4, 5))
        os._exit(0)
    try:
        ages = [slot.beat_age_s() for _ in range(300_000)]
    finally:
        os.waitpid(pid, 0)
    bad = [a for a in ages if not 0 <= a < 1.0]
    assert slot.header()["beat_ns"] != 0
    assert not bad, f"{len(bad)} torn reads of {len(ages)}, e.g. {bad[:5]}"
    assert slot.held() == {"flows": 3, "packets": 4, "octets": 5}


def test_an_idle_beat_measures_time_since_the_last_beat():
    """The age is the time since the last beat, not since the reset."""
    table = heartbeat.SlotTable(1)
    slot = table[0]
    slot.reset(os.getpid(), 1)
    time.sleep(0.3)
    assert slot.beat_age_s() >= 0.3
    slot.beat()
    assert slot.beat_age_s() < 0.1
    slot.beat((7, 70, 700))
    assert slot.held() == {"flows": 7, "packets": 70, "octets": 700}
    slot.reset(os.getpid(), 2)
    assert slot.held() == {"flows": 0, "packets": 0, "octets": 0}
