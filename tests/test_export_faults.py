"""Exact export accounting under faults: for every exporter, records handed
to it = records exported + records not sent (by reason), and what the real
collector (the built-in `flowprobe collect`) decoded agrees with
"exported". The tests go through the ExportPipeline (queue + sender
thread) that `flowprobe run` uses; the last one through an exporter alone,
as `replay` uses it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from collectors import free_port
from flowprobe.exporters.exporter import build_exporters
from flowprobe.exporters.pipeline import ExportPipeline
from records import FIXED, address, make_records


class Collector:
    """`flowprobe collect` in a subprocess; its JSON lines go to a file
    unbuffered, so even a SIGKILL leaves every record it decoded."""

    def __init__(self, tmp_path, *args):
        self.out = tmp_path / f"collect-{time.monotonic_ns()}.jsonl"
        self.fh = open(self.out, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "flowprobe", "collect", "--format", "json", *args],
            stdout=self.fh, stderr=subprocess.DEVNULL)

    def wait_listening(self, port, kind=socket.SOCK_STREAM, timeout_s=10.0):
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with socket.socket(socket.AF_INET, kind) as s:
                if kind == socket.SOCK_STREAM:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        return
                else:
                    try:
                        s.bind(("127.0.0.1", port))
                    except OSError:
                        return
            time.sleep(0.05)
        raise RuntimeError("collector did not start")

    def stop(self, sig=signal.SIGTERM, timeout_s=20.0):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.fh.close()

    def records(self) -> int:
        n = 0
        with open(self.out) as fh:
            for line in fh:
                if line.strip() and not json.loads(line).get("_options"):
                    n += 1
        return n


def pipeline(url, **opts):
    return ExportPipeline(build_exporters([{"url": url, **opts}]))


def feed(pipes, batches, per_batch, pause_s=0.0, on_batch=None):
    """Hand `batches` x `per_batch` distinct records to the pipeline."""
    arrays = [make_records([dict(FIXED[i % 4], src_port=b, dst_port=i)
                            for i in range(per_batch)]) for b in range(batches)]
    for b, arr in enumerate(arrays):
        pipes.sink(address(arr), per_batch)
        pipes.tick(time.time_ns())
        if on_batch:
            on_batch(b)
        if pause_s:
            time.sleep(pause_s)
    return batches * per_batch


def equation(st):
    """records handed = exported + not sent (+ not exportable), nothing pending."""
    assert st["records_pending"] == 0
    assert st["records_handed"] == (st["records_exported"] + st["records_not_sent"]
                                    + st["records_not_exportable"])
    assert sum(st["records_not_sent_by"].values()) == st["records_not_sent"]


def closed_stats(pipes, col=None) -> dict:
    """Close the pipeline (bounded), let the collector finish reading, and
    return the one exporter's stats, its accounting equation checked."""
    pipes.close(10.0)
    if col is not None:
        col.proc.wait(30)
        col.stop()
    st = pipes.stats()[next(iter(pipes.stats()))]
    equation(st)
    return st


def test_tcp_collector_that_starts_late(tmp_path):
    """The collector listens only 1.5 s after records start: what the
    bounded buffer could not hold is not sent (buffer_full), the rest is
    decoded, and exported equals what the collector decoded."""
    port = free_port(socket.SOCK_STREAM)
    pipes = pipeline(f"ipfix+tcp://127.0.0.1:{port}", max_buffer_bytes=1 << 20,
                     backoff_max_s=0.2)
    col = None

    def start(b):
        nonlocal col
        if b == 15:
            col = Collector(tmp_path, "--listen", f"tcp://127.0.0.1:{port}",
                            "--idle-timeout", "5")
    handed = feed(pipes, 40, 2500, pause_s=0.1, on_batch=start)
    st = closed_stats(pipes, col)
    assert st["records_handed"] == handed == 100_000
    assert st["records_not_sent_by"].get("buffer_full", 0) > 0
    assert col.records() == st["records_exported"] > 0


