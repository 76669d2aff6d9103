"""Heartbeat slots: shared memory written by a forked reader, read by the supervisor."""
import os

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
