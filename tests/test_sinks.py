"""JSON lines in C (exporters/jsonl.c via probe/sinks.py) against the
Python formatting they replace: json.dumps(record_to_dict(r)) byte for byte."""
import dataclasses
import ipaddress
import json
import os
import random
import socket
import subprocess
import sys

import synth
from flowprobe.config import default_config
from flowprobe.exporters._encode import ffi, lib
from flowprobe.probe.flowtable.table import FlowTable, iter_records
from flowprobe.probe.replay import replay_files
from flowprobe.probe.sinks import PIPE_BUF, JsonLines, format_line


def python_line(d: dict) -> bytes:
    return (json.dumps(d, separators=(",", ":")) + "\n").encode()


def records_array(dicts_fill):
    """A struct ft_record[] (the encoder module's ffi) filled by callables."""
    arr = ffi.new("struct ft_record[]", len(dicts_fill))
    for rec, fill in zip(arr, dicts_fill):
        fill(rec)
    return arr


def python_of(arr, n):
    """record_to_dict reads the flowtable module's ffi: view the same bytes."""
    from flowprobe.probe.flowtable._flowtable import ffi as ft_ffi
    view = ft_ffi.cast("struct ft_record *", int(ffi.cast("uintptr_t", arr)))
    return b"".join(python_line(d) for d in iter_records(view, n))


def test_synthetic_capture_lines_equal_python(tmp_path):
    """Every record of a seeded capture (IPv4/IPv6, VLAN, QinQ, MPLS, TCP,
    UDP, SCTP, ICMP/ICMPv6, fragments) formats byte-identically."""
    path = tmp_path / "s.pcap"
    synth.generate(path, flows=600, packets=6000, seed=7)
    out = tmp_path / "c.jsonl"
    expected = []
    with open(out, "wb") as fh:
        sink = JsonLines(fh.fileno())

        def both(recs, n):
            expected.extend(python_line(d) for d in iter_records(recs, n))
            sink(recs, n)
        table = FlowTable(dataclasses.replace(default_config().flow, idle_timeout_s=1.0),
                          both, record_batch=97)
        replay_files([str(path)], table, 256)
        table.flush()
    assert len(expected) > 600
    assert out.read_bytes() == b"".join(expected)


def v6(rec_field, text):
    ffi.memmove(rec_field, ipaddress.IPv6Address(text).packed, 16)


def test_edge_values_equal_python():
    """Addresses RFC 5952 spells in tricky ways, maximum integers, every
    optional key."""
    addrs = ["::", "::1", "1::", "::ffff:198.18.0.1", "::198.18.0.1", "2001:db8::1:0:0:1",
             "2001:0:0:1::1", "0:0:1:0:0:0:1:0", "2001:db8:0:0:1:0:0:1", "1:0:1:0:1:0:1:0",
             "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8:a:b:c:d:e:f", "0:1::",
             "1:2:3:4:5:6:7:0", "0:2:3:4:5:6:7:8", "fe80::"]
    rng = random.Random(3)
    fills = []
    for i, a in enumerate(addrs):
        def fill(r, a=a, i=i):
            r.ip_version = 6
            v6(r.src_addr, a)
            v6(r.dst_addr, addrs[-1 - i])
            r.protocol = (6, 17, 58, 132)[i % 4]
            r.src_port, r.dst_port = rng.randrange(65536), rng.randrange(65536)
            r.packets, r.octets = 2**64 - 1, rng.randrange(2**64)
            r.first_ns, r.last_ns = 2**64 - 1, rng.randrange(2**64)
            r.ifindex, r.tos, r.tcp_flags = 2**32 - 1, 255, rng.randrange(256)
            r.ttl_min, r.ttl_max, r.end_reason = 0, 255, 1 + i % 5
            r.vlan, r.inner_vlan = (4095, 1) if i % 2 else (0, 0)
            r.has_mac = i % 3 == 0
            r.src_mac = bytes([0x02, 0xab, 0, 9, 0x10, 0xff])
            r.dst_mac = bytes(range(6))
        fills.append(fill)
    for i in range(40):
        def fill4(r, i=i):
            r.ip_version = 4
            r.src_addr[0:4] = bytes(rng.randrange(256) for _ in range(4))
            r.dst_addr[0:4] = bytes([0, 255, 10, i])
            r.protocol = (1, 6, 17, 0, 47)[i % 5]
            r.dst_port = rng.randrange(65536)
            r.packets, r.octets = i, 10**i % 2**64
            r.first_ns, r.last_ns = i * 999_999, 10**18 + i
            r.has_mac = i % 2
        fills.append(fill4)
    arr = records_array(fills)
    n = len(fills)
    got = b"".join(format_line(arr + i) for i in range(n))
    assert got == python_of(arr, n)
    assert max(len(x) for x in got.splitlines()) < lib.JSONL_LINE_MAX


def test_shared_writer_keeps_whole_lines_per_write():
    """shared=True: each write is at most PIPE_BUF bytes of whole lines (a
    SOCK_SEQPACKET pair shows each write as one message)."""
    fills = []
    for i in range(120):
        def fill(r, i=i):
            r.ip_version = 6 if i % 2 else 4
            r.src_addr[0] = i % 256
            r.protocol, r.packets, r.has_mac = 6, i, 1
        fills.append(fill)
    arr = records_array(fills)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        JsonLines(a.fileno(), shared=True)(arr, len(fills))
        a.shutdown(socket.SHUT_WR)
        writes = list(iter(lambda: b.recv(65536), b""))
    assert len(writes) > 1
    assert all(len(w) <= PIPE_BUF and w.endswith(b"\n") for w in writes)
    assert b"".join(writes) == python_of(arr, len(fills))


def test_replay_json_cli_equals_python_format(tmp_path):
    """`flowprobe replay --json` prints exactly what the Python formatting
    of the same records gives."""
    path = tmp_path / "r.pcap"
    synth.generate(path, flows=300, packets=3000, seed=11)
    proc = subprocess.run([sys.executable, "-m", "flowprobe", "replay", str(path), "--json"],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = []
    table = FlowTable(default_config().flow,
                      lambda recs, n: expected.extend(python_line(d) for d in iter_records(recs, n)))
    replay_files([str(path)], table, default_config().replay.batch_packets)
    table.flush()
    assert proc.stdout == b"".join(expected)
    assert PIPE_BUF == 4096
