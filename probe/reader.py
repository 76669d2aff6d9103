"""The live reader: one capture ring -> flow table -> exporters.

The loop, per ring block: wait (poll, with a timeout up to the next
housekeeping deadline), hand the whole block to the flow table in one C
call, give the block back; between blocks, on a timer, advance the table's
clock to the wall clock (idle flows expire even when no packets arrive),
tick the exporters (template refresh), beat the heartbeat and publish
stats. A stop request only sets a flag: the reader finishes its block, ends
every flow, exports, flushes its transports and returns ExitCode.OK.

A reader runs in its own process under the supervisor (probe/readerproc.py);
``reload(cfg)`` applies a new config in place: filter, flow timeouts and
exporters change without losing a flow.
"""
from __future__ import annotations

import errno
import math
import time
from typing import Any, Callable

from flowprobe.config.schema import export_items, per_reader_url  # noqa: F401 (re-exported)
from flowprobe.driver.ring import Ring, RingError
from flowprobe.driver.xsk import XdpProgram, XskRing, capture_queues
from flowprobe.errors import CaptureSetupError, ExitCode
from flowprobe.exporters.exporter import exporters_for
from flowprobe.exporters.pipeline import ExportPipeline
from flowprobe.logs import get_logger
from flowprobe.probe.flowtable.table import FlowTable
from flowprobe.probe.sinks import JsonLines

#: ARPHRD_* of the capture interface -> the link type of what the ring hands
#: out (SOCK_RAW packet sockets deliver the device's link-layer header).
ARPHRD_LINKTYPE = {1: 1, 772: 1, 65534: 101}

#: Encoder attributes holding the export header's sequence number (IPFIX,
#: NetFlow v9, v5): carried over when a reader or an exporter is replaced, so
#: a collector sees one unbroken sequence per observation domain.
SEQUENCE_ATTRS = ("sequence", "package_sequence", "flow_sequence")

TICK_S = 0.1             # how often the clock advances without packets


def linktype_of(iface: str) -> int:
    """The link type a ring on ``iface`` delivers, or CaptureSetupError."""
    try:
        with open(f"/sys/class/net/{iface}/type") as fh:
            arphrd = int(fh.read())
    except OSError:
        raise CaptureSetupError(f"{iface}: no such interface") from None
    if arphrd not in ARPHRD_LINKTYPE:
        raise CaptureSetupError(f"{iface}: unsupported device type {arphrd} "
                                f"(expected Ethernet, loopback or raw IP)")
    return ARPHRD_LINKTYPE[arphrd]


def open_ring(cfg, iface: str, index: int, fanout_group: int = 0):
    """The one factory of capture rings (reader ``index`` on ``iface``).

    Today a TPACKET_V3 ring; a ``capture.backend`` option (AF_XDP, queue =
    index) plugs in here. Raises CaptureSetupError with the interface named.
    """
    try:
        if getattr(cfg.capture, "backend", "afpacket") == "afxdp":
            queues = capture_queues(cfg.capture, iface)
            if index >= len(queues):
                raise ValueError(f"reader {index} has no queue: afxdp captures "
                                 f"{len(queues)} RX queue(s), one reader each")
            queue = queues[index]
            return XskRing.from_config(cfg.capture, iface, queue=queue)
        return Ring.from_config(cfg.capture, iface, fanout_group=fanout_group)
    except (RingError, OSError, ValueError) as exc:
        raise CaptureSetupError(f"{iface}: cannot open capture ring: {exc}") from None


def rings_per_interface(cfg, iface: str, workers: int) -> int:
    """How many readers ``iface`` gets: ``workers`` TPACKET_V3 rings in one
    fanout group, or with AF_XDP one reader per captured RX queue."""
    if getattr(cfg.capture, "backend", "afpacket") != "afxdp":
        return workers
    try:
        return len(capture_queues(cfg.capture, iface))
    except (OSError, ValueError) as exc:
        raise CaptureSetupError(f"{iface}: {exc}") from None


