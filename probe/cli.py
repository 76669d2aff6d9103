"""The ``flowprobe`` command: argument parsing and the wiring of subcommands.

Subcommands are built by the functions in ``SUBCOMMANDS``; each builder adds
its parser and sets ``handler`` (``handler(args) -> int``). A builder may be a
callable or a ``"module:function"`` string, imported only when that
subcommand is chosen (``nic``, ``collect``, ``stats``, ``service``), so
``flowprobe replay`` does not pay for pyroute2, the collector or the
supervisor. For the same start-up reason the handlers of ``replay`` and
``run`` import the replay engine and the supervisor when they run.

Expected failures (ConfigError, FlowprobeError, unreadable input files) end
as one line on stderr with a named exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import stat
import sys
from typing import Any, Callable, Sequence

import yaml

from flowprobe import __version__
from flowprobe.config import Config, ConfigError, default_config, load_config
from flowprobe.config.build import build_config, export_url_errors
from flowprobe.errors import ExitCode, FlowprobeError, InputError, exit_code_for
from flowprobe.logs import LineStream, configure_logging

PROG = "flowprobe"

Builder = Callable[[Any], None]  # receives the subparsers action


# ------------------------------------------------------------------ config

def _add_config(sub: Any) -> None:
    p = sub.add_parser("config", help="check or show configuration")
    csub = p.add_subparsers(dest="config_cmd", metavar="ACTION", required=True)
    check = csub.add_parser("check", help="validate FILE and print the normalized config")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(handler=cmd_config_check)
    show = csub.add_parser("defaults", help="print the default configuration")
    show.set_defaults(handler=cmd_config_defaults)


def _print_config(cfg: Config) -> None:
    sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False))




def cmd_config_check(args: argparse.Namespace) -> int:
    from flowprobe.probe.config_checks import CONFIG_CHECKS   # lazy: start-up time
    _print_config(load_config(args.file, CONFIG_CHECKS))
    return ExitCode.OK


def cmd_config_defaults(args: argparse.Namespace) -> int:
    _print_config(default_config())
    return ExitCode.OK


# ------------------------------------------------------------------ replay

def _add_replay(sub: Any) -> None:
    p = sub.add_parser(
        "replay", help="replay pcap/pcapng files through the flow engine",
        epilog="exit status: 0 every record exported (or no exporter); "
        f"{int(ExitCode.EXPORT_INCOMPLETE)} an exporter did not export every record "
        "(not sent, refused, unwritable, still pending at close; NetFlow v5's "
        "IPv6 records, which the format cannot carry, do not count); "
        f"{int(ExitCode.CONFIG)} bad configuration or command line; "
        f"{int(ExitCode.INPUT)} an input file cannot be read; "
        f"{int(ExitCode.INPUT_TRUNCATED)} an input file shrank while being read "
        "(the flows before the cut are exported; 6 takes precedence); "
        f"{int(ExitCode.FAILURE)} any other failure.")
    p.add_argument("files", metavar="FILE", nargs="+",
                   help="pcap or pcapng capture; - reads standard input, a FIFO is "
                   "read as a stream (tcpdump -w - | flowprobe replay -)")
    _add_config_option(p)
    add_flow_options(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per expired flow on stdout")
    p.add_argument("--export", metavar="URL", action="append", default=[],
                   help="export to URL (repeatable), e.g. ipfix://127.0.0.1:4739")
    p.set_defaults(handler=cmd_replay)


def _add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help="YAML config file (default: built-in defaults)")


def add_flow_options(p: argparse.ArgumentParser) -> None:
    """The flow-table flags that ``replay`` and ``run`` share; they override
    the ``flow`` section of the config (see ``flow_overrides``)."""
    p.add_argument("--idle-timeout", metavar="S", type=float, help="flow.idle_timeout_s")
    p.add_argument("--active-timeout", metavar="S", type=float, help="flow.active_timeout_s")
    p.add_argument("--max-flows", metavar="N", type=int, help="flow.max_flows")
    p.add_argument("--no-dpi", dest="dpi", action="store_false", default=None,
                   help="flow.dpi: false (no application identification)")
    p.add_argument("--dpi-max-flows", metavar="N", type=int,
                   help="flow.dpi_max_flows (nDPI flow states per reader)")


def flow_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides of ``add_flow_options``' flags (None = not given)."""
    return {"flow.idle_timeout_s": args.idle_timeout,
            "flow.active_timeout_s": args.active_timeout,
            "flow.max_flows": args.max_flows,
            "flow.dpi": args.dpi,
            "flow.dpi_max_flows": args.dpi_max_flows}


