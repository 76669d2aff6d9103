"""`flowprobe collect`: the built-in collector's command line.

    flowprobe collect --listen udp://127.0.0.1:4739 [--listen tcp://127.0.0.1:4739]
                      [--file F.ipfix] [--format json|table] [--count N]
                      [--timeout S] [--idle-timeout S]

stdout: one line per record. JSON lines keyed by IANA IE names (as
`flowprobe replay --json`); options records are on the same stream with
`"_options": true`. stderr: structlog warnings (template errors, sequence
gaps, unknown or malformed sets) and, at exit, one `collector_summary` JSON
line with every counter.

Wiring: `add_parser(subparsers)` adds the subcommand; `main(args)` runs it.
"""

from __future__ import annotations

import json
import signal
import sys
from datetime import datetime, timezone

import structlog

from flowprobe.collector.server import Collector
from flowprobe.errors import ExitCode
from flowprobe.logs import configure_logging

_TABLE_HEAD = "%-23s %-23s %-5s %-45s %-45s %10s %12s" % (
    "start", "end", "proto", "src", "dst", "packets", "octets")


def add_parser(subparsers):
    """Register `collect` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "collect", help="receive and print NetFlow v5/v9 and IPFIX exports",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", action="append", default=[], metavar="URL",
                   help="udp://HOST:PORT or tcp://HOST:PORT (repeatable)")
    p.add_argument("--file", action="append", default=[], metavar="F.ipfix",
                   help="read an IPFIX file (RFC 5655; repeatable)")
    p.add_argument("--format", choices=("json", "table"), default="json")
    p.add_argument("--count", type=int, default=None,
                   help="stop after N flow records")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="stop listening after S seconds")
    p.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                   help="stop listening after S seconds without a message")
    p.set_defaults(handler=main)
    return p


def main(args) -> int:
    """Run the collector; returns an exit code."""
    if not args.listen and not args.file:
        print("collect: give --listen URL and/or --file F.ipfix", file=sys.stderr)
        return ExitCode.CONFIG
    if not structlog.is_configured():
        configure_logging()
    out = sys.stdout
    if args.format == "table":
        print(_TABLE_HEAD, file=out)
    emit = _print_json if args.format == "json" else _print_row
    try:
        collector = Collector(args.listen, on_record=lambda rec: emit(rec, out))
    except ValueError as exc:
        print("collect: %s" % exc, file=sys.stderr)
        return ExitCode.CONFIG
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for path in args.file:
            try:
                collector.read_file(path)
            except OSError as exc:
                print("collect: %s: %s" % (path, exc.strerror or exc), file=sys.stderr)
                return ExitCode.INPUT
        if args.listen:
            try:
                collector.open()
            except OSError as exc:
                print("collect: listen: %s" % (exc.strerror or exc), file=sys.stderr)
                return ExitCode.CAPTURE_SETUP
            try:
                collector.serve(count=args.count, timeout_s=args.timeout,
                                idle_timeout_s=args.idle_timeout)
            finally:
                collector.close()
    except KeyboardInterrupt:
        pass
    finally:
        out.flush()
        print(json.dumps({"event": "collector_summary", **collector.summary()}),
              file=sys.stderr, flush=True)
    return ExitCode.OK


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _print_json(rec: dict, out) -> None:
    out.write(json.dumps(rec) + "\n")


def _ms(ms) -> str:
    if ms is None:
        return "-"
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + "%03d" % (ms % 1000)


def _print_row(rec: dict, out) -> None:
    if rec.get("_options"):
        out.write("# options " + " ".join(
            "%s=%s" % kv for kv in rec.items() if not kv[0].startswith("_")) + "\n")
        return
    src = rec.get("sourceIPv4Address") or rec.get("sourceIPv6Address") or "-"
    dst = rec.get("destinationIPv4Address") or rec.get("destinationIPv6Address") or "-"
    out.write("%-23s %-23s %-5s %-45s %-45s %10s %12s\n" % (
        _ms(rec.get("flowStartMilliseconds")), _ms(rec.get("flowEndMilliseconds")),
        rec.get("protocolIdentifier", "-"),
        "%s:%s" % (src, rec.get("sourceTransportPort", 0)),
        "%s:%s" % (dst, rec.get("destinationTransportPort", 0)),
        rec.get("packetDeltaCount", "-"), rec.get("octetDeltaCount", "-")))
