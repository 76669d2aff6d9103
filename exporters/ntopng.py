"""Flows for ntopng over ZeroMQ.

ntopng reads flows from a ZeroMQ subscription, not NetFlow/IPFIX. A message
is two frames: ntop's 24-byte ``zmq_msg_hdr_v1`` (a 16-byte NUL-padded
topic such as ``flow`` or ``event``, a version byte: 3 for TLV, 2 for JSON,
the source id, a 16-bit size and a message id in network order, by which
ntopng counts lost messages per source), then the payload.

- **Flows** (topic ``flow``) are nDPI TLV by default, encoded in C
  (exporters/tlv.c) from one field list, ``FIELDS``, keyed by the NetFlow v9 /
  nProbe element ids ntopng knows. TLV is what every ntopng edition reads
  (community ntopng 6.x ignores JSON flows); JSON (``format: json``) is the
  same fields as one JSON array of objects per message, optionally zlib
  compressed, for collectors that want text. ntopng decompresses only JSON.
- **Counters are deltas** (IN_BYTES/IN_PKTS): ntopng adds them up, which is
  what an active-timeout record is. Times are packet times in Unix seconds
  (FIRST_SWITCHED/LAST_SWITCHED), so a replayed capture keeps its dates.
- **Events** (topic ``event``, JSON) carry the probe's totals and settings;
  ntopng lists the probe among its exporters from them.

The socket is an XPUB with ``XPUB_NODROP``: a message that would exceed the
high-water mark fails at once instead of vanishing, and the subscriptions
that reach the socket tell whether anyone listens. A message with no
subscriber or over the high-water mark is not sent, and its records are
counted with that reason; sending never blocks.
"""
from __future__ import annotations

import json
import platform
import struct
import time
import zlib
from urllib.parse import urlsplit

from flowprobe import __version__
from flowprobe.exporters._encode import ffi, lib
from flowprobe.exporters.base import MessageBlock, PacketClock
from flowprobe.exporters.transports import Transport


class _ZmqOnFirstUse:
    """pyzmq, imported on first use: it adds ~30 ms to every start-up, and
    only the ntopng feed needs it. The first attribute read imports it and
    puts the module itself in this name."""

    def __getattr__(self, name):
        global zmq
        import zmq as module
        zmq = module
        return getattr(module, name)


zmq = _ZmqOnFirstUse()


#: ntop's zmq_msg_hdr_v1 (ntopng include/ntop_typedefs.h): topic, version,
#: source id, size (host order, informative), message id (network order).
HEADER = struct.Struct("=16sBBH4s")
VERSION_JSON, VERSION_TLV = 2, 3
PAYLOAD_CAP = 1 << 16          # bytes per flow message, well under ntopng's buffer
OPEN_RETRY_S = 1.0             # a failed bind/connect is retried this often

# nProbe / NetFlow v9 element ids (ntopng include/flow_fields... and RFC 3954)
IN_BYTES, IN_PKTS, PROTOCOL, SRC_TOS, TCP_FLAGS = 1, 2, 4, 5, 6
L4_SRC_PORT, IPV4_SRC_ADDR, INPUT_SNMP, L4_DST_PORT, IPV4_DST_ADDR = 7, 8, 10, 11, 12
LAST_SWITCHED, FIRST_SWITCHED, IPV6_SRC_ADDR, IPV6_DST_ADDR = 21, 22, 27, 28
IN_SRC_MAC, OUT_DST_MAC, SRC_VLAN, IP_PROTOCOL_VERSION = 56, 57, 58, 60
EXPORTER_IPV4_ADDRESS = 130
# ntop's own elements (NTOP_BASE_ID 57472 + id): L7_PROTO = 57472 + 118
L7_PROTO = 57590

