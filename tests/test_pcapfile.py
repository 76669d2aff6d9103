"""The capture-file reader (flowprobe.driver._pcapfile) on its own.

Every capture, seeded synthetic ones always and the real-world corpus
(FLOWPROBE_CORPUS) when there is one, is read by the reader the file gets by
default and, for classic pcap, also through libpcap: both must hand out
identical batches (lengths, times, bytes) and agree with tshark. tshark
keeps a record's caplen above the file's snaplen; libpcap (and so both
readers) clips it to the snaplen, so that one difference is expected.
"""

from __future__ import annotations

import errno
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

import corpus
import packets
from flowprobe.driver import pcapfile as pf
from flowprobe.driver.pcapfile import CaptureFileError, TruncatedCaptureError, open_capture

FILES = corpus.captures()
CAP = 64  # small batches: many batch boundaries per file


CLASSIC = {bytes.fromhex(m) for m in ("a1b2c3d4", "d4c3b2a1", "a1b23c4d", "4d3cb2a1")}


def is_classic(path):
    with open(path, "rb") as fh:
        return fh.read(4) in CLASSIC


def read_all(path, force_libpcap=False, cap=CAP):
    """(reader, packets as tuples, error or None, stats)."""
    keep, addr = pf.alloc_pkt_array(cap)
    pkts, err = [], None
    with open_capture(path, force_libpcap=force_libpcap) as cf:
        try:
            while n := cf.read_into(addr, cap):
                assert 0 < n <= cap
                pkts += pf.debug_batch(addr, n)
        except CaptureFileError as e:
            err = e
        return cf, pkts, err, cf.stats()


def tshark_rows(path):
    proc = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-T", "fields",
         "-e", "frame.len", "-e", "frame.cap_len", "-e", "frame.time_epoch"],
        capture_output=True, text=True, timeout=120,
    )
    rows = []
    for line in proc.stdout.splitlines():
        wirelen, caplen, t = line.split("\t")
        rows.append((int(caplen), int(wirelen), int(Decimal(t) * 10**9)))
    return proc.returncode, rows, proc.stderr


@pytest.fixture(scope="module")
def tshark_truth(synthetic_captures):
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed (make deps installs it)")
    files = [*synthetic_captures, *FILES]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(files, pool.map(tshark_rows, files)))


def check_against_libpcap_and_tshark(path, tshark_truth):
    cf, pkts, err, st = read_all(path)
    assert cf.is_mmap == is_classic(path)  # the corpus has no odd classic files
    assert st["packets"] == len(pkts)
    assert st["cap_bytes"] == sum(p[0] for p in pkts)
    assert st["wire_bytes"] == sum(p[1] for p in pkts)
    assert st["truncated_records"] == (1 if isinstance(err, TruncatedCaptureError) else 0)
    for caplen, _wire, _ts, ifindex, tci, vvalid, data in pkts:
        assert len(data) == caplen <= cf.snaplen
        assert (ifindex, tci, vvalid) == (0, 0, 0)

    if cf.is_mmap:
        lp, lp_pkts, lp_err, lp_st = read_all(path, force_libpcap=True)
        assert not lp.is_mmap
        assert (lp.linktype, lp.snaplen) == (cf.linktype, cf.snaplen)
        assert lp_pkts == pkts
        assert type(lp_err) is type(err)

    rc, rows, stderr = tshark_truth[path]
    if rc != 0 and not rows and "unknown or unsupported" in stderr:
        return  # a link type tshark cannot open; the readers agree above
    expected = [(min(c, cf.snaplen), w, t) for c, w, t in rows]
    assert [(c, w, t) for c, w, t, *_ in pkts] == expected
    if cf.is_mmap:
        assert st["clipped_records"] == sum(1 for c, _, _ in rows if c > cf.snaplen)


@pytest.mark.parametrize("index", range(3), ids=["pcap", "pcap-ns", "pcapng"])
def test_synthetic_file(index, synthetic_captures, tshark_truth):
    """A seeded capture reads the same through mmap, libpcap and tshark."""
    check_against_libpcap_and_tshark(synthetic_captures[index], tshark_truth)


@pytest.mark.parametrize("path", corpus.params(FILES),
                         ids=lambda p: f"{p.parent.name}/{p.name}" if p else "no-corpus")
