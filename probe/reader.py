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
import socket
import time
from typing import Any, Callable

from flowprobe.config.schema import export_items
from flowprobe.driver.afpacket import RingError
from flowprobe.driver.capture import CaptureRing, linktype_of, open_ring
from flowprobe.errors import ExitCode
from flowprobe.exporters.exporter import exporters_for
from flowprobe.exporters.pipeline import ExportPipeline
from flowprobe.logs import get_logger
from flowprobe.probe.flowtable.table import FlowTable
from flowprobe.probe.sinks import JsonLines

#: Encoder attributes holding the export header's sequence number (IPFIX,
#: NetFlow v9, v5): carried over when a reader or an exporter is replaced, so
#: a collector sees one unbroken sequence per observation domain.
SEQUENCE_ATTRS = ("sequence", "package_sequence", "flow_sequence")

TICK_S = 0.1             # how often the clock advances without packets
IFACE_CHECK_S = 1.0      # how often a reader checks that its interface exists
#: errnos of a capture socket whose interface went down or away
IFACE_ERRNOS = (errno.ENETDOWN, errno.ENXIO, errno.ENODEV)




def build_exporter_set(cfg, export_urls: list[str], index: int, readers: int = 1):
    """Reader ``index``'s exporters (exporters_for: its own observation
    domain and file, its share of the pacing, the capture's sampling) behind
    their queues and sender threads (an ExportPipeline: the capture loop
    never waits on export), or None without destinations; config problems
    are ConfigError (exit 2)."""
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
        self.interface_gone = False
        self.progress: Callable[[], None] | None = None   # run(beat=...)
        self.final_stats: dict[str, Any] = {}
        # index: the reader's slot (observation domain); worker: its place
        # among the readers of this interface (the queue, for AF_XDP)
        self.ring: CaptureRing = open_ring(cfg, iface, index if worker is None else worker, fanout_group)
        self._ring_error = _ring_error_type()
        # readers share stdout: whole lines, at most PIPE_BUF bytes a write
        self.json_sink = JsonLines(1, shared=True) if json_out else None
        self.exporters = build_exporter_set(cfg, self.export_urls, index, readers)
        self.retired: dict[str, dict] = {}      # stats of exporters replaced by reload
        self.retiring: list = []                # replaced, still draining (own threads)
        self.table = FlowTable(cfg.flow, self._sink, ifindex=self.ring.ifindex)
        if self.exporters is not None:
            self.exporters.attach(self.table)
        self.batch = self.table.packet_batch(self.ring.block_capacity)

    def _sink(self, records, n: int) -> None:
        if self.json_sink is not None:
            self.json_sink(records, n)
        if self.exporters is not None:
            self.exporters.sink(records, n)
        if self.progress is not None:
            self.progress()     # exported: the heartbeat and held counters move on

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
        if self.retiring:
            self.reap_retiring()

    def run(self, *, beat: Callable[[], None] | None = None,
            between_blocks: Callable[[float], None] | None = None,
            stats_interval_s: float = 30.0) -> int:
        """Read until stopped or the interface is gone. ``beat`` runs every
        turn, idle or not (heartbeat and held counters);
        ``between_blocks(now)`` after each housekeeping tick (publish stats,
        read control messages)."""
        self.log.info("reader_started", linktype=self.linktype,
                      ring_block_capacity=self.ring.block_capacity)
        next_tick = time.monotonic()
        next_stats = next_tick + stats_interval_s
        next_iface_check = next_tick + IFACE_CHECK_S
        self.progress = beat
        while not self.stopping and not self.interface_gone:
            if beat is not None:
                beat()
            # Round up: truncating would poll with timeout 0, spinning
            # through the last millisecond before every tick.
            timeout_ms = max(0, math.ceil((next_tick - time.monotonic()) * 1000))
            try:
                self.read_block(timeout_ms)
            except self._ring_error as exc:
                if exc.errno not in IFACE_ERRNOS:
                    raise
                self.check_interface(exc)
                if not self.interface_gone:
                    # only down: wait out the tick rather than retry at once
                    time.sleep(max(0.0, next_tick - time.monotonic()))
            now = time.monotonic()
            if now >= next_tick:
                self.housekeeping(time.time_ns())
                if between_blocks is not None:
                    between_blocks(now)
                next_tick = now + TICK_S
            if now >= next_iface_check:
                # an interface deleted while down, or an AF_XDP socket (no
                # error reaches a sleeping reader): look for it by name
                self.check_interface(None)
                next_iface_check = now + IFACE_CHECK_S
            if now >= next_stats:
                self.log.info("reader_stats", **self.stats())
                next_stats = now + stats_interval_s
        if self.interface_gone:
            self.shutdown()
            return ExitCode.INTERFACE_GONE
        return self.shutdown()

    def check_interface(self, exc: OSError | None) -> None:
        """After ENETDOWN/ENXIO/ENODEV from the ring (``exc``) or on the
        periodic check (None): the interface is gone when no interface of
        that name has the ring's ifindex any more. A link that is only down
        is logged once (the kernel rebinds the socket when it comes back up;
        SO_ERROR was read, so the wait blocks again: no spin)."""
        if interface_index(self.iface) == self.ring.ifindex:
            if exc is not None:
                self.log.warning("interface_down", error=errno.errorcode.get(exc.errno, exc.errno))
            return
        self.interface_gone = True
        self.log.warning("interface_gone", ifindex=self.ring.ifindex,
                         error=errno.errorcode.get(exc.errno, exc.errno) if exc else None,
                         action="export every flow and exit",
                         exit_code=int(ExitCode.INTERFACE_GONE))

    def shutdown(self) -> int:
        """Drain what the ring already holds, end every flow, export, close."""
        try:
            while self.read_block(0):
                pass
        except self._ring_error as exc:
            if exc.errno not in IFACE_ERRNOS:
                raise
        if self.exporters is not None:     # the ring is done: sink() may wait now
            self.exporters.begin_drain(self.drain_timeout_s)
        self.table.expire(time.time_ns())
        self.table.flush()
        self.table.expire(0)
        if self.exporters is not None:
            self.exporters.close(self.drain_timeout_s)
        self.reap_retiring(wait=True)
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
        if _export_settings(cfg, self.export_urls, self.index, self.readers) != \
                _export_settings(self.cfg, self.export_urls, self.index, self.readers):
            self.swap_exporters(build_exporter_set(cfg, self.export_urls, self.index,
                                                   self.readers))
            changed.append("export")
        self.cfg = cfg
        return changed

    def swap_exporters(self, new) -> None:
        """Records already expired go to the old exporters, every later
        record to ``new``. The old ones drain and close in their own sender
        threads (bounded by drain_timeout_s; what they cannot send by then
        is counted as not sent, `queue_timeout`) while this reader goes on
        reading its ring: a slow or stuck collector never stalls capture."""
        self.table.expire(time.time_ns())
        old, self.exporters = self.exporters, None
        if old is not None:
            old.retire(self.drain_timeout_s)
            self.retiring.append(old)
        self.exporters = new
        if new is not None:
            new.attach(self.table)
            if old is not None:
                self.restore_sequences(_sequences_after(old))
        self.reap_retiring()

    def reap_retiring(self, wait: bool = False) -> None:
        """Fold the stats of old exporters whose drain has ended into
        ``retired`` (``wait``: at shutdown, wait for them, bounded)."""
        for old in list(self.retiring):
            if wait:
                old.join()
            if old.finished():
                self.retiring.remove(old)
                for name, st in old.stats().items():
                    prev = self.retired.get(name)
                    self.retired[name] = st if prev is None else _add(prev, st)

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
        retired = self.retired
        for old in self.retiring:          # still draining: their counts so far
            for name, st in old.stats().items():
                retired = {**retired, name: _add(retired[name], st) if name in retired else st}
        if retired:
            out["exporters_retired"] = retired
        out["sequences"] = self.export_sequences()
        return out