#: (key for IPv4 records, key for IPv6 records, record field, how it is written)
FIELDS: tuple[tuple[int, int, int, int], ...] = (
    (IP_PROTOCOL_VERSION, IP_PROTOCOL_VERSION, lib.ENC_F_IP_VERSION, lib.TLV_K_UINT),
    (IPV4_SRC_ADDR, IPV6_SRC_ADDR, lib.ENC_F_SRC_ADDR4, lib.TLV_K_ADDR),
    (IPV4_DST_ADDR, IPV6_DST_ADDR, lib.ENC_F_DST_ADDR4, lib.TLV_K_ADDR),
    (L4_SRC_PORT, L4_SRC_PORT, lib.ENC_F_SRC_PORT, lib.TLV_K_UINT),
    (L4_DST_PORT, L4_DST_PORT, lib.ENC_F_DST_PORT, lib.TLV_K_UINT),
    (PROTOCOL, PROTOCOL, lib.ENC_F_PROTOCOL, lib.TLV_K_UINT),
    (SRC_TOS, SRC_TOS, lib.ENC_F_TOS, lib.TLV_K_UINT),
    (TCP_FLAGS, TCP_FLAGS, lib.ENC_F_TCP_FLAGS, lib.TLV_K_UINT),
    (IN_BYTES, IN_BYTES, lib.ENC_F_OCTETS, lib.TLV_K_UINT),
    (IN_PKTS, IN_PKTS, lib.ENC_F_PACKETS, lib.TLV_K_UINT),
    (FIRST_SWITCHED, FIRST_SWITCHED, lib.ENC_F_START_MS, lib.TLV_K_EPOCH_S),
    (LAST_SWITCHED, LAST_SWITCHED, lib.ENC_F_END_MS, lib.TLV_K_EPOCH_S),
    (INPUT_SNMP, INPUT_SNMP, lib.ENC_F_IFINDEX, lib.TLV_K_UINT),
    (SRC_VLAN, SRC_VLAN, lib.ENC_F_VLAN, lib.TLV_K_NONZERO),
    (IN_SRC_MAC, IN_SRC_MAC, lib.ENC_F_SRC_MAC, lib.TLV_K_MAC),
    (OUT_DST_MAC, OUT_DST_MAC, lib.ENC_F_DST_MAC, lib.TLV_K_MAC),
)
EXPORTER_FIELD = (EXPORTER_IPV4_ADDRESS, EXPORTER_IPV4_ADDRESS, lib.ENC_F_ZERO,
                  lib.TLV_K_CONST_STR)
#: The application (when the engine runs DPI): L7_PROTO as "master.app"
#: (e.g. "91.126" TLS.Google), which ntopng 5.2 parses into its nDPI
#: protocol and shows instead of a port guess; "0.0" or no L7_PROTO makes it
#: guess from the ports. ntopng ignores L7_PROTO_NAME (57591) in flows (it
#: only matches it in filters), so the label is not sent. Left out of
#: records without an application (app_source FT_APP_NONE).
L7_FIELD = (L7_PROTO, L7_PROTO, lib.ENC_F_ZERO, lib.TLV_K_L7_PROTO)

#: reasons a message (and its records) is not sent
NO_SUBSCRIBER, HWM_FULL = "no_subscriber", "hwm_full"


class NtopngEncodeError(RuntimeError):
    """The C encoder refused its arguments (a bug, not bad input)."""


def header(topic: str, version: int, source_id: int, size: int, msg_id: int) -> bytes:
    """The 24-byte zmq_msg_hdr_v1 ntopng expects before a payload."""
    return HEADER.pack(topic.encode("ascii"), version, source_id, min(size, 0xFFFF),
                       struct.pack("!I", msg_id & 0xFFFFFFFF))


