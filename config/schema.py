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

    exit_code = 2  # == flowprobe.errors.ExitCode.CONFIG

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

@dataclass(frozen=True)
class ExportScheme:
    """What a URL scheme exports (the encoder) and how (the transport)."""
    format: str             # ipfix, netflow9, netflow5
    transport: str          # udp, tcp, file
    default_port: int | None


#: The one table of export URL schemes, their formats, transports and
#: default ports: `--export URL` and YAML `export:` items both go through it.
SCHEMES = {
    "ipfix": ExportScheme("ipfix", "udp", 4739),
    "ipfix+udp": ExportScheme("ipfix", "udp", 4739),
    "ipfix+tcp": ExportScheme("ipfix", "tcp", 4739),
    "ipfix+file": ExportScheme("ipfix", "file", None),
    "netflow9": ExportScheme("netflow9", "udp", 2055),
    "netflow5": ExportScheme("netflow5", "udp", 2055),
    # ntopng over ZeroMQ: flowprobe binds (ntopng -i tcp://HOST:PORT) or
    # connects (to ntopng -i "tcp://*:PORTc"); no default port, ntopng has none
    "zmq": ExportScheme("ntopng", "zmq", None),
    "zmq+connect": ExportScheme("ntopng", "zmq", None),
}
EXPORT_SCHEMES = tuple(SCHEMES)
#: The largest UDP payload (IPv4): the mtu limit of UDP schemes.
MAX_UDP_PAYLOAD = 65507


def check_optional_ipv4(value: str) -> str | None:
    """Empty, or a dotted-quad IPv4 address."""
    parts = value.split(".")
    if not value or len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts):
        return None
    return f"{value!r} is not an IPv4 address"


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
    if SCHEMES[scheme].transport == "zmq" and (not parts.hostname or not port):
        return f"bad URL {url!r}: expected {scheme}://HOST:PORT"
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
    # Application identification (nDPI): on by default. dpi_max_flows bounds
    # the pool of nDPI flow states (688 bytes each in nDPI 4.2) per reader.
    dpi: bool = setting(True)
    dpi_max_flows: int = setting(32768, min=1, max=2**24)


@dataclass(frozen=True)
class ReplayConfig:
    """Offline replay of capture files."""
    batch_packets: int = setting(16384, min=1, max=2**20)


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
    template_refresh_messages: int = setting(20, min=0)
    template_refresh_s: float = setting(10.0, min=0)
    options_interval_s: float = setting(60.0, min=0)
    rate_msgs_s: int = setting(5000, min=0)
    udp_gso: bool = setting(True)
    max_buffer_bytes: int = setting(4 * MiB, min=64 * KiB, max=2**31)
    backoff_max_s: float = setting(30.0, min=0.1)
    close_timeout_s: float = setting(5.0, min=0)
    rotate_bytes: int = setting(0, min=0)
    rotate_s: float = setting(0.0, min=0)
    queue_bytes: int = setting(16 * MiB, min=64 * KiB, max=2**31)
    # zmq:// and zmq+connect:// (ntopng) only
    zmq_format: str = setting("tlv", choices=("tlv", "json"))
    records_per_message: int = setting(32, min=1, max=4096)
    compress: bool = setting(False)
    source_id: int = setting(0, min=0, max=255)
    hwm_messages: int = setting(10000, min=1)
    event_interval_s: float = setting(10.0, min=0)
    subscriber_wait_s: float = setting(2.0, min=0)
    exporter_address: str = setting("", check=check_optional_ipv4)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()

    @property
    def format(self) -> str:
        """The encoder: ipfix, netflow9 or netflow5."""
        return SCHEMES[self.scheme].format

    @property
    def transport(self) -> str:
        """udp, tcp or file."""
        return SCHEMES[self.scheme].transport

    @property
    def host(self) -> str | None:
        return urlsplit(self.url).hostname

    @property
    def port(self) -> int | None:
        return urlsplit(self.url).port or SCHEMES[self.scheme].default_port

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    def for_reader(self, index: int) -> "ExportConfig":
        """This destination as live reader ``index`` exports to it: with
        observation domain ``observation_domain + index`` and source id
        ``source_id + index`` (a collector sees one sequence space and
        template set per reader), for a file a file of its own and for
        ``zmq://`` a port of its own (per_reader_url)."""
        return dataclasses.replace(
            self, url=per_reader_url(self.url, index),
            observation_domain=(self.observation_domain + index) & 0xFFFFFFFF,
            source_id=(self.source_id + index) & 0xFF)