def _export_settings(cfg, export_urls: list[str], index: int, readers: int) -> tuple:
    """What reader ``index``'s exporters are built from (a reload rebuilds
    them when it changes)."""
    return (export_items(cfg, export_urls, index), readers,
            cfg.capture.sampling_rate, cfg.capture.sampling_mode)


def _sequences(exporters) -> dict[str, dict[str, int]]:
    return {e.name: {a: getattr(e.encoder, a) for a in SEQUENCE_ATTRS
                     if hasattr(e.encoder, a)} for e in exporters}


#: Sequence numbers a retiring exporter may still use beyond its pending
#: records: its closing options message (records, or one v9 packet).
SEQUENCE_CLOSE_MARGIN = 16


def _sequences_after(old) -> dict[str, dict[str, int]]:
    """The sequence numbers a replacement starts from: the old exporters'
    now, plus what they may still send while they drain (their pending
    records, an upper bound also for NetFlow v9's packet count, plus the
    closing options). A collector may see one gap at a reload, never a
    number twice."""
    pending = old.pending_records() if hasattr(old, "pending_records") else {}
    seqs = _sequences(old)
    return {name: {a: v + pending.get(name, 0) + SEQUENCE_CLOSE_MARGIN for a, v in d.items()}
            for name, d in seqs.items()}


def interface_index(iface: str) -> int:
    """The interface's current ifindex, or 0 when it does not exist."""
    try:
        return socket.if_nametoindex(iface)
    except OSError:
        return 0


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
