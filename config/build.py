"""The config a command runs with: a file (or the defaults) plus overrides.

``flowprobe replay`` and ``flowprobe run`` build their config here, and the
supervisor builds it again here on SIGHUP, with the same file and the same
command-line overrides, so a reload sees exactly what a start would.
"""

from __future__ import annotations

from typing import Any, Sequence

from .loader import Check, apply_overrides, default_config, load_config
from .schema import Config, ConfigError, export_config


def build_config(path: str | None, overrides: dict[str, Any],
                 checks: Sequence[Check] = ()) -> Config:
    """Config from ``path`` (or the defaults), then command-line overrides
    (dotted path -> value, None = not given), all validated; ConfigError on
    any problem. ``checks``: beyond the schema (config.loader.load_config)."""
    cfg = load_config(path, checks) if path else default_config()
    return apply_overrides(cfg, overrides)


def export_url_errors(urls: Sequence[str]) -> list[str]:
    """Problems with ``--export`` URLs, each made into the typed export item
    by the schema, as a YAML ``export:`` item is (config.export_config)."""
    errors = []
    for url in urls:
        try:
            export_config(url, "--export")
        except ConfigError as exc:
            errors.extend(exc.messages)
    return errors


__all__ = ["build_config", "export_url_errors"]
