"""Exporter = encoder + transport + template policy + counters.

    exporters = build_exporters(export_items(cfg, ["ipfix://127.0.0.1:4739"]))
    table = FlowTable(flow_cfg, exporters.sink)     # sink(records_ptr, n)
    ...; table.flush(); exporters.close()

An exporter is configured by one typed `config.schema.ExportConfig` (the
schema holds the URL schemes, default ports and every default: there is no
other table here). `--export URL`, a YAML `export:` item and a mapping of
ExportConfig keys all become that object through `config.export_config`;
`replay` and each `run` reader build theirs with `build_exporters` over
`config.export_items(cfg, export_urls, reader)`. Sampling (rate and mode)
is the capture's, not the destination's, so it is a separate argument.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import structlog

from flowprobe.config.schema import ConfigError, ExportConfig, export_config, export_items
from flowprobe.exporters._encode import ffi
from flowprobe.exporters.base import MAX_BLOCK_MESSAGES, EncodeError, EncoderConfig
from flowprobe.exporters.ipfix import IpfixEncoder
from flowprobe.exporters.netflow5 import Netflow5Encoder
from flowprobe.exporters.netflow9 import Netflow9Encoder
from flowprobe.exporters.ntopng import NtopngEncoder, ZmqTransport
from flowprobe.exporters.transports import RateLimitedLog
from flowprobe.exporters.transports.file import FileTransport
from flowprobe.exporters.transports.tcp import TcpTransport
from flowprobe.exporters.transports.udp import UdpTransport

# The two explicit registries: names (ExportConfig.format / .transport) -> classes.
ENCODERS = {"netflow5": Netflow5Encoder, "netflow9": Netflow9Encoder, "ipfix": IpfixEncoder}
TRANSPORTS = {"udp": UdpTransport, "tcp": TcpTransport, "file": FileTransport,
              "zmq": ZmqTransport}

#: Export configuration problems are configuration errors (exit 2).
ExportConfigError = ConfigError


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
        self.templates_sent(now)
        self._last_options = now

    def templates_sent(self, now: float) -> None:
        self._since, self._last = 0, now

    def templates_due(self, now: float) -> bool:
        return bool((self.every_messages and self._since >= self.every_messages)
                    or (self.every_s and now - self._last >= self.every_s))

    def options_due(self, now: float) -> bool:
        return bool(self.options_every_s and now - self._last_options >= self.options_every_s)

    @property
    def since(self) -> int:
        """Data messages since the last template message."""
        return self._since

    def block_sent(self, data_messages: int, templates: int, since: int | None,
                   now: float) -> None:
        """A block went out: `templates` of its messages were the encoder's
        count refresh, `since` data messages follow the last one (None: the
        encoder refreshes nothing, so all of them count)."""
        if since is None:
            self._since += data_messages
        else:
            self._since = since
        if templates:
            self._last = now

    def count_due(self) -> bool:
        return bool(self.every_messages and self._since >= self.every_messages)

    def next_time_due(self) -> float:
        """The monotonic time at which a time trigger (templates or
        options) is next due; inf when none is set."""
        t = float("inf")
        if self.every_s:
            t = self._last + self.every_s
        if self.options_every_s:
            t = min(t, self._last_options + self.options_every_s)
        return t

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
        engine = self._engine()
        s["ignored_packets"] = self._ignored_packets(engine)
        s["engine"] = engine        # ntopng's event message shows the totals
        return s

    def _engine(self) -> dict:
        if self.engine_stats is None:
            return {}
        try:
            return self.engine_stats() or {}
        except Exception as e:  # engine stats must never stop the export
            self.log.warning("engine_stats_failed", error=str(e))
            return {}

    def _ignored_packets(self, st: dict | None = None) -> int:
        st = self._engine() if st is None else st
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
            # the template triggers start over (NetFlow v5 has none to send);
            # the options timer runs on: a refresh is not a new stream
            self.policy.templates_sent(now)
        if self._options_pending or self.policy.options_due(now):
            self._send_options(now)

    def _block_limit(self) -> int:
        """Messages the next block may hold: a time trigger already due
        gets a block of one, then its turn, as it would one message at a
        time (the count trigger is the encoder's, inside the blocks)."""
        if time.monotonic() >= self.policy.next_time_due():
            return 1
        return MAX_BLOCK_MESSAGES

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
            send, policy, clock = self.transport.send_block, self.policy, time.monotonic
            time_due = policy.next_time_due()
            for block in self.encoder.encode_blocks(address, n, self._block_limit, policy):
                send(block)
                handed += block.records
                if block.templates:
                    self.template_sends += block.templates
                policy.block_sent(len(block.lens) - block.templates, block.templates,
                                  block.since, clock())
                # after the send: a header built now takes the next sequence.
                # (_maybe_refresh() only when one of its triggers may fire:
                # the count trigger when the block had no room left for it.)
                if policy.count_due() or self._options_pending or clock() >= time_due:
                    self._maybe_refresh()
                    time_due = policy.next_time_due()
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
def build_exporter(item: ExportConfig | str | dict, *, sampling_interval: int = 1,
                   sampling_mode: str = "deterministic", engine_stats=None,
                   probe: dict | None = None, readers: int = 1,
                   application: bool = False) -> Exporter:
    """One exporter from its typed config (a URL or a mapping goes through
    the schema first, config.export_config). Every setting comes from the
    ExportConfig; ``sampling_*``: the capture's packet sampling, reported in
    the options records; ``probe``: what ntopng's event message says of the
    probe (iface, idle_timeout_s, active_timeout_s); ``readers``: how many
    processes share each destination's ``rate_msgs_s`` (each paces at its
    share); ``application``: the flow engine labels flows (flow.dpi), so
    IPFIX/v9 templates and ntopng records carry the application (without
    it every message is as before DPI existed). ConfigError if the
    destination is unusable."""
    ec = export_config(item)
    enc_name, tr_name = ec.format, ec.transport
    if tr_name == "zmq":
        return build_ntopng_exporter(ec, engine_stats=engine_stats, probe=probe,
                                     application=application)
    cfg = EncoderConfig(
        mtu=ec.mtu,
        domain_id=ec.observation_domain,
        engine_id=ec.observation_domain & 0xFF,   # NetFlow v5 header
        sampling_interval=sampling_interval,
        sampling_mode=sampling_mode,
        application=application,
    )
    try:
        encoder = ENCODERS[enc_name](cfg)
    except EncodeError as e:
        raise ConfigError([f"export {ec.url}: {e}"]) from None
    if tr_name == "udp":
        transport = UdpTransport(ec.host, ec.port,
                                 rate_msgs_s=ec.rate_msgs_s / max(1, readers),
                                 gso=ec.udp_gso)
        policy = TemplatePolicy(every_messages=ec.template_refresh_messages,
                                every_s=ec.template_refresh_s,
                                options_every_s=ec.options_interval_s)
    elif tr_name == "tcp":
        transport = TcpTransport(ec.host, ec.port, max_buffer_bytes=ec.max_buffer_bytes,
                                 backoff_max_s=ec.backoff_max_s,
                                 close_timeout_s=ec.close_timeout_s)
        policy = TemplatePolicy(options_every_s=ec.options_interval_s)
    else:
        transport = FileTransport(ec.path, rotate_bytes=ec.rotate_bytes, rotate_s=ec.rotate_s)
        policy = TemplatePolicy(options_every_s=ec.options_interval_s)
    name = f"{enc_name}+{transport.describe()}"
    exporter = Exporter(name, encoder, transport, policy, engine_stats)
    exporter.queue_bytes = ec.queue_bytes
    return exporter


def build_exporters(items: Iterable[ExportConfig | str | dict], *, sampling_interval: int = 1,
                    sampling_mode: str = "deterministic", engine_stats=None,
                    open_now: bool = True, probe: dict | None = None,
                    readers: int = 1, application: bool = False) -> ExporterSet:
    """Build (and open) every exporter: the one way `replay` and `run`'s
    readers make theirs. Config errors are collected and raised together
    (ConfigError, each message naming its item), before anything is opened."""
    built, errors = [], []
    for i, item in enumerate(items or ()):
        try:
            built.append(build_exporter(export_config(item, f"export[{i}]"),
                                        sampling_interval=sampling_interval,
                                        sampling_mode=sampling_mode,
                                        engine_stats=engine_stats, probe=probe,
                                        readers=readers, application=application))
        except ConfigError as e:
            errors.extend(e.messages)
    if errors:
        raise ConfigError(errors)
    s = ExporterSet(built)
    if open_now:
        s.open()
    return s


def exporters_for(cfg, export_urls: Iterable[str] = (), reader: int | None = None, *,
                  open_now: bool = True, readers: int = 1) -> ExporterSet | None:
    """The exporters of a whole run, or None without destinations: `replay`
    (``reader`` None: no packet sampling) and `run`'s reader ``reader`` (its
    own observation domain and file, the capture's sampling) both come here.
    ``cfg`` is the whole Config; ``export_urls`` the `--export` URLs.
    ``rate_msgs_s`` is the probe's rate to a destination: each of ``readers``
    paces at its share, so that together they never exceed it."""
    items = export_items(cfg, list(export_urls), reader)
    if not items:
        return None
    sampling = ({} if reader is None else
                {"sampling_interval": cfg.capture.sampling_rate,
                 "sampling_mode": cfg.capture.sampling_mode})
    probe = {"iface": cfg.capture.interface or ("replay" if reader is None else ""),
             "idle_timeout_s": cfg.flow.idle_timeout_s,
             "active_timeout_s": cfg.flow.active_timeout_s}
    return build_exporters(items, open_now=open_now, probe=probe, readers=readers,
                           application=cfg.flow.dpi, **sampling)


def build_ntopng_exporter(ec: ExportConfig, *, engine_stats=None,
                          probe: dict | None = None, application: bool = False) -> Exporter:
    """ntopng over ZeroMQ (zmq:// binds, zmq+connect:// connects): flow
    payloads as TLV or JSON, and the periodic ``event`` message where the
    other formats send options records (every ``event_interval_s``)."""
    probe = probe or {}
    encoder = NtopngEncoder(zmq_format=ec.zmq_format,
                            records_per_message=ec.records_per_message,
                            compress=ec.compress, probe_ip=_probe_ip(ec),
                            iface=str(probe.get("iface", "")),
                            idle_timeout_s=probe.get("idle_timeout_s", 0),
                            active_timeout_s=probe.get("active_timeout_s", 0),
                            exporter_address=ec.exporter_address or None,
                            application=application)
    transport = ZmqTransport(ec.url, version=encoder.version, source_id=ec.source_id,
                             hwm_messages=ec.hwm_messages,
                             subscriber_wait_s=ec.subscriber_wait_s,
                             close_timeout_s=ec.close_timeout_s)
    policy = TemplatePolicy(options_every_s=ec.event_interval_s)
    exporter = Exporter(f"ntopng-{ec.zmq_format}+{transport.describe()}", encoder,
                        transport, policy, engine_stats)
    exporter.queue_bytes = ec.queue_bytes
    return exporter


def _probe_ip(ec: ExportConfig) -> str:
    """The probe's address in event messages: the address ntopng reaches
    it at when flowprobe binds one, else unknown."""
    host = ec.host or ""
    if ec.scheme == "zmq" and host and all(c.isdigit() or c == "." for c in host):
        return host
    return "0.0.0.0"
