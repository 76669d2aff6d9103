"""A capture file that shrinks while it is read (issue 13, item 1).

The mmap reader checks the file's size before each batch and window, and
survives the SIGBUS of a page cut off under it (in the walk, or in the flow
engine reading a batch): reading stops with CaptureShrunkError after every
packet before the cut, and ``replay`` exports the flows read so far, prints
the summary, logs ``capture_truncated`` and exits INPUT_TRUNCATED.
The SIGBUS cases run in a child process: before the fix they killed it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap

import pytest

from flowprobe.config.loader import default_config
from flowprobe.driver import pcapfile as pf
from flowprobe.driver.pcapfile import CaptureShrunkError, open_capture
from flowprobe.errors import ExitCode
from flowprobe.probe.flowtable.table import FlowTable
from flowprobe.probe.replay import replay_files

import synth

REC_HDR = 16


def record_ends(path):
    """File offset just past each record of a classic little-endian pcap."""
    blob = open(path, "rb").read()
    ends, off = [], 24
    while off + REC_HDR <= len(blob):
        caplen = int.from_bytes(blob[off + 8:off + 12], "little")
        off += REC_HDR + caplen
        ends.append(off)
    return ends


@pytest.fixture
def capture(tmp_path):
    path = tmp_path / "c.pcap"
    synth.generate(str(path), flows=300, packets=20_000, seed=3, gap_us=1000, truth=False)
    return path


def child(code: str, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60, env=env)


def test_shrink_between_batches_delivers_every_packet_before_the_cut(capture):
    """A file cut between two batches: every record wholly before the cut
    is delivered, then CaptureShrunkError (not a silent end of file)."""
    ends = record_ends(capture)
    cut = ends[9000] + 7                      # inside record 9001
    keep, addr = pf.alloc_pkt_array(1000)
    got = 0
    with open_capture(capture) as cf:
        got += cf.read_into(addr, 1000)
        os.truncate(capture, cut)
        with pytest.raises(CaptureShrunkError, match="shrank from .* to %d bytes" % cut):
            while n := cf.read_into(addr, 1000):
                got += n
        assert got == 9001
        assert cf.stats()["truncated_records"] == 1
        with pytest.raises(CaptureShrunkError):   # sticky
            cf.read_into(addr, 1000)


def test_shrink_at_a_record_boundary_is_still_an_error(capture):
    """A cut exactly at a record's end is reported, not taken for the end."""
    ends = record_ends(capture)
    keep, addr = pf.alloc_pkt_array(1000)
    got = 0
    with open_capture(capture) as cf:
        got += cf.read_into(addr, 1000)
        os.truncate(capture, ends[4999])
        with pytest.raises(CaptureShrunkError):
            while n := cf.read_into(addr, 1000):
                got += n
    assert got == 5000


