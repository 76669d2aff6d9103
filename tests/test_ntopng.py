"""The ntopng feed (exporters/ntopng.py, exporters/tlv.c): TLV payloads as
nDPI's own deserializer (libndpi, what ntopng links) reads them, JSON with
the same fields, the zmq_msg_hdr_v1 layout, and a ZeroMQ transport that
accounts for every record it is handed."""
from __future__ import annotations

import ipaddress
import json
import random
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
import zmq

from flowprobe.exporters import ntopng
from records import FIXED, T0_NS, make_records

C_DIR = Path(__file__).resolve().parent / "c"


@pytest.fixture(scope="module")
def tlv_dump(tmp_path_factory) -> Path:
    """tests/c/tlv_dump.c built against Debian's libndpi."""
    if shutil.which("pkg-config") is None:
        pytest.fail("pkg-config is missing (make deps installs it)")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libndpi"],
                           capture_output=True, text=True)
    if flags.returncode != 0:
        pytest.fail("libndpi-dev is missing (make deps installs it): " + flags.stderr)
    out = tmp_path_factory.mktemp("tlv") / "tlv_dump"
    subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                    str(C_DIR / "tlv_dump.c"), *flags.stdout.split()], check=True)
    return out


def random_specs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        v6 = rng.random() < 0.4
        src = (f"2001:db8::{rng.randrange(1, 0xffff):x}" if v6
               else f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}")
        dst = (f"2001:db8:1::{rng.randrange(1, 0xffff):x}" if v6
               else f"198.19.{rng.randrange(256)}.{rng.randrange(1, 255)}")
        first = T0_NS + rng.randrange(10**12)
        spec = dict(src=src, dst=dst, protocol=rng.choice((6, 17, 1, 58, 132)),
                    src_port=rng.randrange(65536), dst_port=rng.randrange(65536),
                    tos=rng.randrange(256), tcp_flags=rng.randrange(64),
                    packets=rng.choice((1, 7, 300, 70000, 5 << 32)),
                    octets=rng.choice((40, 1500, 1 << 20, 9 << 40)),
                    first_ns=first, last_ns=first + rng.randrange(10**11),
                    ifindex=rng.choice((1, 3, 70000)), vlan=rng.choice((0, 0, 100, 4094)))
        if i % 3 == 0:
            spec.update(src_mac="02:00:00:00:%02x:01" % (i % 256),
                        dst_mac="02:00:00:00:%02x:02" % (i % 256))
        specs.append(spec)
    return specs


def expected(spec: dict) -> dict:
    """What a record must say, in nProbe's keys, computed from the spec alone."""
    src, dst = ipaddress.ip_address(spec["src"]), ipaddress.ip_address(spec["dst"])
    v6 = src.version == 6
    out = {"60": src.version, "27" if v6 else "8": str(src), "28" if v6 else "12": str(dst),
           "7": spec.get("src_port", 0), "11": spec.get("dst_port", 0),
           "4": spec.get("protocol", 0), "5": spec.get("tos", 0),
           "6": spec.get("tcp_flags", 0), "1": spec.get("octets", 100),
           "2": spec.get("packets", 1), "22": spec.get("first_ns", T0_NS) // 10**9,
           "21": spec.get("last_ns", spec.get("first_ns", T0_NS)) // 10**9,
           "10": spec.get("ifindex", 0)}
    if spec.get("vlan"):
        out["58"] = spec["vlan"]
    if "src_mac" in spec:
        out["56"], out["57"] = spec["src_mac"], spec["dst_mac"]
    return out