def test_corpus_file(path, tshark_truth):
    """A real-world capture reads the same through mmap, libpcap and tshark."""
    check_against_libpcap_and_tshark(path, tshark_truth)


# --- synthetic classic pcap files -------------------------------------------

MAGICS = {("<", False): 0xA1B2C3D4, (">", False): 0xA1B2C3D4,
          ("<", True): 0xA1B23C4D, (">", True): 0xA1B23C4D}


def write_pcap(path, records, *, order="<", nano=False, snaplen=65535,
               linktype=1, version=(2, 4)):
    """records: (sec, frac, payload, wirelen). Returns the file bytes."""
    out = [struct.pack(order + "IHHiIII", MAGICS[order, nano], *version, 0, 0,
                       snaplen, linktype)]
    for sec, frac, data, wirelen in records:
        if version < (2, 3):
            out.append(struct.pack(order + "IIII", sec, frac, wirelen, len(data)))
        else:
            out.append(struct.pack(order + "IIII", sec, frac, len(data), wirelen))
        out.append(data)
    blob = b"".join(out)
    Path(path).write_bytes(blob)
    return blob


def sample_records(n=50):
    return [(1_700_000_000 + i, (i * 7919) % 1_000_000, bytes([i]) * (14 + i), 100 + i)
            for i in range(n)]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_byte_order_and_resolution(tmp_path, order, nano):
    recs = sample_records()
    f = tmp_path / "s.pcap"
    write_pcap(f, recs, order=order, nano=nano, linktype=101)
    mult = 1 if nano else 1000
    want = [(len(d), w, s * 10**9 + fr * mult, 0, 0, 0, d) for s, fr, d, w in recs]
    for force in (False, True):
        cf, pkts, err, st = read_all(f, force_libpcap=force)
        assert cf.is_mmap == (not force)
        assert err is None and pkts == want
        assert cf.linktype == 101  # libpcap's DLT_RAW (12) reported as 101
        assert st["packets"] == len(recs) and st["batches"] == 1


def test_old_version_swapped_lengths(tmp_path):
    f = tmp_path / "v22.pcap"
    write_pcap(f, sample_records(5), version=(2, 2))
    mm, lp = read_all(f), read_all(f, force_libpcap=True)
    assert mm[0].is_mmap and mm[2] is None and mm[1] == lp[1]
    assert [p[0] for p in mm[1]] == [14 + i for i in range(5)]


def test_caplen_above_snaplen_is_clipped(tmp_path):
    f = tmp_path / "clip.pcap"
    write_pcap(f, [(1, 2, b"\xaa" * 100, 100), (3, 4, b"\xbb" * 10, 10)], snaplen=64)
    for force in (False, True):
        _, pkts, err, st = read_all(f, force_libpcap=force)
        assert err is None
        assert [(p[0], p[1], p[6]) for p in pkts] == [(64, 100, b"\xaa" * 64), (10, 10, b"\xbb" * 10)]
        assert st["clipped_records"] == (0 if force else 1)  # libpcap clips silently


@pytest.mark.parametrize("where", ["mid_data", "mid_header"])
def test_truncated_copy(tmp_path, where, synthetic_captures):
    src = synthetic_captures[0]
    _, pkts, err, st = read_all(src)
    assert err is None and len(pkts) >= 3 and not st["clipped_records"]
    blob = src.read_bytes()
    end_of_two = 24 + sum(16 + p[0] for p in pkts[:2])  # no clipping in the chosen file
    cut = end_of_two + 16 + pkts[2][0] // 2 if where == "mid_data" else end_of_two + 7
    f = tmp_path / "cut.pcap"
    f.write_bytes(blob[:cut])
    for force in (False, True):
        keep, addr = pf.alloc_pkt_array(CAP)
        with open_capture(f, force_libpcap=force) as cf:
            assert cf.read_into(addr, CAP) == 2  # the whole records come first
            assert pf.debug_batch(addr, 2) == pkts[:2]
            with pytest.raises(TruncatedCaptureError) as ei:
                cf.read_into(addr, CAP)
            assert ei.value.path == str(f) and "truncated" in ei.value.reason
            with pytest.raises(TruncatedCaptureError):  # sticky, never reads on
                cf.read_into(addr, CAP)
            st = cf.stats()
        assert st["truncated_records"] == 1 and st["packets"] == 2