def attach_shared_programs(cfg, ifaces: list[str]) -> list:
    """With AF_XDP, attach the redirect program once per interface, owned by
    the caller (the supervisor) for its lifetime, so that a reader restart on
    one queue never detaches the program under the other queues. Close the
    returned handles to detach. Nothing to do for TPACKET_V3."""
    if getattr(cfg.capture, "backend", "afpacket") != "afxdp":
        return []
    programs = []
    try:
        for iface in ifaces:
            programs.append(XdpProgram.attach(
                iface, queues=max(capture_queues(cfg.capture, iface)) + 1,
                mode=cfg.capture.xdp_mode))
    except (OSError, ValueError) as exc:
        for prog in programs:
            prog.close()
        raise CaptureSetupError(f"cannot attach XDP program: {exc}") from None
    return programs


def build_exporter_set(cfg, export_urls: list[str], index: int, readers: int = 1):
    """Reader ``index``'s exporters (exporters_for: its own observation
    domain and file, its share of each destination's rate, the capture's
    sampling) behind their queues and sender threads (an ExportPipeline:
    the capture loop never waits on export), or None without destinations;
    config problems are ConfigError (exit 2)."""
    exporters = exporters_for(cfg, export_urls, index, readers=readers)
    return ExportPipeline(exporters) if exporters is not None else None