def test_sigbus_in_the_flow_engine_is_survived(capture):
    """The file is cut after a batch was handed out and before the flow
    engine reads it (the SIGBUS of the mapped pages past the new end): the
    process lives, the next read raises CaptureShrunkError."""
    proc = child(f"""
        import os
        from flowprobe.config.loader import default_config
        from flowprobe.driver.pcapfile import CaptureShrunkError, open_capture
        from flowprobe.probe.flowtable.table import FlowTable
        table = FlowTable(default_config().flow)
        batch = table.packet_batch(8192)
        with open_capture({str(capture)!r}) as cf:
            n = cf.read_into(batch.address, batch.cap)
            os.truncate({str(capture)!r}, 4096)
            table.ingest(cf.linktype, batch, n)   # reads the cut pages
            try:
                cf.read_into(batch.address, batch.cap)
            except CaptureShrunkError as exc:
                print("shrunk", n, exc.reason)
    """, {"FLOWPROBE_PCAP_WINDOW": "4m"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("shrunk 8192 the file shrank from")


def test_sigbus_in_the_walk_stops_before_the_cut_record(capture):
    """The window is mapped, the file is cut, and the walk reads record
    headers from pages past the new end: no packet from past the cut."""
    ends = record_ends(capture)
    proc = child(f"""
        import os
        from flowprobe.driver import pcapfile as pf
        from flowprobe.driver._pcapfile import lib
        from flowprobe.driver.pcapfile import CaptureShrunkError, open_capture
        keep, addr = pf.alloc_pkt_array(20000)
        with open_capture({str(capture)!r}) as cf:
            os.truncate({str(capture)!r}, 8192)
            lib.pf_test_skip_fstat(cf._reader)   # as if cut after the fstat
            n = cf.read_into(addr, 20000)
            try:
                cf.read_into(addr, 20000)
            except CaptureShrunkError as exc:
                print(n, exc.reason)
    """, {"FLOWPROBE_PCAP_WINDOW": "4m"})
    assert proc.returncode == 0, proc.stderr
    n = int(proc.stdout.split()[0])
    starts = [24] + ends[:-1]
    # every record whose header lies wholly before the cut (a page boundary)
    assert n == sum(1 for s in starts if s + 16 <= 8192)
    assert "to 8192 bytes while being read" in proc.stdout


def test_a_sigbus_not_in_a_capture_mapping_still_kills(tmp_path, capture):
    """The handler only covers the reader's own mappings: any other SIGBUS
    ends the process as before."""
    other = tmp_path / "other.bin"
    other.write_bytes(b"x" * 65536)
    proc = child(f"""
        import mmap, os
        from flowprobe.driver.pcapfile import open_capture
        cf = open_capture({str(capture)!r})      # installs the handler
        f = open({str(other)!r}, "rb")
        m = mmap.mmap(f.fileno(), 65536, prot=mmap.PROT_READ)
        os.truncate({str(other)!r}, 0)
        print(m[40000])
    """)
    assert proc.returncode == -signal.SIGBUS


def test_replay_files_exports_the_flows_before_the_cut(capture):
    """replay_files: the file cut after the first batch; the flows of the
    packets read before the cut are exported, the file counted as shrunk."""
    ends = record_ends(capture)
    records = []
    table = FlowTable(default_config().flow,
                      lambda recs, n: records.extend(recs[i].packets for i in range(n)))
    batches = []

    def cut_once():
        batches.append(1)
        if len(batches) == 1:
            os.truncate(capture, ends[2999] + 5)

    totals = replay_files([str(capture)], table, 1000, on_batch=cut_once)
    table.flush()
    assert totals["shrunk_files"] == 1 and totals["truncated_files"] == 1
    assert totals["packets_read"] == 3000
    assert sum(records) == 3000 == table.stats()["packets_accepted"]


def test_cli_replay_while_another_process_truncates(tmp_path):
    """A real concurrent cut: `truncate` runs while `flowprobe replay` is
    blocked writing its JSON lines to a full pipe. Exit INPUT_TRUNCATED,
    the capture_truncated warning, the summary, and the flows before the
    cut on stdout (packets conserved)."""
    path = tmp_path / "big.pcap"
    synth.generate(str(path), flows=2000, packets=200_000, seed=5, gap_us=1000, truth=False)
    ends = record_ends(path)
    cut = ends[len(ends) * 3 // 4] + 3
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowprobe", "replay", str(path), "--json",
         "--idle-timeout", "1", "--active-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, FLOWPROBE_PCAP_WINDOW="1m"))
    # JSON lines arrive: replay is running, soon blocked on the full pipe
    assert select.select([proc.stdout], [], [], 60)[0]
    subprocess.run(["truncate", "-s", str(cut), str(path)], check=True)
    out, err = (b.decode() for b in proc.communicate(timeout=120))
    lines = out.splitlines()
    assert proc.returncode == ExitCode.INPUT_TRUNCATED, err
    assert '"event": "capture_truncated"' in err and '"shrunk": true' in err
    assert "packets read" in err and "(shrank while read: 1)" in err
    packets = sum(json.loads(line)["packetDeltaCount"] for line in lines if line.strip())
    read = int(err.split("packets read")[1].split()[0].replace(",", ""))
    assert 0 < read <= len(ends) * 3 // 4 + 1
    assert packets == read
