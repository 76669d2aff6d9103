"""`flowprobe collect`: the built-in collector's command line.

    flowprobe collect --listen udp://127.0.0.1:4739 [--listen tcp://127.0.0.1:4739]
                      [--file F.ipfix] [--format json|table] [--count N]
                      [--timeout S] [--idle-timeout S] [limits, see --help]

stdout: one line per record. JSON lines keyed by IANA IE names (as
`flowprobe replay --json`; the application as `applicationName` (IE 96) and,
from ntop's L7_PROTO (IPFIX 35632/118, v9 57590), `ndpiAppProtocol`);
options records are on the same stream with
`"_options": true`. stderr: structlog warnings (template errors, sequence
gaps, unknown or malformed sets) and, at exit, one `collector_summary` JSON
line with every counter.

Wiring: `add_parser(subparsers)` adds the subcommand; `main(args)` runs it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from datetime import datetime, timezone

import structlog

from flowprobe.collector.server import Collector, CollectorLimits
from flowprobe.errors import ExitCode
from flowprobe.logs import configure_logging

_DEFAULTS = CollectorLimits()
_LIMITS_HELP = """\
limits: everything a peer can make the collector hold is bounded. Beyond
--max-connections a TCP connection is reset and counted (tcp_refused), as is
one that arrives when no file descriptor is left; a connection silent for
--tcp-idle-timeout, or whose message is not complete --tcp-message-timeout
after it began, is cut; a message longer than --tcp-buffer cuts its
connection. The template cache drops its least recently used template
beyond each bound (templates_evicted_domain, templates_evicted_total).
Memory ceiling at the defaults: under 150 MB RSS in all (about 26 MB
at start, at most ~60 MB of templates, 256 x 64 KB of TCP buffers, ~10 MB
of sequence states; measured under floods, see the README). The kernel's UDP drops are reported
(transport_udp_kernel_drops), and so is a receive buffer the kernel clamped
(transport_udp_rcvbuf)."""

_TABLE_HEAD = "%-23s %-23s %-5s %-45s %-45s %10s %12s %s" % (
    "start", "end", "proto", "src", "dst", "packets", "octets", "application")


def add_parser(subparsers):
    """Register `collect` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "collect", help="receive and print NetFlow v5/v9 and IPFIX exports",
        description=__doc__.split("\n\n")[0], epilog=_LIMITS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
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
    d = _DEFAULTS
    lim = p.add_argument_group("limits (what a peer may make the collector hold)")
    lim.add_argument("--max-connections", type=int, default=d.max_connections, metavar="N",
                     help="TCP connections open at once (default %(default)s)")
    lim.add_argument("--tcp-idle-timeout", type=float, default=d.tcp_idle_timeout_s,
                     metavar="S", help="cut a connection silent for S seconds "
                     "(default %(default)s)")
    lim.add_argument("--tcp-message-timeout", type=float, default=d.tcp_message_timeout_s,
                     metavar="S", help="cut a connection whose message is not complete "
                     "S seconds after it began (default %(default)s)")
    lim.add_argument("--tcp-buffer", type=int, default=d.tcp_buffer_bytes, metavar="BYTES",
                     help="bytes buffered per connection = the longest message "
                     "accepted (default %(default)s)")
    lim.add_argument("--rcvbuf", type=int, default=d.rcvbuf_bytes, metavar="BYTES",
                     help="UDP receive buffer; SO_RCVBUFFORCE with CAP_NET_ADMIN, else "
                     "clamped to net.core.rmem_max (default %(default)s)")
    lim.add_argument("--max-templates", type=int, default=d.max_templates, metavar="N",
                     help="templates cached in all (default %(default)s)")
    lim.add_argument("--max-templates-per-domain", type=int,
                     default=d.max_templates_per_domain, metavar="N",
                     help="templates cached per exporter and observation domain "
                     "(default %(default)s)")
    lim.add_argument("--max-template-fields", type=int, default=d.max_template_fields,
                     metavar="N", help="template fields cached in all (default %(default)s)")
    lim.add_argument("--stats-interval", type=float, default=d.stats_interval_s,
                     metavar="S", help="log refusals, drops and counters at most every "
                     "S seconds (default %(default)s)")
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
        limits = CollectorLimits(
            max_connections=args.max_connections, tcp_idle_timeout_s=args.tcp_idle_timeout,
            tcp_message_timeout_s=args.tcp_message_timeout,
            tcp_buffer_bytes=args.tcp_buffer, rcvbuf_bytes=args.rcvbuf,
            max_templates=args.max_templates,
            max_templates_per_domain=args.max_templates_per_domain,
            max_template_fields=args.max_template_fields,
            stats_interval_s=args.stats_interval)
        collector = Collector(args.listen, on_record=lambda rec: emit(rec, out),
                              limits=limits)
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
    try:
        dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    except (ValueError, OverflowError, OSError):  # a time no calendar shows
        return str(ms)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + "%03d" % (ms % 1000)


def _print_row(rec: dict, out) -> None:
    if rec.get("_options"):
        out.write("# options " + " ".join(
            "%s=%s" % kv for kv in rec.items() if not kv[0].startswith("_")) + "\n")
        return
    src = rec.get("sourceIPv4Address") or rec.get("sourceIPv6Address") or "-"
    dst = rec.get("destinationIPv4Address") or rec.get("destinationIPv6Address") or "-"
    out.write("%-23s %-23s %-5s %-45s %-45s %10s %12s %s\n" % (
        _ms(rec.get("flowStartMilliseconds")), _ms(rec.get("flowEndMilliseconds")),
        rec.get("protocolIdentifier", "-"),
        "%s:%s" % (src, rec.get("sourceTransportPort", 0)),
        "%s:%s" % (dst, rec.get("destinationTransportPort", 0)),
        rec.get("packetDeltaCount", "-"), rec.get("octetDeltaCount", "-"),
        _application(rec)))


def _application(rec: dict) -> str:
    """The nDPI label (IPFIX/v9 applicationName, e.g. "TLS.Google") with
    ntop's L7_PROTO id when the exporter sent one ("TLS.Google/126"); "-"
    stands for a missing or empty label (a flow not inspected: "-/0")."""
    name = rec.get("applicationName") or ""
    app_id = rec.get("ndpiAppProtocol")
    if not name and app_id is None:
        return "-"
    if app_id is None:
        return name.replace(" ", "_") or "-"
    return "%s/%d" % (name.replace(" ", "_") or "-", app_id)
