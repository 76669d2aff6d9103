"""The mmap reader's windows: a file larger than one window reads exactly as
libpcap reads it, whatever straddles a window's end (a record header, a
record's data, a record larger than a window), and windows a batch no
longer points into are unmapped on the next read (memory stays bounded).

FLOWPROBE_PCAP_WINDOW sets the window size (bytes, k/m/g suffix) at
pf_open(); the default is 64 MiB.
"""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from flowprobe.driver import pcapfile as pf
from flowprobe.driver._pcapfile import lib
from flowprobe.driver.pcapfile import TruncatedCaptureError, open_capture

PAGE = os.sysconf("SC_PAGESIZE")
HELD_MAX = 16  # PF_HELD in pcapfile_internal.h


def write_pcap(path, sizes, *, order="<", nano=False, seed=7):
    """A classic pcap of records with the given data sizes; returns the
    record offsets (each record's header) and the bytes."""
    rng = random.Random(seed)
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, 1)]
    offs, pos = [], 24
    for i, n in enumerate(sizes):
        data = bytes(rng.getrandbits(8) for _ in range(min(n, 64))) + bytes([i % 251]) * max(n - 64, 0)
        offs.append(pos)
        out += [struct.pack(order + "IIII", 1_700_000_000 + i, (i * 7919) % 1_000_000,
                            n, n + (i % 3)), data]
        pos += 16 + n
    blob = b"".join(out)
    Path(path).write_bytes(blob)
    return offs, blob


def file_mappings(path):
    """How many mappings of `path` this process holds now."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as fh:
        return sum(1 for line in fh if line.rstrip().endswith(real))


def read_all(path, cap, force_libpcap=False, watch_maps=False):
    """(packets, error, stats, windows, most mappings seen after a read)."""
    keep, addr = pf.alloc_pkt_array(cap)
    pkts, err, most = [], None, 0
    with open_capture(path, force_libpcap=force_libpcap) as cf:
        try:
            while n := cf.read_into(addr, cap):
                assert 0 < n <= cap
                if watch_maps:
                    most = max(most, file_mappings(path))
                # the whole batch is readable until the next read
                pkts += pf.debug_batch(addr, n)
        except TruncatedCaptureError as e:
            err = e
        if watch_maps:
            # after the last (empty) read only the current window is left
            assert file_mappings(path) == (1 if cf.is_mmap else 0)
        windows = lib.pf_windows(cf._reader)
        assert cf.is_mmap == (not force_libpcap)
        return pkts, err, cf.stats(), windows, most


@pytest.fixture
def window(monkeypatch):
    def set_window(size):
        monkeypatch.setenv("FLOWPROBE_PCAP_WINDOW", str(size))
    return set_window


@pytest.mark.parametrize("order,nano", [("<", False), (">", True)])
@pytest.mark.parametrize("cap", [1, 7, 64, 4096])
def test_many_windows_read_like_libpcap(tmp_path, window, order, nano, cap):
    rng = random.Random(cap)
    sizes = [rng.choice((14, 60, 64, 300, 1514, 1518, 9000)) for _ in range(1500)]
    sizes[700:703] = [100_000, 262_144, 70_000]   # records larger than a window
    f = tmp_path / "w.pcap"
    write_pcap(f, sizes, order=order, nano=nano)
    assert f.stat().st_size > 20 * 64 * 1024
    window("64k")
    mm, err, st, windows, most = read_all(f, cap, watch_maps=True)
    lp, lerr, _, _, _ = read_all(f, cap, force_libpcap=True)
    assert err is None and lerr is None
    assert len(mm) == len(sizes) and mm == lp
    assert st["packets"] == len(sizes)
    assert windows > 20
    assert most <= HELD_MAX + 1


@pytest.mark.parametrize("straddle", [1, 7, 15, 16, 17, 100])
def test_record_straddling_a_page_sized_window(tmp_path, window, straddle):
    # the 3rd record's header starts `straddle` bytes before the 1st window's
    # end: header split (< 16), data split (>= 16)
    first = PAGE - straddle - 24 - 2 * 16 - 100
    sizes = [first, 100, 500, 60, 3 * PAGE + 5, 14] * 40
    f = tmp_path / "s.pcap"
    offs, _ = write_pcap(f, sizes)
    assert offs[2] == PAGE - straddle
    window(PAGE)
    for cap in (1, 3, 4096):
        mm, err, _, windows, _ = read_all(f, cap)
        lp, lerr, _, _, _ = read_all(f, cap, force_libpcap=True)
        assert err is None and lerr is None and mm == lp and len(mm) == len(sizes)
        assert windows > 40


def test_truncated_record_in_a_later_window(tmp_path, window):
    sizes = [1000] * 500
    f = tmp_path / "t.pcap"
    offs, blob = write_pcap(f, sizes)
    f.write_bytes(blob[:offs[400] + 16 + 500])    # cut inside record 400's data
    window("16k")
    mm, err, st, windows, _ = read_all(f, 64)
    lp, lerr, _, _, _ = read_all(f, 64, force_libpcap=True)
    assert isinstance(err, TruncatedCaptureError) and "truncated" in err.reason
    assert isinstance(lerr, TruncatedCaptureError)
    assert len(mm) == 400 and mm == lp
    assert st["truncated_records"] == 1 and windows > 10


def test_default_window_is_one_mapping_for_a_small_file(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWPROBE_PCAP_WINDOW", raising=False)
    f = tmp_path / "d.pcap"
    write_pcap(f, [1000] * 3000)
    mm, err, st, windows, most = read_all(f, 256, watch_maps=True)
    assert err is None and len(mm) == 3000 and windows == 1 and most == 1


@pytest.mark.parametrize("cap", [5, 4096])
def test_windows_mapped_ahead_read_like_libpcap(tmp_path, window, cap):
    # windows of 4 MiB and more, on a larger file: a reader thread walks
    # them, a few batches ahead (tests/test_pcapfile_reader_thread.py)
    rng = random.Random(5)
    sizes = [rng.choice((60, 1514, 9000, 65535, 262_144)) for _ in range(400)]
    f = tmp_path / "a.pcap"
    write_pcap(f, sizes)
    assert f.stat().st_size > 4 * (4 << 20)
    window("4m")
    mm, err, st, windows, most = read_all(f, cap, watch_maps=True)
    lp, lerr, _, _, _ = read_all(f, cap, force_libpcap=True)
    assert err is None and lerr is None and mm == lp and len(mm) == len(sizes)
    assert windows >= 4
    assert most <= HELD_MAX + 1          # no window is mapped ahead any more
