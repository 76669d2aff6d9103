"""``flowprobe replay``: capture files -> flow table -> records.

Per batch of packets Python makes three C calls (read a batch, ingest it,
expire); it never looks at a single packet. Records go to the sinks: JSON
lines on stdout, exporters, or nothing (benchmarks).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

from flowprobe.driver.pcapfile import CaptureFileError, CaptureShrunkError, open_capture
from flowprobe.errors import ExitCode
from flowprobe.logs import get_logger
from flowprobe.probe.flowtable.table import END_REASONS, FlowTable
from flowprobe.probe.sinks import JsonLines, Sink, fan_out

#: Link types the parser handles (LINKTYPE_* values as readers report them).
SUPPORTED_LINKTYPES = {0, 1, 12, 14, 101, 108, 113, 228, 229, 276}


class Progress:
    """A progress bar on a TTY (bytes of input read), at most 10 redraws/s."""

    def __init__(self, total_bytes: int, stream: TextIO = sys.stderr) -> None:
        self._total = max(total_bytes, 1)
        self._stream = stream
        self._enabled = stream.isatty()
        self._last = 0.0

    @property
    def enabled(self) -> bool:
        return self._enabled

    def update(self, done_bytes: int, packets: int) -> None:
        now = time.monotonic()
        if not self._enabled or now - self._last < 0.1:
            return
        self._last = now
        frac = min(done_bytes / self._total, 1.0)
        bar = "#" * int(frac * 30)
        self._stream.write(f"\r[{bar:<30}] {frac:6.1%} {packets:,} packets")
        self._stream.flush()

    def done(self) -> None:
        if self._enabled:
            self._stream.write("\r" + " " * 70 + "\r")
            self._stream.flush()


def _is_stream(path: str) -> bool:
    """``-`` (stdin) or a FIFO: read once, its size unknown."""
    return path == "-" or not os.path.isfile(path)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def replay_files(files: list[str], table: FlowTable, batch_packets: int,
                 on_batch: Callable[[], None] | None = None,
                 progress: Progress | None = None) -> dict:
    """Feed every file through the table in batches; returns reader totals.

    Raises CaptureFileError for a file that cannot be opened; a corrupt
    record, or the file shrinking while it is read, ends that file
    (counted; ``shrunk_files`` for the latter) and replay goes on with the
    next.
    """
    log = get_logger()
    batch = table.packet_batch(batch_packets)
    totals = {"files": 0, "packets_read": 0, "bytes_read": 0, "truncated_files": 0,
              "shrunk_files": 0, "unsupported_linktypes": {}}
    read_bytes = 0
    for path in files:
        with open_capture(path) as cap:
            linktype = cap.linktype
            if linktype not in SUPPORTED_LINKTYPES:
                # Counted per packet by the engine; named once here.
                totals["unsupported_linktypes"][linktype] = path
                log.warning("linktype_unsupported", file=path, linktype=linktype,
                            linktype_hex=f"0x{linktype:08x}")
            try:
                while True:
                    n = cap.read_into(batch.address, batch.cap)
                    if n <= 0:
                        break
                    table.ingest(linktype, batch, n)
                    table.expire()
                    if on_batch:
                        on_batch()
                    if progress is not None and progress.enabled:
                        st = cap.stats()
                        progress.update(read_bytes + st["cap_bytes"],
                                        totals["packets_read"] + st["packets"])
            except CaptureFileError as exc:
                totals["truncated_files"] += 1
                shrunk = isinstance(exc, CaptureShrunkError)
                totals["shrunk_files"] += shrunk
                log.warning("capture_truncated", file=path, reason=exc.reason,
                            shrunk=shrunk, packets_read=cap.stats()["packets"])
            st = cap.stats()
            totals["files"] += 1
            totals["packets_read"] += st["packets"]
            totals["bytes_read"] += st["cap_bytes"]
            read_bytes += st["cap_bytes"] if _is_stream(path) else _size(path)
    return totals


def format_summary(totals: dict, stats: dict, seconds: float) -> str:
    """The end-of-replay summary for humans (stderr)."""
    pps = totals["packets_read"] / seconds if seconds > 0 else 0.0
    lines = [
        f"packets read       {totals['packets_read']:>14,}",
        f"packets accepted   {stats['packets_accepted']:>14,}",
    ]
    for reason, count in stats["skipped"].items():
        if count:
            lines.append(f"  skipped {reason:<18}{count:>10,}")
    if totals["truncated_files"]:
        lines.append(f"  truncated files {totals['truncated_files']:>16,}"
                     f"  (shrank while read: {totals['shrunk_files']:,})")
    for lt, path in totals["unsupported_linktypes"].items():
        lines.append(f"  unsupported link type {lt} (0x{lt:08x}, first in {path})")
    if stats["l4_partial"]:
        lines.append(f"  accepted without transport fields {stats['l4_partial']:,}")
    lines.append(f"flows created      {stats['flows_created']:>14,}")
    for reason, count in stats["flows_expired"].items():
        if count:
            lines.append(f"  expired {reason:<18}{count:>10,}")
    lines.append(f"peak active flows  {stats['flows_peak']:>14,}")
    d = stats.get("dpi") or {}
    if d.get("inspected") or d.get("no_state"):
        lines.append(f"applications       {d['inspected']:>14,}  conversations inspected")
        for name in ("detected", "guessed", "unknown", "no_state"):
            if d[name]:
                lines.append(f"  {name:<25}{d[name]:>10,}")
        lines.append(f"  packets inspected        {d['packets']:>10,}")
    lines.append(f"packets per second {pps:>14,.0f}  ({seconds:.3f} s)")
    return "\n".join(lines) + "\n"


def unexported(records: int, exporter_stats: dict) -> int:
    """Records an exporter was handed but did not export (not sent, still
    pending at close, or lost to an encoder error); records its format
    cannot carry (NetFlow v5: IPv6) are not failures."""
    st = exporter_stats
    return max(0, records - st["records_exported"] - st["records_not_exportable"])


def format_export_summary(records: int, exporters: list) -> str:
    """One line per exporter: records exported, and what was not (stderr)."""
    lines = []
    for e in exporters:
        st = e.stats()
        line = f"export {e.name}: {st['records_exported']:,} of {records:,} records"
        if st["records_not_exportable"]:
            line += f", {st['records_not_exportable']:,} not exportable in this format"
        missing = unexported(records, st)
        if missing:
            line += (f", {missing:,} NOT EXPORTED (not sent {st['records_not_sent']:,}, "
                     f"pending {st['records_pending']:,}, send errors {st['send_errors']:,})")
        lines.append(line)
    return "".join(line + "\n" for line in lines)


def run_replay(files: list[str], cfg, json_out: bool, export_urls: list[str]) -> int:
    """The replay command: returns an exit code."""
    log = get_logger(cmd="replay")
    sinks: list[Sink] = []
    if json_out:
        sys.stdout.flush()
        sinks.append(JsonLines(sys.stdout.fileno()))
    exporters = []
    if export_urls or cfg.export:
        from flowprobe.exporters.exporter import exporters_for
        exporters = list(exporters_for(cfg, export_urls))
        sinks.extend(e.sink for e in exporters)
    # prefault: the slab's pages are mapped by a helper thread ahead of use
    # (flowtable.c), on the CPU the file's reader thread leaves idle
    table = FlowTable(cfg.flow, fan_out(sinks) if sinks else None, prefault=True)
    for e in exporters:
        e.attach(table)

    started = time.perf_counter()
    total_size = sum(_size(f) for f in files if not _is_stream(f))
    progress = Progress(total_size)
    try:
        totals = replay_files(files, table, cfg.replay.batch_packets,
                              on_batch=(lambda: [e.tick() for e in exporters]) if exporters else None,
                              progress=progress)
    except CaptureFileError as exc:
        progress.done()
        log.error("capture_open_failed", error=str(exc))
        return ExitCode.INPUT
    finally:
        table.flush()
        for e in exporters:
            e.close()
    progress.done()
    seconds = time.perf_counter() - started
    stats = table.stats()
    sys.stderr.write(format_summary(totals, stats, seconds))
    sys.stderr.write(format_export_summary(stats["records_emitted"], exporters))
    log.info("replay_done", files=totals["files"], packets_read=totals["packets_read"],
             packets_accepted=stats["packets_accepted"], flows=stats["flows_created"],
             records=stats["records_emitted"], seconds=round(seconds, 3),
             expired={k: v for k, v in stats["flows_expired"].items() if v},
             exporters=[e.stats() for e in exporters])
    if (stats["packets_emitted"] != stats["packets_accepted"]
            or stats["octets_emitted"] != stats["octets_accepted"]):
        log.error("conservation_broken", accepted=stats["packets_accepted"],
                  emitted=stats["packets_emitted"])
        return ExitCode.FAILURE
    missing = {e.name: unexported(stats["records_emitted"], e.stats()) for e in exporters}
    if any(missing.values()):
        log.error("records_not_exported", records=stats["records_emitted"],
                  not_exported={k: v for k, v in missing.items() if v},
                  exit_code=int(ExitCode.EXPORT_INCOMPLETE))
        return ExitCode.EXPORT_INCOMPLETE
    if totals["shrunk_files"]:
        log.error("input_truncated", files=totals["shrunk_files"],
                  exit_code=int(ExitCode.INPUT_TRUNCATED))
        return ExitCode.INPUT_TRUNCATED
    return ExitCode.OK


__all__ = ["run_replay", "replay_files", "END_REASONS"]