def per_reader_url(url: str, index: int) -> str:
    """A file destination for reader ``index``: readers must not share a
    file (each would rename its own over the others'), so the index goes
    before the extension: ipfix+file:///var/lib/f/flows.ipfix ->
    .../flows.r0.ipfix. A ``zmq://`` destination is a port flowprobe binds,
    and only one process can bind it: reader ``index`` binds PORT + index
    (ntopng -i tcp://HOST:PORT,tcp://HOST:PORT+1,...). Other network
    destinations are shared as they are."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "zmq" and parts.port:
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        return f"zmq://{host}:{parts.port + index}"
    scheme = SCHEMES.get(parts.scheme.lower())
    if scheme is None or scheme.transport != "file":
        return url
    path = parts.path or parts.netloc
    head, dot, ext = path.rpartition(".")
    if not dot or "/" in ext:
        head, ext = path, ""
    path = f"{head}.r{index}" + (f".{ext}" if ext else "")
    return f"{parts.scheme}://{path}" + (f"?{parts.query}" if parts.query else "")


def export_config(item: "ExportConfig | str | dict[str, Any]",
                  where: str = "export") -> "ExportConfig":
    """One export destination as the typed config, through this schema and
    its defaults, whatever form it came in: an ExportConfig, a URL (``--export
    URL``, the YAML shorthand) or a mapping of ExportConfig keys. ConfigError
    names ``where`` and the key."""
    if isinstance(item, ExportConfig):
        cfg = item
    elif isinstance(item, str):
        err = check_export_url(item)
        if err:
            raise ConfigError([f"{where}: {err}"])
        cfg = ExportConfig(url=item)
    elif isinstance(item, dict):
        names = [f.name for f in dataclasses.fields(ExportConfig)]
        unknown = [k for k in item if k not in names]
        if unknown or "url" not in item:
            raise ConfigError([f"{where}.{k}: unknown key {k!r} (valid keys: "
                               f"{', '.join(names)})" for k in unknown]
                              or [f"{where}.url: missing required key"])
        cfg = ExportConfig(**item)
    else:
        raise ConfigError([f"{where}: expected a URL or a mapping, got {item!r}"])
    errors = validate(cfg, where)
    if not errors:
        errors = [f"{where}.{k}: {m}" for k, m in export_cross_checks(cfg)]
    if errors:
        raise ConfigError(errors)
    return cfg


def export_cross_checks(e: ExportConfig) -> list[tuple[str, str]]:
    """Constraints between an export item's fields: (key, message)."""
    if e.transport == "udp" and e.mtu > MAX_UDP_PAYLOAD:
        return [("mtu", f"{e.mtu}: a UDP payload is at most {MAX_UDP_PAYLOAD} bytes")]
    if e.transport == "zmq" and e.compress and e.zmq_format != "json":
        return [("compress", "true with zmq_format tlv: ntopng decompresses "
                 "only JSON payloads (set zmq_format: json, or compress: false)")]
    return []


def export_items(cfg: "Config", export_urls: typing.Sequence[str] = (),
                 reader: int | None = None) -> tuple["ExportConfig", ...]:
    """Every export destination of a run: the config's ``export:`` items,
    then each ``--export URL`` as the same typed item with the schema's
    defaults; ``reader``: as live reader ``reader`` exports
    (ExportConfig.for_reader). ConfigError lists every bad URL."""
    items, errors = list(cfg.export), []
    for url in export_urls:
        try:
            items.append(export_config(url, "--export"))
        except ConfigError as exc:
            errors.extend(exc.messages)
    if errors:
        raise ConfigError(errors)
    if reader is not None:
        items = [e.for_reader(reader) for e in items]
    return tuple(items)


def parse_interfaces(value: str | None) -> list[str]:
    """``"eth1, eth2"`` -> ["eth1", "eth2"] (order kept, duplicates dropped)."""
    out: list[str] = []
    for name in (value or "").replace(" ", ",").split(","):
        if name and name not in out:
            out.append(name)
    return out


def check_interfaces(value: str | None) -> str | None:
    for name in parse_interfaces(value):
        if len(name) > 15 or "/" in name:
            return f"bad interface name {name!r}"
    return None


