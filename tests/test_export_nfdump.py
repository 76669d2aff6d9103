"""Replay a synthetic capture with ground truth to a real nfcapd over NetFlow
v5, NetFlow v9 and IPFIX/UDP; nfdump must read back every flow exactly
(packets, IP bytes, first/last packet time to the millisecond) with no
sequence failures."""
import calendar
import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest

import synth
from collectors import nfcapd

NFDUMP_FMT = "fmt:%svln|%tos|%sa|%da|%sp|%dp|%pr|%pkt|%byt|%ts|%te"


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    d = tmp_path_factory.mktemp("cap")
    path = str(d / "synth.pcap")
    truth = synth.generate(path, flows=3000, packets=40000, seed=11)
    return path, truth


def _ms(stamp):
    # "2023-06-01 00:00:00.019" in UTC (TZ=UTC)
    day, frac = stamp.strip().rsplit(".", 1)
    secs = calendar.timegm(time.strptime(day, "%Y-%m-%d %H:%M:%S"))
    return secs * 1000 + int(frac)


def _port(text, proto):
    text = text.strip()
    if "." in text:                       # ICMP "type.code"
        t, c = text.split(".")
        return int(t) << 8 | int(c)
    return int(text)


def _addr(text):
    return str(ipaddress.ip_address(text.strip()))


def nfdump_flows(directory, with_vlan):
    out = subprocess.run(["nfdump", "-R", str(directory), "-q", "-N", "-6", "-o", NFDUMP_FMT],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "TZ": "UTC"}).stdout
    flows, lines = {}, 0
    for line in out.splitlines():
        if not line.strip():
            continue
        lines += 1
        vlan, tos, sa, da, sp, dp, pr, pkt, byt, ts, te = line.split("|")
        src, dst = _addr(sa), _addr(da)
        ver = ipaddress.ip_address(src).version
        proto = int(pr)
        key = (int(vlan) if with_vlan else 0, ver, src, dst, int(sp),
               _port(dp, proto), proto, int(tos))
        f = flows.setdefault(key, {"packets": 0, "octets": 0, "first_ms": None, "last_ms": None})
        f["packets"] += int(pkt)
        f["octets"] += int(byt)
        first, last = _ms(ts), _ms(te)
        f["first_ms"] = first if f["first_ms"] is None else min(f["first_ms"], first)
        f["last_ms"] = last if f["last_ms"] is None else max(f["last_ms"], last)
    return flows, lines


def expected_flows(truth, with_vlan, v4_only):
    out = {}
    for k, v in truth.flows.items():
        vlan, ver = k[0], k[1]
        if v4_only and ver != 4:
            continue
        key = (vlan if with_vlan else 0,) + tuple(k[1:])
        f = out.setdefault(key, {"packets": 0, "octets": 0, "first_ms": None, "last_ms": None})
        f["packets"] += v["packets"]
        f["octets"] += v["octets"]
        a, b = v["first_ns"] // 10**6, v["last_ns"] // 10**6
        f["first_ms"] = a if f["first_ms"] is None else min(f["first_ms"], a)
        f["last_ms"] = b if f["last_ms"] is None else max(f["last_ms"], b)
    return out


def replay(cap, url):
    proc = subprocess.run([sys.executable, "-m", "flowprobe", "replay", cap, "--export", url],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    for line in (proc.stdout + proc.stderr).splitlines():
        if '"replay_done"' in line:
            return json.loads(line[line.index("{"):])["exporters"][0]
    raise AssertionError("no replay_done line:\n" + proc.stdout[-2000:] + proc.stderr[-2000:])


def nfdump_sequence_failures(directory):
    out = subprocess.run(["nfdump", "-I", "-R", str(directory)], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Sequence failures:"):
            return int(line.split(":")[1])
    raise AssertionError("no 'Sequence failures' in nfdump -I:\n" + out)


@pytest.mark.parametrize("scheme", ["ipfix", "netflow9", "netflow5"])
def test_replay_to_nfcapd_is_exact(scheme, capture, tmp_path):
    """Every flow (v5: every IPv4 flow) arrives with exact counters and
    millisecond packet times, and nfcapd counts no sequence failure."""
    cap, truth = capture
    nfdir = tmp_path / "nf"
    with nfcapd(nfdir) as port:
        stats = replay(cap, f"{scheme}://127.0.0.1:{port}")
    v5 = scheme == "netflow5"
    got, lines = nfdump_flows(nfdir, with_vlan=not v5)
    want = expected_flows(truth, with_vlan=not v5, v4_only=v5)
    assert lines == stats["records_exported"]
    assert stats["records_not_sent"] == 0 and stats["send_errors"] == 0
    missing = set(want) - set(got)
    extra = set(got) - set(want)
    assert not missing and not extra, (sorted(missing)[:5], sorted(extra)[:5])
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not bad, list(bad.items())[:5]
    assert nfdump_sequence_failures(nfdir) == 0
    if v5:
        v6_flows = sum(1 for k in truth.flows if k[1] == 6)
        assert v6_flows > 0
        assert stats["records_not_exportable"] >= v6_flows
    else:
        assert stats["records_not_exportable"] == 0