class Reader:
    """One ring, one flow table, its own exporters."""

    def __init__(self, cfg, iface: str, *, index: int = 0, worker: int | None = None,
                 export_urls: list[str] = (), json_out: bool = False,
                 fanout_group: int = 0, log: Any = None, readers: int = 1) -> None:
        self.cfg = cfg
        self.readers = readers
        self.iface = iface
        self.index = index
        self.export_urls = list(export_urls)
        self.linktype = linktype_of(iface)
        self.log = log or get_logger(iface=iface, ring=index)
        self.stopping = False
        self.final_stats: dict[str, Any] = {}
        # index: the reader's slot (observation domain); worker: its place
        # among the readers of this interface (the queue, for AF_XDP)
        self.ring = open_ring(cfg, iface, index if worker is None else worker, fanout_group)
        self._ring_error = _ring_error_type()
        # readers share stdout: whole lines, at most PIPE_BUF bytes a write
        self.json_sink = JsonLines(1, shared=True) if json_out else None
        self.exporters = build_exporter_set(cfg, self.export_urls, index, readers)
        self.retired: dict[str, dict] = {}      # stats of exporters replaced by reload
        self.table = FlowTable(cfg.flow, self._sink, ifindex=self.ring.ifindex)
        if self.exporters is not None:
            self.exporters.attach(self.table)
        self.batch = self.table.packet_batch(self.ring.block_capacity)

    def _sink(self, records, n: int) -> None:
        if self.json_sink is not None:
            self.json_sink(records, n)
        if self.exporters is not None:
            self.exporters.sink(records, n)

    # -- the loop ------------------------------------------------------
    def read_block(self, timeout_ms: int) -> int:
        """Ingest one block (all of it) if one is ready; returns packets."""
        total = 0
        while True:
            try:
                n = self.ring.next_block(self.batch.address, self.batch.cap, timeout_ms)
            except self._ring_error as exc:
                if exc.errno == errno.EINTR:
                    return total
                raise
            if n:
                self.table.ingest(self.linktype, self.batch, n)
                total += n
            if self.ring.release_block():
                return total

    @property
    def drain_timeout_s(self) -> float:
        """How long the exporters may drain their queues at shutdown: half
        the supervisor's grace, so the reader still exits in time."""
        return self.cfg.supervisor.graceful_timeout_s / 2

    def housekeeping(self, now_ns: int) -> None:
        self.table.expire(now_ns)
        if self.exporters is not None:
            self.exporters.tick(now_ns)

    def run(self, *, beat: Callable[[], None] | None = None,
            between_blocks: Callable[[float], None] | None = None,
            stats_interval_s: float = 30.0) -> int:
        """Read until stopped. ``beat`` runs every turn (heartbeat);
        ``between_blocks(now)`` after each housekeeping tick (publish stats,
        read control messages)."""
        self.log.info("reader_started", linktype=self.linktype,
                      ring_block_capacity=self.ring.block_capacity)
        next_tick = time.monotonic()
        next_stats = next_tick + stats_interval_s
        while not self.stopping:
            if beat is not None:
                beat()
            # Round up: truncating would poll with timeout 0, spinning
            # through the last millisecond before every tick.
            timeout_ms = max(0, math.ceil((next_tick - time.monotonic()) * 1000))
            self.read_block(timeout_ms)
            now = time.monotonic()
            if now >= next_tick:
                self.housekeeping(time.time_ns())
                if between_blocks is not None:
                    between_blocks(now)
                next_tick = now + TICK_S
            if now >= next_stats:
                self.log.info("reader_stats", **self.stats())
                next_stats = now + stats_interval_s
        return self.shutdown()

    def shutdown(self) -> int:
        """Drain what the ring already holds, end every flow, export, close."""
        while self.read_block(0):
            pass
        if self.exporters is not None:     # the ring is done: sink() may wait now
            self.exporters.begin_drain(self.drain_timeout_s)
        self.table.expire(time.time_ns())
        self.table.flush()
        self.table.expire(0)
        if self.exporters is not None:
            self.exporters.close(self.drain_timeout_s)
        stats = self.final_stats = self.stats()
        self.ring.close()
        self.log.info("reader_stopped", **stats)
        return ExitCode.OK

    # -- reload ----------------------------------------------------------
    def reload(self, cfg) -> list[str]:
        """Apply ``cfg`` in place (filter, flow timeouts, exporters); returns
        what changed. Raises on a bad new setting, leaving that part as it was."""
        changed = []
        if cfg.capture.filter != self.cfg.capture.filter:
            self.ring.set_filter(cfg.capture.filter)
            changed.append("capture.filter")
        if cfg.flow != self.cfg.flow:
            self.table.set_timeouts(cfg.flow)
            changed.append("flow")
        if _export_settings(cfg, self.export_urls, self.index) != \
                _export_settings(self.cfg, self.export_urls, self.index):
            self.swap_exporters(build_exporter_set(cfg, self.export_urls, self.index,
                                                   self.readers))
            changed.append("export")
        self.cfg = cfg
        return changed

    def swap_exporters(self, new) -> None:
        """Records already expired go to the old exporters, which are then
        flushed and closed; every later record goes to ``new``."""
        self.table.expire(time.time_ns())
        old, self.exporters = self.exporters, None
        if old is not None:
            old.close(self.drain_timeout_s)
            for name, st in old.stats().items():
                prev = self.retired.get(name)
                self.retired[name] = st if prev is None else _add(prev, st)
        self.exporters = new
        if new is not None:
            new.attach(self.table)
            if old is not None:
                self.restore_sequences(_sequences(old))

    def export_sequences(self) -> dict[str, dict[str, int]]:
        return _sequences(self.exporters) if self.exporters is not None else {}

    def restore_sequences(self, sequences: dict[str, dict[str, int]]) -> None:
        """Continue the sequence numbers of a previous reader in this slot."""
        for e in self.exporters or ():
            for attr, value in sequences.get(e.name, {}).items():
                if attr in SEQUENCE_ATTRS and hasattr(e.encoder, attr):
                    setattr(e.encoder, attr, int(value))

    def stats(self) -> dict[str, Any]:
        out = {"ring": self.ring.stats(), "table": self.table.stats()}
        if self.exporters is not None:
            out["exporters"] = self.exporters.stats()
        if self.retired:
            out["exporters_retired"] = self.retired
        out["sequences"] = self.export_sequences()
        return out


def _export_settings(cfg, export_urls: list[str], index: int) -> tuple:
    """What reader ``index``'s exporters are built from (a reload rebuilds
    them when it changes)."""
    return (export_items(cfg, export_urls, index),
            cfg.capture.sampling_rate, cfg.capture.sampling_mode)


def _sequences(exporters) -> dict[str, dict[str, int]]:
    return {e.name: {a: getattr(e.encoder, a) for a in SEQUENCE_ATTRS
                     if hasattr(e.encoder, a)} for e in exporters}


def _ring_error_type() -> type:
    return RingError


def _add(a: Any, b: Any) -> Any:
    """Counter-wise sum of two nested stats dicts (other values: b's)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _add(a[k], b[k]) if k in a and k in b else b.get(k, a.get(k))
                for k in {**a, **b}}
    if type(a) in (int, float) and type(b) in (int, float):
        return a + b
    return b
