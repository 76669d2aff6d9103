"""Typed, frozen configuration objects: the single source of defaults.

Every setting is a dataclass field whose metadata says what values it takes
(range, choices, a custom check). The loader (config/loader.py) and
``validate()`` below use the same checks, so a value coming from YAML, from
the command line or from code is judged the same way.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

KiB = 1024
MiB = 1024 * KiB


class ConfigError(Exception):
    """Invalid configuration; ``messages`` lists every problem found.

    Each message reads ``dotted.path (line N): what is wrong``.
    """

    exit_code = 2  # == flowprobe.probe.errors.ExitCode.CONFIG

    def __init__(self, messages: list[str] | str, source: str | None = None):
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(prefix + m for m in self.messages)


def setting(default: Any = dataclasses.MISSING, *, min: float | None = None,
            max: float | None = None, positive: bool = False,
            choices: tuple[str, ...] | None = None, multiple_of: int | None = None,
            check: Callable[[Any], str | None] | None = None,
            factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with the constraints the validator enforces.

    ``positive`` means strictly greater than zero; ``check`` returns an error
    message (or None) for a value that already has the right type.
    """
    meta = {"min": min, "max": max, "positive": positive, "choices": choices,
            "multiple_of": multiple_of, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------- export URLs

EXPORT_SCHEMES = ("ipfix", "ipfix+tcp", "ipfix+file", "netflow9", "netflow5")
DEFAULT_PORTS = {"ipfix": 4739, "ipfix+tcp": 4739, "netflow9": 2055, "netflow5": 2055}


def check_export_url(url: str) -> str | None:
    """Error message for an export URL, or None if it is usable.

    Network schemes need ``scheme://host[:port]`` (port defaults per scheme);
    ``ipfix+file:///path`` needs a path.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"bad URL {url!r}: {exc}"
    scheme = parts.scheme.lower()
    if "://" not in url or scheme not in EXPORT_SCHEMES:
        return (f"unknown scheme {parts.scheme or url!r} in {url!r} "
                f"(expected: {', '.join(EXPORT_SCHEMES)})")
    if scheme == "ipfix+file":
        if not parts.path or parts.netloc:
            return f"bad URL {url!r}: expected ipfix+file:///path/to/file"
        return None
    if not parts.hostname:
        return f"bad URL {url!r}: expected {scheme}://host[:port]"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"bad URL {url!r}: a {scheme} URL takes no path or query"
    if port == 0:
        return f"bad URL {url!r}: port 0"
    return None


# ------------------------------------------------------------------ sections

@dataclass(frozen=True)
class FlowConfig:
    """The flow table: capacity and expiry timers."""
    max_flows: int = setting(262144, min=1, max=2**31)
    idle_timeout_s: float = setting(30.0, positive=True)
    active_timeout_s: float = setting(120.0, positive=True)
    tcp_end_grace_s: float = setting(2.0, min=0)
    record_buffer: int = setting(65536, min=1, max=2**24)


@dataclass(frozen=True)
class ReplayConfig:
    """Offline replay of capture files."""
    batch_packets: int = setting(4096, min=1, max=2**20)


@dataclass(frozen=True)
class LoggingConfig:
    """structlog output: level and renderer (auto = console on a TTY, else JSON)."""
    level: str = setting("info", choices=("debug", "info", "warning", "error"))
    format: str = setting("auto", choices=("auto", "json", "console"))


@dataclass(frozen=True)
class ExportConfig:
    """One export destination, e.g. ``ipfix://127.0.0.1:4739``."""
    url: str = setting(check=check_export_url)
    mtu: int = setting(1400, min=512, max=65535)
    observation_domain: int = setting(1, min=0, max=2**32 - 1)
    template_refresh_packets: int = setting(20, min=0)
    template_refresh_s: float = setting(60.0, min=0)
    rate_pps: int = setting(2000, min=0)
    buffer_bytes: int = setting(4 * MiB, min=64 * KiB, max=2**31)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()

    @property
    def host(self) -> str | None:
        return urlsplit(self.url).hostname

    @property
    def port(self) -> int | None:
        return urlsplit(self.url).port or DEFAULT_PORTS.get(self.scheme)

    @property
    def path(self) -> str:
        return urlsplit(self.url).path


@dataclass(frozen=True)
class CaptureConfig:
    """Live capture (TPACKET_V3 ring) settings."""
    interface: str | None = setting(None)
    snaplen: int = setting(256, min=64, max=262144)
    block_size: int = setting(1 * MiB, min=4 * KiB, max=2**31, multiple_of=4096)
    block_count: int = setting(64, min=1, max=65536)
    frame_size: int = setting(2048, min=64, max=2**20, multiple_of=16)
    block_timeout_ms: int = setting(10, min=1, max=60000)
    filter: str = setting("")
    busy_poll: bool = setting(False)
    sampling_rate: int = setting(1, min=1, max=2**31)


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``Config()`` is the default configuration."""
    flow: FlowConfig = setting(factory=FlowConfig)
    replay: ReplayConfig = setting(factory=ReplayConfig)
    logging: LoggingConfig = setting(factory=LoggingConfig)
    export: tuple[ExportConfig, ...] = setting(())
    capture: CaptureConfig = setting(factory=CaptureConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts/lists, ready for yaml.safe_dump or json."""
        return _to_plain(self)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(x) for x in obj]
    return obj


