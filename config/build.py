"""The config a command runs with: a file (or the defaults) plus overrides.

``flowprobe replay`` and ``flowprobe run`` build their config here, and the
supervisor builds it again here on SIGHUP, with the same file and the same
command-line overrides, so a reload sees exactly what a start would.
"""

from __future__ import annotations

from typing import Any, Sequence

from .loader import apply_overrides, default_config, load_config
from .schema import Config, check_export_url


def build_config(path: str | None, overrides: dict[str, Any]) -> Config:
    """Config from ``path`` (or the defaults), then command-line overrides
    (dotted path -> value, None = not given), all validated; ConfigError on any problem."""
    cfg = load_config(path) if path else default_config()
    return apply_overrides(cfg, overrides)


def export_url_errors(urls: Sequence[str]) -> list[str]:
    """Problems with ``--export`` URLs, checked like config export items."""
    return [f"--export: {err}" for err in map(check_export_url, urls) if err]


__all__ = ["build_config", "export_url_errors"]