class TlvEncoder:
    """Record arrays -> TLV flow payloads of at most ``records_per_message``
    records (and PAYLOAD_CAP bytes) each, one C call per payload."""

    def __init__(self, records_per_message: int = 32, exporter_address: str | None = None,
                 application: bool = False):
        fields = (FIELDS + ((EXPORTER_FIELD,) if exporter_address else ())
                  + ((L7_FIELD,) if application else ()))
        self._fields = ffi.new("struct tlv_field[]", [
            {"key4": k4, "key6": k6, "field": f, "kind": kind} for k4, k6, f, kind in fields])
        self._const = ffi.new("char[]", (exporter_address or "").encode("ascii"))
        self._layout = ffi.new("struct tlv_layout *", {
            "fields": self._fields, "nfields": len(fields),
            "max_records": records_per_message, "const_str": self._const})
        self._buf = ffi.new("uint8_t[]", PAYLOAD_CAP)
        self._res = ffi.new("struct enc_result *")

    def encode(self, records, n: int) -> list[tuple[bytes, int]]:
        """Payloads for records[0..n) (a cdata ``struct ft_record[]`` or its
        address): a list of (payload, records in it)."""
        addr = records if isinstance(records, int) else int(ffi.cast("uintptr_t", records))
        size = ffi.sizeof("struct ft_record")
        out, done = [], 0
        while done < n:
            rc = lib.tlv_encode(self._layout, addr + done * size, n - done,
                                self._buf, PAYLOAD_CAP, self._res)
            if rc != 0:
                raise NtopngEncodeError(f"tlv_encode: error {rc}")
            out.append((bytes(ffi.buffer(self._buf, self._res.bytes)), self._res.consumed))
            done += self._res.consumed
        return out


def tlv_to_objects(payload: bytes) -> list[dict[str, int | str]]:
    """The records of a TLV payload as {"KEY": value} dicts (numeric keys as
    strings, as nProbe's JSON has them). Only what TlvEncoder writes: numeric
    keys, unsigned integers and strings."""
    if payload[:2] != b"\x01\x01":
        raise ValueError("not an nDPI TLV payload (version 1, format TLV)")
    sizes = {2: 1, 3: 2, 4: 4, 5: 8}
    records, cur, pos = [], {}, 2
    while pos < len(payload):
        kind = payload[pos]
        pos += 1
        if kind == 1:
            records.append(cur)
            cur = {}
            continue
        ktype, vtype = kind >> 4, kind & 15
        klen = sizes[ktype]
        key = int.from_bytes(payload[pos:pos + klen], "big")
        pos += klen
        if vtype == 11:
            slen = int.from_bytes(payload[pos:pos + 2], "big")
            value: int | str = payload[pos + 2:pos + 2 + slen].decode("ascii")
            pos += 2 + slen
        else:
            value = int.from_bytes(payload[pos:pos + sizes[vtype]], "big")
            pos += sizes[vtype]
        cur[str(key)] = value
    if cur:
        raise ValueError("TLV payload ends inside a record")
    return records


class JsonEncoder(TlvEncoder):
    """The same fields as TlvEncoder, as one JSON array per message (what
    ntopng 5.x and licensed 6.x editions read), zlib-compressed on request
    (a leading 0 byte, then the zlib stream, as nProbe sends it)."""

    def __init__(self, records_per_message: int = 32, exporter_address: str | None = None,
                 compress: bool = False, application: bool = False):
        super().__init__(records_per_message, exporter_address, application)
        self.compress = compress

    def encode(self, records, n: int) -> list[tuple[bytes, int]]:
        out = []
        for tlv, count in super().encode(records, n):
            text = json.dumps(tlv_to_objects(tlv), separators=(",", ":")).encode()
            out.append((b"\0" + zlib.compress(text) if self.compress else text, count))
        return out


class EventMessage(bytes):
    """A JSON ``event`` payload: the transport sends it under topic
    ``event`` (version 2, JSON), whatever the flow format."""


