"""The flow table: a thin, checked binding over the C engine.

Python crosses into C once per batch of packets (``ingest``) and once per
batch of expired records (``expire``); records reach a *sink* as a C array
(``struct ft_record *``) and a count, so exporters can encode them in C too.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Callable, Iterator

from flowprobe.probe.flowtable._flowtable import ffi, lib

#: Names of enum ft_skip, in order: the counters of packets not accounted.
SKIP_REASONS = (
    "unsupported_linktype",
    "l2_truncated",
    "non_ip",
    "vlan_depth",
    "mpls",
    "ip_truncated",
    "ip_version",
    "ip_header",
    "ip_length",
)

#: IPFIX flowEndReason values (enum ft_end_reason) and their names.
END_REASONS = {
    lib.FT_END_IDLE: "idle_timeout",
    lib.FT_END_ACTIVE: "active_timeout",
    lib.FT_END_TCP: "end_of_flow",
    lib.FT_END_FORCED: "forced_end",
    lib.FT_END_RESOURCES: "lack_of_resources",
}

#: Names of enum ft_app_source: where a record's application label came from.
APP_SOURCES = {
    lib.FT_APP_NONE: "none",
    lib.FT_APP_DETECTED: "detected",
    lib.FT_APP_GUESSED: "guessed",
    lib.FT_APP_NO_STATE: "no_state",
    lib.FT_APP_UNKNOWN: "unknown",
}

#: The DPI counters of struct ft_stats, by the names stats() gives them.
DPI_COUNTERS = ("inspected", "detected", "guessed", "unknown", "no_state",
                "packets", "pool_in_use", "pool_peak")

NS_PER_S = 1_000_000_000

#: A sink receives a ``struct ft_record *`` (this module's ffi) and a count.
Sink = Callable[[object, int], None]


class FlowTableError(Exception):
    """The C engine refused a request (bad configuration, no memory)."""


@dataclass(frozen=True)
class PacketBatch:
    """A caller-owned array of ``struct ft_pkt`` that readers fill in C.

    ``address`` lets another cffi module (a file reader, a ring) write into
    it without knowing this module's ffi.
    """

    ptr: object
    address: int
    cap: int


def _c_config(flow_cfg, ifindex: int, prefault: bool = False):
    cfg = ffi.new("struct ft_config *")
    cfg.max_flows = flow_cfg.max_flows
    cfg.record_buffer = flow_cfg.record_buffer
    cfg.idle_timeout_ns = int(flow_cfg.idle_timeout_s * NS_PER_S)
    cfg.active_timeout_ns = int(flow_cfg.active_timeout_s * NS_PER_S)
    cfg.tcp_end_grace_ns = int(flow_cfg.tcp_end_grace_s * NS_PER_S)
    cfg.ifindex = ifindex
    cfg.dpi = 1 if flow_cfg.dpi else 0
    cfg.dpi_max_flows = flow_cfg.dpi_max_flows
    cfg.prefault = 1 if prefault else 0
    return cfg


class FlowTable:
    """A fixed-capacity flow table fed by packet batches.

    ``flow_cfg`` is the ``flow`` section of the configuration (max_flows,
    record_buffer, idle/active timeouts, tcp_end_grace_s, dpi and
    dpi_max_flows: application identification with nDPI). ``sink`` gets
    every expired record batch; ``record_batch`` sizes the array it gets.
    ``prefault``: a helper thread maps the flow slab's pages ahead of use
    (replay; flowtable.c says why).
    """

    def __init__(self, flow_cfg, sink: Sink | None = None, *, ifindex: int = 0,
                 record_batch: int = 4096, prefault: bool = False) -> None:
        err = ffi.new("int *")
        table = lib.ft_new(_c_config(flow_cfg, ifindex, prefault), err)
        if table == ffi.NULL:
            raise FlowTableError(
                f"cannot create flow table (max_flows={flow_cfg.max_flows}, "
                f"dpi={flow_cfg.dpi}, dpi_max_flows={flow_cfg.dpi_max_flows}): "
                f"{os.strerror(-err[0])}")
        self._table = ffi.gc(table, lib.ft_free)
        self._sink = sink or (lambda records, n: None)
        self._records = ffi.new("struct ft_record[]", record_batch)
        self._record_cap = record_batch
        self._consumed = ffi.new("size_t *")
        self._stats = ffi.new("struct ft_stats *")

    # -- feeding -------------------------------------------------------
    def packet_batch(self, cap: int) -> PacketBatch:
        """Allocate an array of ``cap`` packet descriptors for a reader."""
        ptr = ffi.new("struct ft_pkt[]", cap)
        return PacketBatch(ptr, int(ffi.cast("uintptr_t", ptr)), cap)

    def ingest(self, linktype: int, batch: PacketBatch, n: int) -> None:
        """Account ``n`` packets of ``batch``; drains records as needed."""
        done = 0
        while done < n:
            lib.ft_ingest(self._table, linktype, batch.ptr + done, n - done, self._consumed)
            done += self._consumed[0]
            if done < n:
                self._drain(0)

    def expire(self, now_ns: int = 0) -> None:
        """Advance the clock to ``now_ns`` (0: packet time only), emit due flows."""
        self._drain(now_ns)

    def flush(self) -> None:
        """End every flow (shutdown, end of input) and emit it."""
        lib.ft_flush(self._table)
        self._drain(0)

    def _drain(self, now_ns: int) -> None:
        while True:
            n = lib.ft_expire(self._table, now_ns, self._records, self._record_cap)
            if n:
                self._sink(self._records, n)
            if n < self._record_cap:
                return

    # -- introspection -------------------------------------------------
    def held(self) -> tuple[int, int, int]:
        """(flows, packets, octets) accepted but not yet handed to the sink:
        the active flows plus expired records not yet drained. What a reader
        killed now would lose."""
        lib.ft_get_stats(self._table, self._stats)
        s = self._stats
        return (s.flows_active + s.records_pending,
                s.packets_accepted - s.packets_emitted,
                s.octets_accepted - s.octets_emitted)

    @property
    def memory_bytes(self) -> int:
        return lib.ft_memory_bytes(self._table)

    @staticmethod
    def entry_size() -> int:
        return lib.ft_flow_entry_size()

    @staticmethod
    def dpi_slot_size() -> int:
        """Bytes per nDPI flow state slot (the pool holds dpi_max_flows)."""
        return lib.ft_dpi_slot_size()

    def set_timeouts(self, flow_cfg) -> None:
        """Apply flow_cfg's idle/active/TCP-grace timers to the live table."""
        rc = lib.ft_set_timeouts(self._table, int(flow_cfg.idle_timeout_s * NS_PER_S),
                                 int(flow_cfg.active_timeout_s * NS_PER_S),
                                 int(flow_cfg.tcp_end_grace_s * NS_PER_S))
        if rc < 0:
            raise FlowTableError(f"cannot set timeouts: {os.strerror(-rc)}")

    def stats(self) -> dict:
        """Every counter of the table, with skip and end reasons by name."""
        lib.ft_get_stats(self._table, self._stats)
        s = self._stats
        return {
            "packets_seen": s.packets_seen,
            "packets_accepted": s.packets_accepted,
            "octets_accepted": s.octets_accepted,
            "skipped": {name: s.skipped[i] for i, name in enumerate(SKIP_REASONS)},
            "l4_partial": s.l4_partial,
            "fragments": s.fragments,
            "flows_created": s.flows_created,
            "flows_expired": {name: s.flows_expired[v] for v, name in END_REASONS.items()},
            "records_emitted": s.records_emitted,
            "packets_emitted": s.packets_emitted,
            "octets_emitted": s.octets_emitted,
            "flows_active": s.flows_active,
            "flows_peak": s.flows_peak,
            "records_pending": s.records_pending,
            "last_linktype_unsupported": s.last_linktype_unsupported,
            "now_ns": s.now_ns,
            "dpi": {name: getattr(s, "dpi_" + name) for name in DPI_COUNTERS},
        }


