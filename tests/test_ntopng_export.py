"""The ntopng feed as an exporter: zmq:// and zmq+connect:// in the config
and on the command line, a replay received by a ZeroMQ subscriber (what
ntopng is) with every record accounted and the capture's totals, and an
absent ntopng counted, never waited for."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
import zmq

import synth
from flowprobe.config import ConfigError, export_config, load_config_text
from flowprobe.config.schema import export_items
from flowprobe.errors import ExitCode
from flowprobe.exporters import ntopng


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flowprobe(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowprobe", *args],
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ config

def test_zmq_urls_and_options_from_yaml_and_command_line():
    """Both schemes parse into ExportConfig with the schema's defaults; the
    options come from YAML; each run reader gets source_id + index and, for
    zmq:// (a port flowprobe binds), PORT + index."""
    ec = export_config("zmq://127.0.0.1:5556")
    assert (ec.format, ec.transport, ec.port) == ("ntopng", "zmq", 5556)
    assert (ec.zmq_format, ec.compress, ec.source_id) == ("tlv", False, 0)
    cfg = load_config_text("export:\n  - url: zmq+connect://127.0.0.1:5557\n"
                           "    zmq_format: json\n    compress: true\n"
                           "    records_per_message: 20\n    source_id: 4\n"
                           "    hwm_messages: 50\n    event_interval_s: 5\n", "t")
    items = export_items(cfg, ["zmq://127.0.0.1:5556"], 1)
    assert [(e.url, e.source_id) for e in items] == [
        ("zmq+connect://127.0.0.1:5557", 5), ("zmq://127.0.0.1:5557", 1)]
    assert (items[0].zmq_format, items[0].compress, items[0].records_per_message,
            items[0].hwm_messages, items[0].event_interval_s) == ("json", True, 20, 50, 5.0)
    assert export_items(cfg, ["zmq://127.0.0.1:5556"])[1].url == "zmq://127.0.0.1:5556"


@pytest.mark.parametrize("url", ["zmq://127.0.0.1", "zmq://:5556", "zmq+connect://h",
                                 "zmq://127.0.0.1:5556/x"])
def test_bad_zmq_url_exits_2_naming_the_key(url, tmp_path):
    """On the command line and in YAML: exit 2, the key and the URL."""
    proc = flowprobe("replay", "x.pcap", "--export", url)
    assert proc.returncode == ExitCode.CONFIG, proc.stderr
    assert "--export" in proc.stderr and url in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"export:\n  - url: {url}\n")
    proc = flowprobe("config", "check", str(bad))
    assert proc.returncode == ExitCode.CONFIG
    assert "export[0].url (line 2)" in proc.stderr and url in proc.stderr


