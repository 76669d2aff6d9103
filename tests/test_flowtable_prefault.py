"""The flow slab mapped ahead of use by a helper thread (FlowTable's
prefault, which replay turns on; flowtable.c says why): the same records
as without it, the pages really resident ahead of the flows taken, and
the thread gone with the table."""
import dataclasses
import gc
import os
import time

import synth
from flowprobe.config import default_config
from flowprobe.probe.flowtable.table import FlowTable, iter_records
from flowprobe.probe.replay import replay_files

AHEAD_MB = 16          # flowtable.c PREFAULT_AHEAD


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_prefault_keeps_records_and_maps_the_slab_ahead(tmp_path):
    path = tmp_path / "synth.pcap"
    truth = synth.generate(path, flows=3000, packets=20000, seed=12)
    cfg = dataclasses.replace(default_config().flow, max_flows=1 << 20, dpi=False)
    records = {}
    for prefault in (False, True):
        out = []
        before_threads, before_rss = threads(), rss_anon_mb()
        table = FlowTable(cfg, lambda recs, n: out.extend(iter_records(recs, n)),
                          prefault=prefault)
        assert threads() - before_threads == (1 if prefault else 0)
        grown = 0.0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            grown = rss_anon_mb() - before_rss
            if not prefault or grown >= AHEAD_MB:
                break
            time.sleep(0.02)
        if prefault:   # the helper mapped the slab's first pages, no flow taken yet
            assert grown >= AHEAD_MB
        else:          # 117 MB of slab, untouched until flows are taken
            assert grown < AHEAD_MB / 2
        replay_files([str(path)], table, 512)
        table.flush()
        records[prefault] = sorted(tuple(sorted(r.items())) for r in out)
        assert synth.sum_records(out) == truth.expected()
        del table
        gc.collect()
        assert threads() == before_threads      # ft_free() joined the helper
    assert records[True] == records[False]
