"""``flowprobe service pre-start|post-stop -c CONFIG``: the systemd unit's hooks.

flowprobe.service runs them as root (``+`` prefix) around the confined main
process:

- pre-start (ExecStartPre): check the config (exit 2 with every error, so
  ``systemctl status`` shows why it will not start); when
  ``capture.prepare_nic`` is true, ``nic prepare`` every capture interface
  (it writes /proc/sys/net/ipv6/..., which the main process may not).
- post-stop (ExecStopPost): when ``capture.prepare_nic`` is true, ``nic
  restore`` every capture interface that prepare recorded.

Without ``prepare_nic`` both do nothing to any interface.
"""
from __future__ import annotations

import argparse
import sys

from pyroute2.netlink.exceptions import NetlinkError

from flowprobe.config import load_config
from flowprobe.config.schema import parse_interfaces
from flowprobe.driver import nic
from flowprobe.errors import ExitCode

DEFAULT_CONFIG = "/etc/flowprobe/flowprobe.yaml"


def _interfaces(cfg) -> list[str]:
    return parse_interfaces(cfg.capture.interface) if cfg.capture.prepare_nic else []


def cmd_pre_start(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    for iface in _interfaces(cfg):
        try:
            nic.prepare(iface)
            ready, rows, _ = nic.check(iface)
        except (OSError, NetlinkError) as exc:   # one line, then stop
            print(f"flowprobe service: nic prepare {iface}: {exc.strerror or exc}",
                  file=sys.stderr)
            return ExitCode.CAPTURE_SETUP
        bad = [name for name, ok, _ in rows if not ok]
        print(f"{iface}: prepared for capture" + ("" if ready else f"; NOT OK: {bad}"))
    return ExitCode.OK


def cmd_post_stop(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    code = ExitCode.OK
    for iface in _interfaces(cfg):
        if not nic.state_path(iface).exists():
            continue
        try:
            nic.restore(iface)
            print(f"{iface}: restored")
        except (OSError, NetlinkError) as exc:   # keep restoring the others
            print(f"flowprobe service: nic restore {iface}: {exc.strerror or exc}",
                  file=sys.stderr)
            code = ExitCode.CAPTURE_SETUP
    return code


def add_parser(sub) -> None:
    p = sub.add_parser("service", help="hooks of the systemd unit (run as root): "
                       "prepare / restore the capture NICs when capture.prepare_nic is set")
    actions = p.add_subparsers(dest="service_cmd", metavar="ACTION", required=True)
    for name, handler, text in (
            ("pre-start", cmd_pre_start, "check CONFIG; nic prepare its interfaces if asked"),
            ("post-stop", cmd_post_stop, "nic restore the interfaces pre-start prepared")):
        a = actions.add_parser(name, help=text)
        a.add_argument("-c", "--config", metavar="CONFIG", default=DEFAULT_CONFIG,
                       help=f"YAML config file (default {DEFAULT_CONFIG})")
        a.set_defaults(handler=handler)