def cross_checks(cfg: Config) -> list[tuple[str, str]]:
    """Constraints that involve more than one field, as (dotted path, message)."""
    errors = []
    cap = cfg.capture
    if cap.block_size % cap.frame_size:
        errors.append(("capture.frame_size", f"{cap.frame_size} does not divide "
                       f"capture.block_size {cap.block_size}"))
    if cap.snaplen > cap.frame_size:
        errors.append(("capture.snaplen", f"{cap.snaplen} exceeds capture.frame_size "
                       f"{cap.frame_size}"))
    return errors


# ------------------------------------------------------------- value checks

def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a config dataclass."""
    return typing.get_type_hints(cls)


def is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def list_item_type(tp: Any) -> Any | None:
    """The item type of ``tuple[X, ...]``, else None."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(type, optional) for ``X`` or ``X | None``."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def expected(tp: Any, meta: dict[str, Any]) -> str:
    """Human description of what a field accepts."""
    base, optional = _base_type(tp)
    if meta.get("choices"):
        desc = "one of: " + ", ".join(meta["choices"])
    elif base is bool:
        desc = "true or false"
    elif base is str:
        desc = "a string"
    else:
        noun = "an integer" if base is int else "a number"
        lo, hi = meta.get("min"), meta.get("max")
        if meta.get("positive"):
            noun = "a positive integer" if base is int else "a positive number"
        if lo is not None and hi is not None:
            desc = f"{noun} from {_fmt_num(lo)} to {_fmt_num(hi)}"
        elif lo is not None:
            desc = f"{noun} >= {_fmt_num(lo)}"
        elif hi is not None:
            desc = f"{noun} <= {_fmt_num(hi)}"
        else:
            desc = noun
        if meta.get("multiple_of"):
            desc += f", a multiple of {meta['multiple_of']}"
    return desc + (" or null" if optional else "")


def check_value(tp: Any, meta: dict[str, Any], value: Any) -> tuple[Any, str | None]:
    """Check a Python value against a field; returns (normalized, error)."""
    base, optional = _base_type(tp)

    def bad() -> tuple[Any, str]:
        return value, f"expected {expected(tp, meta)}, got {value!r}"

    if value is None:
        return (None, None) if optional else bad()
    if base is bool:
        return (value, None) if isinstance(value, bool) else bad()
    if base is str:
        if not isinstance(value, str):
            return bad()
        if meta.get("choices") and value not in meta["choices"]:
            return value, f"unknown {value!r} (expected: {', '.join(meta['choices'])})"
    elif base in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return bad()
        if base is int and not isinstance(value, int):
            return bad()
        if base is float:
            if not math.isfinite(value):
                return bad()
            value = float(value)
        lo, hi = meta.get("min"), meta.get("max")
        if meta.get("positive") and value <= 0:
            return bad()
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return bad()
        if meta.get("multiple_of") and value % meta["multiple_of"]:
            return bad()
    if meta.get("check"):
        err = meta["check"](value)
        if err:
            return value, err
    return value, None


def validate(cfg: Any, path: str = "") -> list[str]:
    """Every problem in an already-built config object (e.g. after
    ``dataclasses.replace`` with command-line overrides)."""
    errors: list[str] = []
    hints = field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        tp, value = hints[f.name], getattr(cfg, f.name)
        where = f"{path}.{f.name}" if path else f.name
        item_tp = list_item_type(tp)
        if is_section(tp):
            if not isinstance(value, tp):
                errors.append(f"{where}: expected a {tp.__name__}, got {value!r}")
            else:
                errors.extend(validate(value, where))
        elif item_tp is not None:
            for i, item in enumerate(value):
                errors.extend(validate(item, f"{where}[{i}]"))
        else:
            _, err = check_value(tp, dict(f.metadata), value)
            if err:
                errors.append(f"{where}: {err}")
    if isinstance(cfg, Config) and not errors:
        errors.extend(f"{where}: {msg}" for where, msg in cross_checks(cfg))
    return errors
