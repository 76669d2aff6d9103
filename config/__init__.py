"""flowprobe configuration: YAML into typed, frozen objects.

``config/schema.py`` holds the dataclasses (the single source of defaults) and
the value checks; ``config/loader.py`` reads YAML with line numbers;
``config/flowprobe.yaml`` documents every key with its default.
"""

from pathlib import Path

from .loader import apply_overrides, default_config, load_config, load_config_text
from .schema import (EXPORT_SCHEMES, SCHEMES, CaptureConfig, Config, ConfigError,
                     ExportConfig, MetricsConfig, SupervisorConfig,
                     FlowConfig, LoggingConfig, ReplayConfig, export_config, export_items,
                     validate)

#: The documented default configuration file shipped with the package.
DEFAULT_CONFIG_PATH = Path(__file__).with_name("flowprobe.yaml")

__all__ = [
    "CaptureConfig", "Config", "ConfigError", "DEFAULT_CONFIG_PATH", "EXPORT_SCHEMES",
    "ExportConfig", "FlowConfig", "LoggingConfig", "ReplayConfig", "apply_overrides",
    "SCHEMES", "default_config", "export_config", "export_items", "load_config",
    "load_config_text", "validate",
]
