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
from flowprobe.probe.flowtable._flowtable import lib
from flowprobe.probe.flowtable.table import FlowTable, iter_records
from flowprobe.probe.replay import replay_files

AHEAD_MB = 16          # flowtable.c PREFAULT_AHEAD


MAX_FLOWS = 1 << 20


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def slab_mb(table) -> float:
    """Resident MB of the table's flow slab (mincore, in C)."""
    got = lib.ft_test_slab_resident(table._table)
    assert got >= 0
    return got / 2**20


def settled_slab_mb(table, at_least: float) -> float:
    """The slab's resident MB, once it reached `at_least` (the helper is
    asynchronous) or after 5 s."""
    mb, deadline = 0.0, time.monotonic() + 5
    while time.monotonic() < deadline:
        mb = slab_mb(table)
        if mb >= at_least:
            break
        time.sleep(0.02)
    return mb


def test_prefault_keeps_records_and_maps_the_slab_ahead(tmp_path):
    """60,000 flows take 6.4 MB of the slab: the helper, asked again each
    2 MB, must have mapped 16 MB past them; without it the slab is mapped
    only as far as the flows went (huge pages: to the next 2 MB)."""
    path = tmp_path / "synth.pcap"
    truth = synth.generate(path, flows=60000, packets=70000, seed=12)
    taken_mb = 60000 * 112 / 2**20
    cfg = dataclasses.replace(default_config().flow, max_flows=MAX_FLOWS, dpi=False)
    records = {}
    for prefault in (False, True):
        out = []
        before_threads = threads()
        table = FlowTable(cfg, lambda recs, n: out.extend(iter_records(recs, n)),
                          prefault=prefault)
        assert threads() - before_threads == (1 if prefault else 0)
        if prefault:   # the helper mapped the slab's first pages, no flow taken yet
            assert settled_slab_mb(table, AHEAD_MB) >= AHEAD_MB
        else:          # untouched until flows are taken
            assert slab_mb(table) == 0
        # a pause per batch: the helper catches up with every ask, as it
        # does on a steady stream of new flows
        replay_files([str(path)], table, 2048, on_batch=lambda: time.sleep(0.01))
        if prefault:   # asked again as flows were taken, 16 MB past them
            assert settled_slab_mb(table, taken_mb + AHEAD_MB) >= taken_mb + AHEAD_MB
        else:
            assert taken_mb <= slab_mb(table) <= taken_mb + 2
        table.flush()
        records[prefault] = sorted(tuple(sorted(r.items())) for r in out)
        assert synth.sum_records(out) == truth.expected()
        del table
        gc.collect()
        assert threads() == before_threads      # ft_free() joined the helper
    assert records[True] == records[False]