def check_input_files(files: Sequence[str]) -> None:
    """Fail early, in one line, on an input file that cannot be read.

    ``-`` (stdin) and FIFOs are streams: they are looked at with stat()
    and access() only, never opened here (opening a FIFO would use up its
    writer), and stdin can be read once."""
    if list(files).count("-") > 1:
        raise InputError("-: standard input can be read only once")
    for name in files:
        if name == "-":
            continue
        try:
            st = os.stat(name)
            if stat.S_ISDIR(st.st_mode):
                raise InputError(f"{name}: is a directory")
            if stat.S_ISREG(st.st_mode):
                with open(name, "rb"):
                    pass
            elif not os.access(name, os.R_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        except OSError as exc:
            raise InputError(f"{name}: {exc.strerror or exc}") from None


def cmd_replay(args: argparse.Namespace) -> int:
    from flowprobe.probe.config_checks import CONFIG_CHECKS   # lazy: start-up time
    errors = export_url_errors(args.export)
    try:
        cfg = build_config(args.config, flow_overrides(args), CONFIG_CHECKS)
    except ConfigError as exc:
        raise ConfigError(str(exc).splitlines() + errors) from None
    if errors:
        raise ConfigError(errors)
    check_input_files(args.files)
    configure_logging(cfg.logging.level, cfg.logging.format)
    from flowprobe.probe.replay import run_replay   # lazy: start-up time (see above)
    return int(run_replay(list(args.files), cfg, bool(args.json), list(args.export)))


# ------------------------------------------------------------------ run

def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="capture live on interfaces and export flows "
                       "(a supervisor with one reader process per ring)")
    p.add_argument("-i", "--interface", metavar="IFACE", action="append",
                   help="capture interface (repeatable or comma-separated; capture.interface)")
    _add_config_option(p)
    add_flow_options(p)
    p.add_argument("--workers", metavar="N", type=int,
                   help="reader processes per interface (supervisor.workers; "
                   "default one per available CPU)")
    p.add_argument("--stats-socket", metavar="PATH", help="supervisor.stats_socket")
    p.add_argument("--backend", choices=("afpacket", "afxdp"),
                   help="capture backend (capture.backend)")
    p.add_argument("--export", metavar="URL", action="append", default=[],
                   help="export to URL (repeatable), e.g. ipfix://127.0.0.1:4739")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per expired flow on stdout")
    p.add_argument("--user", metavar="NAME",
                   help="after the root-only set-up, run as user NAME keeping only "
                   "CAP_NET_RAW and CAP_NET_ADMIN (under systemd the unit sets User=)")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    # lazy: start-up time (see above); everything a reader needs is imported
    # here, before the supervisor forks or drops privileges.
    from flowprobe.probe import privdrop
    from flowprobe.probe.config_checks import CONFIG_CHECKS, check_config, check_interfaces
    from flowprobe.probe.supervisor import Supervisor
    errors = export_url_errors(args.export)
    overrides = {"capture.interface": ",".join(args.interface) if args.interface else None,
                 "supervisor.workers": args.workers,
                 "supervisor.stats_socket": args.stats_socket,
                 "capture.backend": args.backend, **flow_overrides(args)}
    try:
        cfg = build_config(args.config, overrides, CONFIG_CHECKS)
    except ConfigError as exc:
        raise ConfigError(str(exc).splitlines() + errors) from None
    if errors:
        raise ConfigError(errors)
    check_config(cfg, list(args.export))
    if args.user:
        privdrop.lookup(args.user)    # an unknown user is a config error (exit 2)
    configure_logging(cfg.logging.level, cfg.logging.format, stream=LineStream())
    check_interfaces(cfg)
    sup = Supervisor(cfg, config_path=args.config, overrides=overrides,
                     export_urls=list(args.export), json_out=bool(args.json),
                     user=args.user)
    return sup.run()


# ------------------------------------------------------------------ wiring

#: name -> builder: a callable, or a "module:function" string imported only
#: when that subcommand is chosen.
SUBCOMMANDS: dict[str, Builder | str] = {
    "config": _add_config,
    "replay": _add_replay,
    "nic": "flowprobe.driver.nic:add_parser",
    "collect": "flowprobe.collector.cli:add_parser",
    "run": _add_run,
    "stats": "flowprobe.probe.stats:add_parser",
    "service": "flowprobe.probe.service:add_parser",
}


def _resolve(builder: Builder | str) -> Builder:
    if callable(builder):
        return builder
    module, _, func = builder.partition(":")
    return getattr(importlib.import_module(module), func)


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line, if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the chosen subcommand's module is
    imported (the others get a name-only parser), so ``flowprobe replay``
    does not pay for pyroute2, the collector or the supervisor."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Passive flow-export probe: capture or replay "
        "packets, aggregate flows in C, export IPFIX/NetFlow or JSON.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen(argv) if argv is not None else None
    if chosen not in SUBCOMMANDS:
        chosen = None           # help, or an unknown command: build them all
    for name, builder in SUBCOMMANDS.items():
        if chosen is None or name == chosen:
            _resolve(builder)(sub)
        else:
            sub.add_parser(name)
    return parser


def _fail(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowprobe`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        for line in str(exc).splitlines():
            _fail(line)
        return ExitCode.CONFIG
    except FlowprobeError as exc:
        _fail(str(exc))
        return exit_code_for(exc)
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.FAILURE
    except OSError as exc:
        if exc.filename is None:
            raise
        _fail(f"{exc.filename}: {exc.strerror or exc}")
        inputs = getattr(args, "files", None) or ()
        return ExitCode.INPUT if exc.filename in inputs else ExitCode.FAILURE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
