"""The built-in collector under floods a stranger could send (issue 13, items
7-10): TCP connections, template floods, UDP receive overruns, and decoder
strictness. Floods are bounded in count and time and go to 127.0.0.1; the
resource bounds are checked on `flowprobe collect`'s own RSS (VmHWM, the
peak) read from /proc."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowprobe.collector.decode import MessageDecoder
from flowprobe.collector.server import Collector, CollectorLimits

EXPORTER = ("udp", "127.0.0.1", 9995)


# -- helpers ---------------------------------------------------------------------
def _peak_rss_mb(pid: int) -> float:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM for %d" % pid)


def _cpu_ticks(pid: int) -> int:
    with open("/proc/%d/stat" % pid) as f:
        return sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])


class CollectProcess:
    """`flowprobe collect` in a child process, stderr in a file (never a
    pipe nobody drains), ready once it logged `collector_listening`."""

    def __init__(self, tmp: Path, listen: str, *args: str, nofile: int | None = None):
        self.err_path = tmp / "collect.err"
        err = open(self.err_path, "w")

        def limit_fds():
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowprobe", "collect", "--listen", listen, *args],
            stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limit_fds)
        err.close()
        deadline = time.monotonic() + 30
        while "collector_listening" not in self.stderr():
            assert self.proc.poll() is None, self.stderr()
            assert time.monotonic() < deadline, "collect did not start"
            time.sleep(0.05)
        line = [json.loads(x) for x in self.stderr().splitlines()
                if "collector_listening" in x][0]
        self.port = line["port"]
        self.base_rss_mb = _peak_rss_mb(self.proc.pid)

    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_idle(self, timeout_s: float = 120) -> None:
        """Until the process used no CPU for a second (it drained its input)."""
        deadline, prev = time.monotonic() + timeout_s, -1
        while time.monotonic() < deadline:
            time.sleep(1.0)
            ticks = _cpu_ticks(self.proc.pid)
            if ticks == prev:
                return
            prev = ticks
        raise AssertionError("collect still busy after %ss" % timeout_s)

    def stop(self) -> dict:
        """SIGTERM; the exit status must be 0 and the summary is returned."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        err = self.stderr()
        assert rc == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        return [json.loads(x) for x in err.splitlines() if "collector_summary" in x][-1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def collect(tmp_path):
    started = []

    def start(listen, *args, nofile=None):
        c = CollectProcess(tmp_path, listen, *args, nofile=nofile)
        started.append(c)
        return c
    yield start
    for c in started:
        c.kill()


def _raise_own_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def _ipfix(seq: int, odid: int, *sets: bytes) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), 1_700_000_000, seq, odid) + body


def _set(set_id: int, body: bytes) -> bytes:
    return struct.pack("!HH", set_id, len(body) + 4) + body


_FLOW_TMPL = [(8, 4), (12, 4), (2, 4), (1, 8), (152, 8), (153, 8)]


def _flow_message(seq: int, odid: int = 1, n: int = 1, start_ms: int = 1_700_000_000_000):
    tmpl = _set(2, struct.pack("!HH", 256, len(_FLOW_TMPL))
                + b"".join(struct.pack("!HH", *f) for f in _FLOW_TMPL))
    recs = b"".join(bytes([198, 18, 0, 1, 198, 19, 0, 1])
                    + struct.pack("!IQQQ", 1, 100, start_ms, start_ms + 10) for _ in range(n))
    return _ipfix(seq, odid, tmpl, _set(256, recs))


