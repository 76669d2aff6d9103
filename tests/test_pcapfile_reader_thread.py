"""The mmap reader's reader thread (files larger than one window of 4 MiB
or more): it walks records into a ring of batch slots and the caller's
pf_next_batch() copies ready ones out. What the caller sees must not depend
on it: the records, counters (read between calls: what was handed out, not
what was walked), errors and their order, the lifetime of packet pointers
and the number of mappings; pf_close() at any point releases everything.
The same code under ASan+UBSan and TSan: tests/c/pf_reader_san.c.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from flowprobe.driver import pcapfile as pf
from flowprobe.driver._pcapfile import lib
from flowprobe.driver.pcapfile import CaptureShrunkError, TruncatedCaptureError, open_capture

REPO = Path(__file__).resolve().parent.parent
WINDOW = "4m"                 # PF_THREAD_MIN: the smallest window threaded


def write_pcap(path, sizes, snaplen=262144):
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1)]
    offs, pos = [], 24
    for i, n in enumerate(sizes):
        offs.append(pos)
        out += [struct.pack("<IIII", 1_700_000_000 + i // 1000, i % 1_000_000, n, n + 4),
                struct.pack("<I", i) + bytes([i % 251]) * (n - 4)]
        pos += 16 + n
    blob = b"".join(out)
    Path(path).write_bytes(blob)
    return offs, blob


@pytest.fixture
def big(tmp_path, monkeypatch):
    """~13 MiB of 60..1514-byte records, 6800 of them clipped (snaplen
    1400), windows of 4 MiB: the reader thread runs."""
    monkeypatch.setenv("FLOWPROBE_PCAP_WINDOW", WINDOW)
    sizes = [(60, 590, 1514, 1500, 130)[i % 5] for i in range(17_000)]
    f = tmp_path / "big.pcap"
    offs, blob = write_pcap(f, sizes, snaplen=1400)
    assert len(blob) > 3 * (4 << 20)
    return f, sizes, offs, blob


def reference(path):
    keep, addr = pf.alloc_pkt_array(1)
    out = []
    with open_capture(path, force_libpcap=True) as cf:
        try:
            while cf.read_into(addr, 1):
                out += pf.debug_batch(addr, 1)
        except TruncatedCaptureError:
            pass
    return out


def test_the_reader_thread_runs_for_large_files_only(big, tmp_path, monkeypatch):
    f = big[0]
    keep, addr = pf.alloc_pkt_array(64)
    with open_capture(f) as cf:
        assert not lib.pf_test_reader_thread(cf._reader)   # started by the 1st read
        cf.read_into(addr, 64)
        assert lib.pf_test_reader_thread(cf._reader)
        while cf.read_into(addr, 64):
            pass
        assert not lib.pf_test_reader_thread(cf._reader)   # reaped at the end
    monkeypatch.setenv("FLOWPROBE_PCAP_WINDOW", "1m")       # small windows
    with open_capture(f) as cf:
        cf.read_into(addr, 64)
        assert not lib.pf_test_reader_thread(cf._reader)
    monkeypatch.setenv("FLOWPROBE_PCAP_WINDOW", "64m")      # one window
    with open_capture(f) as cf:
        cf.read_into(addr, 64)
        assert not lib.pf_test_reader_thread(cf._reader)


def test_caps_that_change_split_slots_and_counters_follow_the_caller(big):
    """The first call's cap sizes the slots; smaller caps later get a slot
    in parts. packets, cap_bytes, wire_bytes and clipped_records count what
    was handed out, at every call."""
    f, sizes, _, _ = big
    ref = reference(f)
    keep, addr = pf.alloc_pkt_array(4096)
    got, i = [], 0
    with open_capture(f) as cf:
        while n := cf.read_into(addr, 4096 if i == 0 else 1 + (i * 37) % 700):
            batch = pf.debug_batch(addr, n)
            got += batch
            i += 1
            st = cf.stats()
            assert st["packets"] == len(got) and st["batches"] == i
            assert st["cap_bytes"] == sum(p[0] for p in got)
            assert st["wire_bytes"] == sum(p[1] for p in got)
            assert st["clipped_records"] == sum(1 for p in got if p[0] == 1400)
    assert got == ref and len(got) == len(sizes)
    assert sum(1 for p in got if p[0] == 1400) == 2 * len(sizes) // 5


@pytest.mark.parametrize("window", ["4m", "1m"])
def test_an_error_comes_after_every_packet_before_it(big, monkeypatch, window):
    """A record cut in a later window: every packet before it, then
    TruncatedCaptureError, truncated_records counted when it is raised
    (the same with the walk in the caller's thread, 1m windows)."""
    monkeypatch.setenv("FLOWPROBE_PCAP_WINDOW", window)
    f, sizes, offs, blob = big
    f.write_bytes(blob[:offs[15_000] + 16 + 10])
    keep, addr = pf.alloc_pkt_array(1000)
    got = 0
    with open_capture(f) as cf:
        with pytest.raises(TruncatedCaptureError, match="truncated record at offset %d" % offs[15_000]):
            while n := cf.read_into(addr, 1000):
                got += n
                assert cf.stats()["truncated_records"] == 0
        assert got == 15_000 and cf.stats()["truncated_records"] == 1
        with pytest.raises(TruncatedCaptureError):       # sticky
            cf.read_into(addr, 1000)


@pytest.mark.parametrize("first", [1000, 7])
def test_shrink_with_slots_ready_delivers_every_packet_before_the_cut(big, first):
    """The ring holds batches walked before the cut: they are dropped and
    the caller's thread walks on from the first packet not handed out
    (also from inside a slot handed out in part), up to the cut."""
    f, sizes, offs, blob = big
    cut = offs[9000] + 7
    keep, addr = pf.alloc_pkt_array(1000)
    with open_capture(f) as cf:
        got = cf.read_into(addr, 1000)
        got += cf.read_into(addr, first)
        assert lib.pf_test_reader_thread(cf._reader)
        os.truncate(f, cut)
        with pytest.raises(CaptureShrunkError, match="shrank from .* to %d bytes" % cut):
            while n := cf.read_into(addr, 1000):
                assert pf.debug_batch(addr, 1)[0][6][:4] == struct.pack("<I", got)
                got += n
        assert not lib.pf_test_reader_thread(cf._reader)
        assert got == 9000
        assert cf.stats()["truncated_records"] == 1 and cf.stats()["packets"] == 9000


def test_mappings_stay_bounded_and_are_released_at_the_end(big):
    f = big[0]
    real = os.path.realpath(f)
    keep, addr = pf.alloc_pkt_array(4096)

    def mappings():
        with open("/proc/self/maps") as fh:
            return sum(1 for line in fh if line.rstrip().endswith(real))

    most = 0
    with open_capture(f) as cf:
        while n := cf.read_into(addr, 4096):
            pf.debug_batch(addr, n)          # every pointer still readable
            most = max(most, mappings())
        assert mappings() == 1
        assert lib.pf_windows(cf._reader) >= 3
    assert mappings() == 0
    assert most <= 17                        # PF_WINS


@pytest.mark.parametrize("reads", [0, 1, 3])
def test_close_at_any_point(big, reads):
    """Close mid-file: before the thread starts, with slots ready, with the
    thread waiting on a full ring; all mappings go."""
    f = big[0]
    real = os.path.realpath(f)
    keep, addr = pf.alloc_pkt_array(512)
    for _ in range(20):
        cf = open_capture(f)
        for _ in range(reads):
            cf.read_into(addr, 512)
        cf.close()
        with open("/proc/self/maps") as fh:
            assert not any(line.rstrip().endswith(real) for line in fh)


def test_reader_under_sanitizers(tmp_path):
    """pcapfile*.c under ASan+UBSan and under TSan (the ring, its locks,
    close at any stage), reader thread and caller-thread walks alike."""
    cc = shutil.which("clang")
    if cc is None:
        pytest.fail("clang is required for the sanitizer builds (make deps installs it)")
    files = []
    for i, count in enumerate((9_000, 1_500)):
        f = tmp_path / f"s{i}.pcap"
        write_pcap(f, [(60, 590, 1514, 1500, 9000)[j % 5] for j in range(count)], snaplen=1400)
        files.append(str(f))
    assert os.path.getsize(files[0]) > 4 << 20
    drv = REPO / "driver"
    for san in ("address,undefined", "thread"):
        exe = tmp_path / f"pf_reader_san_{san.split(',')[0]}"
        subprocess.run([cc, "-O1", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                        "-fno-omit-frame-pointer", f"-fsanitize={san}",
                        "-fno-sanitize-recover=all", f"-I{REPO / 'include'}", f"-I{drv}",
                        "-o", str(exe), str(REPO / "tests" / "c" / "pf_reader_san.c"),
                        *(str(drv / s) for s in ("pcapfile.c", "pcapfile_mmap.c",
                                                 "pcapfile_libpcap.c")),
                        "-lpcap", "-lpthread"], check=True)
        for window in ("4m", "64k"):
            proc = subprocess.run([str(exe), *files], capture_output=True, text=True,
                                  timeout=300, env=dict(os.environ, FLOWPROBE_PCAP_WINDOW=window))
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert proc.stdout == "ok 10500\n"