def test_compress_with_tlv_is_a_config_error(tmp_path):
    """ntopng decompresses only JSON: compress with tlv names the key."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("export:\n  - url: zmq://127.0.0.1:5556\n    compress: true\n")
    proc = flowprobe("config", "check", str(bad))
    assert proc.returncode == ExitCode.CONFIG
    assert "export[0].compress" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(ConfigError, match="compress"):
        export_config({"url": "zmq://127.0.0.1:1", "compress": True})
    assert export_config({"url": "zmq://127.0.0.1:1", "compress": True,
                          "zmq_format": "json"}).compress


def test_exporter_address_is_checked_and_sent():
    """exporter_address must be an IPv4 address (a config error naming the
    key otherwise) and is EXPORTER_IPV4_ADDRESS (130) in every record."""
    with pytest.raises(ConfigError, match="exporter_address"):
        export_config({"url": "zmq://127.0.0.1:1", "exporter_address": "198.18.0"})
    from flowprobe.exporters.exporter import build_exporter
    from records import FIXED, make_records
    exp = build_exporter({"url": "zmq://127.0.0.1:1", "exporter_address": "198.18.255.1"})
    payloads = exp.encoder.encode(make_records(FIXED), len(FIXED))
    recs = [r for p, _ in payloads for r in ntopng.tlv_to_objects(p)]
    assert len(recs) == len(FIXED) and {r["130"] for r in recs} == {"198.18.255.1"}
    plain = build_exporter("zmq://127.0.0.1:1").encoder.encode(make_records(FIXED), len(FIXED))
    assert all("130" not in r for p, _ in plain for r in ntopng.tlv_to_objects(p))


# ------------------------------------------------------------------ replay

@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("zmq") / "synth.pcap"
    truth = synth.generate(path, flows=3000, packets=30000, seed=14)
    return path, truth


def tlv_key(r: dict) -> tuple:
    """The truth key of one decoded TLV record (synth.flow_key)."""
    v6 = "27" in r
    return synth.flow_key(r.get("58", 0), r["60"], r["27" if v6 else "8"],
                          r["28" if v6 else "12"], r["7"], r["11"], r["4"], r["5"])


class Subscriber:
    """A SUB socket, as ntopng -i tcp://HOST:PORT has, collecting messages
    in a thread until ``stop``."""

    def __init__(self, endpoint: str, *, bind: bool = False):
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        (self.sock.bind if bind else self.sock.connect)(endpoint)
        for topic in (b"flow", b"event"):
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.messages: list[list[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(100):
                self.messages.append(self.sock.recv_multipart())

    def stop(self, quiet_s: float = 1.0) -> None:
        """Once nothing arrived for ``quiet_s``."""
        seen = -1
        while seen != len(self.messages):
            seen = len(self.messages)
            time.sleep(quiet_s)
        self._stop.set()
        self._thread.join(5)
        self.sock.close(linger=0)

    def topic(self, name: str) -> list[tuple[bytes, bytes]]:
        return [(h, p) for h, p in self.messages if h[:16].rstrip(b"\0") == name.encode()]


@pytest.mark.parametrize("mode", ["bind", "connect"])
def test_replay_to_a_subscriber_delivers_the_truth(capture, mode):
    """`replay --export zmq://` (ntopng connects) or zmq+connect:// (ntopng
    listens): every record arrives, decoded as TLV, with consecutive message
    ids; per flow and in total, packets and IP bytes equal the capture's
    truth; the summary line says all records were exported; event messages
    carry the probe and the totals."""
    path, truth = capture
    port = free_port()
    if mode == "bind":
        url, sub = f"zmq://127.0.0.1:{port}", Subscriber(f"tcp://127.0.0.1:{port}")
    else:
        url, sub = (f"zmq+connect://127.0.0.1:{port}",
                    Subscriber(f"tcp://127.0.0.1:{port}", bind=True))
    try:
        proc = flowprobe("replay", str(path), "--export", url, "--idle-timeout", "5")
    finally:
        sub.stop()
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    flows = sub.topic("flow")
    records = [r for _, p in flows for r in ntopng.tlv_to_objects(p)]
    assert f"export ntopng-tlv+{url}: {len(records):,} of {len(records):,} records" \
        in proc.stderr
    ids = [int.from_bytes(h[20:24], "big") for h, _ in flows]
    assert ids == list(range(1, len(flows) + 1))
    assert all(h[16] == ntopng.VERSION_TLV and h[17] == 0 for h, _ in flows)
    assert sum(r["2"] for r in records) == truth.packets
    assert sum(r["1"] for r in records) == truth.octets
    got: dict[tuple, tuple[int, int]] = {}
    for r in records:
        p, o = got.get(tlv_key(r), (0, 0))
        got[tlv_key(r)] = (p + r["2"], o + r["1"])
    assert got == truth.counts()
    events = [__import__("json").loads(p) for _, p in sub.topic("event")]
    assert events and events[-1]["packets"] == truth.packets
    assert events[-1]["probe"]["version"].startswith("flowprobe ")
    assert events[-1]["timeout"] == {"lifetime": 120, "idle": 5}


def test_json_format_with_compression(capture):
    """zmq_format json + compress: each payload is a 0 byte and a zlib
    stream of a JSON array; version byte 2; the totals are the truth's."""
    import json
    import zlib
    path, truth = capture
    port = free_port()
    cfg = path.parent / "json.yaml"
    cfg.write_text(f"export:\n  - url: zmq://127.0.0.1:{port}\n    zmq_format: json\n"
                   "    compress: true\n")
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    try:
        proc = flowprobe("replay", str(path), "-c", str(cfg))
    finally:
        sub.stop()
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    flows = sub.topic("flow")
    assert flows and all(h[16] == ntopng.VERSION_JSON and p[:1] == b"\0" for h, p in flows)
    records = [r for _, p in flows for r in json.loads(zlib.decompress(p[1:]))]
    assert sum(r["2"] for r in records) == truth.packets
    assert sum(r["1"] for r in records) == truth.octets


def test_ntopng_down_is_counted_never_waited_for(capture):
    """Nobody subscribed: the replay does not hang (a bounded wait for a
    subscriber at open), every record is counted not sent (no_subscriber)
    and the exit status says records were not exported."""
    path, truth = capture
    cfg = path.parent / "down.yaml"
    cfg.write_text(f"export:\n  - url: zmq://127.0.0.1:{free_port()}\n"
                   "    subscriber_wait_s: 0.2\n")
    start = time.monotonic()
    proc = flowprobe("replay", str(path), "-c", str(cfg))
    assert time.monotonic() - start < 30
    assert proc.returncode == ExitCode.EXPORT_INCOMPLETE, proc.stderr[-3000:]
    line = next(x for x in proc.stderr.splitlines() if x.startswith("export ntopng"))
    assert ": 0 of " in line and "NOT EXPORTED (not sent" in line
    import json
    done = next(json.loads(x) for x in proc.stderr.splitlines() if '"replay_done"' in x)
    (st,) = done["exporters"]
    assert st["records_not_sent_by"] == {"no_subscriber": st["records_handed"]}
    assert st["records_handed"] > 0