def _mac(b) -> str:
    return ":".join(f"{x:02x}" for x in b)


def record_to_dict(rec) -> dict:
    """One ``struct ft_record`` as a dict keyed by IANA IPFIX IE names."""
    v4 = rec.ip_version == 4
    if v4:
        src = str(ipaddress.IPv4Address(bytes(ffi.buffer(rec.src_addr, 4))))
        dst = str(ipaddress.IPv4Address(bytes(ffi.buffer(rec.dst_addr, 4))))
        d = {"sourceIPv4Address": src, "destinationIPv4Address": dst}
    else:
        src = str(ipaddress.IPv6Address(bytes(ffi.buffer(rec.src_addr, 16))))
        dst = str(ipaddress.IPv6Address(bytes(ffi.buffer(rec.dst_addr, 16))))
        d = {"sourceIPv6Address": src, "destinationIPv6Address": dst}
    d.update(
        sourceTransportPort=rec.src_port,
        destinationTransportPort=rec.dst_port,
        protocolIdentifier=rec.protocol,
        ipClassOfService=rec.tos,
        packetDeltaCount=rec.packets,
        octetDeltaCount=rec.octets,
        flowStartMilliseconds=rec.first_ns // 1_000_000,
        flowEndMilliseconds=rec.last_ns // 1_000_000,
        flowEndReason=rec.end_reason,
        ipVersion=rec.ip_version,
        minimumTTL=rec.ttl_min,
        maximumTTL=rec.ttl_max,
        ingressInterface=rec.ifindex,
    )
    if rec.protocol == 6:
        d["tcpControlBits"] = rec.tcp_flags
    if rec.protocol == 1 and v4:
        d["icmpTypeCodeIPv4"] = rec.dst_port
    elif rec.protocol == 58 and not v4:
        d["icmpTypeCodeIPv6"] = rec.dst_port
    if rec.vlan:
        d["vlanId"] = rec.vlan
    if rec.inner_vlan:
        d["dot1qCustomerVlanId"] = rec.inner_vlan
    if rec.has_mac:
        d["sourceMacAddress"] = _mac(rec.src_mac)
        d["destinationMacAddress"] = _mac(rec.dst_mac)
    if rec.app_source != lib.FT_APP_NONE:
        d["applicationName"] = ffi.string(rec.app_name).decode("latin-1")
        d["ndpiMasterProtocol"] = rec.app_master
        d["ndpiAppProtocol"] = rec.app_id
    return d


def iter_records(records, n: int) -> Iterator[dict]:
    """The dicts of the first ``n`` records of a sink's array."""
    for i in range(n):
        yield record_to_dict(records[i])
