"""Pipes and stdin (issue 13, item 2): ``replay -`` and ``replay FIFO`` read
the stream once, through libpcap; a FIFO is never opened twice (the first
open used up the writer and the second waited for ever)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from flowprobe.driver import pcapfile as pf
from flowprobe.driver.pcapfile import open_capture
from flowprobe.errors import ExitCode

import synth


def make_capture(tmp_path, fmt, packets):
    path = tmp_path / f"c{packets}.{fmt}"
    synth.generate(str(path), flows=min(200, packets // 5), packets=packets, seed=11,
                   fmt=fmt, truth=False)
    return path


@pytest.fixture(params=["pcap", "pcapng"])
def capture(request, tmp_path):
    return make_capture(tmp_path, request.param, 5000)


@pytest.fixture(params=["pcap", "pcapng"])
def small_capture(request, tmp_path):
    """Smaller than a pipe's buffer: the writer is done and gone before the
    reader looks at the FIFO (what made a second open wait for ever)."""
    path = make_capture(tmp_path, request.param, 100)
    assert path.stat().st_size < 65536
    return path


def feed_fifo(fifo, data: bytes) -> threading.Thread:
    """A writer thread: opens the FIFO (blocks until the reader opens it),
    writes everything, closes."""
    def write():
        with open(fifo, "wb") as fh:
            fh.write(data)
    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def unblock_later(fifo, done: threading.Event, seconds=20.0) -> None:
    """If the reader still waits after `seconds` (a second open), open the
    FIFO for writing once so that it ends (and the test fails, not hangs)."""
    def unblock():
        if not done.wait(seconds):
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
    threading.Thread(target=unblock, daemon=True).start()


def read_packets(path) -> list:
    keep, addr = pf.alloc_pkt_array(1024)
    out = []
    with open_capture(path) as cf:
        while n := cf.read_into(addr, 1024):
            out += pf.debug_batch(addr, n)
    return out


@pytest.mark.parametrize("packets", [100, 5000])     # within, beyond a pipe's buffer
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_fifo_is_read_once_through_libpcap(tmp_path, fmt, packets):
    """A FIFO fed by a writer thread yields the same packets as the file."""
    capture = make_capture(tmp_path, fmt, packets)
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    done = threading.Event()
    unblock_later(fifo, done)
    writer = feed_fifo(fifo, capture.read_bytes())
    keep, addr = pf.alloc_pkt_array(1024)
    got = []
    with open_capture(fifo) as cf:
        assert not cf.is_mmap
        while n := cf.read_into(addr, 1024):
            got += pf.debug_batch(addr, n)
    done.set()
    writer.join(5)
    assert got == read_packets(capture)


def run_replay_json(*args, stdin=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowprobe", "replay", *args, "--json"],
                          stdin=stdin, capture_output=True, timeout=timeout)


def test_cli_replay_dash_reads_stdin(capture):
    """`cat capture | flowprobe replay - --json` prints the flows of
    `flowprobe replay capture --json`."""
    with open(capture, "rb") as fh:
        piped = subprocess.run(
            f"cat {capture} | {sys.executable} -m flowprobe replay - --json",
            shell=True, capture_output=True, timeout=60)
        redirected = run_replay_json("-", stdin=fh)
    direct = run_replay_json(str(capture))
    assert direct.returncode == piped.returncode == redirected.returncode == 0, piped.stderr
    flows = sorted(direct.stdout.splitlines())
    assert len(flows) > 100
    assert sorted(piped.stdout.splitlines()) == flows
    assert sorted(redirected.stdout.splitlines()) == flows


def test_cli_replay_fifo(tmp_path, small_capture):
    """`flowprobe replay FIFO` with a writer on the other end: no hang, the
    flows of the file."""
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    done = threading.Event()
    unblock_later(fifo, done)
    writer = feed_fifo(fifo, small_capture.read_bytes())
    proc = run_replay_json(str(fifo))
    done.set()
    writer.join(5)
    assert proc.returncode == 0, proc.stderr
    flows = sorted(run_replay_json(str(small_capture)).stdout.splitlines())
    assert flows and sorted(proc.stdout.splitlines()) == flows


def test_cli_replay_stdin_twice_is_a_usage_error():
    """Standard input can be read once: `replay - -` exits INPUT."""
    proc = run_replay_json("-", "-", stdin=subprocess.DEVNULL)
    assert proc.returncode == ExitCode.INPUT
    assert b"standard input can be read only once" in proc.stderr