def test_absurd_caplen_is_corrupt(tmp_path):
    f = tmp_path / "bad.pcap"
    blob = write_pcap(f, sample_records(3))
    rec2 = 24 + 16 + 14 + 16 + 15
    f.write_bytes(blob[: rec2 + 8] + struct.pack("<I", 0x7FFFFFF0) + blob[rec2 + 12:])
    for force in (False, True):
        _, pkts, err, st = read_all(f, force_libpcap=force)
        assert len(pkts) == 2 and isinstance(err, TruncatedCaptureError)
        assert st["truncated_records"] == 1


def test_arena_split_keeps_every_packet(tmp_path):
    # 150 x 60000 B = 9 MB: the libpcap reader's 4 MiB arena ends batches early.
    recs = [(10 + i, 0, bytes([i % 251]) * 60000, 60000) for i in range(150)]
    f = tmp_path / "big.pcap"
    write_pcap(f, recs, snaplen=262144)
    cf, mm, err, st = read_all(f, cap=1000)
    assert cf.is_mmap and err is None and st["batches"] == 1
    _, lp, err, st = read_all(f, force_libpcap=True, cap=1000)
    assert err is None and lp == mm and st["batches"] >= 3


def test_header_only_file_is_empty(tmp_path):
    f = tmp_path / "empty.pcap"
    write_pcap(f, [])
    cf, pkts, err, st = read_all(f)
    assert cf.is_mmap and pkts == [] and err is None and st["packets"] == 0


def test_missing_file():
    with pytest.raises(CaptureFileError) as ei:
        open_capture("/nonexistent/x.pcap")
    assert ei.value.errno == errno.ENOENT
    assert ei.value.path == "/nonexistent/x.pcap"


@pytest.mark.parametrize("content", [b"", b"\xd4\xc3\xb2\xa1\x02\x00", b"not a capture file" * 4])
def test_unreadable_format(tmp_path, content):
    f = tmp_path / "junk.pcap"
    f.write_bytes(content)
    with pytest.raises(CaptureFileError) as ei:
        open_capture(f)
    assert ei.value.reason and str(f) in str(ei.value)


def test_directory_is_an_error(tmp_path):
    with pytest.raises(CaptureFileError):
        open_capture(tmp_path)


def test_pcapng_goes_through_libpcap(synthetic_captures):
    ng = synthetic_captures[2]
    assert not is_classic(ng)
    with open_capture(ng) as cf:
        assert not cf.is_mmap


def test_pcapng_with_two_link_types(tmp_path, synthetic_captures):
    """One pcapng with an Ethernet and a raw-IP interface is refused by name."""
    if shutil.which("mergecap") is None:
        pytest.fail("mergecap is not installed (tshark's package; make deps installs it)")
    eth = synthetic_captures[0]
    raw = tmp_path / "raw.pcap"
    ip4 = packets.ipv4("198.18.0.1", "198.19.0.1", 17, packets.udp(1234, 53, b"x" * 8))
    write_pcap(raw, [(1_700_000_000, 0, ip4, len(ip4))], linktype=101)
    f = tmp_path / "multi.pcapng"
    subprocess.run(["mergecap", "-F", "pcapng", "-w", str(f), str(eth), str(raw)],
                   check=True, capture_output=True)
    cf, pkts, err, st = read_all(f)
    assert not cf.is_mmap
    assert isinstance(err, CaptureFileError) and not isinstance(err, TruncatedCaptureError)
    assert err.errno == errno.EOPNOTSUPP and "different from the type" in err.reason
    assert st["truncated_records"] == 0


def test_closed_reader_raises(tmp_path):
    f = tmp_path / "s.pcap"
    write_pcap(f, sample_records(2))
    keep, addr = pf.alloc_pkt_array(4)
    cf = open_capture(f)
    with pytest.raises(CaptureFileError) as ei:
        cf.read_into(addr, 0)  # 0 is reserved for end of file
    assert ei.value.errno == errno.EINVAL
    assert cf.read_into(addr, 4) == 2
    cf.close()
    cf.close()
    assert cf.stats()["packets"] == 2
    with pytest.raises(CaptureFileError):
        cf.read_into(addr, 4)