def test_tcp_collector_killed_midway(tmp_path):
    """The collector is killed with SIGKILL halfway: handed = exported + not
    sent exactly; the collector decoded at most what was exported (bytes its
    kernel acknowledged but the process never read are TCP's blind spot)."""
    port = free_port(socket.SOCK_STREAM)
    col = Collector(tmp_path, "--listen", f"tcp://127.0.0.1:{port}")
    col.wait_listening(port)
    pipes = pipeline(f"ipfix+tcp://127.0.0.1:{port}", max_buffer_bytes=1 << 20,
                     backoff_max_s=0.2)

    def kill(b):
        if b == 20:
            time.sleep(0.3)
            col.stop(signal.SIGKILL)
    handed = feed(pipes, 40, 2500, pause_s=0.05, on_batch=kill)
    pipes.close(3.0)
    st = pipes.stats()[next(iter(pipes.stats()))]
    equation(st)
    assert st["records_handed"] == handed
    decoded = col.records()
    assert 0 < decoded <= st["records_exported"]
    assert st["records_not_sent_by"].get("connection_lost", 0) \
        + st["records_not_sent_by"].get("buffer_full", 0) > 0


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
def test_udp_port_that_refuses(tmp_path, gso):
    """UDP to a port nobody listens on: every datagram comes back as ICMP
    port unreachable, so nothing counts as exported (collector_refused);
    then a collector appears on that port and decodes exactly the rest.
    With segmentation offload a refusal comes back once per send, for all
    its datagrams."""
    port = free_port()
    # paced: a Python collector's socket buffer overflows unpaced, and such
    # a loss is invisible to any sender
    # (templates on the tick after the collector starts, so it decodes all)
    pipes = pipeline(f"ipfix://127.0.0.1:{port}", rate_msgs_s=4000, udp_gso=gso,
                     template_refresh_messages=0, template_refresh_s=0.05)
    col = None

    def start(b):
        nonlocal col
        if b == 9:
            time.sleep(0.3)       # the sender has emptied the queue
            col = Collector(tmp_path, "--listen", f"udp://127.0.0.1:{port}",
                            "--idle-timeout", "5")
            col.wait_listening(port, socket.SOCK_DGRAM)
            pipes.tick(time.time_ns())    # templates first (refresh_s is due)
            time.sleep(0.1)
    handed = feed(pipes, 20, 1000, pause_s=0.02, on_batch=start)
    st = closed_stats(pipes, col)
    assert st["records_handed"] == handed
    assert st["records_not_sent_by"]["collector_refused"] > 0
    assert col.records() == st["records_exported"] > 0


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (root only); unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounts = []

    def mount(name, opts):
        d = tmp_path / name
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "fptest", str(d)], check=True)
        mounts.append(d)
        return d
    yield mount
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_file_on_a_full_tmpfs(tmp_path, tmpfs):
    """IPFIX file export into a 256 KiB tmpfs: what does not fit is not sent
    (disk_full), the file is cut back to its last whole message, renamed
    from .part, and decodes to exactly the records counted as exported."""
    d = tmpfs("full", "size=256k")
    pipes = pipeline(f"ipfix+file://{d}/flows.ipfix")
    handed = feed(pipes, 20, 1000)
    st = closed_stats(pipes)
    assert st["records_handed"] == handed
    assert st["records_not_sent_by"]["disk_full"] > 0 and st["records_exported"] > 0
    assert sorted(os.listdir(d)) == ["flows.ipfix"]
    size = os.path.getsize(d / "flows.ipfix")
    assert size == st["bytes"]
    col = Collector(tmp_path, "--file", str(d / "flows.ipfix"))
    col.proc.wait(30)
    col.stop()
    assert col.records() == st["records_exported"]


def test_file_in_an_unwritable_directory(tmp_path, tmpfs):
    """A read-only directory (root ignores modes, so a read-only tmpfs):
    every record is not sent (file_error), nothing raises, no file."""
    d = tmpfs("ro", "ro,size=64k")
    pipes = pipeline(f"ipfix+file://{d}/flows.ipfix")
    handed = feed(pipes, 5, 1000)
    st = closed_stats(pipes)
    assert st["records_handed"] == handed
    assert st["records_exported"] == 0
    assert st["records_not_sent_by"] == {"file_error": handed}
    assert os.listdir(d) == []


def test_full_queue_drops_and_counts_never_waits(tmp_path):
    """A paced UDP exporter behind a 64 KiB queue: sink() never waits, the
    overflow is counted as queue_full, and the collector decodes exactly
    the records counted as exported."""
    port = free_port()
    col = Collector(tmp_path, "--listen", f"udp://127.0.0.1:{port}", "--idle-timeout", "5")
    col.wait_listening(port, socket.SOCK_DGRAM)
    pipes = pipeline(f"ipfix://127.0.0.1:{port}", rate_msgs_s=500, queue_bytes=64 << 10)
    arrays = [make_records([dict(FIXED[i % 4], src_port=b, dst_port=i)
                            for i in range(1000)]) for b in range(30)]
    t0 = time.monotonic()
    for arr in arrays:
        pipes.sink(address(arr), 1000)
    fed_s = time.monotonic() - t0
    handed = 30_000
    st = closed_stats(pipes, col)
    assert st["records_handed"] == handed
    assert st["records_not_sent_by"]["queue_full"] > 0
    assert fed_s < 0.5          # 30k records at 500 msgs/s take ~3 s inline
    assert col.records() == st["records_exported"] > 0


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
def test_inline_exporter_counts_what_it_was_handed(gso):
    """Without the pipeline (replay exports inline) the exporter itself
    counts records handed, and the equation holds: a refusing UDP port."""
    from flowprobe.exporters.exporter import build_exporter
    exp = build_exporter({"url": f"ipfix://127.0.0.1:{free_port()}", "rate_msgs_s": 0,
                          "udp_gso": gso})
    arr = make_records([dict(FIXED[i % 4], src_port=i) for i in range(3000)])
    exp.sink(address(arr), 3000)
    exp.close()
    st = exp.stats()
    equation(st)
    assert st["records_handed"] == 3000
    assert st["records_not_sent_by"] == {"collector_refused": 3000}
    assert (st["transport"]["gso_sends"] > 0) == gso
