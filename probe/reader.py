"""The live reader: one TPACKET_V3 ring -> flow table -> exporters.

The loop, per ring block: wait (poll), hand the whole block to the flow
table in one C call, give the block back; between blocks, on a timer,
advance the table's clock to the wall clock (idle flows expire even when
no packets arrive), tick the exporters and log stats. SIGINT/SIGTERM only
set a flag: the reader finishes its block, ends every flow, exports,
flushes its transports and exits 0.
"""
from __future__ import annotations

import argparse
import errno
import signal
import sys
import time
from typing import Any

from flowprobe.probe.errors import CaptureSetupError, ExitCode
from flowprobe.probe.flowtable.table import FlowTable, Sink
from flowprobe.probe.logs import get_logger
from flowprobe.probe.replay import JsonSink, fan_out

#: ARPHRD_* of the capture interface -> the link type of what the ring hands
#: out (SOCK_RAW packet sockets deliver the device's link-layer header).
ARPHRD_LINKTYPE = {1: 1, 772: 1, 65534: 101}

TICK_S = 0.1            # how often the clock advances without packets
STATS_INTERVAL_S = 30.0  # one stats line per reader this often


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


class Reader:
    """One ring, one flow table, its own exporters."""

    def __init__(self, cfg, iface: str, *, export_urls: list[str] = (),
                 json_out: bool = False, fanout_group: int = 0,
                 observation_domain: int | None = None) -> None:
        self.cfg = cfg
        self.iface = iface
        self.linktype = linktype_of(iface)
        self.log = get_logger(iface=iface)
        self.stopping = False
        from flowprobe.driver.ring import Ring, RingError
        self._ring_error = RingError
        try:
            self.ring = Ring.from_config(cfg.capture, iface, fanout_group=fanout_group)
        except (RingError, OSError) as exc:
            raise CaptureSetupError(f"{iface}: cannot open capture ring: {exc}") from None
        sinks: list[Sink] = [JsonSink(sys.stdout)] if json_out else []
        self.exporters = None
        export = list(cfg.export) + list(export_urls)
        if export:
            from flowprobe.exporters.exporter import build_exporters
            self.exporters = build_exporters(export)
            sinks.append(self.exporters.sink)
        self.table = FlowTable(cfg.flow, fan_out(sinks) if sinks else None,
                               ifindex=self.ring.ifindex)
        if self.exporters is not None:
            self.exporters.attach(self.table)
        self.batch = self.table.packet_batch(self.ring.block_capacity)

    # -- signals -------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_stop)

    def handle_stop(self, signum, frame) -> None:  # noqa: ARG002
        self.stopping = True

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

    def housekeeping(self, now_ns: int) -> None:
        self.table.expire(now_ns)
        if self.exporters is not None:
            self.exporters.tick(now_ns)

    def run(self) -> int:
        self.log.info("reader_started", linktype=self.linktype,
                      ring_block_capacity=self.ring.block_capacity)
        next_tick = time.monotonic()
        next_stats = next_tick + STATS_INTERVAL_S
        while not self.stopping:
            timeout_ms = max(0, int((next_tick - time.monotonic()) * 1000))
            self.read_block(timeout_ms)
            now = time.monotonic()
            if now >= next_tick:
                self.housekeeping(time.time_ns())
                next_tick = now + TICK_S
            if now >= next_stats:
                self.log.info("reader_stats", **self.stats())
                next_stats = now + STATS_INTERVAL_S
        return self.shutdown()

    def shutdown(self) -> int:
        """Drain what the ring already holds, end every flow, export, close."""
        while self.read_block(0):
            pass
        self.table.expire(time.time_ns())
        self.table.flush()
        if self.exporters is not None:
            self.exporters.close()
        stats = self.stats()
        self.ring.close()
        self.log.info("reader_stopped", **stats)
        sys.stdout.flush()
        return ExitCode.OK

    def stats(self) -> dict[str, Any]:
        out = {"ring": self.ring.stats(), "table": self.table.stats()}
        if self.exporters is not None:
            out["exporters"] = self.exporters.stats()
        return out


# -- CLI ---------------------------------------------------------------

def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="capture live on an interface and export flows")
    p.add_argument("-i", "--interface", metavar="IFACE",
                   help="capture interface (capture.interface)")
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help="YAML config file (default: built-in defaults)")
    p.add_argument("--export", metavar="URL", action="append", default=[],
                   help="export to URL (repeatable), e.g. ipfix://127.0.0.1:4739")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per expired flow on stdout")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from flowprobe.config import ConfigError
    from flowprobe.probe.cli import _configure_logging, build_config, export_url_errors
    errors = export_url_errors(args.export)
    try:
        cfg = build_config(args.config, {"capture.interface": args.interface})
    except ConfigError as exc:
        raise ConfigError(str(exc).splitlines() + errors) from None
    if errors:
        raise ConfigError(errors)
    if not cfg.capture.interface:
        raise ConfigError(["capture.interface: no interface (give -i IFACE or set it)"])
    _configure_logging(cfg)
    reader = Reader(cfg, cfg.capture.interface, export_urls=list(args.export),
                    json_out=bool(args.json))
    reader.install_signal_handlers()
    return int(reader.run())
