"""Exporter = encoder + transport + template policy + counters.

    exporters = build_exporters(["ipfix://127.0.0.1:4739", cfg_dict, ...])
    table = FlowTable(flow_cfg, exporters.sink)     # sink(records_ptr, n)
    ...; table.flush(); exporters.close()

URL schemes (SCHEMES): ipfix:// (UDP), ipfix+tcp://, ipfix+file:///PATH,
netflow9://, netflow5://. Options go in the query string or a config
mapping: mtu, observation_domain, rate_msgs_s, template_refresh_messages,
template_refresh_s, options_interval_s, max_buffer_bytes, backoff_max_s,
close_timeout_s, rotate_bytes, rotate_s, queue_bytes, sampling_interval, sampling_mode
(deterministic|random), engine_id,
engine_type, exporting_process_id.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

import structlog

from flowprobe.exporters._encode import ffi
from flowprobe.exporters.base import EncodeError, EncoderConfig
from flowprobe.exporters.ipfix import IpfixEncoder
from flowprobe.exporters.netflow5 import Netflow5Encoder
from flowprobe.exporters.netflow9 import Netflow9Encoder
from flowprobe.exporters.options import SAMPLING_MODES
from flowprobe.exporters.transports import RateLimitedLog
from flowprobe.exporters.transports.file import FileTransport
from flowprobe.exporters.transports.tcp import TcpTransport
from flowprobe.exporters.transports.udp import DEFAULT_RATE_MSGS_S, UdpTransport

# The two explicit registries.
ENCODERS = {"netflow5": Netflow5Encoder, "netflow9": Netflow9Encoder, "ipfix": IpfixEncoder}
TRANSPORTS = {"udp": UdpTransport, "tcp": TcpTransport, "file": FileTransport}
# URL scheme -> (encoder, transport)
SCHEMES = {
    "ipfix": ("ipfix", "udp"),
    "ipfix+udp": ("ipfix", "udp"),
    "ipfix+tcp": ("ipfix", "tcp"),
    "ipfix+file": ("ipfix", "file"),
    "netflow9": ("netflow9", "udp"),
    "netflow5": ("netflow5", "udp"),
}
DEFAULT_PORTS = {"ipfix": 4739, "netflow9": 2055, "netflow5": 2055}
# Options data (sampling, statistics) period. nfdump 1.7.1 does not count
# options data records in its IPFIX sequence check (RFC 7011 and tshark do),
# so each periodic options message shows there as one sequence failure.
DEFAULT_OPTIONS_INTERVAL_S = 60.0


class ExportConfigError(ValueError):
    pass


@dataclass
class TemplatePolicy:
    """When templates (and the options data that follows them) are sent.

    Every new stream (UDP socket, TCP connection, file) starts with them; on
    UDP they are also resent every `every_messages` data messages or
    `every_s` seconds, whichever comes first (0 disables that trigger).
    Options data alone is sent every `options_every_s` on any transport.
    """
    every_messages: int = 0
    every_s: float = 0.0
    options_every_s: float = 60.0
    _since: int = 0
    _last: float = 0.0
    _last_options: float = 0.0

    def stream_started(self, now: float) -> None:
        self._since, self._last, self._last_options = 0, now, now

    def templates_due(self, now: float) -> bool:
        return bool((self.every_messages and self._since >= self.every_messages)
                    or (self.every_s and now - self._last >= self.every_s))

    def options_due(self, now: float) -> bool:
        return bool(self.options_every_s and now - self._last_options >= self.options_every_s)

    def data_sent(self) -> None:
        self._since += 1

    def options_sent(self, now: float) -> None:
        self._last_options = now


def _address(records) -> int:
    if isinstance(records, int):
        return records
    return int(ffi.cast("uintptr_t", records))


class Exporter:
    def __init__(self, name: str, encoder, transport, policy: TemplatePolicy,
                 engine_stats: Callable[[], dict] | None = None):
        self.name = name
        self.encoder = encoder
        self.transport = transport
        self.policy = policy
        self.engine_stats = engine_stats
        self.template_sends = 0
        self.options_sends = 0
        self.encode_errors = 0
        self.records_handed = 0
        self.closed = False
        self.extra_not_sent = None      # () -> records dropped before this exporter
        self.queue_bytes = 0            # the pipeline's queue (0: default)
        self._transport_open = False
        self._options_pending = False
        self.log = RateLimitedLog(structlog.get_logger("flowprobe.export").bind(exporter=name))
        transport.on_stream_start = self._stream_start

    # -- template/options policy --------------------------------------------
    def _stream_start(self, head: bytes | None):
        """The template message that opens a stream. `head`: the first
        buffered message (TCP), whose sequence number the templates take."""
        msg = self.encoder.template_message()
        if msg is None:
            return None
        self.template_sends += 1
        now = time.monotonic()
        self.policy.stream_started(now)
        # when sampling, options data (the rate) follow as soon as the
        # exporter has control again: nfdump scales a flow only if it knew
        # the rate when the flow arrived. Not otherwise: an options message
        # after flow data is a sequence failure for nfdump (README).
        self._options_pending = self.encoder.sampling_rate_tmpl is not None
        if head is not None and self.encoder.name == "ipfix":
            msg = msg[:8] + head[8:12] + msg[12:]
        return msg

    def _send_options(self, now: float) -> None:
        self._options_pending = False
        msg = self.encoder.options_message(self._stats_for_options())
        if msg is not None:
            self.options_sends += 1
            self.transport.send(msg, 0)
        self.policy.options_sent(now)

    def _stats_for_options(self) -> dict:
        s = self.transport.stats()
        if self.extra_not_sent is not None:      # the pipeline's queue drops
            s["records_not_sent"] += self.extra_not_sent()
        s["ignored_packets"] = self._ignored_packets()
        return s

    def _ignored_packets(self) -> int:
        if self.engine_stats is None:
            return 0
        try:
            st = self.engine_stats() or {}
        except Exception as e:  # engine stats must never stop the export
            self.log.warning("engine_stats_failed", error=str(e))
            return 0
        if "ignored_packets" in st:
            return int(st["ignored_packets"])
        skipped = st.get("skipped", 0)
        if isinstance(skipped, dict):
            return int(sum(skipped.values()))
        if isinstance(skipped, (list, tuple)):
            return int(sum(skipped))
        return int(skipped or st.get("packets_skipped", 0))

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if self.policy.templates_due(now):
            msg = self.encoder.template_message()
            if msg is not None:
                self.template_sends += 1
                self.transport.send(msg, 0)
                self.policy.stream_started(now)
        if self._options_pending or self.policy.options_due(now):
            self._send_options(now)

    # -- data path -------------------------------------------------------------
    def open(self) -> None:
        """Ready to export. The transport opens with the first records (or a
        tick with a time), so the template message opening the stream
        carries the packet clock, not 1970."""

    def _open_transport(self) -> None:
        self._transport_open = True
        self.transport.open()

    def sink(self, records, n: int) -> None:
        """Called by the flow table with a `struct ft_record *` and a count."""
        if n <= 0:
            return
        self.records_handed += n
        if self.closed:
            # Records reaching an exporter already closed (e.g. replaced by
            # a reload) are counted, never dropped silently.
            self.transport.not_sent(n, "exporter_closed")
            return
        handed = 0
        skipped_before = self.encoder.records_not_exportable
        try:
            address = _address(records)
            if not self._transport_open:
                self.encoder.clock.observe(address, n)
                self._open_transport()
            if self._options_pending:
                self._send_options(time.monotonic())
            for msg, nrec in self.encoder.encode(address, n):
                self.transport.send(msg, nrec)
                handed += nrec
                self.policy.data_sent()
                # after the send: a header built now takes the next sequence
                self._maybe_refresh()
        except Exception as e:  # never let an export bug stop the engine
            self.encode_errors += 1
            skipped = self.encoder.records_not_exportable - skipped_before
            self.transport.not_sent(max(0, n - handed - skipped), "encoder_error")
            self.log.warning("export_encode_failed", error=str(e))
        self.transport.push()

    def attach(self, table) -> None:
        """Take the engine's counters (ignored packets) from a FlowTable."""
        if self.engine_stats is None:
            self.engine_stats = table.stats

    def tick(self, now_ns: int = 0) -> None:
        """Housekeeping without records (live readers call it on a timer)."""
        if now_ns:
            self.encoder.clock.advance(now_ns // 1_000_000)
            if not self._transport_open:
                self._open_transport()
        if self._transport_open:
            self.transport.poll()
            self._maybe_refresh()
            self.transport.push()

    def close(self) -> None:
        if self.closed:
            return
        if self._transport_open:
            self._send_options(time.monotonic())
            self.transport.close()
        self.closed = True

    def stats(self) -> dict:
        t = self.transport.stats()
        e = self.encoder
        return {
            "messages": t["messages"],
            "bytes": t["bytes"],
            "records_handed": self.records_handed,
            "records_encoded": e.records_encoded,
            "records_exported": t["records_exported"],
            "records_not_sent": t["records_not_sent"],
            "records_not_sent_by": t["records_not_sent_by"],
            "records_pending": t["records_pending"],
            "records_not_exportable": e.records_not_exportable,
            "records_clamped": e.records_clamped,
            "send_errors": t["send_errors"],
            "template_sends": self.template_sends,
            "options_sends": self.options_sends,
            "encode_errors": self.encode_errors,
            "transport": t,
        }


class ExporterSet:
    """Several exporters behind one sink (fan-out)."""

    def __init__(self, exporters: list):
        self.exporters = exporters

    def __iter__(self):
        return iter(self.exporters)

    def __len__(self):
        return len(self.exporters)

    def open(self):
        for e in self.exporters:
            e.open()

    def sink(self, records, n):
        addr = _address(records)
        for e in self.exporters:
            e.sink(addr, n)

    def attach(self, table):
        for e in self.exporters:
            e.attach(table)

    def tick(self, now_ns: int = 0):
        for e in self.exporters:
            e.tick(now_ns)

    def close(self):
        for e in self.exporters:
            e.close()

    def stats(self) -> dict:
        return {e.name: e.stats() for e in self.exporters}


# -- construction ------------------------------------------------------------
def _opts(item) -> dict:
    if isinstance(item, str):
        return {"url": item}
    if isinstance(item, dict):
        return dict(item)
    return {k: getattr(item, k) for k in dir(item)
            if not k.startswith("_") and not callable(getattr(item, k))}


def parse_url(url: str) -> dict:
    """URL -> {'encoder','transport','host','port'|'path', **query options}."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ExportConfigError(
            f"export URL {url!r}: unknown scheme {scheme!r} "
            f"(expected one of: {', '.join(s + '://' for s in sorted(SCHEMES))})")
    enc, tr = SCHEMES[scheme]
    out = {"encoder": enc, "transport": tr}
    if tr == "file":
        path = parts.path or parts.netloc
        if not path:
            raise ExportConfigError(f"export URL {url!r}: missing file path")
        out["path"] = path
    else:
        if not parts.hostname:
            raise ExportConfigError(f"export URL {url!r}: missing host")
        out["host"] = parts.hostname
        try:
            out["port"] = parts.port or DEFAULT_PORTS[enc]
        except ValueError as e:
            raise ExportConfigError(f"export URL {url!r}: {e}") from None
    for k, v in parse_qsl(parts.query):
        out[k] = v
    return out


def _num(d, key, default, kind=int):
    v = d.get(key, default)
    try:
        return kind(v)
    except (TypeError, ValueError):
        raise ExportConfigError(f"export option {key}: not a number: {v!r}") from None


def build_exporter(item, engine_stats=None) -> Exporter:
    o = _opts(item)
    if "url" in o and o["url"]:
        o = {**parse_url(o["url"]), **{k: v for k, v in o.items() if k != "url"}}
    enc_name, tr_name = o.get("encoder"), o.get("transport")
    if enc_name not in ENCODERS:
        raise ExportConfigError(f"unknown encoder {enc_name!r} (expected: {', '.join(sorted(ENCODERS))})")
    if tr_name not in TRANSPORTS:
        raise ExportConfigError(f"unknown transport {tr_name!r} (expected: {', '.join(sorted(TRANSPORTS))})")
    if enc_name == "netflow5" and tr_name != "udp":
        raise ExportConfigError("netflow5 is exported over udp only")
    cfg = EncoderConfig(
        mtu=_num(o, "mtu", 1400 if tr_name == "udp" else 65000),
        domain_id=_num(o, "observation_domain", 0),
        engine_type=_num(o, "engine_type", 0),
        engine_id=_num(o, "engine_id", 0),
        sampling_interval=_num(o, "sampling_interval", 1),
        sampling_mode=str(o.get("sampling_mode") or "deterministic"),
        exporting_process_id=_num(o, "exporting_process_id", 0),
    )
    if cfg.sampling_mode not in SAMPLING_MODES:
        raise ExportConfigError(f"sampling_mode {cfg.sampling_mode!r} "
                                f"(expected: {', '.join(SAMPLING_MODES)})")
    if cfg.sampling_interval < 1:
        raise ExportConfigError(f"sampling_interval {cfg.sampling_interval}: must be >= 1")
    if tr_name == "udp" and cfg.mtu > 65507:
        raise ExportConfigError(f"mtu {cfg.mtu}: a UDP payload is at most 65507 bytes")
    try:
        encoder = ENCODERS[enc_name](cfg)
    except EncodeError as e:
        raise ExportConfigError(str(e)) from None
    if tr_name == "udp":
        transport = UdpTransport(o["host"], int(o["port"]),
                                 rate_msgs_s=_num(o, "rate_msgs_s", DEFAULT_RATE_MSGS_S, float))
        policy = TemplatePolicy(every_messages=_num(o, "template_refresh_messages", 64),
                                every_s=_num(o, "template_refresh_s", 10.0, float),
                                options_every_s=_num(o, "options_interval_s", DEFAULT_OPTIONS_INTERVAL_S, float))
    elif tr_name == "tcp":
        transport = TcpTransport(o["host"], int(o["port"]),
                                 max_buffer_bytes=_num(o, "max_buffer_bytes", 4 << 20),
                                 backoff_max_s=_num(o, "backoff_max_s", 30.0, float),
                                 close_timeout_s=_num(o, "close_timeout_s", 5.0, float))
        policy = TemplatePolicy(options_every_s=_num(o, "options_interval_s", DEFAULT_OPTIONS_INTERVAL_S, float))
    else:
        transport = FileTransport(o["path"], rotate_bytes=_num(o, "rotate_bytes", 0),
                                  rotate_s=_num(o, "rotate_s", 0.0, float))
        policy = TemplatePolicy(options_every_s=_num(o, "options_interval_s", DEFAULT_OPTIONS_INTERVAL_S, float))
    name = o.get("name") or f"{enc_name}+{transport.describe()}"
    exporter = Exporter(name, encoder, transport, policy, engine_stats)
    exporter.queue_bytes = _num(o, "queue_bytes", 0)
    return exporter


def build_exporters(urls_or_configs, engine_stats=None, open_now: bool = True) -> ExporterSet:
    """Build (and open) every exporter; config errors are collected and raised
    together, before anything is opened."""
    built, errors = [], []
    for i, item in enumerate(urls_or_configs or []):
        try:
            built.append(build_exporter(item, engine_stats))
        except ExportConfigError as e:
            errors.append(f"export[{i}]: {e}")
    if errors:
        raise ExportConfigError("; ".join(errors))
    s = ExporterSet(built)
    if open_now:
        s.open()
    return s
