"""A reload that replaces the exporters never stalls capture: the old
ExportPipeline drains and closes in its own sender thread, bounded by the
drain timeout, while the reader keeps reading its ring into the new one,
and every record stays accounted for (handed = exported + not sent by
reason, old and new)."""
from __future__ import annotations

import socket
import threading
import time

import pytest

import flowprobe.probe.reader as reader_mod
import synth
from flowprobe.config import load_config_text
from flowprobe.driver.pcapfile import open_capture


class FileRing:
    """A capture ring stand-in: each block is the next batch of a capture
    file (read again from the start at its end). Counts packets handed out."""

    ifindex = 1
    block_capacity = 512

    def __init__(self, path):
        self.path = str(path)
        self.cap = open_capture(self.path)
        self.packets = 0
        self.blocks = 0
        self.dry = False               # set: the ring holds nothing more (shutdown)

    def next_block(self, address, cap, timeout_ms):
        if self.dry:
            return 0
        n = self.cap.read_into(address, min(cap, self.block_capacity))
        if n <= 0:                     # the file again (the old batch is done with)
            self.cap.close()
            self.cap = open_capture(self.path)
            n = self.cap.read_into(address, min(cap, self.block_capacity))
        self.packets += n
        self.blocks += 1
        time.sleep(0.001)              # a ring's pace, not a spin
        return n

    def release_block(self):
        return True

    def set_filter(self, expr):
        pass

    def stats(self):
        return {"packets": self.packets, "blocks": self.blocks}

    def close(self):
        self.cap.close()


def sink_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # held, never read
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def exact(st):
    """handed = exported + not sent (every reason) + not exportable, nothing pending."""
    assert st["records_pending"] == 0
    assert sum(st["records_not_sent_by"].values()) == st["records_not_sent"]
    assert st["records_handed"] == (st["records_exported"] + st["records_not_sent"]
                                    + st["records_not_exportable"])


def test_reload_drains_old_exporter_while_the_ring_is_read(tmp_path, monkeypatch):
    """Old exporter paced at 2 msgs/s behind a full 64 KiB queue; the
    reload returns at once, the ring is read on during the old drain, the
    drain ends by its deadline with the rest counted as queue_timeout, and
    both exporters' equations hold."""
    path = tmp_path / "c.pcap"
    synth.generate(path, flows=400, packets=4000, seed=5)   # a 45 KB expiry batch
    ring = FileRing(path)
    monkeypatch.setattr(reader_mod, "open_ring", lambda *a, **k: ring)
    monkeypatch.setattr(reader_mod, "linktype_of", lambda iface: 1)
    monkeypatch.setattr(reader_mod, "interface_index", lambda iface: FileRing.ifindex)
    s_old, port_old = sink_port()
    s_new, port_new = sink_port()
    base = "supervisor:\n  graceful_timeout_s: 4\n"     # drain timeout 2 s
    cfg_old = load_config_text(
        base + f"export:\n  - url: ipfix://127.0.0.1:{port_old}\n    rate_msgs_s: 2\n"
        "    queue_bytes: 65536\n", "old")
    cfg_new = load_config_text(
        base + f"export:\n  - url: ipfix://127.0.0.1:{port_new}\n    rate_msgs_s: 0\n", "new")
    rd = reader_mod.Reader(cfg_old, "fake0")
    assert rd.drain_timeout_s == 2.0
    state = {"reload_at": None, "reload_s": None, "packets_at_reload": None}
    want_reload = threading.Event()

    def between_blocks(now):
        if want_reload.is_set() and state["reload_at"] is None:
            state["packets_at_reload"] = ring.packets
            t = time.monotonic()
            state["changed"] = rd.reload(cfg_new)
            state["reload_s"] = time.monotonic() - t
            state["reload_at"] = time.monotonic()
            state["old"] = getattr(rd, "retiring", [None])[0] if getattr(rd, "retiring", None) else None

    result = {}
    th = threading.Thread(target=lambda: result.setdefault(
        "rc", rd.run(between_blocks=between_blocks, stats_interval_s=3600)), daemon=True)
    th.start()
    try:
        # the old queue fills (paced at 2 msgs/s, every tick expires every flow)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            st = rd.exporters.stats() if rd.exporters is not None else {}
            if any(v["records_not_sent_by"].get("queue_full") for v in st.values()):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the old exporter's queue never filled")
        want_reload.set()
        end = time.monotonic() + 10
        while state["reload_at"] is None and time.monotonic() < end:
            time.sleep(0.01)
        assert state["reload_at"] is not None, "no reload"
        assert state["changed"] == ["export"]
        assert state["reload_s"] < 0.5, f"reload blocked {state['reload_s']:.2f} s"
        old = state["old"]
        assert old is not None and not old.finished()
        # capture goes on while the old pipeline still drains
        while not old.finished() and ring.packets < state["packets_at_reload"] + 20_000:
            time.sleep(0.01)
        assert ring.packets >= state["packets_at_reload"] + 20_000, \
            "the ring was not read during the old exporter's drain"
        # ... and the drain is bounded: 2 s (plus the close) after the reload
        old.join(grace_s=5.0)
        assert old.finished()
        assert time.monotonic() - state["reload_at"] < 2.0 + 5.0
    finally:
        ring.dry = True
        rd.stopping = True
        th.join(30)
        s_old.close()
        s_new.close()
    assert not th.is_alive() and result.get("rc") == 0
    final = rd.final_stats
    (old_name, old_st), = final["exporters_retired"].items()
    (new_name, new_st), = final["exporters"].items()
    assert str(port_old) in old_name and str(port_new) in new_name
    exact(old_st)
    exact(new_st)
    assert old_st["records_not_sent_by"].get("queue_full", 0) > 0
    assert old_st["records_not_sent_by"].get("queue_timeout", 0) > 0   # drain ran out of time
    assert new_st["records_exported"] > 0
    table = final["table"]
    assert table["packets_accepted"] == ring.packets
    assert table["records_emitted"] == old_st["records_handed"] + new_st["records_handed"]