class NtopngEncoder:
    """What the Exporter needs of an encoder (exporters/exporter.py), for
    ntopng: flow payloads (TLV or JSON) and, in place of IPFIX options,
    the periodic ``event`` message. There are no templates."""

    name = "ntopng"
    sampling_rate_tmpl = None

    def __init__(self, *, zmq_format: str = "tlv", records_per_message: int = 32,
                 compress: bool = False, probe_ip: str = "0.0.0.0", iface: str = "",
                 idle_timeout_s: float = 0, active_timeout_s: float = 0,
                 exporter_address: str | None = None, application: bool = False):
        if zmq_format == "json":
            self.payloads: TlvEncoder = JsonEncoder(records_per_message, exporter_address,
                                                    compress=compress, application=application)
            self.version = VERSION_JSON
        else:
            self.payloads = TlvEncoder(records_per_message, exporter_address, application)
            self.version = VERSION_TLV
        self.clock = PacketClock(0)
        self.records_encoded = 0
        self.records_not_exportable = 0
        self.records_clamped = 0
        self.events = 0
        self._probe = dict(probe_ip=probe_ip, iface=iface, idle_timeout_s=idle_timeout_s,
                           active_timeout_s=active_timeout_s)

    def encode(self, records, n: int) -> list[tuple[bytes, int]]:
        out = self.payloads.encode(records, n)
        self.records_encoded += n
        return out

    def encode_blocks(self, records, n: int, limit=None, refresh=None):
        """One MessageBlock per payload: ZeroMQ sends message by message."""
        for payload, count in self.encode(records, n):
            yield MessageBlock.of(payload, count)

    def template_message(self) -> None:
        return None

    def options_message(self, stats: dict) -> EventMessage:
        """The ``event`` message: the engine's totals (``stats["engine"]``,
        the flow table's counters) and what this exporter could not send."""
        engine = stats.get("engine") or {}
        self.events += 1
        return EventMessage(event(
            now_s=int(time.time()), version=__version__,
            packets=int(engine.get("packets_accepted", 0)),
            octets=int(engine.get("octets_accepted", 0)),
            drops=int(stats.get("ignored_packets", 0)),
            not_sent=int(stats.get("records_not_sent", 0)), **self._probe))


