"""What ``flowprobe run`` checks in a config before any reader is forked,
and again on SIGHUP before a reload is applied.

- ``check_config``: what every reader would reject (no interface, a bad
  export destination, metrics without prometheus-client): ConfigError, exit 2,
  once in the supervisor instead of once per reader;
- ``check_interfaces``: an interface that is not there (CaptureSetupError,
  exit 3);
- ``needs_new_rings``: whether a reload can be applied in place or needs a
  rolling restart of the readers.
"""
from __future__ import annotations

import dataclasses

from flowprobe.config import Config, ConfigError
from flowprobe.config.schema import parse_interfaces
from flowprobe.exporters.exporter import exporters_for
from flowprobe.probe.metrics import check_available
from flowprobe.probe.reader import linktype_of


def check_config(cfg: Config, export_urls: list[str]) -> None:
    """What the readers would reject, checked once before any fork (exit 2)."""
    errors = []
    if not parse_interfaces(cfg.capture.interface):
        errors.append("capture.interface: no interface (give -i IFACE or set it)")
    try:
        exporters_for(cfg, export_urls, 0, open_now=False)
    except ConfigError as exc:
        errors.extend(exc.messages)
    if cfg.metrics.listen:
        check_available()
    if errors:
        raise ConfigError(errors)


def check_interfaces(cfg: Config) -> None:
    """A clear CaptureSetupError (exit 3) for an interface that is not there."""
    for iface in parse_interfaces(cfg.capture.interface):
        linktype_of(iface)


def needs_new_rings(old: Config, new: Config) -> bool:
    """Changes that only new readers can apply: any capture setting but the
    filter (interfaces, ring geometry, backend), the table's size, workers, CPUs."""
    if dataclasses.replace(old.capture, filter="") != dataclasses.replace(new.capture, filter=""):
        return True
    if (old.flow.max_flows, old.flow.record_buffer) != (new.flow.max_flows,
                                                        new.flow.record_buffer):
        return True
    return (old.supervisor.workers, old.supervisor.cpus) != (new.supervisor.workers,
                                                           new.supervisor.cpus)


__all__ = ["check_config", "check_interfaces", "needs_new_rings"]