def ndpi_decode(tlv_dump: Path, payloads: list[bytes], tmp: Path) -> list[list[dict]]:
    files = []
    for i, p in enumerate(payloads):
        files.append(tmp / f"p{i}.tlv")
        files[-1].write_bytes(p)
    proc = subprocess.run([str(tlv_dump), *map(str, files)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out, cur = [], []
    for line in proc.stdout.splitlines():
        obj = json.loads(line)
        if "_records" in obj:
            assert obj["_records"] == len(cur)
            out.append(cur)
            cur = []
        else:
            cur.append(obj)
    return out


def test_tlv_decoded_by_ndpi_equals_the_records(tlv_dump, tmp_path):
    """Every field of every record, as libndpi's deserializer reads it,
    equals the source record; messages hold at most records_per_message."""
    specs = FIXED + random_specs(500, seed=5)
    arr = make_records(specs)
    payloads = ntopng.TlvEncoder(records_per_message=7).encode(arr, len(specs))
    assert all(count <= 7 for _, count in payloads)
    assert sum(count for _, count in payloads) == len(specs)
    decoded = ndpi_decode(tlv_dump, [p for p, _ in payloads], tmp_path)
    assert [len(recs) for recs in decoded] == [count for _, count in payloads]
    flat = [r for recs in decoded for r in recs]
    assert flat == [expected(s) for s in specs]
    # the project's own reader agrees with nDPI's
    assert [r for p, _ in payloads for r in ntopng.tlv_to_objects(p)] == flat


def test_tlv_exporter_address_field(tlv_dump, tmp_path):
    """EXPORTER_IPV4_ADDRESS (130) is the configured string on every record."""
    arr = make_records(FIXED)
    payloads = ntopng.TlvEncoder(exporter_address="198.18.255.1").encode(arr, len(FIXED))
    flat = [r for recs in ndpi_decode(tlv_dump, [p for p, _ in payloads], tmp_path)
            for r in recs]
    assert [r["130"] for r in flat] == ["198.18.255.1"] * len(FIXED)


def test_tlv_payloads_stay_under_the_cap():
    """Many records split into several payloads, none over PAYLOAD_CAP."""
    specs = random_specs(3000, seed=9)
    payloads = ntopng.TlvEncoder(records_per_message=0).encode(make_records(specs), len(specs))
    assert len(payloads) > 1
    assert all(len(p) <= ntopng.PAYLOAD_CAP for p, _ in payloads)
    assert sum(c for _, c in payloads) == len(specs)


@pytest.mark.parametrize("compress", [False, True])
def test_json_has_the_same_fields(compress):
    """JSON payloads parse (zlib after a 0 byte when compressed) into the
    same objects the TLV payloads carry."""
    specs = FIXED + random_specs(50, seed=3)
    arr = make_records(specs)
    tlv = ntopng.TlvEncoder(records_per_message=10).encode(arr, len(specs))
    js = ntopng.JsonEncoder(records_per_message=10, compress=compress).encode(arr, len(specs))
    assert [c for _, c in js] == [c for _, c in tlv]
    for (j, _), (t, _) in zip(js, tlv):
        if compress:
            assert j[0] == 0
            j = zlib.decompress(j[1:])
        assert json.loads(j) == ntopng.tlv_to_objects(t)


def test_header_layout():
    """zmq_msg_hdr_v1: 16-byte topic, version, source id, size (host
    order), message id in network order: 24 bytes."""
    h = ntopng.header("flow", ntopng.VERSION_TLV, 5, 1000, 0x01020304)
    assert len(h) == 24
    assert h[:16] == b"flow" + bytes(12)
    assert h[16] == 3 and h[17] == 5
    assert struct.unpack("=H", h[18:20])[0] == 1000
    assert h[20:24] == bytes([1, 2, 3, 4])


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def send_flows(tx, payloads):
    for payload, count in payloads:
        tx.send(payload, count)


def test_transport_accounts_for_every_record():
    """Without a subscriber messages are not sent (no_subscriber); with
    one, every message arrives as header + payload with consecutive ids;
    exported + not sent = records handed over."""
    port = free_port()
    tx = ntopng.ZmqTransport(f"zmq://127.0.0.1:{port}", source_id=7)
    tx.open()
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    try:
        specs = random_specs(200, seed=1)
        payloads = ntopng.TlvEncoder(records_per_message=20).encode(make_records(specs), 200)
        send_flows(tx, payloads[:3])
        assert tx.records_not_sent_by == {ntopng.NO_SUBSCRIBER: 60}
        sub.connect(f"tcp://127.0.0.1:{port}")
        sub.setsockopt(zmq.SUBSCRIBE, b"flow")
        assert wait_for(lambda: tx.subscribed("flow"))
        send_flows(tx, payloads[3:])
        got = []
        while len(got) < len(payloads) - 3 and sub.poll(2000):
            got.append(sub.recv_multipart())
        assert len(got) == len(payloads) - 3
        ids = [struct.unpack("!I", h[20:24])[0] for h, _ in got]
        assert ids == list(range(1, len(got) + 1))
        assert all(h[:4] == b"flow" and h[16] == 3 and h[17] == 7 for h, _ in got)
        assert [p for _, p in got] == [p for p, _ in payloads[3:]]
        st = tx.stats()
        assert st["records_exported"] == 140 and st["messages"] == len(payloads) - 3
        assert st["records_exported"] + st["records_not_sent"] == 200
    finally:
        sub.close(linger=0)
        tx.close()


def test_transport_counts_high_water_mark_drops():
    """A subscriber that reads nothing: once the high-water mark is
    reached, sends fail at once (counted hwm_full), never block."""
    port = free_port()
    tx = ntopng.ZmqTransport(f"zmq://127.0.0.1:{port}", hwm_messages=1, close_timeout_s=0)
    tx.open()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.RCVBUF, 4096)
    try:
        sub.connect(f"tcp://127.0.0.1:{port}")
        sub.setsockopt(zmq.SUBSCRIBE, b"flow")
        assert wait_for(lambda: tx.subscribed("flow"))
        start = time.monotonic()
        send_flows(tx, [(bytes(60000), 1)] * 400)
        assert time.monotonic() - start < 10
        st = tx.stats()
        assert st["records_not_sent_by"][ntopng.HWM_FULL] > 0
        assert st["records_exported"] + st["records_not_sent_by"][ntopng.HWM_FULL] == 400
    finally:
        sub.close(linger=0)
        tx.close()


@pytest.mark.parametrize("url", ["zmq://127.0.0.1", "zmq://:5556", "zmqx://127.0.0.1:5556",
                                 "zmq+connect://"])
def test_bad_url_is_refused(url):
    with pytest.raises(ValueError, match="zmq://HOST:PORT"):
        ntopng.ZmqTransport(url)


def test_port_held_is_counted_then_retried(monkeypatch):
    """A port another socket still holds (the exporter a reload replaced):
    the records are counted send_error, nothing raises, and the bind is
    retried, so that once the port is free the messages flow."""
    monkeypatch.setattr(ntopng, "OPEN_RETRY_S", 0.0)
    port = free_port()
    holder = zmq.Context.instance().socket(zmq.XPUB)
    holder.bind(f"tcp://127.0.0.1:{port}")
    tx = ntopng.ZmqTransport(f"zmq://127.0.0.1:{port}")
    sub = zmq.Context.instance().socket(zmq.SUB)
    try:
        tx.open()
        assert tx.sock is None and tx.send_errors == 1
        tx.send(b"\x01\x01", 5)
        assert tx.records_not_sent_by == {"send_error": 5}
        holder.close(linger=0)
        assert wait_for(lambda: (tx.poll(), tx.sock is not None)[1])
        sub.connect(f"tcp://127.0.0.1:{port}")
        sub.setsockopt(zmq.SUBSCRIBE, b"flow")
        assert wait_for(lambda: tx.subscribed("flow"))
        tx.send(b"\x01\x01", 3)
        assert tx.records_sent == 3 and sub.poll(2000)
    finally:
        sub.close(linger=0)
        holder.close(linger=0)
        tx.close()


def test_tlv_l7_proto_is_master_dot_app(tlv_dump, tmp_path):
    """With the application on, L7_PROTO (57590) is the string "master.app"
    that ntopng parses ("91.126" for TLS.Google), as libndpi reads it, on
    every record with an application source and on no other; without it
    the payloads are those of before."""
    from records import FIXED_APP
    arr = make_records(FIXED_APP)
    payloads = ntopng.TlvEncoder(application=True).encode(arr, len(FIXED_APP))
    flat = [r for recs in ndpi_decode(tlv_dump, [p for p, _ in payloads], tmp_path)
            for r in recs]
    assert [r.get("57590") for r in flat] == ["91.126", "0.0", "0.5", "0.0"]
    plain = [r for recs in ndpi_decode(tlv_dump, [p for p, _ in ntopng.TlvEncoder().encode(
        arr, len(FIXED_APP))], tmp_path) for r in recs]
    assert plain == [expected(s) for s in FIXED]
    assert [{k: v for k, v in r.items() if k != "57590"} for r in flat] == plain
    nolabel = make_records(FIXED)
    assert (ntopng.TlvEncoder(application=True).encode(nolabel, len(FIXED))
            == ntopng.TlvEncoder().encode(nolabel, len(FIXED)))
    js = ntopng.JsonEncoder(application=True).encode(arr, len(FIXED_APP))
    assert [r.get("57590") for p, _ in js for r in json.loads(p)] == ["91.126", "0.0", "0.5",
                                                                      "0.0"]