def _send_one_flow_over_tcp(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(_flow_message(0))


# -- 7. TCP connections ------------------------------------------------------------
HALF_OPEN = struct.pack("!HHIII", 10, 65535, 0, 0, 1) + bytes(60000)


def _half_open_flood(port: int, n: int) -> list[socket.socket]:
    """n connections, each sending 60 KB of a 64 KB message and no more."""
    _raise_own_fd_limit(n + 256)
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(10)  # a busy machine: never give up before the collector decides
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(HALF_OPEN)
        except OSError:  # reset by the collector: refused, as expected
            pass
        socks.append(s)
    return socks


def test_connections_beyond_the_limit_are_refused_counted_and_memory_stays_bounded(collect):
    """1,100 half-open connections against --max-connections 256: 844 are
    reset and counted, one refusal line per interval, the peak RSS grows by
    less than 40 MB (before: +64 MB, ~58 KB each), and a real exporter is
    served once the flood is gone."""
    c = collect("tcp://127.0.0.1:0", "--stats-interval", "1")
    socks = _half_open_flood(c.port, 1100)
    time.sleep(2.5)
    assert c.proc.poll() is None
    grown = _peak_rss_mb(c.proc.pid) - c.base_rss_mb
    for s in socks:
        s.close()
    time.sleep(1.5)
    _send_one_flow_over_tcp(c.port)
    time.sleep(1.5)
    summary = c.stop()
    assert summary["transport_tcp_connections"] == 256 + 1
    assert summary["transport_tcp_refused"] == summary["transport_tcp_refused_limit"] == 844
    assert summary["flows"] == 1
    assert grown < 40, "peak RSS grew %.1f MB" % grown
    refusals = [json.loads(x) for x in c.stderr().splitlines() if "tcp_connections_refused" in x]
    assert 1 <= len(refusals) <= 6 and sum(r["new"] for r in refusals) == 844


def test_running_out_of_file_descriptors_is_counted_never_fatal(collect):
    """With RLIMIT_NOFILE 64 and --max-connections 1000, accept() fails with
    EMFILE (before: a traceback and exit 1 at the 1,019th connection of
    1,024): the waiting peers are reset and counted, it keeps serving and
    does not spin."""
    c = collect("tcp://127.0.0.1:0", "--max-connections", "1000", nofile=64)
    socks = _half_open_flood(c.port, 300)
    time.sleep(2)
    assert c.proc.poll() is None
    ticks = _cpu_ticks(c.proc.pid)
    time.sleep(2)
    assert _cpu_ticks(c.proc.pid) - ticks < 50, "spinning while out of descriptors"
    for s in socks:
        s.close()
    time.sleep(1.5)
    _send_one_flow_over_tcp(c.port)
    time.sleep(1.5)
    summary = c.stop()
    assert summary["transport_tcp_accept_errors"] > 0
    assert summary["transport_tcp_refused_no_fd"] > 0
    assert summary["flows"] == 1
    assert "tcp_max_connections_above_fd_limit" in c.stderr()


def test_idle_trickling_and_oversized_peers_are_cut_and_counted():
    """A silent connection is cut after the idle timeout; one that trickles
    a message byte by byte after the message timeout; one announcing a
    message longer than the buffer bound at once; the good one is served."""
    limits = CollectorLimits(tcp_idle_timeout_s=1.0, tcp_message_timeout_s=1.5,
                             tcp_buffer_bytes=1024)
    recs = []
    with Collector(["tcp://127.0.0.1:0"], on_record=recs.append, limits=limits) as col:
        port = col.addresses[0][2]
        idle = socket.create_connection(("127.0.0.1", port))
        trickle = socket.create_connection(("127.0.0.1", port))
        big = socket.create_connection(("127.0.0.1", port))
        big.sendall(struct.pack("!HHIII", 10, 2000, 0, 0, 1))
        msg = _flow_message(0)
        start = time.monotonic()
        for i in range(12):  # 1 byte each 0.3 s: never idle, never done
            try:
                trickle.send(msg[i:i + 1])
            except OSError:  # cut: the next send sees the reset
                pass
            col.serve(timeout_s=0.3)
        _send_one_flow_over_tcp(port)
        col.serve(timeout_s=1.0)
        elapsed = time.monotonic() - start
        for s in (idle, trickle, big):
            s.close()
    summary = col.summary()
    assert elapsed < 10
    assert summary["transport_tcp_closed_idle_timeout"] == 1
    assert summary["transport_tcp_closed_message_timeout"] == 1
    assert summary["transport_stream_messages_too_long"] == 1
    assert summary["transport_tcp_closed_bad_framing"] == 1
    assert len(recs) == 1 and summary["transport_tcp_connections_open"] == 0


# -- 8. Template cache --------------------------------------------------------------
def _template_flood_datagram(odid: int, n: int = 8122) -> bytes:
    """A 65 KB IPFIX message of n one-field templates (ids 256..)."""
    body = b"".join(struct.pack("!HHHH", 256 + t, 1, 1, 8) for t in range(n))
    return _ipfix(0, odid, _set(2, body))


def test_template_flood_is_bounded_evictions_counted_memory_under_the_ceiling(collect):
    """51 datagrams of 65 KB, 8,122 templates each, under random observation
    domains (before: 414,222 templates, 572 MB RSS): the cache holds at most
    --max-templates, evictions are counted, the peak RSS stays under the
    README's 100 MB ceiling for the template cache at the defaults."""
    c = collect("udp://127.0.0.1:0")
    rnd = random.Random(13)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(51):
            s.sendto(_template_flood_datagram(rnd.getrandbits(32)), ("127.0.0.1", c.port))
            time.sleep(0.02)
    c.wait_idle()
    peak = _peak_rss_mb(c.proc.pid)
    summary = c.stop()
    assert summary["ipfix_messages"] == 51
    assert summary["templates_learned"] == 51 * 8122
    assert summary["templates_cached"] == 16384
    evicted = summary["templates_evicted_domain"] + summary["templates_evicted_total"]
    assert evicted == 51 * 8122 - 16384
    assert summary["templates_evicted_domain"] == 51 * (8122 - 1024)
    assert peak - c.base_rss_mb < 100, "peak RSS %.0f MB (base %.0f)" % (peak, c.base_rss_mb)


def test_template_cache_keeps_recently_used_templates_and_bounds_fields():
    """Per-domain eviction takes the least recently used template (one in
    use survives a flood in its domain); the total-fields bound evicts too."""
    dec = MessageDecoder(max_templates=100, max_per_domain=10, max_fields=60)
    dec.decode(_flow_message(0, odid=7), EXPORTER)        # template 256, 6 fields
    flood = b"".join(struct.pack("!HHHH", 300 + t, 1, 1, 8) for t in range(30))
    for i in range(6):  # 5 new templates at a time: 256 is used in between
        dec.decode(_ipfix(1, 7, _set(2, flood[i * 40:(i + 1) * 40])), EXPORTER)
        # the flow template is used between floods: never least recent
        recs = dec.decode(_ipfix(1, 7, _set(256, bytes(8) + struct.pack(
            "!IQQQ", 1, 1, 1_700_000_000_000, 1_700_000_000_000))), EXPORTER)
        assert len(recs) == 1
    assert ("ipfix", EXPORTER, 7, 256) in dec.templates
    assert len(dec.templates) == 10 and dec.counters["templates_evicted_domain"] == 21
    # 60 fields in all (15 cached): a 50-field template pushes out the oldest
    wide = struct.pack("!HH", 500, 50) + b"".join(struct.pack("!HH", 1, 8) for _ in range(50))
    dec.decode(_ipfix(2, 8, _set(2, wide)), EXPORTER)
    assert dec.templates.fields <= 60 and dec.counters["templates_evicted_total"] > 0
    assert ("ipfix", EXPORTER, 8, 500) in dec.templates


def test_unknown_enterprise_fields_do_not_grow_the_ipfix_package_registry():
    """Templates of random enterprise IEs decode by hand: the ipfix package's
    process-wide IE table (which nothing shrinks) does not grow."""
    import ipfix.ie
    before = len(ipfix.ie._ieForNum)
    dec = MessageDecoder()
    rnd = random.Random(5)
    for i in range(200):
        pen = rnd.getrandbits(31)
        tmpl = struct.pack("!HHHHI", 256, 1, 0x8000 | 7, 4, pen)
        recs = dec.decode(_ipfix(i, i, _set(2, tmpl), _set(256, b"\x01\x02\x03\x04")),
                          EXPORTER)
        assert recs == [{"_ipfix_%d_7" % pen: "01020304"}]
    assert len(ipfix.ie._ieForNum) == before


# -- 9. UDP receive drops ------------------------------------------------------------
def test_kernel_drops_are_reported_and_add_up(collect):
    """A stopped collector with a 256 KB buffer overrun by 20,000 datagrams
    (before: the summary said nothing of the 15,437 of 30,000 the kernel
    dropped): received + transport_udp_kernel_drops == sent, and a
    udp_kernel_drops warning is logged."""
    c = collect("udp://127.0.0.1:0", "--rcvbuf", str(256 << 10), "--stats-interval", "1")
    os.kill(c.proc.pid, signal.SIGSTOP)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(20000):
                s.sendto(b"\x00\x63\x00\x00" + bytes(500), ("127.0.0.1", c.port))
    finally:
        os.kill(c.proc.pid, signal.SIGCONT)
    c.wait_idle()
    time.sleep(1.5)
    summary = c.stop()
    drops = summary["transport_udp_kernel_drops"]
    assert drops > 0
    assert summary["transport_udp_datagrams"] + drops == 20000
    assert summary["transport_udp_rcvbuf"][0]["granted"] == 256 << 10
    assert summary["transport_udp_rcvbuf"][0]["clamped"] is False
    assert any("udp_kernel_drops" in x and '"new"' in x for x in c.stderr().splitlines())


def test_a_receive_buffer_the_kernel_clamps_is_reported(collect):
    """Without CAP_NET_ADMIN, --rcvbuf above net.core.rmem_max is clamped:
    the summary says so (granted < requested, clamped) and a warning says
    what to change."""
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv is not installed (util-linux)")
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    want = rmem_max * 2
    res = subprocess.run(
        ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin", sys.executable, "-m",
         "flowprobe", "collect", "--listen", "udp://127.0.0.1:0", "--rcvbuf", str(want),
         "--timeout", "0.5"],
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    summary = [json.loads(x) for x in res.stderr.splitlines() if "collector_summary" in x][-1]
    buf = summary["transport_udp_rcvbuf"][0]
    assert buf["option"] == "SO_RCVBUF" and buf["clamped"] is True
    assert buf["requested"] == want and buf["granted"] == rmem_max
    assert "udp_rcvbuf_clamped" in res.stderr


# -- 10. Decoder strictness ------------------------------------------------------------
def _v9(count: int, *flowsets: bytes, seq: int = 0) -> bytes:
    return struct.pack("!HHIIII", 9, count, 100_000, 1_700_000_000, seq, 1) + b"".join(flowsets)


def test_v9_header_count_that_disagrees_with_the_records_is_counted():
    """RFC 3954: count = template + options template + data records. A
    right count is silent; a wrong one is counted (v9_count_mismatch) and
    the records are still decoded."""
    tmpl = _set(0, struct.pack("!HHHHHH", 300, 2, 8, 4, 2, 4))
    data = _set(300, bytes([198, 18, 0, 1]) + struct.pack("!I", 5)
                + bytes([198, 18, 0, 2]) + struct.pack("!I", 6))
    dec = MessageDecoder()
    assert len(dec.decode(_v9(3, tmpl, data, seq=0), EXPORTER)) == 2
    assert dec.counters["v9_count_mismatch"] == 0
    assert len(dec.decode(_v9(7, data, seq=1), EXPORTER)) == 2
    assert dec.counters["v9_count_mismatch"] == 1


def test_an_out_of_range_time_costs_its_record_not_the_message():
    """One dateTimeMilliseconds of 2**64-1 among 31 records (before: the
    whole message of 31 records was discarded as malformed): 31 records come
    out, the bad one without that field and flagged, counted once."""
    t0 = 1_700_000_000_000
    recs = [(t0 + i, t0 + i + 5) for i in range(31)]
    recs[17] = (t0, 2**64 - 1)
    msg = _ipfix(0, 1, _set(2, struct.pack("!HH", 256, len(_FLOW_TMPL))
                            + b"".join(struct.pack("!HH", *f) for f in _FLOW_TMPL)),
                 _set(256, b"".join(bytes([198, 18, 0, 1, 198, 19, 0, 1])
                                    + struct.pack("!IQQQ", 1, 100, a, b) for a, b in recs)))
    dec = MessageDecoder()
    out = dec.decode(msg, EXPORTER)
    assert len(out) == 31 and dec.counters.get("malformed_messages", 0) == 0
    assert dec.counters["records_invalid_time"] == 1
    assert out[17]["_invalid"] == ["flowEndMilliseconds"]
    assert "flowEndMilliseconds" not in out[17] and out[17]["flowStartMilliseconds"] == t0
    assert all("_invalid" not in r for i, r in enumerate(out) if i != 17)
    assert out[18]["flowEndMilliseconds"] == t0 + 23


def test_sequence_state_of_many_domains_is_bounded():
    """Messages under 20,000 observation domains keep at most
    MAX_SEQUENCE_STATES sequence states, the oldest out and counted."""
    from flowprobe.collector.decode import MAX_SEQUENCE_STATES
    dec = MessageDecoder()
    for odid in range(MAX_SEQUENCE_STATES + 3616):
        dec.decode(_ipfix(0, odid), EXPORTER)
    summary = dec.summary()
    assert len(summary["sequence"]) == MAX_SEQUENCE_STATES
    assert summary["sequence_states_evicted"] == 3616