def parse_cpulist(value: str) -> list[int]:
    """Linux cpulist syntax: ``"0-3,6"`` -> [0, 1, 2, 3, 6]; ValueError if bad."""
    cpus: list[int] = []
    for part in value.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        first, last = int(lo), int(hi) if sep else int(lo)
        if first < 0 or last < first or last >= 4096:
            raise ValueError(part)
        cpus.extend(c for c in range(first, last + 1) if c not in cpus)
    return cpus


def check_cpulist(value: str) -> str | None:
    try:
        parse_cpulist(value)
    except ValueError:
        return f"bad CPU list {value!r} (expected e.g. '0-3,6')"
    return None


def check_listen(value: str | None) -> str | None:
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return f"bad listen address {value!r} (expected HOST:PORT)"
    return None


def check_power_of_two(value: int) -> str | None:
    return None if value > 0 and not value & (value - 1) else \
        f"expected a power of two, got {value}"


@dataclass(frozen=True)
class CaptureConfig:
    """Live capture settings: interfaces, the ring of either backend
    (AF_PACKET TPACKET_V3 or AF_XDP), filter, sampling, timestamps."""
    interface: str | None = setting(None, check=check_interfaces)
    snaplen: int = setting(256, min=64, max=262144)
    block_size: int = setting(1 * MiB, min=4 * KiB, max=2**31, multiple_of=4096)
    block_count: int = setting(64, min=1, max=65536)
    frame_size: int = setting(2048, min=64, max=2**20, multiple_of=16)
    block_timeout_ms: int = setting(10, min=1, max=60000)
    filter: str = setting("")
    busy_poll: bool = setting(False)
    sampling_rate: int = setting(1, min=1, max=2**31)
    sampling_mode: str = setting("deterministic", choices=("deterministic", "random"))
    hw_timestamps: bool = setting(False)
    fanout_defrag: bool = setting(False)
    # AF_XDP (backend: afxdp); frame_size is also the UMEM chunk size
    backend: str = setting("afpacket", choices=("afpacket", "afxdp"))
    xdp_mode: str = setting("auto", choices=("auto", "native", "skb"))
    umem_frames: int = setting(32768, min=64, max=2**20, check=check_power_of_two)
    queues: int = setting(0, min=0, max=4096)
    xdp_wait: str = setting("sleep", choices=("sleep", "poll"))
    xdp_sleep_us: int = setting(1000, min=1, max=1_000_000)
    # the systemd unit runs `nic prepare` / `nic restore` on these interfaces
    prepare_nic: bool = setting(False)


@dataclass(frozen=True)
class SupervisorConfig:
    """`flowprobe run`: reader processes, their CPUs, health checks, stats."""
    workers: int | None = setting(None, min=1, max=1024)
    cpus: str = setting("", check=check_cpulist)
    heartbeat_timeout_s: float = setting(10.0, positive=True)
    stats_interval_s: float = setting(30.0, positive=True)
    stats_socket: str = setting("/run/flowprobe/flowprobe.sock")
    graceful_timeout_s: float = setting(30.0, positive=True)
    restart_backoff_max_s: float = setting(30.0, positive=True)
    on_interface_gone: str = setting("wait", choices=("wait", "halt"))
    interface_wait_max_s: float = setting(5.0, positive=True)


@dataclass(frozen=True)
class MetricsConfig:
    """Optional Prometheus endpoint served by the supervisor."""
    listen: str | None = setting(None, check=check_listen)


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``Config()`` is the default configuration."""
    flow: FlowConfig = setting(factory=FlowConfig)
    replay: ReplayConfig = setting(factory=ReplayConfig)
    logging: LoggingConfig = setting(factory=LoggingConfig)
    export: tuple[ExportConfig, ...] = setting(())
    capture: CaptureConfig = setting(factory=CaptureConfig)
    supervisor: SupervisorConfig = setting(factory=SupervisorConfig)
    metrics: MetricsConfig = setting(factory=MetricsConfig)

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
    for i, e in enumerate(cfg.export):
        errors.extend((f"export[{i}].{key}", msg) for key, msg in export_cross_checks(e))
    if cap.backend == "afxdp":
        if cap.frame_size not in (2048, 4096):
            errors.append(("capture.frame_size", f"{cap.frame_size}: with backend afxdp "
                           "the UMEM chunk size must be 2048 or 4096"))
        for key, value, neutral in (("filter", cap.filter, ""),
                                    ("sampling_rate", cap.sampling_rate, 1)):
            if value != neutral:
                errors.append((f"capture.{key}", f"{value!r}: not available with "
                               "backend afxdp (every frame is captured)"))
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
