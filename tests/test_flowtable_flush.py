"""The forced end of every flow (ft_flush): it walks the flow slab, not the
timer wheel, and resets the hash chains and the wheel only once every flow
is emitted (expire.c). These tests pin what that must keep: the same
records and counters as ending flows one by one, a flush left unfinished
(pending buffer full) that ft_ingest() completes before it takes a packet,
and a table that works as new afterwards."""
import dataclasses

import pytest

import synth
from flowprobe.config import default_config
from flowprobe.probe.flowtable._flowtable import ffi, lib
from flowprobe.probe.flowtable.table import FlowTable, iter_records
from flowprobe.probe.replay import replay_files

FLOWS = 3000

# 4096 slots for ~3000 flows: the chain heads are zeroed at once; 1 << 20:
# a sparse table, where the flush clears the heads of its flows instead.
MAX_FLOWS = (4096, 1 << 20)


def flow_cfg(**kw):
    return dataclasses.replace(default_config().flow, **kw)


def record_key(r):
    return tuple(sorted(r.items()))


def counters(stats):
    return {k: stats[k] for k in ("flows_created", "flows_expired", "records_emitted",
                                  "packets_emitted", "octets_emitted", "packets_accepted",
                                  "octets_accepted", "flows_active", "records_pending",
                                  "dpi")}


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("flush") / "synth.pcap"
    truth = synth.generate(path, flows=FLOWS, packets=20000, seed=11)
    return path, truth


def new_table(out, max_flows, dpi):
    cfg = flow_cfg(max_flows=max_flows, record_buffer=128, dpi=dpi, dpi_max_flows=256)
    return FlowTable(cfg, lambda recs, n: out.extend(iter_records(recs, n)), record_batch=64)


@pytest.mark.parametrize("dpi", [False, True])
@pytest.mark.parametrize("max_flows", MAX_FLOWS)
def test_flush_ends_every_flow_and_the_table_starts_over(capture, max_flows, dpi):
    """Each flow once, forced, conserved; the emptied table then rebuilds the
    same flows from the same packets (chains and wheel reset, none stale)."""
    path, truth = capture
    out = []
    table = new_table(out, max_flows, dpi)
    replay_files([str(path)], table, 512)
    active = table.stats()["flows_active"]
    assert active == len(truth.flows) <= max_flows
    table.flush()
    first = list(out)
    st = table.stats()
    assert synth.sum_records(first) == truth.expected()
    assert len(first) == active == st["flows_expired"]["forced_end"] == st["records_emitted"]
    assert st["flows_active"] == 0 and st["records_pending"] == 0
    assert st["dpi"]["pool_in_use"] == 0
    out.clear()
    replay_files([str(path)], table, 512)
    assert table.stats()["flows_active"] == active
    table.flush()
    assert sorted(map(record_key, out)) == sorted(map(record_key, first))
    st = table.stats()
    assert st["flows_created"] == 2 * active and st["flows_active"] == 0
    assert st["packets_emitted"] == st["packets_accepted"] == 2 * truth.packets
    assert st["dpi"]["pool_in_use"] == 0


@pytest.mark.parametrize("dpi", [False, True])
@pytest.mark.parametrize("max_flows", MAX_FLOWS)
def test_ingest_during_an_unfinished_flush_finishes_it_first(capture, max_flows, dpi):
    """A flush whose records were not all collected (the pending buffer
    full) leaves emitted flows in the chains and the wheel: ft_ingest() must
    end every flow first, so the packets after it start new flows. Records
    and counters equal those of a flush collected in full before the same
    packets."""
    path, _ = capture
    ref = []
    table = new_table(ref, max_flows, dpi)
    replay_files([str(path)], table, 512)
    table.flush()
    replay_files([str(path)], table, 512)
    table.flush()
    want = table.stats()

    out = []
    table = new_table(out, max_flows, dpi)
    replay_files([str(path)], table, 512)
    t = table._table
    active = table.stats()["flows_active"]
    assert lib.ft_flush(t) == active
    recs = ffi.new("struct ft_record[]", 16)
    n = lib.ft_expire(t, 0, recs, 16)
    out.extend(iter_records(recs, n))
    assert n == 16 and table.stats()["records_pending"] > 0  # the flush is paused
    # Mid-flush: the flows not yet ended are still held; a second ft_flush
    # carries the same flush on (a restart would emit the first ones again).
    held = table.stats()["flows_active"]
    assert 0 < held < active
    assert lib.ft_flush(t) == held
    assert lib.ft_set_timeouts(t, 10**9, 10**9, 10**9) < 0   # -EBUSY
    replay_files([str(path)], table, 512)
    table.flush()
    got = table.stats()
    assert sorted(map(record_key, out)) == sorted(map(record_key, ref))
    assert counters(got) == counters(want)
    assert got["flows_active"] == 0 and got["dpi"]["pool_in_use"] == 0
