"""What ``flowprobe run`` checks in a config before any reader is forked,
and again on SIGHUP before a reload is applied.

- ``check_config``: what every reader would reject (no interface, a bad
  export destination, metrics without prometheus-client): ConfigError, exit 2,
  once in the supervisor instead of once per reader;
- ``check_interfaces``: an interface that is not there (CaptureSetupError,
  exit 3);
- ``needs_new_rings``: whether a reload can be applied in place or needs a
  rolling restart of the readers;
- ``CONFIG_CHECKS``: checks of a loaded config beyond the schema, run by
  ``config check``, ``replay``, ``run`` and a reload (config.build passes
  them to the loader, so their errors carry the key's line): today the
  capture filter, compiled by libpcap.
"""
from __future__ import annotations

import dataclasses

from flowprobe.config import Config, ConfigError
from flowprobe.config.schema import parse_interfaces
from flowprobe.driver.afpacket import RingError, compile_filter
from flowprobe.driver.capture import linktype_of
from flowprobe.exporters.exporter import exporters_for
from flowprobe.probe.metrics import check_available


def capture_filter_errors(cfg: Config) -> list[tuple[str, str]]:
    """``capture.filter`` compiled by libpcap for the Ethernet link type (the
    driver's compile helper, driver/afpacket_filter.c, without an interface): a filter
    libpcap refuses is a config error naming the key, not a reader that
    fails to start."""
    if not cfg.capture.filter:
        return []
    try:
        compile_filter(None, cfg.capture.filter, cfg.capture.snaplen)
    except RingError as exc:
        return [("capture.filter", exc.detail or str(exc))]
    return []


#: Checks of a loaded config beyond the schema (config check, replay, run, reload).
CONFIG_CHECKS = (capture_filter_errors,)


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
    filter (interfaces, ring geometry, backend), the table's size and its
    application identification (the nDPI module and pool are made with the
    table), workers, CPUs."""
    if dataclasses.replace(old.capture, filter="") != dataclasses.replace(new.capture, filter=""):
        return True
    table = ("max_flows", "record_buffer", "dpi", "dpi_max_flows")
    if [getattr(old.flow, k) for k in table] != [getattr(new.flow, k) for k in table]:
        return True
    return (old.supervisor.workers, old.supervisor.cpus) != (new.supervisor.workers,
                                                           new.supervisor.cpus)


__all__ = ["CONFIG_CHECKS", "capture_filter_errors", "check_config", "check_interfaces",
           "needs_new_rings"]