class ZmqTransport(Transport):
    """An XPUB socket that binds (``zmq://HOST:PORT``: ntopng connects with
    ``-i tcp://HOST:PORT``) or connects (``zmq+connect://HOST:PORT``: to an
    ntopng that listens with ``-i "tcp://*:PORTc"``). Never blocks: a
    message nobody subscribed to is counted ``no_subscriber``, one over the
    high-water mark ``hwm_full``.

    The socket is made in open(), in the thread that sends (the pipeline's
    sender thread under ``run``), never before a fork. open() waits up to
    ``subscriber_wait_s`` for ntopng's subscription, so that the first
    records of a replay are not counted ``no_subscriber`` while ntopng is
    still (re)connecting; close() gives ZeroMQ ``close_timeout_s`` to hand
    over what it still holds."""

    name = "zmq"

    def __init__(self, url: str, *, version: int = VERSION_TLV, source_id: int = 0,
                 hwm_messages: int = 10000, subscriber_wait_s: float = 0.0,
                 close_timeout_s: float = 5.0):
        parts = urlsplit(url)
        if parts.scheme not in ("zmq", "zmq+connect") or not parts.hostname or not parts.port:
            raise ValueError(f"{url!r}: expected zmq://HOST:PORT or zmq+connect://HOST:PORT")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self.url = f"{parts.scheme}://{host}:{parts.port}"
        self.endpoint = f"tcp://{host}:{parts.port}"
        self.connect = parts.scheme == "zmq+connect"
        super().__init__()
        self.version = version
        self.source_id = source_id
        self.hwm_messages = hwm_messages
        self.subscriber_wait_s = subscriber_wait_s
        self.close_timeout_s = close_timeout_s
        self.events_sent = 0
        self.events_not_sent = 0
        self.sock = None
        self._closed = False
        self._retry_at = 0.0
        self._ids: dict[str, int] = {}
        self._topics: set[bytes] = set()   # subscription prefixes now held

    def describe(self) -> str:
        return self.url

    def open(self) -> None:
        if self._open_socket():
            deadline = time.monotonic() + self.subscriber_wait_s
            while not self.subscribed("flow") and time.monotonic() < deadline:
                self.sock.poll(50, zmq.POLLIN)

    def _open_socket(self) -> bool:
        """Bind or connect; on failure (a port still held, e.g. by the
        exporter a reload just replaced, whose socket lingers) count it, log
        it and try again at the next send or poll a second later."""
        self._retry_at = time.monotonic() + OPEN_RETRY_S
        sock = zmq.Context.instance().socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.SNDHWM, self.hwm_messages)
        sock.setsockopt(zmq.LINGER, 0)
        if self.ipv6_endpoint():
            sock.setsockopt(zmq.IPV6, 1)
        try:
            (sock.connect if self.connect else sock.bind)(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self.send_errors += 1
            self.log.warning("zmq_open_failed", endpoint=self.endpoint, error=str(exc))
            return False
        self.sock = sock
        self.streams_started += 1
        return True

    def _reopen_due(self) -> bool:
        return (self.sock is None and not self._closed
                and time.monotonic() >= self._retry_at and self._open_socket())

    def ipv6_endpoint(self) -> bool:
        return "[" in self.endpoint

    def _poll_subscriptions(self) -> None:
        while self.sock is not None:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self._topics.add(msg[1:])
            elif msg[:1] == b"\x00":
                self._topics.discard(msg[1:])

    def subscribed(self, topic: str) -> bool:
        """Whether some subscriber's prefix matches this topic's header."""
        self._poll_subscriptions()
        head = topic.encode("ascii")
        return any(head.startswith(p) for p in self._topics)

    def _send(self, topic: str, version: int, payload: bytes) -> str | None:
        """One message; None when sent, else why not (nothing was sent)."""
        if self.sock is None and not self._reopen_due():
            return "send_error"
        if not self.subscribed(topic):
            return NO_SUBSCRIBER
        msg_id = self._ids.get(topic, 0) + 1
        try:
            self.sock.send_multipart(
                [header(topic, version, self.source_id, len(payload), msg_id), payload],
                zmq.NOBLOCK)
        except zmq.Again:
            return HWM_FULL
        except zmq.ZMQError as exc:
            self.send_errors += 1
            self.log.warning("zmq_send_failed", endpoint=self.endpoint, error=str(exc))
            return "send_error"
        self._ids[topic] = msg_id
        return None

    def send(self, message: bytes, nrecords: int) -> None:
        """A flow payload (``nrecords`` records) or an EventMessage."""
        if isinstance(message, EventMessage):
            if self._send("event", VERSION_JSON, message) is None:
                self.events_sent += 1
            else:
                self.events_not_sent += 1
            return
        reason = self._send("flow", self.version, message)
        if reason is not None:
            self.not_sent(nrecords, reason)
            return
        self.messages_sent += 1
        self.bytes_sent += len(message)
        self.records_sent += nrecords

    def poll(self) -> None:
        if self.sock is None:
            self._reopen_due()
        self._poll_subscriptions()

    def close(self) -> None:
        self._closed = True
        if self.sock is not None:
            self.sock.close(linger=int(self.close_timeout_s * 1000))
            self.sock = None

    def stats(self) -> dict:
        return {**super().stats(), "events_sent": self.events_sent,
                "events_not_sent": self.events_not_sent}


def event(*, now_s: int, probe_ip: str, version: str, iface: str, packets: int,
          octets: int, drops: int, idle_timeout_s: float, active_timeout_s: float,
          not_sent: int = 0, speed_mbps: int = 0) -> bytes:
    """The JSON of an ``event`` message: what ntopng shows of a probe
    (nProbe's field names: ntopng reads ``probe``, ``iface``, ``timeout``
    and the totals)."""
    return json.dumps({
        "time": now_s, "bytes": octets, "packets": packets,
        "iface": {"name": iface, "speed": speed_mbps},
        "probe": {"ip": probe_ip, "version": f"flowprobe {version}",
                  "osname": platform.system()},
        "timeout": {"lifetime": int(active_timeout_s), "idle": int(idle_timeout_s)},
        "drops": {"export_queue_full": not_sent, "flow_collection_drops": drops},
    }, separators=(",", ":")).encode()
